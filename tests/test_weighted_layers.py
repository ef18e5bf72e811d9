"""Every weight-stationary layer maps to crossbars and computes what PyTorch does; a weight used twice is programmed once.

Grouped and depthwise convolutions (a block-diagonal matrix), 1-D convolutions (their 2-D form),
transposed convolutions (spread pixels, then an ordinary convolution), ``padding='same'`` with
even kernels, linear layers on tokens and ``x @ W``: on the ``ideal`` target the chip equals the
PyTorch module, through torch.fx and through torch.export.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import rramc
from rramc.errors import VerifyError
from rramc.frontend import import_exported, import_module
from rramc.hardware.cost import estimate
from rramc.hardware.interpreter import Chip
from rramc.ir import Conv2d, CrossbarOp, Linear, ZeroPad2d, weight_matrix
from rramc.runtime.executable import Executable


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    error = float((actual - expected).abs().max())
    assert error <= rel * float(expected.abs().max()), f"max error {error:.3g} vs scale {float(expected.abs().max()):.3g}"


class TokenMixer(nn.Module):
    """A linear layer on every token, then ``x @ W`` with a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 6)
        self.project = nn.Parameter(torch.randn(6, 5) / 3)
        self.head = nn.Linear(7 * 5, 3)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head((torch.relu(self.embed(x)) @ self.project).flatten(1))


