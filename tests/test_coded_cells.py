"""Coded conductance pairs (rramc.ir.cells): a byte per pair in memory, and the chip computes exactly what dense cells give.

The references are plain PyTorch on the dense matrices: indexing a codebook by hand, the per-cell I-V of the
device, and the same layer built from the decoded cells.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import rramc
from rramc.hardware.calibration import column_current_bounds
from rramc.hardware.input_encoding import input_encoding
from rramc.hardware.layer import CrossbarLayer
from rramc.hardware.weight_encoding import weight_encoding
from rramc.ir import CrossbarOp
from rramc.ir.cells import CHUNK, CodedPairs, DensePairs, PairCoder

LEVELS = torch.linspace(2e-8, 2e-6, 32)


def _on_levels(rows: int, columns: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A differential pair on 32 levels: one cell of each pair at the lowest level (63 distinct pairs)."""
    generator = torch.Generator().manual_seed(seed)
    level = LEVELS[torch.randint(0, 32, (rows, columns), generator=generator)]
    positive = torch.rand(rows, columns, generator=generator) < 0.5
    return torch.where(positive, level, LEVELS[0]), torch.where(positive, LEVELS[0], level)


def test_pairs_on_levels_code_to_a_byte_each_and_decode_exactly() -> None:
    g_pos, g_neg = _on_levels(300, 70)
    coded = CodedPairs.encode(g_pos, g_neg)
    assert coded is not None and coded.codes.dtype == torch.uint8 and coded.shape == (300, 70)
    pairs = torch.stack([g_pos, g_neg], -1).reshape(-1, 2).unique(dim=0)
    assert len(coded.codebook) == len(pairs)
    assert torch.equal(coded.codebook[coded.codes.long()], torch.stack([g_pos, g_neg], -1))  # by hand
    assert all(torch.equal(a, b) for a, b in zip(coded.dense(), (g_pos, g_neg)))
    assert all(torch.equal(a, b) for a, b in zip(coded.rows(17, 123), (g_pos[17:123], g_neg[17:123])))
    assert coded.extrema() == (float(torch.minimum(g_pos, g_neg).min()), float(torch.maximum(g_pos, g_neg).max()))
    function = lambda p, n: torch.stack([p.sinh() - n, p * n], -1)  # noqa: E731 - any function of the pair
    assert torch.equal(coded.per_pair(function, 5, 250), DensePairs(g_pos, g_neg).per_pair(function, 5, 250))
    assert coded.equal(DensePairs(g_pos, g_neg)) and not coded.equal(DensePairs(g_neg, g_pos))


def test_the_coder_widens_to_uint16_and_goes_dense_when_coding_does_not_pay() -> None:
    generator = torch.Generator().manual_seed(1)
    many = torch.linspace(1e-7, 2e-6, 1000)
    g_pos, g_neg = many[torch.randint(0, 1000, (400, 50), generator=generator)], torch.full((400, 50), 2e-8)
    coded = CodedPairs.encode(g_pos, g_neg)
    assert coded is not None and coded.codes.dtype == torch.uint16 and torch.equal(coded.side(0), g_pos)
    # Pairs first met after the first block (and past 256 of them) are still coded right.
    coder = PairCoder(400, 50)
    coder.write(0, g_pos[:, :10] * 0 + LEVELS[3], g_neg[:, :10])  # one pair
    coder.write(10, g_pos[:, 10:], g_neg[:, 10:])
    pairs = coder.finish()
    assert isinstance(pairs, CodedPairs) and torch.equal(pairs.side(0)[:, 10:], g_pos[:, 10:]) and bool((pairs.side(0)[:, :10] == LEVELS[3]).all())
    # Continuous conductances: as many pairs as cells, kept dense; so are float64 ones.
    continuous = torch.rand(400, 300, generator=generator) * 2e-6
    assert CodedPairs.encode(continuous, continuous.flip(0)) is None
    coder = PairCoder(400, 300)
    step = CHUNK // 400 // 4
    for a in range(0, 300, step):
        coder.write(a, continuous[:, a:a + step], continuous.flip(0)[:, a:a + step])
    dense = coder.finish()
    assert isinstance(dense, DensePairs) and torch.equal(dense.g_pos, continuous) and torch.equal(dense.g_neg, continuous.flip(0))
    assert CodedPairs.encode(g_pos.double(), g_neg.double()) is None
    # Coded at first, then a block of more pairs than uint16 indexes: what was coded is decoded, and the rest kept dense.
    coder = PairCoder(400, 300)
    coder.write(0, g_pos[:, :50], g_neg[:, :50])
    coder.write(50, continuous[:, 50:250], continuous.flip(0)[:, 50:250])
    coder.write(250, continuous[:, 250:], continuous.flip(0)[:, 250:])
    mixed = coder.finish()
    assert isinstance(mixed, DensePairs) and torch.equal(mixed.g_pos[:, :50], g_pos[:, :50])
    assert torch.equal(mixed.g_pos[:, 50:], continuous[:, 50:]) and torch.equal(mixed.g_neg[:, 50:], continuous.flip(0)[:, 50:])


