"""Targets from measured I-V sweeps: ``rramc fit-device``.

A sweeps CSV holds the I-V sweeps of one device programmed to several states, in volts and
amperes. Blank lines and lines starting with ``#`` are skipped; column names are case-insensitive.

* long format: a header naming ``state``, ``voltage`` and ``current`` (in any order; other
  columns are ignored) and one row per measured point. ``state`` is any label of a sweep.
* wide format, the one a ``table`` device reads: ``voltage,<state 1>,<state 2>,...`` and one row
  per voltage; an empty cell is a point that was not measured.

A sweep needs at least 3 points at different voltages; a current must have the sign of its
voltage (points below 0.1 % of the sweep's largest current are measurement noise and let pass).

Models: ``sinh`` fits ``I = G_s·sinh(B·V)/B`` with one ``B`` for all states and one ``G_s`` per
state; ``sinh_state`` lets ``B`` run linearly in ``log G`` from the lowest to the highest fitted
state (:class:`~rramc.hardware.devices.StateDependentSinhDevice`). Both are one joint weighted
least-squares fit (``scipy.optimize.least_squares``) started from a grid search over ``B`` in which
the ``G_s`` are solved exactly. A point's weight is ``1/(|I| + 0.1·max|I| of its sweep)``: relative
errors count, without letting the near-zero currents around 0 V dominate. ``table`` fits nothing: it
resamples the sweeps onto one voltage grid and labels each state with its zero-bias slope.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rramc.errors import RramcError, TargetError
from rramc.hardware.devices import sinh_b_from_k
from rramc.hardware.target import Target, load_target

MODELS = ("sinh", "sinh_state", "table")
READ_ERROR_WARNING = 0.05
"""A state whose current at the read voltage is off by more than this (relative) is warned about."""
SIGN_TOLERANCE = 1e-3
"""Opposite-sign currents below this fraction of a sweep's largest current are taken as noise."""
CROSSBAR_DEFAULTS: dict[str, Any] = {"rows": 128, "cols": 128, "weight_encoding": "differential", "read_voltage": 1.0,
                                     "dac_bits": 8, "adc_bits": 8}
"""The parts of a fitted target that the sweeps do not tell: as in ``targets/rram_a.yaml``."""


@dataclass(frozen=True)
class Sweep:
    """One state's measured points, in file order; ``lines`` are their line numbers."""

    label: str
    voltages: np.ndarray  # V
    currents: np.ndarray  # A
    lines: tuple[int, ...]


@dataclass(frozen=True)
class DeviceFit:
    """A device fitted to sweeps: its target ``device`` section and each state's conductance."""

    model: str
    device: dict[str, Any]
    labels: tuple[str, ...]
    conductances: tuple[float, ...]  # S, per state, in the order of ``labels``
    parameters: dict[str, float]  # what was fitted besides the G's: b, or b_hrs and b_lrs [1/V]

    def summary(self) -> str:
        d = self.device
        if self.model == "sinh":
            return f"sinh: k = {d['nonlinearity_k']:.4g} at {d['k_voltage']:g} V (B = {self.parameters['b']:.4g} /V)"
        if self.model == "sinh_state":
            return (f"sinh_state: k = {d['nonlinearity_k_hrs']:.4g} at g_min to {d['nonlinearity_k_lrs']:.4g} at g_max, "
                    f"at {d['k_voltage']:g} V (B = {self.parameters['b_hrs']:.4g} to {self.parameters['b_lrs']:.4g} /V)")
        return f"table: {len(d['voltages'])} voltages × {len(d['states'])} states"


@dataclass(frozen=True)
class StateError:
    """How well a target's device reproduces one measured sweep."""

    label: str
    conductance: float  # S
    points: int
    rms: float  # RMS current error over the sweep, relative to the sweep's largest current
    max: float  # the largest such error
    at_read: float | None  # relative error of the current at the read voltage; None: not measured there


@dataclass(frozen=True)
class FitReport:
    """What ``fit-device`` did: the files written, the fit and its errors, and what to look at."""

    written: tuple[Path, ...]
    target: Target
    fit: DeviceFit
    errors: tuple[StateError, ...]
    warnings: tuple[str, ...]


# --- reading ---------------------------------------------------------------------------------


