"""Read currents of a target, its declared current limits, and the invariance of its outputs to a
common scale of the conductances (rramc/hardware/currents.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

import rramc
from rramc.datasets import Dataset
from rramc.errors import TargetError
from rramc.hardware.currents import format_current, read_currents, scale_conductances, with_read_current
from rramc.hardware.target import load_target
from rramc.sweep import grid_targets

NO_LIMITS = {"conductance": {"compliance": None}, "crossbar": {"sense_range": None}}


def test_builtin_targets_read_currents() -> None:
    a = read_currents(load_target("rram_a"))
    b = 2 * math.acosh(3.75)  # k = 7.5 at 1 V
    assert a.cell_max == pytest.approx(2e-6 * math.sinh(b) / b, rel=1e-12)  # G·sinh(B)/B at 1 V: 13.6 µA
    assert (round(a.cell_min * 1e6, 3), round(a.cell_max * 1e6, 1), round(a.column_max * 1e3, 2)) == (0.136, 13.6, 1.74)
    assert a.on_off == pytest.approx(100.0) and a.max_at == "g_max" and a.column_max == 128 * a.cell_max
    assert "cells 0.136–13.6 µA (on/off 100), column ≤ 1.74 mA (128 rows at g_max)" in a.describe()
    state = read_currents(load_target("rram_b"))  # k = 10 at g_min, 5 at g_max
    assert state.cell_max == pytest.approx(2e-6 * math.sinh(2 * math.acosh(2.5)) / (2 * math.acosh(2.5)), rel=1e-12)
    assert state.cell_min == pytest.approx(2e-8 * math.sinh(2 * math.acosh(5.0)) / (2 * math.acosh(5.0)), rel=1e-12)
    assert read_currents(load_target("ideal")).column_max == pytest.approx(128 * 2e-6, rel=1e-12)
    for name in rramc.builtin_targets():  # every builtin declares limits, and keeps them with some margin
        target = load_target(name)
        r = read_currents(target)
        assert target.conductance.compliance is not None and r.cell_max <= 0.7 * target.conductance.compliance
        assert target.crossbar.sense_range is not None and r.column_max <= 0.7 * target.crossbar.sense_range


def test_format_current() -> None:
    assert [format_current(i) for i in (1.7377e-3, 1.3576e-5, 1.36e-7, 2.5e-3, 1.0, 3e-13)] == [
        "1.74 mA", "13.6 µA", "136 nA", "2.5 mA", "1 A", "0.3 pA"]


def write_target(tmp_path: Path, **changes: dict) -> Path:  # type: ignore[type-arg]
    data = load_target("rram_a").to_mapping()
    for section, fields in changes.items():
        data[section] = {**data[section], **fields}
    path = tmp_path / "chip.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_a_cell_above_its_compliance_is_refused_on_load(tmp_path: Path) -> None:
    path = write_target(tmp_path, conductance={"g_min": 1e-6, "g_max": 1e-4})  # rramc 0.2's window: 679 µA per cell
    with pytest.raises(TargetError) as info:
        load_target(path)
    message = str(info.value)
    for part in (str(path), "field 'conductance.compliance'", "679 µA", "read voltage 1 V", "compliance 20 µA",
                 "lower g_max", "the read voltage"):
        assert part in message, (part, message)


def test_a_column_above_its_sense_range_is_refused_on_load(tmp_path: Path) -> None:
    path = write_target(tmp_path, crossbar={"rows": 256})
    with pytest.raises(TargetError) as info:
        load_target(path)
    message = str(info.value)
    for part in (str(path), "field 'crossbar.sense_range'", "256 cells", "3.48 mA", "13.6 µA per cell", "sense range 2.5 mA",
                 "fewer rows (at most 184)", "lower g_max", "lower read voltage"):
        assert part in message, (part, message)


def test_limits_are_optional_and_validated(tmp_path: Path) -> None:
    loaded = load_target(write_target(tmp_path, conductance={"g_max": 1e-4, "compliance": None}, crossbar={"sense_range": None}))
    assert loaded.conductance.compliance is None and read_currents(loaded).cell_max > 6e-4  # not checked
    with pytest.raises(TargetError, match=r"field 'conductance.compliance': got 0.0; expected a number > 0 .*\[A\]"):
        load_target(write_target(tmp_path, conductance={"compliance": 0.0}))
    with pytest.raises(TargetError, match=r"field 'crossbar.sense_range': got 'lots'"):
        load_target(write_target(tmp_path, crossbar={"sense_range": "lots"}))


def test_with_changes_and_sweeps_revalidate_the_limits() -> None:
    base = load_target("rram_a")
    with pytest.raises(TargetError, match=r"field 'conductance.compliance': a cell at g_max = 2 µS carries 576 µA"):
        base.with_changes(device={"nonlinearity_k": 70})  # the same zero-bias window at k = 70: 288·G at 1 V
    with pytest.raises(TargetError, match=r"sweep grid point \{'crossbar.rows': 512\} is impossible: .*'crossbar.sense_range'"):
        grid_targets(base, {"crossbar.rows": [128, 512]})
    with pytest.raises(TargetError, match=r"sweep grid point \{'conductance.g_max': 1e-05\} is impossible: .*'conductance.compliance'"):
        grid_targets(base, {"conductance.g_max": [1e-5]})  # a window the sweep sets itself is not rescaled


def test_k_variants_keep_the_base_read_current() -> None:
    base = load_target("rram_a")
    points = dict((p["device.nonlinearity_k"], t) for p, t in grid_targets(base, {"device.nonlinearity_k": [2.5, 7.5, 20, 70]}))
    for k, target in points.items():
        assert target.device.nonlinearity_k == k  # type: ignore[attr-defined]
        assert read_currents(target).cell_max == pytest.approx(read_currents(base).cell_max, rel=1e-6)
        assert target.conductance.g_max / target.conductance.g_min == pytest.approx(100.0, rel=1e-12)
        assert (target.conductance.compliance, target.crossbar.sense_range) == (2e-5, 2.5e-3)
    assert points[7.5] == base
    b = 2 * math.acosh(35.0)
    assert points[70].conductance.g_max == pytest.approx(2e-6 * (math.sinh(3.993263) / 3.993263) / (math.sinh(b) / b), rel=1e-5)
    for v, target in ((p["crossbar.read_voltage"], t) for p, t in grid_targets(base, {"crossbar.read_voltage": [0.5, 1.5]})):
        assert target.crossbar.read_voltage == v
        assert read_currents(target).cell_max == pytest.approx(read_currents(base).cell_max, rel=1e-6)


def test_a_state_dependent_variant_scales_its_reference_states_too() -> None:
    base = load_target("rram_b")
    variant = with_read_current(base, device={"nonlinearity_k_lrs": 3.0})
    factor = variant.conductance.g_max / base.conductance.g_max
    assert factor > 1  # k = 3 at g_max carries less than k = 5: the window rises
    assert variant.device.g_hrs == pytest.approx(base.device.g_hrs * factor, rel=1e-12)  # type: ignore[attr-defined]
    assert variant.device.g_lrs == pytest.approx(base.device.g_lrs * factor, rel=1e-12)  # type: ignore[attr-defined]
    assert read_currents(variant).cell_max == pytest.approx(read_currents(base).cell_max, rel=1e-12)


@pytest.mark.parametrize("name", ["rram_a", "rram_b"])
def test_chip_outputs_do_not_depend_on_a_common_scale_of_the_window(name: str, trained_mlp: nn.Module,
                                                                   digits_train: Dataset, digits_test: Dataset) -> None:
    """Weights are mapped in the read-current domain and the ADC ranges calibrated: scaling every
    conductance by a constant (here down to 0.2 nS and up to rramc 0.2's 100 µS) changes nothing
    but float rounding. (A current within rounding of a DAC or ADC code boundary may land on the
    neighbouring code: rram_b at 0.01 moves one logit of 3000 by one code, 0.9 % of the largest.)"""
    base = load_target(name)
    calibration = digits_train.shuffled(0).take(256)
    x = digits_test.images[:300]
    expected = rramc.compile(trained_mlp, base, calibration.images[:2], calibration_data=calibration)(x)
    for factor in (0.01, 0.37, 50.0):
        scaled = scale_conductances(base, factor, **NO_LIMITS)
        assert scaled.conductance.g_max == pytest.approx(2e-6 * factor, rel=1e-12)
        assert read_currents(scaled).cell_max == pytest.approx(read_currents(base).cell_max * factor, rel=1e-12)
        got = rramc.compile(trained_mlp, scaled, calibration.images[:2], calibration_data=calibration)(x)
        error, scale = (got - expected).abs(), float(expected.abs().max())
        assert float((error <= 1e-4 * scale).double().mean()) >= 0.999, factor
        assert float(error.max()) <= 0.02 * scale, factor
        assert torch.equal(got.argmax(1), expected.argmax(1)), factor
