"""The cost model (``rramc/hardware/cost.py``, README "Cost model"): energy, latency and area per inference.

The cell energy is checked against a brute-force sum over every cell with the device's own I-V
in float64; the converters, digital periphery, latency and area against the README's formulas
worked by hand; and every figure against the direction it must move in when a unit cost, a
resolution or an array size changes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from typer.testing import CliRunner

import rramc
from rramc.cli import app
from rramc.datasets import Dataset
from rramc.hardware.cost import ChipCost, estimate
from rramc.hardware.input_encoding import Read
from rramc.hardware.lowering import Lowering
from rramc.hardware.observers import COST_OBSERVERS, Observer
from rramc.ir import CrossbarOp
from rramc.samples import models

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ISAAC = {"adc_energy_per_step": 6.51e-15, "adc_rate": 1.2e9, "adcs_per_array": 1, "dac_energy_per_bit": 3.91e-13,
         "digital_energy_per_op": 4.17e-14, "cell_area": 1.53e-9, "adc_area": 1.2e-3, "dac_area": 1.66e-7,
         "digital_area_per_array": 3.0e-5}


class Recorder(Observer):
    """Every read's layer, voltages, durations and window, copied (the observer must not be trusted to)."""

    def __init__(self) -> None:
        self.reads: list[tuple[Any, torch.Tensor, torch.Tensor | None, float | None]] = []

    def on_read(self, layer: Any, read: Read, currents: torch.Tensor) -> None:
        durations = None if read.durations is None else read.durations.detach().double().clone()
        self.reads.append((layer, read.voltages.detach().double().clone(), durations, read.seconds))


def brute_force_cell_energy(layer: Any, voltages: torch.Tensor, durations: torch.Tensor | None, seconds: float) -> float:
    """``t·Σ_vectors Σ_i Σ_j V_i·d_i·I(V_i, G_ij)`` over every physical cell, each one evaluated with the device."""
    g_pos, g_neg = layer.cells.g_pos.double(), layer.cells.g_neg.double()
    if layer.op.weight_encoding == "offset":  # one reference cell per word line and array, whatever its outputs
        g_neg = g_neg[:, [a for a, _ in layer.grid.col_blocks]]
    conv = Lowering.of(layer.op).conv

    def vectors(x: torch.Tensor) -> torch.Tensor:
        if conv is None:
            return x.reshape(x.shape[0], -1)
        kernel, stride, padding, dilation = conv
        return F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride).transpose(1, 2).reshape(-1, layer.op.matrix_shape[0])

    v = vectors(voltages)
    d = torch.ones_like(v) if durations is None else vectors(durations)
    total = 0.0
    for g in (g_pos, g_neg):
        current = layer.target.device.current(v[:, :, None], g[None])  # [vectors, word lines, cells]
        total += float((v[:, :, None] * d[:, :, None] * current).sum())
    return seconds * total


def small_target(name: str, **crossbar: Any) -> rramc.Target:
    """A builtin target on 16×16 arrays: a 24-input layer takes two row blocks, 20 outputs several arrays."""
    return rramc.load_target(name).with_changes(crossbar={"rows": 16, "cols": 16, **crossbar})


def linear_exe(target: rramc.Target, signed: bool = False) -> rramc.Executable:
    torch.manual_seed(0)
    model = nn.Linear(24, 20)
    calibration = torch.rand(64, 24) * (2 if signed else 1) - (1 if signed else 0)
    return rramc.compile(model, target, calibration, input_range=None if signed else (0, 1))


def measure(exe: rramc.Executable, x: torch.Tensor) -> tuple[dict[str, Any], Recorder]:
    cost, recorder = ChipCost(), Recorder()
    with torch.no_grad():
        exe.chip(0).interpreter([recorder, cost]).run(x)
    return cost.summary(len(x)), recorder


# --- cell energy against the device, cell by cell -------------------------------------------------


@pytest.mark.parametrize("name, encoding, signed", [("rram_a", "differential", True), ("rram_b", "differential", False),
                                                    ("rram_a", "offset", False), ("rram_b", "offset", True)])
