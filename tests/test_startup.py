"""``rramc targets`` without torch: target loading, validation and description in Python floats.

``rramc targets`` (list, validate, ``--fields``) and ``--help`` must not import torch (its import
alone takes about a second). The target checks therefore compute their currents with
:meth:`DeviceModel.current_at`, which every built-in device model implements with ``math``; these
tests hold it equal to the torch :meth:`DeviceModel.current` the chip runs, and check in a fresh
interpreter that the commands leave torch unimported.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import yaml

from rramc._lazy import lazy_import
from rramc.hardware import devices
from rramc.hardware.currents import read_currents
from rramc.hardware.devices import DEVICE_MODELS, DeviceModel, PowerDevice, SinhDevice, StateDependentSinhDevice, TableDevice
from rramc.hardware.target import Target, builtin_targets, load_target

NO_LIMITS: dict[str, dict[str, Any]] = {"conductance": {"compliance": None}, "crossbar": {"sense_range": None}}


def _variant(name: str, **changes: dict[str, Any]) -> Target:
    """A builtin target changed, without its current limits (a steeper cell carries more)."""
    return load_target(name).with_changes(**{**changes, **{k: {**changes.get(k, {}), **v} for k, v in NO_LIMITS.items()}})


def _sinh_table() -> Target:
    """rram_a's sinh cell sampled on a grid (as tests/test_crossbar_physics.py builds it)."""
    b = 2 * math.acosh(3.75)
    voltages = [-1.0 + 2.0 * i / 20 for i in range(21)]
    states = [2e-8 + (2e-6 - 2e-8) * j / 5 for j in range(5)] + [2e-6]
    currents = [[g * math.sinh(b * v) / b for g in states] for v in voltages]
    data = load_target("rram_a").to_mapping()
    data["device"] = {"model": "table", "voltages": voltages, "states": states, "currents": currents}
    return Target.from_mapping(data, "sinh table")


def _shaped_table() -> Target:
    """Three states of different I-V shapes, from 0 V only, on uneven grids (as tests/test_expansion.py builds it)."""
    volts = [0.0, 0.2, 0.45, 0.7, 1.0, 1.2]
    states = [1e-8, 1e-7, 2e-6]
    currents = [[g * (v + a * v**3) for g, a in zip(states, (0.9, 0.5, 0.1))] for v in volts]
    return Target.from_mapping({"name": "t", "device": {"model": "table", "voltages": volts, "states": states, "currents": currents},
                                "conductance": {"g_min": 2e-8, "g_max": 2e-6}, "crossbar": {"rows": 8, "cols": 8, "read_voltage": 1.0}})


TARGETS: dict[str, Any] = {
    **{name: (lambda name=name: load_target(name)) for name in ("ideal", "rram_a", "rram_b")},
    "k 2.5": lambda: _variant("rram_a", device={"nonlinearity_k": 2.5}),
    "k 20": lambda: _variant("rram_a", device={"nonlinearity_k": 20.0}),
    "k 70": lambda: _variant("rram_a", device={"nonlinearity_k": 70.0}),
    "k at 0.25 V": lambda: _variant("rram_a", device={"nonlinearity_k": 7.5, "k_voltage": 0.25}),
    "b 0": lambda: _variant("rram_a", device={"b": 0.0}),
    "b 3, read at 0.5 V": lambda: _variant("rram_a", device={"b": 3.0}, crossbar={"read_voltage": 0.5}),
    "read at 2 V": lambda: _variant("rram_a", crossbar={"read_voltage": 2.0}),
    "power 0.5": lambda: _variant("rram_a", device={"model": "power", "exponent": 0.5}),
    "power 1.5": lambda: _variant("rram_a", device={"model": "power", "exponent": 1.5}),
    "power 3, v_ref 0.3": lambda: _variant("rram_a", device={"model": "power", "exponent": 3.0, "v_ref": 0.3}),
    "sinh_state 20/3": lambda: _variant("rram_b", device={"nonlinearity_k_hrs": 20.0, "nonlinearity_k_lrs": 3.0}),
    "sinh_state inside the window": lambda: _variant("rram_b", device={"g_hrs": 1e-7, "g_lrs": 1e-6}),
    "table (sinh)": _sinh_table,
    "table (shaped)": _shaped_table,
}