def read_sweeps(path: Path) -> list[Sweep]:
    """Parse and check a sweeps CSV (long or wide format, see the module doc)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TargetError(f"sweeps file {path} does not exist") from None
    except IsADirectoryError:
        raise TargetError(f"sweeps file {path} is a directory, expected a CSV file") from None
    except UnicodeDecodeError:
        raise TargetError(f"{path}: not a text (UTF-8) CSV file") from None
    except OSError as exc:
        raise TargetError(f"cannot read sweeps file {path}: {exc.strerror}") from None
    reader = csv.reader(io.StringIO(text))
    rows = []
    for row in reader:
        if any(c.strip() for c in row) and not row[0].lstrip().startswith("#"):
            rows.append((reader.line_num, [c.strip() for c in row]))
    if not rows:
        raise TargetError(f"{path}: empty; expected a header 'state,voltage,current' and one row per measured point")
    (header_line, header), body = rows[0], rows[1:]
    names = [c.lower() for c in header]
    if {"state", "voltage", "current"} <= set(names):
        points = _long_points(path, names, body)
    elif names[0] == "voltage" and len(names) >= 2 and "current" not in names:
        points = _wide_points(path, header, body)
    else:
        raise TargetError(f"{path} line {header_line}: header {','.join(header)!r}; expected 'state,voltage,current' "
                          "(one row per measured point) or 'voltage,<state 1>,<state 2>,...' (one column per state)")
    if not points:
        raise TargetError(f"{path}: no measured points after the header")
    sweeps = [_checked_sweep(path, label, rows_) for label, rows_ in points.items()]
    if len(sweeps) < 2:
        raise TargetError(f"{path}: only one state ({sweeps[0].label!r}); a conductance window needs the sweeps of at least two states")
    return sweeps


def _number(path: Path, line: int, column: str, cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise TargetError(f"{path} line {line}, column '{column}': not a number: {cell!r}") from None
    if not math.isfinite(value):
        raise TargetError(f"{path} line {line}, column '{column}': {cell!r}; measured values must be finite numbers")
    return value


def _long_points(path: Path, names: list[str], body: list[tuple[int, list[str]]]) -> dict[str, list[tuple[float, float, int]]]:
    at = {name: names.index(name) for name in ("state", "voltage", "current")}
    points: dict[str, list[tuple[float, float, int]]] = {}
    for line, row in body:
        if len(row) <= max(at.values()):
            raise TargetError(f"{path} line {line}: {len(row)} values; expected {len(names)} (as in the header)")
        label = row[at["state"]]
        if not label:
            raise TargetError(f"{path} line {line}, column 'state': empty; every point needs the label of its state")
        v = _number(path, line, "voltage", row[at["voltage"]])
        i = _number(path, line, "current", row[at["current"]])
        points.setdefault(label, []).append((v, i, line))
    return points


def _wide_points(path: Path, header: list[str], body: list[tuple[int, list[str]]]) -> dict[str, list[tuple[float, float, int]]]:
    labels = header[1:]
    if any(not label for label in labels) or len(set(labels)) != len(labels):
        raise TargetError(f"{path}: every state column needs a label of its own in the header; got {','.join(header)!r}")
    points: dict[str, list[tuple[float, float, int]]] = {label: [] for label in labels}
    for line, row in body:
        if len(row) != len(header):
            raise TargetError(f"{path} line {line}: {len(row)} values; expected {len(header)} (as in the header)")
        v = _number(path, line, "voltage", row[0])
        for label, cell in zip(labels, row[1:]):
            if cell:  # not measured at this voltage
                points[label].append((v, _number(path, line, label, cell), line))
    return points


def _checked_sweep(path: Path, label: str, points: list[tuple[float, float, int]]) -> Sweep:
    v = np.array([p[0] for p in points])
    i = np.array([p[1] for p in points])
    lines = tuple(p[2] for p in points)
    if len(np.unique(v)) < 3:
        where = f"line {lines[0]}" if len(lines) == 1 else f"lines {lines[0]}-{lines[-1]}" if lines else "no lines"
        raise TargetError(f"{path}: state {label!r} has {len(np.unique(v))} distinct voltage(s) ({where}); "
                          "a fit needs at least 3 points at different voltages")
    scale = float(np.abs(i).max())
    if scale == 0.0:
        raise TargetError(f"{path}: state {label!r} carries no current at any voltage (lines {lines[0]}-{lines[-1]})")
    wrong = np.nonzero((v * i < 0) & (np.abs(i) > SIGN_TOLERANCE * scale))[0]
    if len(wrong):
        k = int(wrong[0])
        raise TargetError(f"{path} line {lines[k]}, column 'current': {i[k]:g} A at {v[k]:g} V (state {label!r}) opposes the "
                          "voltage; a passive cell's current has the sign of its voltage (is the current's sign flipped?)")
    return Sweep(label, v, i, lines)


# --- fitting ---------------------------------------------------------------------------------


def fit_sweeps(sweeps: Sequence[Sweep], model: str, read_voltage: float = 1.0) -> DeviceFit:
    """Fit ``model`` (sinh, sinh_state or table) to the sweeps; nonlinearities are given at ``read_voltage``."""
    if model not in MODELS:
        raise RramcError(f"--model {model!r}: expected one of {', '.join(MODELS)}")
    if not 0.0 < read_voltage <= 10.0:
        raise RramcError(f"--read-voltage {read_voltage:g}: expected a voltage above 0 and at most 10 V")
    if model == "table":
        return _table(sweeps, read_voltage)
    from scipy.optimize import least_squares

    # nonlinearity_k <= 1e4 and b <= 100 bound B; exp(B·V) must not overflow on the sweep
    v_max = max(float(np.abs(s.voltages).max()) for s in sweeps)
    b_max = min(100.0, sinh_b_from_k(1e4, read_voltage), 300.0 / v_max)
    weights = [1.0 / (np.abs(s.currents) + 0.1 * np.abs(s.currents).max()) for s in sweeps]

    def residuals(b: np.ndarray, log_g: np.ndarray) -> np.ndarray:
        return np.concatenate([(np.exp(lg) * _v_sinhc(s.voltages, bs) - s.currents) * w
                               for s, w, bs, lg in zip(sweeps, weights, b, log_g)])

    # Start: the B on a grid whose best G's (a linear least-squares problem at a fixed B) fit best.
    best = (math.inf, 0.0, np.zeros(len(sweeps)))
    for b in np.linspace(0.0, min(b_max, 20.0 / v_max), 81):
        g = np.array([max(_best_g(s, b, w), 1e-30) for s, w in zip(sweeps, weights)])
        cost = float(np.sum(residuals(np.full(len(sweeps), b), np.log(g)) ** 2))
        if cost < best[0]:
            best = (cost, float(b), g)
    _, b0, g0 = best
    n = len(sweeps)
    fit = least_squares(lambda x: residuals(np.full(n, x[0]), x[1:]), np.concatenate([[b0], np.log(g0)]),
                        bounds=([0.0] + [-np.inf] * n, [b_max] + [np.inf] * n), x_scale="jac")
    b, log_g = float(fit.x[0]), fit.x[1:]
    if model == "sinh":
        g = np.exp(log_g)
        device = {"model": "sinh", "nonlinearity_k": _round(2.0 * math.cosh(b * read_voltage / 2.0)), "k_voltage": read_voltage}
        return DeviceFit("sinh", device, tuple(s.label for s in sweeps), tuple(_round(x) for x in g), {"b": b})

    def state_b(x: np.ndarray) -> np.ndarray:
        lg = x[2:]
        span = lg.max() - lg.min()
        t = (lg - lg.min()) / span if span > 0 else np.zeros_like(lg)
        return x[0] + t * (x[1] - x[0])

    fit = least_squares(lambda x: residuals(state_b(x), x[2:]), np.concatenate([[b, b], log_g]),
                        bounds=([0.0, 0.0] + [-np.inf] * n, [b_max, b_max] + [np.inf] * n), x_scale="jac")
    b_hrs, b_lrs = float(fit.x[0]), float(fit.x[1])
    g = np.exp(fit.x[2:])
    device = {"model": "sinh_state", "nonlinearity_k_hrs": _round(2.0 * math.cosh(b_hrs * read_voltage / 2.0)),
              "nonlinearity_k_lrs": _round(2.0 * math.cosh(b_lrs * read_voltage / 2.0)), "k_voltage": read_voltage}
    return DeviceFit("sinh_state", device, tuple(s.label for s in sweeps), tuple(_round(x) for x in g),
                     {"b_hrs": b_hrs, "b_lrs": b_lrs})


def _v_sinhc(v: np.ndarray, b: float) -> np.ndarray:
    return v if b < 1e-9 else np.sinh(b * v) / b


def _best_g(sweep: Sweep, b: float, w: np.ndarray) -> float:
    f = _v_sinhc(sweep.voltages, b) * w
    return float(np.dot(f, sweep.currents * w) / np.dot(f, f))


def _round(x: float) -> float:
    """Six significant digits: what the YAML carries, and what the errors are computed with."""
    return float(f"{x:.6g}")


def _mean_per_voltage(sweep: Sweep) -> tuple[np.ndarray, np.ndarray]:
    """The sweep sorted by voltage, points measured twice (up and down sweeps) averaged."""
    v, inverse = np.unique(sweep.voltages, return_inverse=True)
    i = np.bincount(inverse, weights=sweep.currents) / np.bincount(inverse)
    return v, i


def zero_bias_conductance(sweep: Sweep) -> float:
    """The slope [S] of a line through the points nearest 0 V (|V| <= 10 % of the sweep's, at least 3)."""
    v, i = _mean_per_voltage(sweep)
    near = np.abs(v) <= 0.1 * np.abs(v).max()
    if near.sum() < 3:
        near = np.argsort(np.abs(v))[:3]
    return float(np.polyfit(v[near], i[near], 1)[0])


def _table(sweeps: Sequence[Sweep], read_voltage: float) -> DeviceFit:
    slopes = [zero_bias_conductance(s) for s in sweeps]
    for s, g in zip(sweeps, slopes):
        if not g > 0:
            raise TargetError(f"state {s.label!r}: its zero-bias conductance is {g:.3g} S; a state must conduct near 0 V")
    order = sorted(range(len(sweeps)), key=lambda k: slopes[k])
    states = [float(f"{slopes[k]:.9g}") for k in order]
    for a, b in zip(order, order[1:]):
        if float(f"{slopes[a]:.9g}") == float(f"{slopes[b]:.9g}"):
            raise TargetError(f"states {sweeps[a].label!r} and {sweeps[b].label!r} have the same zero-bias conductance "
                              f"{slopes[a]:.9g} S; a table needs distinct states")
    low = max(float(s.voltages.min()) for s in sweeps)
    high = min(float(s.voltages.max()) for s in sweeps)
    if low > 0.0 or high < read_voltage:
        raise TargetError(f"the voltages every sweep covers, [{low:g}, {high:g}] V, must include 0 V and the read voltage "
                          f"{read_voltage:g} V for a table device; lower --read-voltage or measure further")
    measured = np.concatenate([s.voltages for s in sweeps] + [np.array([0.0, read_voltage])])
    grid = np.unique(np.array([float(f"{v:.9g}") for v in measured if low <= v <= high]))
    columns = []
    for s in sweeps:
        v, i = _mean_per_voltage(s)
        column = np.interp(grid, v, i)
        column[grid == 0.0] = 0.0  # an unselected word line carries no current: no offset at 0 V
        column[grid * column < 0] = 0.0  # the noise SIGN_TOLERANCE let pass
        columns.append(column)
    currents = [[float(f"{columns[k][r]:.9g}") for k in order] for r in range(len(grid))]
    device = {"model": "table", "voltages": [float(v) for v in grid], "states": states, "currents": currents}
    by_state = {k: g for k, g in zip(order, states)}
    return DeviceFit("table", device, tuple(s.label for s in sweeps), tuple(by_state[k] for k in range(len(sweeps))), {})


# --- the target ------------------------------------------------------------------------------


def state_errors(target: Target, sweeps: Sequence[Sweep], fit: DeviceFit) -> list[StateError]:
    """How well ``target``'s device, at each state's fitted conductance, reproduces the sweeps."""
    import torch

    read = target.crossbar.read_voltage
    out = []
    for s, g in zip(sweeps, fit.conductances):
        model = target.device.current(torch.tensor(s.voltages, dtype=torch.float64), g).numpy()
        scale = float(np.abs(s.currents).max())
        rel = np.abs(model - s.currents) / scale
        v, i = _mean_per_voltage(s)
        at_read = None
        if v[0] <= read <= v[-1]:
            measured = float(np.interp(read, v, i))
            modelled = float(target.device.current(torch.tensor([read], dtype=torch.float64), g)[0])
            at_read = abs(modelled - measured) / abs(measured) if measured else math.inf
        out.append(StateError(s.label, g, len(s.voltages), float(np.sqrt(np.mean(rel**2))), float(rel.max()), at_read))
    return out


def target_mapping(fit: DeviceFit, name: str, *, read_voltage: float = 1.0, levels: int | None = 32,
                   description: str = "", **crossbar: Any) -> dict[str, Any]:
    """A target (the device inline) of the fitted device; the window spans the fitted states.

    ``crossbar`` overrides :data:`CROSSBAR_DEFAULTS` (rows, cols, weight_encoding, dac_bits, adc_bits).
    """
    return {
        "name": name,
        "description": description,
        "device": dict(fit.device),
        "conductance": {"g_min": min(fit.conductances), "g_max": max(fit.conductances), "levels": levels},
        "crossbar": {**CROSSBAR_DEFAULTS, **crossbar, "read_voltage": read_voltage},
    }


def fit_device_file(sweeps_path: Path, output: Path, model: str = "sinh", *, read_voltage: float = 1.0,
                    levels: int | None = 32, name: str | None = None, **crossbar: Any) -> FitReport:
    """Fit ``model`` to a sweeps CSV and write a target YAML (and, for ``table``, its CSV next to it).

    Nothing is written unless the target loads back with :func:`~rramc.hardware.target.load_target`;
    each file is replaced atomically. An existing output is overwritten, the input never.
    """
    sweeps_path, output = Path(sweeps_path), Path(output)
    if output.suffix not in (".yaml", ".yml"):
        raise RramcError(f"--output {output}: a target file must end in .yaml or .yml")
    table_path = output.with_name(f"{output.stem}_iv.csv") if model == "table" else None
    for out in filter(None, (output, table_path)):
        if out.resolve() == sweeps_path.resolve():
            raise RramcError(f"{out} would overwrite the sweeps file {sweeps_path}; choose another --output")
    if not output.parent.is_dir():
        raise RramcError(f"--output {output}: directory {output.parent} does not exist")
    sweeps = read_sweeps(sweeps_path)
    fit = fit_sweeps(sweeps, model, read_voltage)
    name = name or output.stem
    mapping = target_mapping(fit, name, read_voltage=read_voltage, levels=levels,
                             description=f"{model} device fitted to {sweeps_path.name} ({len(sweeps)} states)", **crossbar)
    target = Target.from_mapping(mapping, str(output))
    errors = state_errors(target, sweeps, fit)
    warnings = _warnings(errors, read_voltage)

    files: dict[Path, str] = {}
    if table_path is not None:
        mapping["device"] = {"model": "table", "file": table_path.name}
        files[table_path] = _table_csv(fit.device)
    files[output] = _yaml_text(mapping, fit, errors, sweeps_path.name, read_voltage)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        for path, text in files.items():
            (tmp / path.name).write_text(text, encoding="utf-8")
        try:
            written = load_target(tmp / output.name)
        except TargetError as exc:
            raise TargetError(str(exc).replace(str(tmp / output.name), str(output))) from None
        for path in files:
            os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return FitReport(tuple(files), written, fit, tuple(errors), tuple(warnings))


def _warnings(errors: Sequence[StateError], read_voltage: float) -> list[str]:
    out = []
    unmeasured = [e.label for e in errors if e.at_read is None]
    if unmeasured:
        out.append(f"the read voltage {read_voltage:g} V lies outside the sweep of state(s) {', '.join(unmeasured)}: "
                   "the target extrapolates there")
    bad = [e for e in errors if e.at_read is not None and e.at_read > READ_ERROR_WARNING]
    if bad:
        out.append(f"at the read voltage {read_voltage:g} V the fit is off by more than {100 * READ_ERROR_WARNING:g} % for "
                   + ", ".join(f"{e.label} ({100 * e.at_read:.1f} %)" for e in bad if e.at_read is not None)
                   + "; the model may not suit this device (try --model sinh_state or table)")
    return out


def _table_csv(device: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["voltage", *(f"{g:.9g}" for g in device["states"])])
    for v, row in zip(device["voltages"], device["currents"]):
        writer.writerow([f"{v:.9g}", *(f"{i:.9g}" for i in row)])
    return out.getvalue()


def error_rows(errors: Sequence[StateError]) -> list[tuple[str, ...]]:
    """The per-state error table as text cells: state, G [µS], points, RMS %, max %, at Vread %."""
    return [(e.label, f"{e.conductance * 1e6:.4g}", str(e.points), f"{100 * e.rms:.2f}", f"{100 * e.max:.2f}",
             "-" if e.at_read is None else f"{100 * e.at_read:.2f}") for e in errors]


ERROR_COLUMNS = ("state", "G [µS]", "points", "RMS %", "max %", "at Vread %")


def _yaml_text(mapping: dict[str, Any], fit: DeviceFit, errors: Sequence[StateError], source: str, read_voltage: float) -> str:
    rows = [ERROR_COLUMNS, *error_rows(errors)]
    widths = [max(len(r[c]) for r in rows) for c in range(len(ERROR_COLUMNS))]
    header = [
        f"Fitted by `rramc fit-device --model {fit.model}` from {source} ({len(errors)} states).",
        fit.summary() + ".",
        "Fit error per state: RMS and max of the current error over the sweep, in % of the sweep's largest current;",
        f"at Vread: relative error of the current at the read voltage {read_voltage:g} V.",
        *("  " + "  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows),
    ]
    body = yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True, default_flow_style=None, width=120)
    return "".join(f"# {line}\n" for line in header) + body