def test_cell_energy_is_the_sum_over_every_cell_of_its_power_times_the_read(name: str, encoding: str, signed: bool) -> None:
    exe = linear_exe(small_target(name, weight_encoding=encoding), signed)
    x = torch.rand(16, 24) * 2 - 1
    summary, recorder = measure(exe, x)
    expected = sum(brute_force_cell_energy(layer, v, d, exe.target.crossbar.read_time) for layer, v, d, _ in recorder.reads)
    assert len(recorder.reads) == (2 if signed else 1)
    # rram_b's expansion holds each cell's current within 1.2e-4 of a full-scale one (1/64 of an 8-bit ADC step)
    assert summary["per_inference"]["cell_energy_J"] * len(x) == pytest.approx(expected, rel=1e-4)
    assert expected > 0
    # signed inputs read twice (each sign's phase): the estimate without data counts the same reads
    assert estimate(exe.graph, exe.target)["per_inference"]["latency_s"] == pytest.approx(summary["per_inference"]["latency_s"])
    assert summary["per_inference"]["latency_s"] == pytest.approx(len(recorder.reads) * 1e-7)


def test_cell_energy_of_a_convolution_counts_every_output_position() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(3, 4, 2)).eval()
    exe = rramc.compile(model, small_target("rram_b"), torch.rand(64, 2, 7, 7), input_range=(0, 1))
    x = torch.rand(8, 2, 7, 7)
    summary, recorder = measure(exe, x)
    expected = sum(brute_force_cell_energy(layer, v, d, exe.target.crossbar.read_time) for layer, v, d, _ in recorder.reads)
    assert summary["per_inference"]["cell_energy_J"] * len(x) == pytest.approx(expected, rel=1e-4)
    # a convolution's vectors are its output positions: 4×4 for the first layer, 3×3 for the second
    assert [row["reads"] for row in summary["layers"].values()] == [16, 9]


def test_a_read_with_pulse_durations_and_its_own_window_is_costed_for_them() -> None:
    exe = linear_exe(small_target("rram_a"))
    layer = next(iter(exe.chip(0).layers.values()))
    generator = torch.Generator().manual_seed(1)
    voltages = torch.rand(5, 24, generator=generator)
    durations = torch.rand(5, 24, generator=generator)
    read = Read(1.0, voltages, durations=durations, seconds=3e-7)
    cost = ChipCost()
    cost.on_read(layer, read, layer.solver.read(layer.state, read, None))
    row = cost.summary(5)["per_inference"]
    expected = brute_force_cell_energy(layer, voltages.double(), durations.double(), 3e-7)
    assert row["cell_energy_J"] * 5 == pytest.approx(expected, rel=1e-5)
    assert row["latency_s"] == pytest.approx(3e-7)  # the read's own window, longer than the ADCs need
    zero = Read(1.0, voltages, durations=torch.zeros_like(durations), seconds=3e-7)
    cost = ChipCost()
    cost.on_read(layer, zero, layer.solver.read(layer.state, zero, None))
    assert cost.summary(5)["per_inference"]["cell_energy_J"] == 0.0  # lines never driven carry no charge


