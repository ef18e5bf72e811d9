"""What ``rramc inspect`` shows by default (a line per layer, digital ops grouped, totals) and how the run
report names layers (never two alike, never cut in the middle)."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from rich.console import Console
from typer.testing import CliRunner

import rramc
from rramc.cli import app
from rramc.ir import CrossbarOp, Input, Output
from rramc.runtime.report import LayerReport, Report, short_names


class _ResidualNet(nn.Module):
    """Convolutions, pooling, a residual add, and one linear layer wide enough for many arrays."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv1, self.conv2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.stem(x)))
        x = torch.relu(x + self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.flatten(1))


@pytest.fixture(scope="module")
def residual(tmp_path_factory: pytest.TempPathFactory) -> tuple[rramc.Executable, Path]:
    torch.manual_seed(0)
    exe = rramc.compile(_ResidualNet().eval(), "rram_a", calibration_data=torch.rand(64, 1, 8, 8), input_range=(0.0, 1.0))
    return exe, exe.save(tmp_path_factory.mktemp("inspect") / "residual.rramx")


def test_layer_summary_has_a_line_per_crossbar_layer_and_per_run_of_digital_ops(residual) -> None:  # type: ignore[no-untyped-def]
    exe, _ = residual
    summary = exe.layer_summary()
    layers = exe.graph.nodes_of(CrossbarOp)
    analog = [line for line in summary if line.analog]
    assert [line.name for line in analog] == [n.source for n in layers] == ["stem", "conv1", "conv2", "head"]
    spec = exe.target.crossbar
    for line, node in zip(analog, layers):
        tiles = node.op.tiles()
        cells = sum((r.stop - r.start) * 2 * (c.stop - c.start) for r, c in tiles)  # a differential pair: two bit lines
        assert line.kind == node.op.kind and line.matrix == node.op.matrix_shape
        assert line.tiles == line.arrays == len(tiles) and line.shares is None
        assert line.utilisation == pytest.approx(cells / (len(tiles) * spec.rows * spec.cols))
        assert (line.weight_encoding, line.input_encoding, line.converters) == ("differential", "amplitude", (8, 8))
    head = analog[-1]
    assert head.matrix == (128, 1000) and head.arrays == 16  # 1000 outputs, 64 differential pairs an array
    digital = [line for line in summary if not line.analog]
    ops = [n for n in exe.graph if not isinstance(n.op, (CrossbarOp, Input, Output))]
    assert sum(line.ops for line in digital) == len(ops) > len(digital)  # every digital op, runs of them on one line
    assert all(a.analog or b.analog for a, b in zip(summary, summary[1:]))  # a run ends only at a crossbar layer
    assert "add" in " ".join(line.kind for line in digital) and "max_pool2d" in digital[0].kind


def _inspect(*args: object) -> str:
    result = CliRunner().invoke(app, ["inspect", *map(str, args)], terminal_width=120)
    assert result.exit_code == 0, result.output
    return result.output


def test_inspect_shows_the_summary_and_lists_arrays_only_on_request(residual) -> None:  # type: ignore[no-untyped-def]
    exe, path = residual
    text = _inspect(path)
    assert "graph {" not in text and "Arrays (one per tile)" not in text
    assert "Layers" in text and "reference weights: 12-bit fixed point" in text
    rows = [line.split() for line in text.splitlines()]
    analog = [row for row in rows if "analog" in row]
    assert [row[0] for row in analog] == ["stem", "conv1", "conv2", "head"]
    assert ["head", "linear", "analog", "128×1000", "16"] == analog[-1][:5]
    assert any("digital" in row for row in rows)
    arrays = exe.array_count()
    assert arrays == 19 and re.search(rf"4 crossbar layers \(analog\) and \d+ digital ops; {arrays} arrays of 128×128", text)
    listed = _inspect(path, "--arrays")
    assert "Arrays (one per tile)" in listed
    assert len(listed.splitlines()) >= len(text.splitlines()) + arrays  # a line per array, only there