def _grid(target: Target) -> tuple[list[float], list[float]]:
    """Voltages (both signs, 0, beyond the read voltage) × conductances (the window's ends, inside and beyond it)."""
    c, vread = target.conductance, target.crossbar.read_voltage
    voltages = [f * vread for f in (-1.3, -1.0, -0.5, -1e-3, 0.0, 1e-5, 0.2, 0.5, 0.77, 1.0, 1.3)]
    conductances = [c.g_min, c.g_max, c.g_min / 3, c.g_max * 1.7, math.sqrt(c.g_min * c.g_max), (c.g_min + c.g_max) / 2,
                    c.g_min + 0.123 * (c.g_max - c.g_min), c.g_min + 0.987 * (c.g_max - c.g_min)]
    return voltages, conductances


def _torch_currents(device: DeviceModel, voltages: list[float], conductances: list[float], dtype: torch.dtype) -> list[list[float]]:
    """``device.current`` on the whole grid at once (vectorised, as the chip evaluates cells)."""
    v = torch.tensor(voltages, dtype=dtype)[:, None].expand(-1, len(conductances))
    g = torch.tensor(conductances, dtype=dtype)[None, :].expand(len(voltages), -1)
    with torch.no_grad():
        return device.current(v.contiguous(), g.contiguous()).tolist()


def test_every_builtin_target_and_device_model_is_covered() -> None:
    assert set(builtin_targets()) <= set(TARGETS)
    models = {type(TARGETS[name]().device).model for name in TARGETS}
    assert models == set(DEVICE_MODELS.names())


@pytest.mark.parametrize("name", list(TARGETS))
def test_the_float_current_is_the_torch_current(name: str) -> None:
    device = TARGETS[name]().device
    assert type(device).current_at is not DeviceModel.current_at  # a float path of its own, not the torch fallback
    voltages, conductances = _grid(TARGETS[name]())
    expected = _torch_currents(device, voltages, conductances, torch.float64)
    scale = max(abs(i) for row in expected for i in row)
    for v, row in zip(voltages, expected):
        for g, want in zip(conductances, row):
            got = device.current_at(v, g)
            assert isinstance(got, float)
            assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-15 * scale), (name, v, g, got, want)
    # in float32 (the chip's precision) too, up to float32's rounding
    expected = _torch_currents(device, voltages, conductances, torch.float32)
    for v, row in zip(voltages, expected):
        for g, want in zip(conductances, row):
            assert math.isclose(device.current_at(v, g, "float32"), want, rel_tol=1e-5, abs_tol=1e-6 * scale), (name, v, g)


def test_a_table_interpolates_exactly_as_torch_does() -> None:
    """Bit for bit at the grid's nodes, between them and beyond them (the same operations in the same order)."""
    for target in (_sinh_table(), _shaped_table()):
        device = target.device
        assert isinstance(device, TableDevice)
        voltages = sorted({*device.voltages, *(0.5 * (a + b) for a, b in zip(device.voltages, device.voltages[1:])),
                           device.voltages[0] - 0.1, device.voltages[-1] + 0.1, 0.3333})
        conductances = sorted({*device.states, *(0.3 * a + 0.7 * b for a, b in zip(device.states, device.states[1:])),
                               device.states[0] / 2, device.states[-1] * 2})
        expected = _torch_currents(device, voltages, conductances, torch.float64)
        assert [[device.current_at(v, g) for g in conductances] for v in voltages] == expected


@pytest.mark.parametrize(("device", "g"), [
    *((SinhDevice(b=b), g) for b in (1.0, 30.0, 60.0, 85.0, 88.0, 90.0, 95.0, 100.0, 120.0) for g in (0.0, 2e-8, 2e-6)),
    *((PowerDevice(exponent=10.0, v_ref=v_ref), 2e-6) for v_ref in (1e-30, 1e-6, 1e-3, 1.0)),
    *((StateDependentSinhDevice(nonlinearity_k_hrs=k, nonlinearity_k_lrs=3.0, k_voltage=0.05, g_hrs=2e-8, g_lrs=2e-6), g)
      for k in (1e3, 1e4) for g in (2e-8, 2e-6)),
])
def test_float32_overflows_where_torch_does(device: DeviceModel, g: float) -> None:
    """The target's float32 check: ``sinh(B·V)`` may overflow float32 while the current itself would fit."""
    want = _torch_currents(device, [1.0] * 64, [g], torch.float32)[0][0]  # 64 cells: torch's vectorised kernels
    got = device.current_at(1.0, g, "float32")
    assert math.isfinite(got) == math.isfinite(want), (device, g, got, want)
    if math.isfinite(want):
        assert math.isclose(got, want, rel_tol=1e-4), (device, g, got, want)  # float32 rounding, through B(G) and sinh
    assert math.isfinite(device.current_at(1.0, g)) or not math.isfinite(got)  # float64 overflows no sooner


