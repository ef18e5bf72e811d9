"""SPICE netlists of crossbar tiles with resistive word and bit lines, and an ngspice ``.op`` driver.

Shared by ``bench/wires_solver.py`` and ``tests/test_wires_ngspice.py`` (which puts this folder
on ``sys.path``); independent of rramc's solvers: only the device classes are read, and the cells'
coefficients are derived here from the devices' documented fields.

One tile: ``rows`` word lines, ``cols`` bit lines, cell ``(i, c)`` a behavioural current source
(B-source) from word-line node ``(i, c)`` to bit-line node ``(i, c)``. Word line ``i`` is an ideal
source ``V[i]`` behind ``driver`` ohms at its driven end (column 0 from the left, the last column
from the right), its adjacent nodes joined by ``word_line`` ohms. Bit line ``c``'s node at the
sensed end (row ``rows - 1`` at the bottom, row 0 at the top) reaches a 0 V virtual ground (the
sense amplifier) through ``sense`` ohms; adjacent nodes are joined by ``bit_line`` ohms. The
column current is the branch current of a 0 V source at that ground. A resistance of 0 merges its
two nodes (ngspice refuses 0 Ω resistors), so all-zero wires are the ideal crossbar.

Several input vectors are the points of one DC sweep, so ngspice orders its matrix once: with
its default sparse solver (Sparse 1.3; Debian's ngspice has no KLU) that ordering dominates,
~1 s for 64×32 cells and over a minute for 128×128.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rramc.hardware.devices import DeviceModel, LinearDevice, PowerDevice, SinhDevice, StateDependentSinhDevice, TableDevice

TIGHT_OPTIONS = "reltol=1e-9 abstol=1e-15 vntol=1e-12"
"""ngspice's Newton tolerances: the currents move by ~1e-10 of the largest with tenfold tighter ones."""


@dataclass(frozen=True)
class Wires:
    """The wire resistances [Ω] of a tile and which ends of its lines are driven and sensed."""

    word_line: float = 0.0  # Ω between adjacent cells of a word line
    bit_line: float = 0.0  # Ω between adjacent cells of a bit line
    driver: float = 0.0  # Ω from a word line's source to its driven end
    sense: float = 0.0  # Ω from a bit line's sensed end to the sense amplifier's virtual ground
    driven_from: str = "left"  # or "right"
    sensed_at: str = "bottom"  # or "top"

    def __post_init__(self) -> None:
        assert self.driven_from in ("left", "right") and self.sensed_at in ("bottom", "top")
        assert min(self.word_line, self.bit_line, self.driver, self.sense) >= 0


def num(x: float) -> str:
    """A float as SPICE reads it back exactly (no SI suffixes: 'm' would mean milli)."""
    x = float(x)
    return repr(x) if math.isfinite(x) else "0"


def sinh_b(k: float, voltage: float) -> float:
    # I(V)/I(V/2) = sinh(BV)/sinh(BV/2) = 2 cosh(BV/2) = k  =>  B = 2 acosh(k/2) / V
    return 2.0 * math.acosh(k / 2.0) / voltage


def state_b(device: StateDependentSinhDevice, g: float) -> float:
    """B(G) from the documented rule: linear in log G between g_hrs and g_lrs, held outside."""
    b_hrs = sinh_b(device.nonlinearity_k_hrs, device.k_voltage)
    b_lrs = sinh_b(device.nonlinearity_k_lrs, device.k_voltage)
    t = (math.log(g) - math.log(device.g_hrs)) / (math.log(device.g_lrs) - math.log(device.g_hrs))
    t = min(max(t, 0.0), 1.0)
    return b_hrs + t * (b_lrs - b_hrs)


def cell_expression(device: DeviceModel, g: float, v: str) -> str:
    """The cell current [A] as a SPICE expression of the branch voltage ``v``.

    A table device at a fixed state is piecewise linear in V (bilinear interpolation): a ``pwl``
    of the two bracketing states' sweeps. ngspice's ``pwl`` extrapolates past the table where the
    device holds its end values, so the caller keeps the voltages inside the table.
    """
    if isinstance(device, LinearDevice):
        return f"{num(g)}*{v}"
    if isinstance(device, SinhDevice):
        b = device.b if device.b is not None else sinh_b(device.nonlinearity_k, device.k_voltage)  # type: ignore[arg-type]
        return f"{num(g)}*{v}" if b == 0 else f"{num(g / b)}*sinh({num(b)}*{v})"
    if isinstance(device, StateDependentSinhDevice):
        b = state_b(device, g)
        return f"{num(g / b)}*sinh({num(b)}*{v})"
    if isinstance(device, PowerDevice):
        # pwr(x, a) = sign(x)·|x|^a in ngspice
        return f"{num(g * device.v_ref)}*pwr({v}/{num(device.v_ref)},{num(device.exponent)})"
    if isinstance(device, TableDevice):
        states = device.states
        gc = min(max(g, states[0]), states[-1])
        j = max(k for k in range(len(states) - 1) if states[k] <= gc)
        t = (gc - states[j]) / (states[j + 1] - states[j])
        points = [f"{num(v_k)},{num(row[j] * (1 - t) + row[j + 1] * t)}" for v_k, row in zip(device.voltages, device.currents)]
        return f"pwl({v},{','.join(points)})"
    raise NotImplementedError(f"no SPICE expression for device model {device.model}")


def differential_columns(g_pos: torch.Tensor, g_neg: torch.Tensor) -> torch.Tensor:
    """The physical columns of a differential tile ``[rows, 2·outputs]``: column 2j is G⁺_j, 2j + 1 is G⁻_j."""
    return torch.stack([g_pos, g_neg], dim=2).reshape(g_pos.shape[0], -1)


