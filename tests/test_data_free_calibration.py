"""Calibration without data: ranges from the weights and the declared input range, by interval arithmetic.

The bounds are checked against brute force in plain PyTorch (the corners of the input box), the
chips against their own currents: no DAC or ADC clips for inputs inside the declared range, the
worst case is reached, and on the ideal target the chip is the float network.
"""

from __future__ import annotations

import itertools
import shutil
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

import rramc
from rramc.cli import app
from rramc.errors import PassError, RramcWarning
from rramc.frontend import import_module
from rramc.hardware.calibration import calibrate_from_weights, crossbar_layer_bounds, float_layer_bounds
from rramc.hardware.layer import CrossbarLayer
from rramc.hardware.observers import ClipCounter, Observer
from rramc.ir import CrossbarOp, Graph, Input, ReLU
from rramc.pipeline import CompileContext, PassManager, parse_pipeline
from rramc.samples import models

DECLARED = (0.0, 1.0)


def from_weights(model: nn.Module, example: torch.Tensor, target: str | rramc.Target = "ideal",
                 input_range: tuple[float, float] | None = DECLARED) -> rramc.Executable:
    """``model`` compiled with no calibration data at all (its graph, so that no example is used as data)."""
    graph = import_module(model.eval(), example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RramcWarning)
        return rramc.compile(graph, target, input_range=input_range)


def tiled(model: nn.Module, example: torch.Tensor, target: rramc.Target, input_range: tuple[float, float]) -> Graph:
    """``model``'s graph mapped onto ``target`` up to calibration, its input declared in ``input_range``."""
    graph = import_module(model.eval(), example)
    for node in graph.inputs:
        node.op = Input(value_range=input_range)
    PassManager(parse_pipeline("canonicalize,quantize,tile")).run(graph, CompileContext(target))
    return graph


def inside(shape: tuple[int, ...], low: float, high: float, count: int = 64) -> torch.Tensor:
    """Inputs in [low, high]: the two constant ones, random corners of the box and uniform samples."""
    generator = torch.Generator().manual_seed(0)
    corners = torch.where(torch.rand(count, *shape, generator=generator) < 0.5, low, high)
    uniform = low + (high - low) * torch.rand(count, *shape, generator=generator)
    return torch.cat([torch.full((1, *shape), low), torch.full((1, *shape), high), corners, uniform])


class AdcHeadroom(Observer):
    """The largest ``|current| / ADC range`` each crossbar layer's reads reached."""

    def __init__(self) -> None:
        self.worst: dict[str, float] = {}

    def on_read(self, layer, read, currents):  # type: ignore[no-untyped-def]
        if layer.adc_range is None:  # an ideal ADC: nothing to clip
            return
        full_scale = layer.lowering.per_column(layer.adc_range).clamp_min(torch.finfo(currents.dtype).tiny)
        ratio = float((currents.abs() / full_scale).max())
        self.worst[layer.name] = max(self.worst.get(layer.name, 0.0), ratio)


def run_observed(exe: rramc.Executable, x: torch.Tensor) -> tuple[torch.Tensor, AdcHeadroom, ClipCounter]:
    headroom, clips = AdcHeadroom(), ClipCounter()
    with torch.no_grad():
        out = exe.chip(0).interpreter([headroom, clips]).run(x)[0]
    return out, headroom, clips


# --- the bounds ------------------------------------------------------------------------------------


def test_a_linear_layers_bounds_are_the_extremes_over_the_corners_of_the_input_box() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    (node,) = [n for n in import_module(layer, torch.rand(2, 5)) if n.op.kind == "linear"]
    for low, high in ((0.0, 1.0), (-1.0, 1.0), (0.25, 2.0), (-3.0, -0.5)):
        corners = torch.tensor(list(itertools.product((low, high), repeat=5)), dtype=torch.float64)
        with torch.no_grad():
            outputs = layer.double()(corners)
        layer.float()
        lo, hi = float_layer_bounds(node.op, (low, high))  # type: ignore[arg-type]
        assert lo == pytest.approx(float(outputs.min()), rel=1e-6) and hi == pytest.approx(float(outputs.max()), rel=1e-6)
    assert float_layer_bounds(node.op, (0.0, None)) == (None, None)  # type: ignore[arg-type]