def test_a_read_on_two_levels_is_driven_by_a_one_bit_dac() -> None:
    exe = linear_exe(small_target("rram_a"))
    layer = next(iter(exe.chip(0).layers.values()))
    bits = (torch.rand(3, 24, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    cost = ChipCost()
    for plane in range(4):  # a bit-serial input: one read per bit plane, at 0 V or the read voltage
        read = Read(2.0**plane, bits, levels=torch.tensor([0.0, 1.0]))
        cost.on_read(layer, read, layer.solver.read(layer.state, read, None))
    row = cost.summary(3)["per_inference"]
    assert row["dac_conversions"] == 4 * 24 * 3
    assert row["dac_energy_J"] == pytest.approx(4 * 24 * 3 * 3.91e-13)  # one step per conversion, not 2**8 - 1
    assert row["latency_s"] == pytest.approx(4 * 1e-7)  # the reads of a vector follow one another


def test_a_pulse_width_window_read_slot_by_slot_is_converted_once() -> None:
    """With wire resistance a 3-bit pulse-width window is read in 7 slots whose charge adds up before the ADC:
    each slot's cells cost energy, but the window takes one DAC setting and one conversion per column, and its
    latency is the 7 slots' time (they outlast the conversion), as with ideal wires, where it is one read."""
    costs = {}
    for wires in ({"model": "ideal"}, {"model": "resistive", "word_line_resistance": 1e-6, "bit_line_resistance": 1e-6}):
        target = small_target("rram_a", input_encoding="pulse_width", dac_bits=3).with_changes(wires=wires)
        summary, _ = measure(linear_exe(target), torch.rand(10, 24, generator=torch.Generator().manual_seed(3)))
        costs[wires["model"]] = summary["per_inference"]
    ideal, slots = costs["ideal"], costs["resistive"]
    assert (slots["reads"], ideal["reads"]) == (7, 1)
    for key in ("adc_conversions", "dac_conversions", "digital_ops"):
        assert slots[key] == ideal[key], key
    assert slots["latency_s"] == pytest.approx(ideal["latency_s"]) == pytest.approx(7 * 1e-7)
    assert slots["cell_energy_J"] == pytest.approx(ideal["cell_energy_J"], rel=1e-3)  # almost no resistance: the same charge


# --- the periphery, by hand ---------------------------------------------------------------------


def test_converters_digital_latency_and_area_follow_the_formulas_worked_by_hand() -> None:
    # 24 inputs × 20 outputs on 16×16 differential arrays: word lines in blocks of 16 and 8, outputs in
    # tiles of 8, 8 and 4 (8 pairs per array): 2 × 3 = 6 arrays. Unsigned inputs: one read per sample.
    exe = linear_exe(small_target("rram_a"))
    assert exe.target.cost == rramc.Target.from_mapping({**exe.target.to_mapping(), "cost": ISAAC}).cost  # the documented defaults
    summary, _ = measure(exe, torch.rand(10, 24))
    row = summary["per_inference"]
    dac = 24 * 3  # every word line of every array
    adc = 2 * 20  # every output of every row block
    assert (row["dac_conversions"], row["adc_conversions"], row["digital_ops"]) == (dac, adc, adc + 2 * 20)
    assert row["dac_energy_J"] == pytest.approx(dac * 3.91e-13 * 8)
    assert row["adc_energy_J"] == pytest.approx(adc * 6.51e-15 * 2**8)
    assert row["digital_energy_J"] == pytest.approx((adc + 40) * 4.17e-14)
    assert row["energy_J"] == pytest.approx(row["cell_energy_J"] + row["dac_energy_J"] + row["adc_energy_J"] + row["digital_energy_J"])
    assert row["latency_s"] == pytest.approx(max(1e-7, 8 / 1.2e9))
    assert row["arrays"] == 6
    assert row["area_mm2"] == pytest.approx(6 * (16 * 16 * 1.53e-9 + 1.2e-3 + 16 * 1.66e-7 + 3.0e-5))
    # without data: the same arrays, area and latency
    static = estimate(exe.graph, exe.target)["per_inference"]
    assert static["arrays"] == 6
    assert static["area_mm2"] == pytest.approx(row["area_mm2"]) and static["latency_s"] == pytest.approx(row["latency_s"])


def test_bit_sliced_weights_convert_every_slice_column() -> None:
    # 3 one-bit slices per weight: 60 conductance columns in tiles of 8 pairs (8 column blocks), 2 row blocks
    exe = linear_exe(small_target("rram_a", weight_slices=3, slice_bits=1))
    x = torch.rand(4, 24)
    summary, recorder = measure(exe, x)
    row = summary["per_inference"]
    assert (row["reads"], row["arrays"]) == (1, 16)
    assert (row["dac_conversions"], row["adc_conversions"], row["digital_ops"]) == (24 * 8, 2 * 60, 2 * 60 + 2 * 20)
    expected = sum(brute_force_cell_energy(layer, v, d, exe.target.crossbar.read_time) for layer, v, d, _ in recorder.reads)
    assert row["cell_energy_J"] * len(x) == pytest.approx(expected, rel=1e-4)


def test_totals_are_the_sums_of_the_layer_rows(digits_test: Dataset) -> None:
    torch.manual_seed(0)
    exe = rramc.compile(models.mlp(64, 48, 32, 10).eval(), "rram_a", digits_test.images[:64], input_range=(0, 1))
    energy = exe.run(digits_test.take(64)).costs["energy"]
    assert len(energy["layers"]) == 3
    for key, total in energy["per_inference"].items():
        assert total == pytest.approx(sum(row[key] for row in energy["layers"].values()), rel=1e-12), key
    assert energy["per_inference"]["energy_J"] > 0 and energy["notes"] == []
    assert "energy" in COST_OBSERVERS.names()


def test_ideal_converters_cost_nothing_and_say_so() -> None:
    exe = linear_exe(small_target("ideal"))
    summary, _ = measure(exe, torch.rand(4, 24))
    row = summary["per_inference"]
    assert row["dac_energy_J"] == row["adc_energy_J"] == 0.0 and row["cell_energy_J"] > 0
    assert row["area_mm2"] == pytest.approx(6 * (16 * 16 * 1.53e-9 + 3.0e-5))
    assert any("ideal ADCs" in note for note in summary["notes"])


# --- directions ---------------------------------------------------------------------------------


def with_cost(exe: rramc.Executable, **changes: Any) -> rramc.Executable:
    """The same compiled network on a target that differs in its costs (or its read time) only."""
    sections = {"cost": {k: v for k, v in changes.items() if k != "read_time"}}
    if "read_time" in changes:
        sections["crossbar"] = {"read_time": changes["read_time"]}
    return rramc.Executable(exe.graph, exe.target.with_changes(**sections))


def test_unit_costs_scale_their_own_part_only() -> None:
    exe = linear_exe(small_target("rram_a"))
    x = torch.rand(8, 24)
    base = measure(exe, x)[0]["per_inference"]
    doubled = measure(with_cost(exe, adc_energy_per_step=2 * 6.51e-15), x)[0]["per_inference"]
    assert doubled["adc_energy_J"] == pytest.approx(2 * base["adc_energy_J"])
    for key in ("cell_energy_J", "dac_energy_J", "digital_energy_J", "latency_s", "area_mm2"):
        assert doubled[key] == pytest.approx(base[key]), key
    bigger = measure(with_cost(exe, cell_area=3e-9, adc_area=2.4e-3), x)[0]["per_inference"]
    assert bigger["area_mm2"] == pytest.approx(base["area_mm2"] + 6 * (16 * 16 * 1.47e-9 + 1.2e-3))


def test_fewer_adc_bits_divide_the_adc_energy_by_two_per_bit() -> None:
    x = torch.rand(8, 24)
    eight = measure(linear_exe(small_target("rram_a")), x)[0]["per_inference"]
    six = measure(linear_exe(small_target("rram_a", adc_bits=6)), x)[0]["per_inference"]
    assert six["adc_energy_J"] == pytest.approx(eight["adc_energy_J"] / 4)
    four_bit_dac = measure(linear_exe(small_target("rram_a", dac_bits=4)), x)[0]["per_inference"]
    assert four_bit_dac["dac_energy_J"] == pytest.approx(eight["dac_energy_J"] * 4 / 8)


def test_a_longer_read_raises_cell_energy_and_latency_in_proportion() -> None:
    exe = linear_exe(small_target("rram_a"))
    x = torch.rand(8, 24)
    base = measure(exe, x)[0]["per_inference"]
    slow = measure(with_cost(exe, read_time=3e-7), x)[0]["per_inference"]
    assert slow["cell_energy_J"] == pytest.approx(3 * base["cell_energy_J"], rel=1e-6)
    assert slow["latency_s"] == pytest.approx(3 * base["latency_s"])
    assert slow["adc_energy_J"] == pytest.approx(base["adc_energy_J"])


def test_slow_adcs_set_the_pace_and_more_of_them_share_the_outputs() -> None:
    exe = linear_exe(small_target("rram_a"))  # tiles of at most 8 outputs
    x = torch.rand(8, 24)
    slow = measure(with_cost(exe, adc_rate=2e7), x)[0]["per_inference"]
    assert slow["latency_s"] == pytest.approx(8 / 2e7)  # 400 ns of conversions outlast the 100 ns read
    shared = measure(with_cost(exe, adc_rate=2e7, adcs_per_array=4), x)[0]["per_inference"]
    assert shared["latency_s"] == pytest.approx(2 / 2e7)
    assert shared["area_mm2"] == pytest.approx(slow["area_mm2"] + 6 * 3 * 1.2e-3)


def test_smaller_arrays_split_a_layer_into_more_arrays_and_conversions() -> None:
    # 64 word lines: one 128-row array, or two of 32 rows whose partial sums are each converted
    x = torch.rand(8, 64)
    torch.manual_seed(0)
    model = nn.Linear(64, 10)
    runs = {}
    for rows in (128, 32):
        target = rramc.load_target("rram_a").with_changes(crossbar={"rows": rows})
        exe = rramc.compile(model, target, torch.rand(64, 64), input_range=(0, 1))
        runs[rows] = measure(exe, x)[0]["per_inference"]
    assert (runs[128]["arrays"], runs[32]["arrays"]) == (1, 2)
    assert runs[32]["adc_conversions"] == 2 * runs[128]["adc_conversions"]
    assert runs[32]["adc_energy_J"] == pytest.approx(2 * runs[128]["adc_energy_J"])
    assert runs[32]["dac_energy_J"] == pytest.approx(runs[128]["dac_energy_J"])  # the same 64 word lines are driven
    assert runs[32]["latency_s"] == pytest.approx(runs[128]["latency_s"])  # row blocks read in parallel
    assert runs[128]["area_mm2"] == pytest.approx(128 * 128 * 1.53e-9 + 1.2e-3 + 128 * 1.66e-7 + 3e-5)
    # the README's worked example: this layer on rram_a
    readme = {"dac_energy_J": 200e-12, "adc_energy_J": 16.7e-12, "digital_energy_J": 1.25e-12, "latency_s": 100e-9, "area_mm2": 1.28e-3}
    for key, value in readme.items():  # as printed there, to 3 digits
        assert runs[128][key] == pytest.approx(value, rel=5e-3), key
    assert runs[32]["area_mm2"] == pytest.approx(2 * (32 * 128 * 1.53e-9 + 1.2e-3 + 32 * 1.66e-7 + 3e-5))
    assert runs[32]["area_mm2"] > runs[128]["area_mm2"]  # the second ADC outweighs the cells saved


def test_the_commented_cost_block_of_rram_a_holds_the_defaults() -> None:
    """The YAML shows users where the numbers come from: it must show the numbers the code uses."""
    text = (resources.files("rramc.targets") / "rram_a.yaml").read_text(encoding="utf-8")
    block = text.split("# cost:\n", 1)[1]
    shown = {m.group(1): float(m.group(2)) for m in re.finditer(r"^#   (\w+): (\S+)", block, re.MULTILINE)}
    assert shown == ISAAC
    assert dataclasses.asdict(rramc.load_target("rram_a").cost) == ISAAC


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cost, words", [
    ({"adc_energy_per_step": -1e-15}, ["field 'cost.adc_energy_per_step'", "-1e-15", ">= 0"]),
    ({"adc_power": 1e-3}, ["field 'cost'", "unknown field(s) adc_power", "adc_energy_per_step"]),
    ({"adc_rate": "fast"}, ["field 'cost.adc_rate'", "'fast'", "a number"]),
    ({"adcs_per_array": 1.5}, ["field 'cost.adcs_per_array'", "an integer"]),
    ({"dac_energy_per_bit": 0.39}, ["field 'cost.dac_energy_per_bit'", "<= 1e-06", "[J]"]),
    ({"cell_area": None}, ["field 'cost.cell_area'", "None"]),
])
def test_bad_costs_are_refused_with_the_field_named(cost: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(rramc.RramcError) as caught:
        rramc.load_target("rram_a").with_changes(cost=cost)
    missing = [w for w in words if w not in str(caught.value)]
    assert not missing, f"{missing} not in {caught.value}"


def test_a_cost_section_in_a_target_file_is_read_and_kept(tmp_path: Path) -> None:
    data = rramc.load_target("rram_a").to_mapping()
    data["cost"] = {"adc_energy_per_step": 1e-14}
    path = tmp_path / "chip.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    target = rramc.load_target(path)
    assert target.cost.adc_energy_per_step == 1e-14 and target.cost.adc_rate == 1.2e9
    assert rramc.Target.from_mapping(target.to_mapping(), "again") == target


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    path = tmp_path_factory.mktemp("cost") / "mlp.rramx"
    rramc.compile(model, "rram_a", torch.rand(64, 1, 8, 8), input_range=(0, 1)).save(path)
    return path


def cli(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.stdout)


def test_run_reports_the_costs_in_its_table_and_json(mlp_file: Path, tmp_path: Path) -> None:
    out = cli("run", mlp_file, "--limit", 20, "--json", tmp_path / "r.json")
    assert "Cost per inference" in out and "total" in out and " pJ" in out
    energy = json.loads((tmp_path / "r.json").read_text())["costs"]["energy"]
    assert set(energy["layers"]) == {"1", "3"}
    totals = energy["per_inference"]
    assert totals["energy_J"] > totals["cell_energy_J"] > 0 and totals["arrays"] == 2
    assert totals["latency_s"] == pytest.approx(2e-7)


def test_inspect_shows_area_and_latency_without_data(mlp_file: Path) -> None:
    out = cli("inspect", mlp_file, "--no-ir")
    area = 2 * (128 * 128 * 1.53e-9 + 1.2e-3 + 128 * 1.66e-7 + 3e-5)
    assert "Cost without data" in out
    assert f"area {area:.3g} mm² (2 arrays" in out and "latency 200 ns per inference" in out
    exe = rramc.load_executable(mlp_file)
    assert {n.source for n in exe.graph.nodes_of(CrossbarOp)} == set(estimate(exe.graph, exe.target)["layers"])
    assert math.isclose(estimate(exe.graph, exe.target)["per_inference"]["area_mm2"], area)