def tile_lines(name: str, voltages: torch.Tensor, conductances: torch.Tensor, device: DeviceModel, wires: Wires) -> tuple[list[str], list[str]]:
    """The netlist lines of one tile (its nodes prefixed by ``name``) and its sense sources' names, column by column.

    ``voltages`` ``[points, rows]``: word line ``i`` is driven with ``voltages[k, i]`` at point ``k``
    of a DC sweep of the source ``vsel`` over ``0, 1, ..., points - 1`` (a ``pwl`` of it), so one
    netlist solves every input vector with one matrix ordering.
    """
    rows, cols = conductances.shape
    assert voltages.ndim == 2 and voltages.shape[1] == rows
    v, g = voltages.T.tolist(), conductances.tolist()
    driven = 0 if wires.driven_from == "left" else cols - 1
    sensed = rows - 1 if wires.sensed_at == "bottom" else 0

    def word(i: int, c: int) -> str:
        return f"{name}w{i}" if wires.word_line == 0 else f"{name}w{i}_{c}"

    def bit(r: int, c: int) -> str:
        return f"{name}b{c}" if wires.bit_line == 0 else f"{name}b{r}_{c}"

    lines = []
    for i in range(rows):
        source = word(i, driven) if wires.driver == 0 else f"{name}d{i}"
        levels = v[i] if len(v[i]) > 1 else v[i] * 2  # pwl needs two points
        lines.append(f"b{name}d{i} {source} 0 V = pwl(V(sel),{','.join(f'{k},{num(x)}' for k, x in enumerate(levels))})")
        if wires.driver > 0:
            lines.append(f"r{name}d{i} {source} {word(i, driven)} {num(wires.driver)}")
        if wires.word_line > 0:
            lines += [f"r{name}w{i}_{c} {word(i, c)} {word(i, c + 1)} {num(wires.word_line)}" for c in range(cols - 1)]
    senses = []
    for c in range(cols):
        ground = bit(sensed, c) if wires.sense == 0 else f"{name}s{c}"
        lines.append(f"v{name}s{c} {ground} 0 DC 0")
        senses.append(f"v{name}s{c}")
        if wires.sense > 0:
            lines.append(f"r{name}s{c} {bit(sensed, c)} {ground} {num(wires.sense)}")
        if wires.bit_line > 0:
            lines += [f"r{name}b{r}_{c} {bit(r, c)} {bit(r + 1, c)} {num(wires.bit_line)}" for r in range(rows - 1)]
        for i in range(rows):
            w, b = word(i, c), bit(i, c)
            lines.append(f"b{name}c{i}_{c} {w} {b} I = {cell_expression(device, g[i][c], f'V({w},{b})')}")
    return lines, senses


def spice_column_currents(ngspice: str, workdir: Path, device: DeviceModel, tiles: list[tuple[torch.Tensor, torch.Tensor]],
                          wires: Wires = Wires(), options: str = TIGHT_OPTIONS) -> tuple[list[torch.Tensor], float]:
    """Column currents [A] ``[points, cols]`` of independent tiles, each ``(voltages [points, rows],
    conductances [rows, cols])`` (the same number of points each), and ngspice's wall time [s].

    All tiles go into one netlist (disjoint nodes) and one ``ngspice -b`` run. A column current is
    positive when the cells push current into the bit line, towards the sense amplifier.
    """
    points = tiles[0][0].shape[0]
    assert all(v.shape[0] == points for v, _ in tiles)
    lines = ["* rramc crossbar reference netlist", "vsel sel 0 DC 0"]
    senses = []
    for a, (v, g) in enumerate(tiles):
        tile, names = tile_lines(f"t{a}", v, g, device, wires)
        lines += tile
        senses += names
    chunks = [senses[k : k + 32] for k in range(0, len(senses), 32)]
    lines += [
        f".options {options}",
        ".control",
        "set numdgt=15",
        "set wr_singlescale",
        f"dc vsel 0 {points - 1} 1",
        *[f"wrdata currents{k}.txt {' '.join(f'i({n})' for n in chunk)}" for k, chunk in enumerate(chunks)],
        "quit 0",  # without it, batch mode exits 1 ("no .plot/.print lines") even after a good run
        ".endc",
        ".end",
    ]
    (workdir / "crossbar.cir").write_text("\n".join(lines) + "\n")
    for old in workdir.glob("currents*.txt"):
        old.unlink()
    start = time.perf_counter()
    proc = subprocess.run([ngspice, "-b", "crossbar.cir"], cwd=workdir, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    output = proc.stdout + "\n" + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ngspice failed (rc {proc.returncode}):\n{output[-3000:]}")
    errors = [line for line in output.splitlines() if re.match(r"\s*(error|fatal)", line, re.IGNORECASE)]
    if errors:
        raise RuntimeError(f"ngspice reported errors: {errors[:5]}\n{output[-3000:]}")
    columns = []
    for k, chunk in enumerate(chunks):
        path = workdir / f"currents{k}.txt"
        if not path.exists():
            raise RuntimeError(f"ngspice wrote no {path.name}:\n{output[-3000:]}")
        table = torch.tensor([[float(x) for x in line.split()] for line in path.read_text().splitlines() if line.strip()],
                             dtype=torch.float64)
        if table.shape != (points, len(chunk) + 1):
            raise RuntimeError(f"{path.name}: expected {points} rows of {len(chunk) + 1} numbers, got {tuple(table.shape)}")
        columns.append(table[:, 1:])  # the first column is the sweep index
    # the sense source's branch current flows from its + terminal (the bit line) to ground
    currents = torch.cat(columns, dim=1)
    widths = [g.shape[1] for _, g in tiles]
    return list(currents.split(widths, dim=1)), elapsed