def test_a_convolutions_zero_padding_is_part_of_its_bounds() -> None:
    """An all-negative kernel on inputs in [0.5, 1]: at the border the zero padding lifts the output above
    any interior value, and the bound covers it."""
    conv = nn.Conv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(-1.0)
        conv.bias.zero_()
    (node,) = [n for n in import_module(conv, torch.rand(2, 1, 6, 6)) if n.op.kind == "conv2d"]
    lo, hi = float_layer_bounds(node.op, (0.5, 1.0))  # type: ignore[arg-type]
    with torch.no_grad():
        lowest_input = conv(torch.full((1, 1, 6, 6), 0.5))
        highest_input = conv(torch.ones(1, 1, 6, 6))
    without_padding = -9 * 0.5  # the bound if padding were not an input of 0
    assert float(lowest_input.max()) == pytest.approx(-4 * 0.5)  # a corner pixel sees 4 of the 9 weights
    assert float(lowest_input.max()) > without_padding
    assert hi >= float(lowest_input.max()) and lo == pytest.approx(float(highest_input.min()))


def test_the_chips_bounds_are_the_float_layers_for_a_linear_device() -> None:
    torch.manual_seed(1)
    target = rramc.load_target("ideal")
    graph = tiled(nn.Linear(12, 7), torch.rand(2, 12), target, (-0.5, 1.0))
    bounds = calibrate_from_weights(graph, target)
    (node,) = graph.nodes_of(CrossbarOp)
    float_op = nn.Linear(12, 7)
    with torch.no_grad():
        float_op.weight.copy_(node.op.weight)
        float_op.bias.copy_(node.op.bias)
    (linear,) = [n for n in import_module(float_op, torch.rand(2, 12)) if n.op.kind == "linear"]
    assert bounds[node.name] == pytest.approx(float_layer_bounds(linear.op, (-0.5, 1.0)), rel=1e-6)  # type: ignore[arg-type]
    assert crossbar_layer_bounds(node.op, (-0.5, 1.0), target) == pytest.approx(bounds[node.name])  # type: ignore[arg-type]


def test_bounds_carry_through_relu_and_the_input_ranges_follow() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.Hardtanh(0.0, 0.5), nn.Linear(4, 3))
    target = rramc.load_target("ideal")
    graph = tiled(model, torch.rand(2, 6), target, (-1.0, 1.0))
    bounds = calibrate_from_weights(graph, target)
    first, second, third = graph.nodes_of(CrossbarOp)
    assert first.op.input_range == rramc.ir.InputRange(1.0, True, "declared")
    relu = graph.users(first.name)[0]
    assert bounds[relu.name] == (0.0, pytest.approx(bounds[first.name][1]))
    assert second.op.input_range == rramc.ir.InputRange(pytest.approx(bounds[first.name][1]), False, "static")
    assert third.op.input_range == rramc.ir.InputRange(0.5, False, "static")  # the clipped ReLU, not the weights, bounds it
    x = inside((6,), -1.0, 1.0)
    with torch.no_grad():
        hidden = torch.relu(model[0](x))
    assert float(hidden.max()) <= second.op.input_range.scale * (1 + 1e-6)


# --- the chips ---------------------------------------------------------------------------------------