@dataclass(frozen=True)
class CubicDevice(DeviceModel):
    """A plugin's model: a torch current only."""

    model: ClassVar[str] = "cubic_for_startup_test"
    separable: ClassVar[bool] = True

    def current(self, v: torch.Tensor, g: torch.Tensor | float) -> torch.Tensor:
        return g * (v + v**3)


def test_a_plugin_model_without_a_float_path_is_validated_through_torch() -> None:
    device = CubicDevice()
    assert device.current_at(0.5, 2e-6) == pytest.approx(2e-6 * 0.625, rel=1e-15)
    assert math.isinf(CubicDevice().current_at(1e13, 1.0, "float32")) and math.isfinite(CubicDevice().current_at(1e13, 1.0))
    with pytest.raises(ValueError, match="precision"):
        device.current_at(1.0, 1.0, "float16")
    DEVICE_MODELS.register(CubicDevice.model, CubicDevice)
    try:
        target = _variant("rram_a", device={"model": CubicDevice.model})
        assert read_currents(target).cell_max == pytest.approx(2e-6 * 2.0, rel=1e-15)
    finally:
        DEVICE_MODELS.unregister(CubicDevice.model)


def test_a_lazy_module_gives_way_to_the_module_on_first_use() -> None:
    """rramc._lazy's stand-ins: once a model computes, its module's ``torch`` is torch itself, so
    the simulation's hot paths pay nothing for the laziness."""
    namespace: dict[str, Any] = {}
    namespace["colorsys"] = stand_in = lazy_import("colorsys", namespace)
    assert "imported on first use" in repr(stand_in)
    assert stand_in.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert namespace["colorsys"] is sys.modules["colorsys"]
    assert stand_in.hls_to_rgb(0.0, 0.5, 0.0) == (0.5, 0.5, 0.5)  # a stand-in kept elsewhere still works
    SinhDevice(b=1.0).current(torch.ones(3), 1e-6)
    assert devices.torch is torch


# --- the command line leaves torch unimported ----------------------------------------------------------

WITHOUT_TORCH = textwrap.dedent("""
    import sys
    from typer.testing import CliRunner
    from rramc.cli import app

    result = CliRunner().invoke(app, sys.argv[1:], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 0 and result.exception is None, (result.exit_code, result.exception, result.output)
    print(result.output)
    assert "torch" not in sys.modules, "rramc " + " ".join(sys.argv[1:]) + " imported torch"
""")


def _target_files(folder: Path) -> dict[str, Path]:
    """rram_a with resistive wires, and a table device read from a CSV next to its YAML file."""
    rram_a = yaml.safe_load((resources.files("rramc.targets") / "rram_a.yaml").read_text(encoding="utf-8"))
    wired = {**rram_a, "name": "wired", "wires": {"model": "resistive", "word_line_resistance": 1.0, "bit_line_resistance": 2.0}}
    (folder / "wired.yaml").write_text(yaml.safe_dump(wired, allow_unicode=True), encoding="utf-8")
    (folder / "measured_iv.csv").write_text("voltage,1e-8,2e-6\n0,0,0\n0.5,4e-9,8e-7\n1.0,1e-8,2e-6\n", encoding="utf-8")
    measured = {**rram_a, "name": "measured", "device": {"model": "table", "file": "measured_iv.csv"}}
    (folder / "measured.yaml").write_text(yaml.safe_dump(measured, allow_unicode=True), encoding="utf-8")
    return {"wired": folder / "wired.yaml", "measured": folder / "measured.yaml"}


@pytest.mark.parametrize(("args", "words"), [
    (["targets"], ["ideal:", "rram_a:", "rram_b:", "column ≤ 1.74 mA"]),
    (["targets", "rram_b"], ["rram_b: model=sinh_state", "on/off 34.2"]),
    (["targets", "{wired}"], ["wired: model=sinh", "wires: resistive", "limits: compliance 20 µA"]),
    (["targets", "{measured}"], ["measured: model=table", "cells 0.02–2 µA"]),
    (["targets", "--fields"], ["device (model: sinh_state)", "wires (model: resistive)", "word_line_resistance"]),
    (["--help"], ["targets"]),
], ids=["targets", "targets-builtin", "targets-wires-file", "targets-table-file", "targets-fields", "help"])
def test_targets_and_help_do_not_import_torch(args: list[str], words: list[str], tmp_path: Path) -> None:
    files = _target_files(tmp_path)
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    result = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    output = " ".join(result.stdout.split())
    assert all(w in output for w in words), (words, result.stdout)