MODELS = {
    "grouped_and_depthwise": (lambda: nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8, padding=1, stride=2), nn.ReLU(),
        nn.Conv2d(8, 16, 1, groups=2), nn.Flatten(), nn.Linear(16 * 9, 5)), (4, 6, 6)),
    "same_padding_even_kernel": (lambda: nn.Sequential(
        nn.Conv2d(3, 4, 4, padding="same"), nn.ReLU(), nn.Conv2d(4, 4, (2, 3), padding="same", dilation=(1, 2)),
        nn.Flatten(), nn.Linear(4 * 36, 3)), (3, 6, 6)),
    "transposed": (lambda: nn.Sequential(
        nn.ConvTranspose2d(3, 6, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        nn.ConvTranspose2d(6, 4, 2, stride=2, groups=2), nn.ReLU(), nn.ConvTranspose2d(4, 2, 3, padding=2, dilation=2),
        nn.Flatten(), nn.Linear(2 * 20 * 20, 3)), (3, 5, 5)),
    "conv1d": (lambda: nn.Sequential(
        nn.Conv1d(3, 8, 5, padding=2), nn.ReLU(), nn.Conv1d(8, 8, 3, groups=4, stride=2), nn.ReLU(),
        nn.Conv1d(8, 4, 4, padding="same"), nn.Flatten(), nn.Linear(4 * 9, 3)), (3, 20)),
    "tokens": (TokenMixer, (7, 8)),
    "shared": ("linear_used_twice", (16,)),  # a conftest fixture
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("front", ["fx", "export"])
def test_the_chip_on_ideal_equals_pytorch(name: str, front: str, request: pytest.FixtureRequest) -> None:
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    factory = request.getfixturevalue(factory) if isinstance(factory, str) else factory
    model = factory().eval()
    x = torch.randn(16, *shape)
    source = model if front == "fx" else torch.export.export(model, (x[:2],))
    exe = rramc.compile(source, "ideal", calibration_data=x)
    with torch.no_grad():
        assert_close(exe(x), model(x))


def test_a_grouped_convolution_is_one_block_diagonal_matrix() -> None:
    conv = nn.Conv2d(6, 4, 3, groups=2)
    matrix = weight_matrix(conv.weight.detach(), 2)
    assert matrix.shape == (4, 6 * 9)
    assert torch.equal(matrix[:2, :27], conv.weight[:2].detach().reshape(2, -1))
    assert torch.equal(matrix[2:, 27:], conv.weight[2:].detach().reshape(2, -1))
    assert not matrix[:2, 27:].any() and not matrix[2:, :27].any()
    graph = import_module(nn.Sequential(conv), torch.randn(1, 6, 5, 5))
    (node,) = graph.nodes_of(Conv2d)
    assert node.op.groups == 2  # type: ignore[attr-defined]
    exe = rramc.compile(nn.Sequential(conv), "rram_a", calibration_data=torch.randn(64, 6, 5, 5))
    (xbar,) = exe.graph.nodes_of(CrossbarOp)
    assert xbar.op.matrix_shape == (54, 4) and xbar.op.g_pos.shape == (54, 4)


def test_a_transposed_convolution_is_spread_pixels_and_a_convolution() -> None:
    graph = import_module(nn.Sequential(nn.ConvTranspose2d(2, 3, 3, stride=2)), torch.randn(1, 2, 4, 4))
    kinds = [node.op.kind for node in graph if node.op.kind not in ("input", "output")]
    assert kinds == ["zero_pad2d", "conv2d"]
    (pad,) = graph.nodes_of(ZeroPad2d)
    assert pad.op.spacing == (2, 2) and pad.shape == (2, 11, 11)  # type: ignore[attr-defined]


def test_a_weight_used_twice_is_programmed_once(tmp_path: Path, linear_used_twice: Callable[[], nn.Module]) -> None:
    torch.manual_seed(1)
    model = linear_used_twice()
    x = torch.randn(256, 16)
    exe = rramc.compile(model, "rram_a", calibration_data=x)
    ops = {node.name: node.op for node in exe.graph.nodes_of(CrossbarOp)}
    assert [op.shares for op in ops.values()] == [None, "fc", None]
    first, again = ops["fc"], ops["fc_1"]
    assert again.cells is first.cells
    assert again.adc_range is not None and not torch.equal(again.adc_range, first.adc_range)  # its own periphery
    chip = Chip(exe.graph, exe.target, seed=3)  # programming variation: both uses read the same drawn cells
    assert chip.layers["fc_1"].cells.pairs is chip.layers["fc"].cells.pairs
    assert chip.layers["fc_1"].state is chip.layers["fc"].state  # the column solver prepares the arrays once
    cost = estimate(exe.graph, exe.target)
    assert cost["layers"]["fc_1"]["arrays"] == 0 and cost["per_inference"]["arrays"] == 2
    loaded = Executable.load(exe.save(tmp_path / "twice.rramx"))
    with torch.no_grad():
        assert torch.equal(loaded(x[:32], seed=3), exe(x[:32], seed=3))


def test_reconstruct_trains_a_shared_weight_as_one_parameter(linear_used_twice: Callable[[], nn.Module]) -> None:
    torch.manual_seed(2)
    model = linear_used_twice()
    x = torch.randn(128, 16)
    data = rramc.datasets.Dataset("teacher", "train", x, model(x).argmax(1).detach(), 4, (-5.0, 5.0))
    exe = rramc.compile(model, "rram_a", calibration_data=x, training_data=data,
                        pipeline="canonicalize,reconstruct{epochs=1,batch_size=32},quantize,tile,calibrate,emit")
    ops = {node.name: node.op for node in exe.graph.nodes_of(CrossbarOp)}
    assert ops["fc_1"].shares == "fc" and ops["fc_1"].weight is ops["fc"].weight
    assert not torch.equal(ops["fc"].weight, model.fc.weight.detach())  # trained


def test_the_verifier_refuses_a_sharer_that_does_not_match_its_owner(linear_used_twice: Callable[[], nn.Module]) -> None:
    graph = import_module(linear_used_twice(), torch.randn(1, 16))
    sharer = graph.node("fc_1")
    assert isinstance(sharer.op, Linear) and sharer.op.shares == "fc"
    sharer.op = sharer.op.replace(shares="head")
    with pytest.raises(VerifyError, match="shares the arrays of %head, which is not an earlier node"):
        graph.verify()
    sharer.op = sharer.op.replace(shares="fc", weight=torch.zeros(16, 16))
    graph.verify()  # same shape: the float copy may differ until quantize gives it the owner's cells
    exe_graph = rramc.compile(linear_used_twice(), "ideal", calibration_data=torch.randn(8, 16)).graph
    node = exe_graph.node("fc_1")
    node.op = node.op.replace(g_pos=node.op.g_pos * 2)  # type: ignore[attr-defined]
    with pytest.raises(VerifyError, match="its conductances differ from theirs"):
        exe_graph.verify()


def test_refusals_name_the_layer_and_the_reason() -> None:
    class Reflect(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.ConvTranspose2d(2, 2, 3, stride=2)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.up(x, output_size=[9, 9])

    with pytest.raises(rramc.errors.FrontendError, match="layer 'up'.*output_size"):
        import_module(Reflect(), torch.randn(1, 2, 4, 4))
    conv3d = nn.Sequential(nn.Conv3d(1, 2, 2))
    program = torch.export.export(conv3d, (torch.randn(1, 1, 3, 3, 3),))
    with pytest.raises(rramc.errors.FrontendError, match="conv3d.default at layer '0'"):
        import_exported(program)


def test_a_linear_layer_on_tokens_reads_its_arrays_once_per_token() -> None:
    torch.manual_seed(3)
    model = TokenMixer().eval()
    x = torch.randn(4, 7, 8)
    exe = rramc.compile(model, "rram_b", calibration_data=x)  # a state-dependent device: the general column solver
    layers = estimate(exe.graph, exe.target)["layers"]
    assert layers["embed"]["vectors"] == 7 and layers["head"]["vectors"] == 1
    report_reads = exe.run(rramc.datasets.Dataset("tokens", "test", x, torch.zeros(4, dtype=torch.long), 3, (-4.0, 4.0)))
    reads = report_reads.costs["energy"]["layers"]["embed"]["reads"]
    assert reads == 7 * layers["embed"]["reads_per_vector"]  # per inference: every token, every read of its encoding


def test_core_aten_spellings_of_token_layers_and_pooling_with_indices() -> None:
    """``run_decompositions()`` spells a linear layer on tokens as view [B·T, F] → addmm → view back, and max
    pooling as max_pool2d_with_indices: both import, and a folded batch anywhere else is refused by name."""

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.b(torch.nn.functional.gelu(self.a(x))).flatten(1)

    torch.manual_seed(4)
    pooled = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 9, 3)).eval()
    for model, x in ((Tokens().eval(), torch.rand(4, 6, 8)), (pooled, torch.rand(4, 1, 8, 8))):
        program = torch.export.export(model, (x,)).run_decompositions()
        exe = rramc.compile(program, "ideal", calibration_data=x)
        with torch.no_grad():
            assert_close(exe(x), model(x))

    class FoldedSoftmax(nn.Module):
        def forward(self, x):  # type: ignore[no-untyped-def]
            return torch.softmax(x.reshape(-1, x.shape[-1]), -1).reshape(x.shape).flatten(1)

    with pytest.raises(rramc.errors.FrontendError, match="folds the batch into the tokens"):
        import_exported(torch.export.export(FoldedSoftmax(), (torch.rand(2, 3, 4),)))
