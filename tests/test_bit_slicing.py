"""Weight bit-slicing: a weight spread over several cell pairs of fewer levels, shifted and added after the ADCs."""

from __future__ import annotations

import pytest
import torch

import rramc
from rramc.errors import TargetError
from rramc.ir import CrossbarOp
from rramc.ir.parser import parse_graph
from rramc.samples import models


def _mapped(target: rramc.Target, weight: torch.Tensor) -> CrossbarOp:
    net = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        net.weight.copy_(weight)
    exe = rramc.compile(net, target, torch.rand(64, weight.shape[1]), pipeline="naive")
    (node,) = exe.graph.nodes_of(CrossbarOp)
    return node.op  # type: ignore[return-value]


def _effective_weight(op: CrossbarOp) -> torch.Tensor:
    """What the pairs hold, shifted and added, back in weight units (a linear device: conductance = current)."""
    difference = (op.g_pos - op.g_neg).double()  # [inputs, outputs·slices]
    weights = op.slice_weights()
    if weights is not None:
        difference = (difference.unflatten(1, (-1, op.slices)) * weights).sum(2)
    return (difference / op.conductance_per_weight.double()).T


def test_slices_hold_the_base_digits_of_the_quantised_weight() -> None:
    """ideal cells on 16 levels, 2 slices of 4 bits: every cell sits on a level, each pair holds one base-16 digit of
    round(|W|/peak·255) on the weight's sign's side, and the shifted sum is that 8-bit weight — computed here from the
    definition, digit by digit."""
    target = rramc.load_target("ideal").with_changes(conductance={"levels": 16}, crossbar={"weight_slices": 2, "slice_bits": 4})
    c = target.conductance
    weight = torch.randn(5, 12, generator=torch.Generator().manual_seed(0))
    op = _mapped(target, weight)
    assert op.g_pos.shape == (12, 10) and op.slices == 2 and op.slice_bits == 4
    step = (c.g_max - c.g_min) / 15
    for g in (op.g_pos, op.g_neg):
        level = (g.double() - c.g_min) / step
        assert torch.allclose(level, level.round(), atol=1e-4)
    peak = weight.abs().amax(1, keepdim=True)
    q = (weight.abs() / peak * 255).round()
    for j in range(5):
        for s in range(2):
            digit = torch.div(q[j], 16**s, rounding_mode="floor") % 16
            held = (op.g_pos[:, 2 * j + s] - op.g_neg[:, 2 * j + s]).double() / step
            torch.testing.assert_close(held, (digit * weight[j].sign()).double(), atol=1e-4, rtol=0)
    torch.testing.assert_close(_effective_weight(op), (q * weight.sign() / 255 * peak).double(), atol=1e-5, rtol=1e-5)


def test_more_slices_hold_the_weight_more_finely() -> None:
    """rram_a's 32 levels hold 5 bits per sign; two slices of 5 bits hold 10: the weight error shrinks about 32-fold."""
    weight = torch.randn(16, 40, generator=torch.Generator().manual_seed(1))
    base = rramc.load_target("ideal").with_changes(conductance={"levels": 32})
    errors = []
    for crossbar in ({}, {"weight_slices": 2}):
        op = _mapped(base.with_changes(crossbar=crossbar), weight)
        errors.append(float((_effective_weight(op) - weight.double()).pow(2).mean().sqrt()))
    assert 20 < errors[0] / errors[1] < 45, errors


def test_sliced_on_few_levels_computes_what_unsliced_on_many_does(clipped_mlp_outputs) -> None:  # type: ignore[no-untyped-def]
    """2 slices of 4 bits on 16-level cells quantise weights on the grid of one pair on 256 levels: with ideal
    converters the network's outputs agree to float32 rounding; with 8-bit ADCs (each slice rounded on its own),
    within a few ADC steps."""
    sliced, unsliced, scale = clipped_mlp_outputs(None)
    assert float((sliced - unsliced).abs().max()) <= 1e-4 * scale
    sliced, unsliced, scale = clipped_mlp_outputs(8)
    assert float((sliced - unsliced).abs().max()) <= 0.05 * scale