@pytest.mark.parametrize("target_name", ["rram_a", "rram_b"])
def test_quantize_codes_cells_on_levels_and_keeps_continuous_ones_dense(target_name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    for name, kind in ((target_name, CodedPairs), ("ideal", DensePairs)):
        exe = rramc.compile(model, name, calibration_data=torch.rand(64, 64), input_range=(0.0, 1.0))
        for node in exe.graph.nodes_of(CrossbarOp):
            assert isinstance(node.op.cells, kind), (name, node.name)


def _layer_pair(target_name: str, model: nn.Module, x: torch.Tensor) -> list[tuple[CrossbarLayer, CrossbarLayer, CrossbarOp]]:
    """Each crossbar layer of ``model`` compiled for ``target_name`` (tiles of 40 rows), built from its coded cells
    and from the same cells decoded."""
    exe = rramc.compile(model, target_name, calibration_data=x, input_range=(0.0, 1.0),
                        pipeline="canonicalize,quantize,tile{rows=40,cols=16},calibrate,emit")
    target = rramc.load_target(target_name).nominal()
    layers = []
    for node in exe.graph.nodes_of(CrossbarOp):
        op = node.op
        assert isinstance(op.cells, CodedPairs)
        inputs = input_encoding(op.input_encoding, target)
        coded = CrossbarLayer.build(node.name, node.source, op, target, op.cells, inputs)
        dense = CrossbarLayer.build(node.name, node.source, op, target, DensePairs(*op.cells.dense()), inputs)
        layers.append((coded, dense, op))
    return layers


@pytest.mark.parametrize("target_name", ["rram_a", "rram_b"])  # a separable device, and one of several expansion terms
def test_a_layer_on_coded_cells_computes_what_it_does_on_the_decoded_ones(target_name: str) -> None:
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Linear(100, 24), nn.ReLU(), nn.Linear(24, 10))
    conv = nn.Sequential(nn.Conv2d(6, 20, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(20 * 5 * 5, 10))
    for model, x in ((linear, torch.rand(32, 100)), (conv, torch.rand(16, 6, 5, 5))):
        first, *_ = _layer_pair(target_name, model, x)
        coded, dense, op = first
        assert len(op.row_splits) > 2  # several row blocks  # type: ignore[arg-type]
        with torch.no_grad():
            assert torch.equal(coded(x), dense(x))
        for reach in (1.0, 0.4):
            for a, b in zip(column_current_bounds(op, rramc.load_target(target_name), reach),
                            column_current_bounds(op.replace(g_pos=op.g_pos), rramc.load_target(target_name), reach)):
                assert a == b if isinstance(a, float) else torch.equal(a, b)


def test_the_executable_owns_its_weights_once_compiled() -> None:
    """The import reads the caller's parameters without copying them; the executable keeps its own copies."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.rand(32, 16)
    exe = rramc.compile(model, "rram_a", calibration_data=x, input_range=(0.0, 1.0))
    before = exe.reference(x)
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for node in exe.graph.nodes_of(CrossbarOp):
        assert node.op.weight.untyped_storage().data_ptr() not in storages
    with torch.no_grad():  # the caller trains on
        for p in model.parameters():
            p.mul_(-3.0)
    assert torch.equal(exe.reference(x), before)


def test_weight_encodings_map_straight_to_coded_cells() -> None:
    target = rramc.load_target("rram_a")
    weight = torch.randn(50, 70)
    for name in ("differential", "offset"):
        mapped = weight_encoding(name, target).map(weight, per_column=True, levels=target.conductance.levels)
        assert isinstance(mapped.pairs, CodedPairs), name
        trained = weight_encoding(name, target).map(weight.requires_grad_(), per_column=True, levels=None)
        assert isinstance(trained.pairs, DensePairs) and trained.g_pos.requires_grad
        weight = weight.detach()


@pytest.mark.parametrize("tile_rows", [None, 12])  # one row block, and several
def test_gradients_reach_dense_cells_that_require_them(tile_rows: int | None) -> None:
    """Trainable cells (dense, requiring grad) on rram_b's several expansion terms: the matmuls stay differentiable."""
    torch.manual_seed(0)
    pipeline = "canonicalize,quantize,tile" + (f"{{rows={tile_rows}}}" if tile_rows else "") + ",calibrate,emit"
    exe = rramc.compile(nn.Sequential(nn.Linear(30, 8)), "rram_b", calibration_data=torch.rand(64, 30), input_range=(0.0, 1.0),
                        pipeline=pipeline)
    node = exe.graph.nodes_of(CrossbarOp)[0]
    target = rramc.load_target("rram_b").nominal()
    g_pos, g_neg = (g.clone().requires_grad_() for g in node.op.cells.dense())
    layer = CrossbarLayer.build(node.name, node.source, node.op, target, DensePairs(g_pos, g_neg),
                                input_encoding(node.op.input_encoding, target))
    layer(torch.rand(4, 30).requires_grad_()).sum().backward()
    assert g_pos.grad is not None and bool(torch.isfinite(g_pos.grad).all()) and float(g_pos.grad.abs().sum()) > 0
