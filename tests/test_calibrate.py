"""calibrate: input ranges, full-scale gains and ADC ranges from sample data."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import rramc
from rramc.errors import PassError
from rramc.frontend import import_module
from rramc.ir import CrossbarOp, InputRange


def only_layer(exe):  # type: ignore[no-untyped-def]
    (node,) = exe.graph.nodes_of(CrossbarOp)
    return node


def test_input_range_static_from_clipped_relu_else_from_data() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.Hardtanh(0.0, 0.75), nn.Linear(4, 3))
    data = torch.rand(64, 6) * 3.0
    exe = rramc.compile(model, "ideal", data)
    first, second, third = exe.graph.nodes_of(CrossbarOp)
    # An undeclared network input is taken to be signed; its full scale comes from the data.
    assert first.op.input_range == InputRange(pytest.approx(float(data.max())), True, "calibrated")
    with torch.no_grad():
        hidden = torch.relu(model[0](data))
    # After a ReLU the inputs are unsigned (the graph says so), the unbounded full scale is the data's.
    assert second.op.input_range.scale == pytest.approx(float(hidden.max()), rel=1e-5)
    assert second.op.input_range.signed is False and second.op.input_range.origin == "calibrated"
    assert third.op.input_range == InputRange(0.75, False, "static")
    # A declared input range decides the first layer: unsigned, full scale at the range's bound.
    declared = rramc.compile(model, "ideal", data, input_range=(0.0, 3.0))
    first = declared.graph.nodes_of(CrossbarOp)[0]
    assert first.op.input_range == InputRange(3.0, False, "declared")
    assert declared.graph.inputs[0].op.value_range == (0.0, 3.0)


def test_signed_inputs_are_detected_and_applied_in_two_phases() -> None:
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    data = torch.randn(32, 8)
    exe = rramc.compile(model, "ideal", data)
    op = only_layer(exe).op
    assert op.input_range.signed is True and op.input_range.scale == pytest.approx(float(data.abs().max()))
    torch.testing.assert_close(exe(data), model(data), rtol=1e-5, atol=1e-5)


def test_the_sign_of_an_activation_the_graph_says_nothing_about_comes_from_the_data() -> None:
    """Between two linear layers the graph bounds nothing: negative samples make the second layer signed."""
    torch.manual_seed(0)
    data = torch.rand(64, 4)
    for sign, signed in ((1.0, False), (-1.0, True)):
        model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        with torch.no_grad():
            model[0].weight.copy_(sign * torch.rand(3, 4))
            model[0].bias.zero_()
        exe = rramc.compile(model, "ideal", data, input_range=(0, 1))
        first, second = exe.graph.nodes_of(CrossbarOp)
        assert first.op.input_range == InputRange(1.0, False, "declared")
        with torch.no_grad():
            hidden = model[0](data)
        assert second.op.input_range == InputRange(pytest.approx(float(hidden.abs().max()), rel=1e-5), signed, "calibrated")
        torch.testing.assert_close(exe(data), model(data), rtol=1e-4, atol=1e-5)


def test_full_scale_gain_makes_a_full_input_exact_and_a_half_input_sinh_shaped() -> None:
    """The conventional calibration: x = 1 gives W·x exactly; x = 1/2 gives W·x·g(V/2)/g(V)·2."""
    torch.manual_seed(0)
    model = nn.Linear(10, 4)
    target = rramc.load_target("rram_a").with_changes(conductance={"levels": None}, crossbar={"dac_bits": None, "adc_bits": None})
    exe = rramc.compile(model, target, torch.rand(16, 10))
    assert only_layer(exe).op.input_range.scale == pytest.approx(1.0, abs=0.1)
    scale = only_layer(exe).op.input_range.scale
    full = torch.full((1, 10), scale)
    torch.testing.assert_close(exe(full), model(full), rtol=1e-5, atol=1e-5)
    b = 2 * math.acosh(7.5 / 2)
    shrink = math.sinh(b * 0.5) / math.sinh(b)  # current at half voltage relative to full voltage
    half = full / 2
    expected = model.weight @ torch.full((10,), scale) * shrink + model.bias
    torch.testing.assert_close(exe(half)[0], expected, rtol=1e-4, atol=1e-5)


def test_adc_range_is_the_largest_tile_current_on_the_samples() -> None:
    torch.manual_seed(0)
    model = nn.Linear(40, 6)
    target = rramc.load_target("ideal").with_changes(crossbar={"adc_bits": 8, "rows": 16})
    data = torch.rand(50, 40)
    exe = rramc.compile(model, target, data, pipeline="canonicalize,quantize,tile{cols=4},calibrate,emit")
    op = only_layer(exe).op
    assert op.adc_range.shape == (3, 2)  # row blocks of 16,16,8 word lines × column blocks of 4,2 outputs
    voltages = data / op.input_range.scale * target.crossbar.read_voltage
    delta = op.g_pos - op.g_neg
    for i, (r0, r1) in enumerate(zip(op.row_splits, op.row_splits[1:])):
        for j, (c0, c1) in enumerate(zip(op.col_splits, op.col_splits[1:])):
            currents = voltages[:, r0:r1] @ delta[r0:r1, c0:c1]
            assert float(op.adc_range[i, j]) == pytest.approx(float(currents.abs().max()), rel=1e-5)
    lower = rramc.compile(model, target, data, pipeline="canonicalize,quantize,tile{cols=4},calibrate{adc_percentile=90},emit")
    assert bool((only_layer(lower).op.adc_range < op.adc_range).all())


def test_calibration_without_data_works_from_the_weights_but_empty_data_are_refused() -> None:
    """No data at all calibrates from the weights (tests/test_data_free_calibration.py); data without samples is an error."""
    graph = import_module(nn.Linear(3, 2), torch.rand(2, 3))
    with pytest.warns(rramc.RramcWarning, match="calibrated from the weights"):
        assert rramc.compile(graph, "ideal").metadata["calibration"] == "weights"
    with pytest.raises(PassError, match="pass 'calibrate' failed .passes run before it: canonicalize, quantize, tile.: "
                                       "the calibration data hold no samples"):
        rramc.compile(graph, "ideal", calibration_data=torch.rand(0, 3))