NETWORKS = {
    "mlp": (lambda: models.mlp(16, 12, 8, 5), (16,)),
    "cnn": (lambda: models.SmallCNN(1, 8, 10), (1, 8, 8)),
    "residual": (lambda: models.ResidualCNN(1, 8, 10), (1, 8, 8)),
}


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("input_range", [(0.0, 1.0), None])
def test_on_the_ideal_target_the_data_free_chip_is_the_float_network(network: str, input_range) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    build, shape = NETWORKS[network]
    model = build().eval()
    exe = from_weights(model, torch.rand(2, *shape), "ideal", input_range)
    low, high = input_range or (-1.0, 1.0)
    x = inside(shape, low, high)
    with torch.no_grad():
        expected = model(x)
    out, _, clips = run_observed(exe, x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert clips.clipped() == {}


@pytest.mark.parametrize("target", ["rram_a", "rram_b"])
@pytest.mark.parametrize("network", NETWORKS)
def test_no_dac_and_no_adc_clips_for_inputs_inside_the_declared_range(network: str, target: str) -> None:
    torch.manual_seed(0)
    build, shape = NETWORKS[network]
    spec = rramc.load_target(target).with_changes(crossbar={"rows": 32, "cols": 16})  # several tiles per layer
    for low, high in ((0.0, 1.0), (-1.0, 1.0), (-0.25, 1.0)):
        exe = from_weights(build(), torch.rand(2, *shape), spec, (low, high))
        _, headroom, clips = run_observed(exe, inside(shape, low, high))
        assert clips.clipped() == {}, (low, high)
        assert len(headroom.worst) == len(exe.graph.nodes_of(CrossbarOp))
        assert max(headroom.worst.values()) <= 1.0 + 1e-5, (low, high, headroom.worst)


def test_resistive_wires_stay_inside_the_ranges_of_their_ideal() -> None:
    torch.manual_seed(0)
    spec = rramc.load_target("rram_a").with_changes(crossbar={"rows": 32, "cols": 16},
                                                    wires={"model": "resistive", "word_line_resistance": 5.0,
                                                           "bit_line_resistance": 5.0})
    exe = from_weights(models.mlp(16, 12, 8, 5), torch.rand(2, 16), spec, (-1.0, 1.0))
    _, headroom, clips = run_observed(exe, inside((16,), -1.0, 1.0))
    assert clips.clipped() == {} and max(headroom.worst.values()) <= 1.0


def test_the_worst_case_pattern_reaches_each_tiles_adc_range() -> None:
    """For every column, the input that drives exactly the word lines of its positive (negative) cells at full
    scale carries the largest current the ADC was set for: the bound is not loose."""
    torch.manual_seed(3)
    target = rramc.load_target("rram_a").with_changes(crossbar={"rows": 8, "cols": 4})
    exe = from_weights(nn.Linear(20, 6), torch.rand(2, 20), target, (0.0, 1.0))
    (node,) = exe.graph.nodes_of(CrossbarOp)
    op = node.op
    layer = CrossbarLayer.program(node, target.nominal(), dtype=torch.float64)
    difference = target.device.current(torch.tensor(1.0, dtype=torch.float64), op.g_pos.double()) \
        - target.device.current(torch.tensor(1.0, dtype=torch.float64), op.g_neg.double())
    patterns = torch.cat([(difference > 0).T, (difference < 0).T]).double()  # [2·columns, rows]
    ((_, currents),) = layer.phases(patterns, op.input_range.scale)  # [row blocks, patterns, columns]
    reached = torch.tensor([[float(currents[b, :, c0:c1].abs().max()) for c0, c1 in layer.grid.col_blocks]
                            for b in range(len(layer.grid.row_blocks))], dtype=torch.float64)
    assert op.adc_range.shape == (3, 3)
    torch.testing.assert_close(reached, op.adc_range.double(), rtol=1e-5, atol=0.0)


def test_a_device_that_rises_faster_than_linear_at_low_voltage_is_bounded_by_the_chip_not_the_float_layer() -> None:
    """With I ∝ √V, a phase that reaches a quarter of full scale carries half the full-scale current: the
    hidden layer's outputs exceed the float layer's bounds, and the next layer's range still holds them."""
    torch.manual_seed(4)
    target = rramc.load_target("ideal").with_changes(device={"model": "power", "exponent": 0.5},
                                                      crossbar={"dac_bits": 8, "adc_bits": 8})
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    low, high = -0.25, 1.0
    exe = from_weights(model, torch.rand(2, 4), target, (low, high))
    first = exe.graph.nodes_of(CrossbarOp)[0]
    corners = torch.tensor(list(itertools.product((low, high), repeat=4)))
    with torch.no_grad():
        hidden = exe.chip(0).interpreter().run(corners, keep=[first.name])[1][first.name]
    (linear,) = [n for n in import_module(model[0], torch.rand(2, 4)) if n.op.kind == "linear"]
    assert float(hidden.max()) > float_layer_bounds(linear.op, (low, high))[1]  # type: ignore[arg-type, operator]
    _, headroom, clips = run_observed(exe, torch.cat([corners, inside((4,), low, high)]))
    assert clips.clipped() == {} and max(headroom.worst.values()) <= 1.0 + 1e-5


# --- what the user is told -----------------------------------------------------------------------------


def test_it_warns_once_records_it_and_every_run_report_repeats_it(digits_test) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    graph = import_module(models.mlp(64, 16, 10).eval(), torch.rand(2, 1, 8, 8))
    with pytest.warns(RramcWarning) as caught:
        exe = rramc.compile(graph, "rram_a")
    (message,) = [str(w.message) for w in caught]
    assert "calibrated from the weights" in message and "[-1, 1]" in message and "the default" in message
    assert "lower than when calibrated on data" in message and "\n" not in message
    assert exe.metadata["calibration"] == "weights" and exe.metadata["calibration.input_range"] == [-1.0, 1.0]
    assert exe.graph.inputs[0].op.value_range == (-1.0, 1.0)  # the assumption is in the executable's IR
    with pytest.warns(RramcWarning, match=r"inputs in \[0, 1\] \(declared\)"):
        declared = rramc.compile(graph, "rram_a", input_range=(0.0, 1.0))
    assert declared.metadata["calibration.input_range"] == [0.0, 1.0]
    report = declared.run(digits_test.take(20))
    assert any(w.startswith("when compiled: calibrated from the weights") for w in report.warnings)


def test_what_needs_data_is_refused_with_a_located_message(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = import_module(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval(), torch.rand(2, 4))
    with pytest.raises(PassError, match="gain=least_squares fits every neuron .* there are none"):
        rramc.compile(graph, "ideal", pipeline="least_squares")
    monkeypatch.setattr(ReLU, "bounds", lambda self, operands: (None, None))  # an op that does not say what it does to a range
    with pytest.raises(PassError, match=r"cannot calibrate without data: %\S+ \(.*\): the range of its inputs is unknown, "
                                        r"since %\S+ \(relu, from .*\) does not say what it does to a range; give calibration data"):
        rramc.compile(graph, "ideal")


# --- the design card's command, literally --------------------------------------------------------------


def test_the_design_cards_command_compiles_a_torch_export_pt_without_data_and_runs_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``rramc compile model.pt --target rram_a.yaml``: a torch.export archive under a .pt name, a target by path,
    no data set anywhere; then ``rramc run`` on a data file written here."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = models.mlp(64, 24, 10).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export.save warns of a name that does not end in .pt2
        torch.export.save(torch.export.export(model, (torch.rand(2, 1, 8, 8),)), "model.pt")
    shutil.copy(resources.files("rramc.targets") / "rram_a.yaml", "rram_a.yaml")
    runner = CliRunner()
    compiled = runner.invoke(app, ["compile", "model.pt", "--target", "rram_a.yaml"])
    assert compiled.exit_code == 0, compiled.output
    assert "wrote model.rramx" in compiled.stdout and "calibrated from the weights" in compiled.stderr
    assert "Traceback" not in compiled.output and "Instead got" not in compiled.output  # no torch noise about the name
    exe = rramc.load_executable("model.rramx")
    assert exe.metadata["calibration"] == "weights" and exe.target.name == "rram_a"
    images = np.random.default_rng(0).random((40, 8, 8), dtype=np.float32)
    np.savez("mine.npz", images=images, labels=np.arange(40) % 10)
    ran = runner.invoke(app, ["run", "model.rramx", "--dataset", "mine.npz", "--json", "report.json"])
    assert ran.exit_code == 0, ran.output
    report = rramc.load_executable("model.rramx").run(rramc.datasets.user_data.load_data_file("mine.npz"))
    assert "mine.npz (all, 40 samples)" in ran.stdout and report.samples == 40 and report.clipped == {}
    with torch.no_grad():
        expected = model(torch.from_numpy(images)[:, None]).argmax(1)
    assert report.float_accuracy == pytest.approx(float((expected == torch.arange(40) % 10).float().mean()))


def test_the_command_line_declares_the_input_range_for_calibration_without_data(tmp_path: Path) -> None:
    from rramc.runtime.executable import Executable

    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    path = tmp_path / "model.pt"
    torch.export.save(torch.export.export(model, (torch.rand(2, 64),)), str(path))
    runner = CliRunner()
    result = runner.invoke(app, ["compile", str(path), "-t", "rram_a", "--input-range", "0,1", "-o", str(tmp_path / "a.rramx")])
    assert result.exit_code == 0, result.output
    (graph_input,) = Executable.load(tmp_path / "a.rramx").graph.inputs
    assert graph_input.op.value_range == (0.0, 1.0)  # type: ignore[attr-defined]
    assert "(declared)" in result.output and "worst case" in result.output
    bad = runner.invoke(app, ["compile", str(path), "-t", "rram_a", "--input-range", "1,0", "-o", str(tmp_path / "b.rramx")])
    assert bad.exit_code == 1 and "--input-range '1,0': expected finite LOW < HIGH" in bad.output
    assert not (tmp_path / "b.rramx").exists()
