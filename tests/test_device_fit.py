"""``rramc fit-device`` and ``rramc plot-device``: targets fitted to measured I-V sweeps.

The sweeps are synthetic, drawn from devices with known parameters plus 1 % noise, so each fit
must give those parameters back; every kind of bad input must fail with a located message and
write nothing.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rramc.cli import app
from rramc.device_fit import fit_device_file, fit_sweeps, read_sweeps
from rramc.hardware import load_target
from rramc.hardware.devices import DeviceModel, SinhDevice, StateDependentSinhDevice, sinh_b_from_k

ANSI = re.compile(r"\x1b\[[0-9;]*m")
B = 3.0  # 1/V
G = (2e-6, 1e-5, 3e-5, 1e-4)  # S
VOLTAGES = np.linspace(-1.2, 1.2, 49)


def invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250", "NO_COLOR": "1"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"rramc {' '.join(map(str, args))} raised {result.exception!r}\n{result.output}") from result.exception
    return result.exit_code, ANSI.sub("", result.stdout), ANSI.sub("", result.stderr)


def write_sweeps(path: Path, device: DeviceModel, conductances: tuple[float, ...], noise: float = 0.01, seed: int = 0) -> Path:
    """Long-format sweeps of ``device`` at ``conductances``, each current off by ``noise`` (relative, Gaussian)."""
    rng = np.random.default_rng(seed)
    lines = ["state,voltage,current"]
    for k, g in enumerate(conductances):
        current = device.current(torch.tensor(VOLTAGES), g).numpy() * (1 + noise * rng.standard_normal(len(VOLTAGES)))
        lines += [f"state{k},{v:.6g},{i:.6g}" for v, i in zip(VOLTAGES, current)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def sinh_csv(tmp_path: Path) -> Path:
    return write_sweeps(tmp_path / "sweeps.csv", SinhDevice(b=B), G)


K_HRS, K_LRS = 10.0, 5.0
G_STATE = tuple(float(g) for g in np.geomspace(1e-6, 1e-4, 5))


@pytest.fixture
def sinh_state_csv(tmp_path: Path) -> Path:
    device = StateDependentSinhDevice(nonlinearity_k_hrs=K_HRS, nonlinearity_k_lrs=K_LRS, k_voltage=1.0,
                                      g_hrs=G_STATE[0], g_lrs=G_STATE[-1])
    return write_sweeps(tmp_path / "sweeps.csv", device, G_STATE)


def assert_close(got: float | tuple[float, ...], want: float | tuple[float, ...], rel: float) -> None:
    assert np.allclose(got, want, rtol=rel, atol=0), f"{got} is not within {100 * rel:g} % of {want}"


# --- fits ------------------------------------------------------------------------------------


def test_sinh_fit_recovers_b_and_conductances(sinh_csv: Path) -> None:
    fit = fit_sweeps(read_sweeps(sinh_csv), "sinh", read_voltage=1.0)
    assert_close(fit.parameters["b"], B, 0.02)
    assert_close(sinh_b_from_k(fit.device["nonlinearity_k"], fit.device["k_voltage"]), B, 0.02)
    assert fit.labels == ("state0", "state1", "state2", "state3")
    assert_close(fit.conductances, G, 0.02)


def test_sinh_state_fit_recovers_both_nonlinearities(sinh_state_csv: Path) -> None:
    fit = fit_sweeps(read_sweeps(sinh_state_csv), "sinh_state", read_voltage=1.0)
    assert_close(fit.parameters["b_hrs"], sinh_b_from_k(K_HRS, 1.0), 0.02)
    assert_close(fit.parameters["b_lrs"], sinh_b_from_k(K_LRS, 1.0), 0.02)
    assert_close((fit.device["nonlinearity_k_hrs"], fit.device["nonlinearity_k_lrs"]), (K_HRS, K_LRS), 0.03)
    assert_close(fit.conductances, G_STATE, 0.02)


def test_the_wide_format_gives_the_same_fit(tmp_path: Path, sinh_csv: Path) -> None:
    sweeps = read_sweeps(sinh_csv)
    wide = tmp_path / "wide.csv"
    rows = ["voltage," + ",".join(s.label for s in sweeps)]
    rows += [f"{v:.6g}," + ",".join(f"{s.currents[r]:.6g}" for s in sweeps) for r, v in enumerate(VOLTAGES)]
    wide.write_text("# measured on wafer 3\n" + "\n".join(rows) + "\n")
    assert fit_sweeps(read_sweeps(wide), "sinh").parameters["b"] == pytest.approx(fit_sweeps(sweeps, "sinh").parameters["b"], rel=1e-9)


def test_cli_fit_writes_a_target_that_reproduces_the_sweeps(tmp_path: Path, sinh_csv: Path) -> None:
    output = tmp_path / "chip.yaml"
    code, out, err = invoke("fit-device", sinh_csv, "--model", "sinh", "-o", output, "--read-voltage", "1.0", "--levels", "16",
                            "--name", "fitted")
    assert code == 0, out + err
    assert "state3" in out and "at Vread" in out and "warning" not in err
    text = output.read_text()
    assert text.startswith("# Fitted by `rramc fit-device --model sinh` from sweeps.csv")
    assert str(tmp_path) not in text  # the base name only
    target = load_target(output)
    assert (target.name, target.conductance.levels, target.crossbar.rows, target.crossbar.adc_bits) == ("fitted", 16, 128, 8)
    assert_close((target.conductance.g_min, target.conductance.g_max), (G[0], G[-1]), 0.02)
    read = torch.tensor([1.0], dtype=torch.float64)
    for g in G:  # a state programmed to g reads (nearly) what the synthetic device carries
        assert_close(float(target.device.current(read, g)[0]), g * math.sinh(B) / B, 0.03)


def test_a_poor_model_is_warned_about(tmp_path: Path, sinh_state_csv: Path) -> None:
    # one B for cells whose nonlinearity runs from k = 10 to k = 5 misses the read current of some
    code, _, err = invoke("fit-device", sinh_state_csv, "-m", "sinh", "-o", tmp_path / "chip.yaml")
    assert code == 0
    assert "warning:" in err and "more than 5 %" in err
    assert (tmp_path / "chip.yaml").exists()


def test_a_table_round_trips(tmp_path: Path, sinh_csv: Path) -> None:
    report = fit_device_file(sinh_csv, tmp_path / "chip.yaml", "table", read_voltage=1.0)
    table = tmp_path / "chip_iv.csv"
    assert report.written == (table, tmp_path / "chip.yaml")
    target = load_target(tmp_path / "chip.yaml")
    device = target.device
    assert device.model == "table" and device.file == str(table)
    assert_close(device.states, G, 0.03)  # zero-bias slopes of the noisy sweeps
    assert (target.conductance.g_min, target.conductance.g_max) == (device.states[0], device.states[-1])
    sweeps = read_sweeps(sinh_csv)
    for sweep, g in zip(sweeps, report.fit.conductances):  # the table carries the measured points themselves
        assert_close(device.current(torch.tensor(sweep.voltages), g).numpy(), sweep.currents, 1e-6)
    assert max(e.max for e in report.errors) < 1e-6


# --- bad input -------------------------------------------------------------------------------

BAD = {
    "empty": ("", ["empty", "state,voltage,current"]),
    "header": ("volts,amps\n0,0\n", ["line 1", "header 'volts,amps'", "state,voltage,current"]),
    "not_a_number": ("state,voltage,current\na,0,0\na,0.5,1e-6\na,1.0,lots\n", ["line 4", "column 'current'", "'lots'"]),
    "nan": ("state,voltage,current\na,0,0\na,0.5,1e-6\na,NaN,2e-6\n", ["line 4", "column 'voltage'", "finite"]),
    "few_points": ("state,voltage,current\na,0,0\na,0.5,1e-6\na,1.0,3e-6\nb,0,0\nb,1.0,1e-5\n",
                   ["state 'b'", "lines 5-6", "at least 3"]),
    "wrong_sign": ("state,voltage,current\na,-0.5,-1e-6\na,0,0\na,1.0,3e-6\nb,-0.5,2e-6\nb,0,0\nb,1.0,1e-5\n",
                   ["line 5", "state 'b'", "sign of its voltage"]),
    "one_state": ("state,voltage,current\na,0,0\na,0.5,1e-6\na,1.0,3e-6\n", ["only one state", "at least two"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweeps_fail_with_a_located_message_and_write_nothing(tmp_path: Path, case: str) -> None:
    content, words = BAD[case]
    sweeps = tmp_path / "bad.csv"
    sweeps.write_text(content)
    code, out, err = invoke("fit-device", sweeps, "-o", tmp_path / "chip.yaml")
    assert code == 1
    assert "Traceback" not in out + err
    assert "bad.csv" in err and all(w in err for w in words), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_a_missing_sweeps_file_is_named(tmp_path: Path) -> None:
    code, _, err = invoke("fit-device", tmp_path / "nowhere.csv", "-o", tmp_path / "chip.yaml")
    assert code == 1 and "nowhere.csv does not exist" in err
    assert not list(tmp_path.iterdir())


def test_the_input_is_never_overwritten(tmp_path: Path, sinh_csv: Path) -> None:
    sweeps = sinh_csv.rename(tmp_path / "sweeps.yaml")
    before = sweeps.read_text()
    code, _, err = invoke("fit-device", sweeps, "-o", sweeps)
    assert code == 1 and "is an input of this command" in err
    assert sweeps.read_text() == before


def test_a_table_must_reach_the_read_voltage(tmp_path: Path, sinh_csv: Path) -> None:
    code, _, err = invoke("fit-device", sinh_csv, "-m", "table", "--read-voltage", "2", "-o", tmp_path / "chip.yaml")
    assert code == 1 and "read voltage 2 V" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweeps.csv"]


def test_an_unknown_model_is_refused(tmp_path: Path, sinh_csv: Path) -> None:
    code, _, err = invoke("fit-device", sinh_csv, "-m", "spline", "-o", tmp_path / "chip.yaml")
    assert code == 1 and "sinh, sinh_state, table" in err


# --- plot-device -----------------------------------------------------------------------------


def test_plot_device_writes_a_png(tmp_path: Path) -> None:
    code, out, err = invoke("plot-device", "rram_a", "-o", tmp_path / "iv.png", "--states", "3")
    assert code == 0, out + err
    assert (tmp_path / "iv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_device_names_a_bad_target(tmp_path: Path) -> None:
    code, _, err = invoke("plot-device", "rram_z", "-o", tmp_path / "iv.png")
    assert code == 1 and "unknown target 'rram_z'" in err and "rram_a" in err
    assert not (tmp_path / "iv.png").exists()