def test_a_layer_that_shares_arrays_programs_none(tmp_path: Path, linear_used_twice: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    exe = rramc.compile(linear_used_twice(), "rram_a", calibration_data=torch.rand(64, 16), input_range=(0.0, 1.0))
    first, again, _ = (line for line in exe.layer_summary() if line.analog)
    assert (first.arrays, again.arrays, again.shares, again.tiles) == (1, 0, "fc", 1)
    assert exe.array_count() == 2
    text = _inspect(exe.save(tmp_path / "twice.rramx"))
    assert "shares fc" in text and "3 crossbar layers (analog) and 2 digital ops; 2 arrays" in text


# --- the run report's layer names ----------------------------------------------------------------

PREFIX = "backbone.encoder.stages.stage_three.blocks"
NAMES = [f"{PREFIX}.layer1.0.conv1", f"{PREFIX}.layer1.0.conv2", f"{PREFIX}.layer1.1.conv1", "fc"]


def test_short_names_keep_the_distinguishing_tail() -> None:
    labels = short_names(NAMES, 16)
    assert labels["fc"] == "fc"  # fits: unchanged
    assert labels[NAMES[0]] == "…layer1.0.conv1" and labels[NAMES[1]] == "…layer1.0.conv2" and labels[NAMES[2]] == "…layer1.1.conv1"
    assert short_names(NAMES, 24)[NAMES[0]] == "…blocks.layer1.0.conv1"  # the longest tail that fits
    assert short_names(NAMES, 100) == {name: name for name in NAMES}
    # Two names alike in their tail: the tail that fits is not enough, a longer one tells them apart.
    twins = ["encoder.stage_one.block.attention.proj", "decoder.stage_one.block.attention.proj"]
    labels = short_names(twins, 20)
    assert labels[twins[0]] != labels[twins[1]]
    assert all(name.endswith(label.removeprefix("…")) for name, label in labels.items())
    # A name that is the tail of another is shown whole.
    assert short_names(["block.proj", "x.block.proj"], 5) == {"block.proj": "block.proj", "x.block.proj": "x.block.proj"}


def _report(names: list[str]) -> Report:
    layers = [LayerReport(name.replace(".", "_"), name, "xbar.conv2d", (576, 64), 5, 0.01 * i, 0.02 * i) for i, name in enumerate(names)]
    return Report(dataset="digits", split="test", samples=10, target="rram_a", seed=0, float_accuracy=0.9, chip_accuracy=0.8,
                  agreement=0.85, layers=layers, reference_weights="12-bit fixed point per output")


def _first_cells(text: str) -> list[str]:
    """The layer column of the error table, a cell folded over several lines joined again."""
    cells: list[str] = []
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cell, op = (part.strip() for part in line.split("│")[1:3])
        if op.startswith("xbar"):
            cells.append(cell)
        elif cells:
            cells[-1] += cell
    return cells


@pytest.mark.parametrize("width", [60, 80, 100, 200])
def test_the_run_report_never_shows_two_layers_alike(width: int) -> None:
    out = io.StringIO()
    _report(NAMES).render(Console(file=out, width=width, color_system=None))
    text = out.getvalue()
    assert "reference weights: 12-bit fixed point per output" in text
    shown = _first_cells(text)
    assert len(shown) == len(NAMES) == len(set(shown))  # one row each, all different
    for name, label in zip(NAMES, shown):
        assert label == name or (label.startswith("…") and name.endswith(label[1:]) and len(label) > len("…layer1.0.conv"))
    if width >= 100:  # a label fits its line (in narrower terminals it folds, whole)
        assert sum(line.startswith("│") for line in text.splitlines()) == len(NAMES)


def test_a_module_called_twice_is_told_apart_by_its_node_names() -> None:
    layers = [LayerReport("fc", "fc", "xbar.linear", (16, 16), 1, 0.0, 0.0), LayerReport("fc_1", "fc", "xbar.linear", (16, 16), 1, 0.0, 0.0)]
    out = io.StringIO()
    Report(dataset="d", split="test", samples=1, target="t", seed=0, float_accuracy=1, chip_accuracy=1, agreement=1,
           layers=layers).render(Console(file=out, width=100, color_system=None))
    assert _first_cells(out.getvalue()) == ["fc", "fc_1"]