@pytest.fixture(scope="module")
def clipped_mlp_outputs(digits_train, digits_test):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = models.mlp(64, 32, 10, clipped=True)
    x = digits_test.images[:100]

    def outputs(adc_bits: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
        base = rramc.load_target("ideal").with_changes(crossbar={"dac_bits": 8, "adc_bits": adc_bits})
        sliced = base.with_changes(conductance={"levels": 16}, crossbar={"weight_slices": 2, "slice_bits": 4})
        unsliced = base.with_changes(conductance={"levels": 256})
        values = [rramc.compile(net, t, x[:2], calibration_data=digits_train, pipeline="naive").chip(0).interpreter().run(x)[0]
                  for t in (sliced, unsliced)]
        return values[0], values[1], float(values[1].abs().max())

    return outputs


def test_a_sliced_network_runs_trains_and_saves(digits_train, digits_test, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """End to end on rram_b (a conv network): more arrays and twice the ADC conversions per read; reconstruct trains
    through the slices (the chip scores what the trained model scores); the executable keeps its slices."""
    torch.manual_seed(0)
    cnn = models.SmallCNN(1, 8, 10)
    target = rramc.load_target("rram_b")
    sliced = target.with_changes(crossbar={"weight_slices": 2})
    plain = rramc.compile(cnn, target, digits_train.images[:2], calibration_data=digits_train, pipeline="naive")
    exe = rramc.compile(cnn, sliced, digits_train.images[:2], calibration_data=digits_train, training_data=digits_train,
                        pipeline="canonicalize,reconstruct{epochs=1,batch_size=64,samples=400},quantize,tile,calibrate,emit")
    ops = [n.op for n in exe.graph.nodes_of(CrossbarOp)]
    assert all(op.weight_slices == 2 and op.slice_bits == 5 for op in ops)  # 32 levels: 5 bits per slice
    report, plain_report = exe.run(digits_test), plain.run(digits_test)
    assert abs(report.chip_accuracy - report.float_accuracy) <= 0.03
    conversions = [r.costs["operations"]["per_inference"]["adc_conversions"] for r in (report, plain_report)]
    assert conversions[0] == pytest.approx(2 * conversions[1])
    path = tmp_path / "sliced.rramx"
    exe.save(path)
    again = rramc.load_executable(path)
    assert [n.op.weight_slices for n in again.graph.nodes_of(CrossbarOp)] == [2, 2, 2]
    assert again.run(digits_test).chip_accuracy == report.chip_accuracy
    text = exe.graph.to_text()  # complete: the parser reads it back
    assert "weight_slices=2" in text and "slice_bits=5" in text
    assert parse_graph(text).to_text() == text


@pytest.mark.parametrize("changes, words", [
    ({"crossbar": {"weight_slices": 2, "slice_bits": 4}}, ["crossbar.slice_bits", "do not fall on the cell's 32 levels", "slice_bits 1, 5"]),
    ({"crossbar": {"weight_slices": 2, "slice_bits": 6}}, ["crossbar.slice_bits", "6 bits need 64 levels", "32"]),
    ({"crossbar": {"weight_slices": 2, "weight_encoding": "offset"}}, ["crossbar.weight_encoding", "differential"]),
    ({"crossbar": {"weight_slices": 2}, "conductance": {"levels": None}}, ["crossbar.slice_bits", "continuous cells"]),
    ({"crossbar": {"weight_slices": 8, "slice_bits": 5}}, ["crossbar.weight_slices", "40-bit weights"]),
    ({"crossbar": {"weight_slices": 0}}, ["crossbar.weight_slices"]),
])
def test_slices_that_do_not_fit_the_cells_are_refused(changes: dict, words: list[str]) -> None:
    with pytest.raises(TargetError) as error:
        rramc.load_target("rram_a").with_changes(**changes)
    assert all(w in str(error.value) for w in words), str(error.value)
