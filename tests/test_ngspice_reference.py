"""Crossbar column currents against an independent circuit simulator (ngspice).

Every cell is a SPICE behavioural current source (B-source) from its word line to its bit line
whose expression is the device's documented I-V, written out here from the device's fields (the
nonlinearity coefficients are derived in this file, not taken from rramc); word lines are driven
by voltage sources and each bit line is held at 0 V by a 0-V source (a virtual-ground sense
amplifier) whose branch current is the column current. ngspice's ``.op`` solution is compared with
:func:`rramc.hardware.column_solver.column_currents` and with the runtime's pre-ADC tile currents
(exact for separable devices; for a state-dependent one within its expansion's stated error).

ngspice missing: the tests skip, unless ``RRAMC_REQUIRE_NGSPICE=1`` (CI), where they fail.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import rramc
from rramc.hardware.column_solver import column_currents
from rramc.hardware.devices import DeviceModel, LinearDevice, SinhDevice, StateDependentSinhDevice
from rramc.hardware.expansion import IDEAL_TOLERANCE, device_expansion, tolerance_for
from rramc.hardware.target import load_target
from rramc.hardware.tiling import TileGrid
from rramc.ir import CrossbarOp

BENCH = str(Path(__file__).resolve().parent.parent / "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
from spice_netlist import cell_expression, num  # noqa: E402  (the B-source of each device, shared with the wires tests)

RTOL = 1e-6
ATOL = 2e-15  # A; column currents here are 2e-7..2e-5 A

# compiling on a few dozen samples is deliberate here
pytestmark = pytest.mark.filterwarnings("ignore:calibrated on .* sample:rramc.errors.RramcWarning")

# --------------------------------------------------------------------------------------------
# ngspice driver
# --------------------------------------------------------------------------------------------


_PRINTED = re.compile(r"^\s*(i\([^)\s]+\))\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$", re.IGNORECASE | re.MULTILINE)


def spice_column_currents(ngspice: str, workdir: Path, device: DeviceModel,
                          arrays: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """Column currents [A] of independent arrays, each ``(voltages [rows], conductances [rows, cols])``.

    All arrays go into one netlist (disjoint nodes) and one ngspice ``-b`` run.
    """
    lines = ["* rramc crossbar reference netlist"]
    senses: list[list[str]] = []
    for a, (v, g) in enumerate(arrays):
        rows, cols = g.shape
        assert v.shape == (rows,)
        for i in range(rows):
            lines.append(f"vwl_{a}_{i} wl_{a}_{i} 0 DC {num(v[i])}")
        names = []
        for j in range(cols):
            lines.append(f"vsa_{a}_{j} bl_{a}_{j} 0 DC 0")
            names.append(f"i(vsa_{a}_{j})")
            for i in range(rows):
                expr = cell_expression(device, float(g[i, j]), f"V(wl_{a}_{i},bl_{a}_{j})")
                lines.append(f"bcell_{a}_{i}_{j} wl_{a}_{i} bl_{a}_{j} I = {expr}")
        senses.append(names)
    lines += [
        ".options reltol=1e-12 abstol=1e-18 vntol=1e-15",
        ".control",
        "set numdgt=15",
        "op",
        *[f"print {name}" for names in senses for name in names],
        "quit 0",  # without it, batch mode exits 1 ("no .plot/.print lines") even after a good run
        ".endc",
        ".end",
    ]
    netlist = workdir / "crossbar.cir"
    netlist.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([ngspice, "-b", str(netlist)], cwd=workdir, capture_output=True, text=True, timeout=120)
    output = proc.stdout + "\n" + proc.stderr
    assert proc.returncode == 0, f"ngspice failed (rc {proc.returncode}):\n{output[-3000:]}"
    errors = [line for line in output.splitlines() if re.match(r"\s*(error|fatal)", line, re.IGNORECASE)]
    assert not errors, f"ngspice reported errors: {errors[:5]}\n{output[-3000:]}"
    printed = {name.lower(): float(value) for name, value in _PRINTED.findall(proc.stdout)}
    missing = [n for names in senses for n in names if n.lower() not in printed]
    assert not missing, f"ngspice printed no value for {missing[:5]}...:\n{output[-3000:]}"
    # the sense source's branch current flows from its + terminal (the bit line) to ground:
    # positive when the cells push current into the bit line
    return [torch.tensor([printed[n.lower()] for n in names], dtype=torch.float64) for names in senses]


# --------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------


def _devices() -> dict[str, DeviceModel]:
    return {
        "ideal": load_target("ideal").device,
        "rram_a": load_target("rram_a").device,
        "rram_b": load_target("rram_b").device,
        # state window inside the sampled conductances, so B(G) is clamped on both sides
        "sinh_state_clamped": load_target("rram_b").with_changes(device={"g_hrs": 1e-7, "g_lrs": 1e-6}).device,
        "power_1.7": load_target("rram_a").with_changes(device={"model": "power", "exponent": 1.7}).device,
    }


DEVICES = _devices()


def test_builtin_devices_are_the_models_the_netlists_encode() -> None:
    assert isinstance(DEVICES["ideal"], LinearDevice)
    assert isinstance(DEVICES["rram_a"], SinhDevice)
    assert isinstance(DEVICES["rram_b"], StateDependentSinhDevice)


WINDOW = (2e-8, 2e-6)  # S: the conductances _random_crossbar draws (the builtin targets' window)
VREAD = 1.0  # V: the highest voltage it draws


def _columns(v: torch.Tensor, g_pos: torch.Tensor, g_neg: torch.Tensor, device: DeviceModel, grid: TileGrid) -> torch.Tensor:
    """rramc's column currents of these cells, its expansion (if any) valid over WINDOW up to VREAD."""
    return column_currents(v, g_pos, g_neg, device, grid=grid, read_voltage=VREAD, window=WINDOW)


def _expansion_slack(v: torch.Tensor, g_pos: torch.Tensor, g_neg: torch.Tensor, device: DeviceModel,
                     blocks: list[tuple[int, int]]) -> torch.Tensor:
    """How far rramc's column currents ``[blocks, batch, cols]`` may be from the cells' exact sum: 0 for
    a separable device (one exact term); else the sum over each column's cells of how far the
    device's expansion (valid over WINDOW up to VREAD, at the ideal ADC's tolerance) is from the
    device there. (That the expansion is within its tolerance everywhere is test_expansion.py's.)"""
    if device.separable:
        return torch.zeros(len(blocks), v.shape[0], g_pos.shape[1], dtype=torch.float64)
    expansion = device_expansion(device, VREAD, *WINDOW, None, IDEAL_TOLERANCE)
    assert 0 < expansion.max_error <= expansion.tolerance

    def error(g: torch.Tensor, a: int, b: int) -> torch.Tensor:
        cells = v[:, a:b, None]
        return (expansion.current(cells, g[a:b]) - device.current(cells, g[a:b])).abs().sum(1)

    return torch.stack([error(g_pos, a, b) + error(g_neg, a, b) for a, b in blocks]) * (1 + 1e-6)


def _assert_close(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, slack: torch.Tensor) -> None:
    """``torch.testing.assert_close`` with ``atol`` widened, per element, by ``slack`` (where it is not 0)."""
    if bool((slack == 0).all()):
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
        return
    assert got.shape == expected.shape
    excess = (got - expected).abs() - (atol + rtol * expected.abs() + slack)
    assert bool((excess <= 0).all()), f"{int((excess > 0).sum())} of {got.numel()} currents differ; worst by {float(excess.max()):.3g} A beyond the allowed"


def _random_crossbar(seed: int, rows: int = 6, cols: int = 4, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    v = torch.rand(batch, rows, generator=gen, dtype=torch.float64)  # [0, 1] V
    g_pos = WINDOW[0] + (WINDOW[1] - WINDOW[0]) * torch.rand(rows, cols, generator=gen, dtype=torch.float64)
    g_neg = WINDOW[0] + (WINDOW[1] - WINDOW[0]) * torch.rand(rows, cols, generator=gen, dtype=torch.float64)
    return v, g_pos, g_neg


@pytest.mark.parametrize("name", list(DEVICES))
def test_single_ended_column_currents_match_ngspice(name: str, ngspice: str, tmp_path: Path) -> None:
    device = DEVICES[name]
    v, g_pos, _ = _random_crossbar(1)
    rows, cols = g_pos.shape
    got = _columns(v, g_pos, torch.zeros_like(g_pos), device, TileGrid((0, rows), (0, cols)))
    assert got.shape == (1, v.shape[0], cols)
    expected = torch.stack(spice_column_currents(ngspice, tmp_path, device, [(v[n], g_pos) for n in range(v.shape[0])]))
    slack = _expansion_slack(v, g_pos, torch.zeros_like(g_pos), device, [(0, rows)])
    _assert_close(got[0], expected, RTOL, ATOL, slack[0])
    if name != "ideal":  # the nonlinearity matters: a linear model of the cells is far off
        linear = v @ g_pos
        assert not torch.allclose(linear, expected, rtol=1e-2)


@pytest.mark.parametrize("name", list(DEVICES))
def test_differential_column_currents_match_ngspice(name: str, ngspice: str, tmp_path: Path) -> None:
    """G⁺ and G⁻ on separate bit lines; rramc's differential current is their difference."""
    device = DEVICES[name]
    v, g_pos, g_neg = _random_crossbar(2)
    rows, cols = g_pos.shape
    got = _columns(v, g_pos, g_neg, device, TileGrid((0, rows), (0, cols)))[0]
    both = torch.cat([g_pos, g_neg], dim=1)  # one array of 2·cols bit lines
    spice = torch.stack(spice_column_currents(ngspice, tmp_path, device, [(v[n], both) for n in range(v.shape[0])]))
    expected = spice[:, :cols] - spice[:, cols:]
    scale = spice.abs().amax()
    _assert_close(got, expected, RTOL, RTOL * float(scale), _expansion_slack(v, g_pos, g_neg, device, [(0, rows)])[0])


@pytest.mark.parametrize("name", ["rram_a", "rram_b"])
def test_row_blocks_are_separate_arrays(name: str, ngspice: str, tmp_path: Path) -> None:
    """Two row blocks (7 = 4 + 3 word lines, the second one short): each block's columns are its own array."""
    device = DEVICES[name]
    v, g_pos, g_neg = _random_crossbar(3, rows=7, cols=3, batch=2)
    got = _columns(v, g_pos, g_neg, device, TileGrid((0, 4, 7), (0, 3)))
    assert got.shape == (2, 2, 3)
    arrays = [(v[n, a:b], torch.cat([g_pos[a:b], g_neg[a:b]], dim=1)) for a, b in ((0, 4), (4, 7)) for n in range(2)]
    spice = spice_column_currents(ngspice, tmp_path, device, arrays)
    expected = torch.stack([s[:3] - s[3:] for s in spice]).reshape(2, 2, 3)  # [block, batch, cols]
    _assert_close(got, expected, RTOL, ATOL, _expansion_slack(v, g_pos, g_neg, device, [(0, 4), (4, 7)]))


# --------------------------------------------------------------------------------------------
# full stack: a compiled layer's tile, driven by the DAC for a real input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target_name", ["ideal", "rram_a", "rram_b"])
def test_compiled_tile_currents_match_ngspice(target_name: str, ngspice: str, tmp_path: Path) -> None:
    digits = rramc.load_dataset("digits", "test")
    images = digits.images[:32].to(torch.float64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))
    exe = rramc.compile(model, target_name, images.float(), input_range=(0, 1),
                        pipeline="canonicalize,quantize,tile{rows=20,cols=7},calibrate,emit")
    node = exe.graph.nodes_of(CrossbarOp)[0]
    op = node.op
    assert op.row_splits == (0, 20, 40, 60, 64) and op.col_splits == (0, 7, 12)
    layer = exe.chip(0, dtype=torch.float64).layers[node.name]

    flat = images.reshape(-1, 64)
    x = flat[flat[:, 60:64].sum(1) > 0][:2]  # the first layer's input: flattened pixels, lighting the short block
    assert x.shape == (2, 64)
    assert op.input_range is not None and not op.input_range.signed
    ((sign, current),) = layer.phases(x, op.input_range.scale)
    assert sign == 1.0
    # the DAC, written out: codes k/(2^bits - 1) of the scaled input, times the read voltage
    u = x / op.input_range.scale
    if op.dac_bits is not None:
        steps = 2**op.dac_bits - 1
        u = torch.round(u.clamp(0, 1) * steps) / steps
    volts = u * exe.target.crossbar.read_voltage

    # A separable device is computed exactly; a state-dependent one through its expansion (of the
    # target's window, DAC and ADC): each column within the sum of its cells' expansion errors.
    device, c = exe.target.device, exe.target.conductance
    expansion = None
    if not device.separable:
        expansion = device_expansion(device, exe.target.crossbar.read_voltage, c.g_min, c.g_max, op.dac_bits,
                                     tolerance_for(op.adc_bits))
        assert 0 < expansion.max_error <= expansion.tolerance

    g_pos, g_neg = op.g_pos.to(torch.float64), op.g_neg.to(torch.float64)
    tiles = [(1, (20, 40), (0, 7)), (3, (60, 64), (7, 12))]  # a full tile and the short last one
    arrays, shapes = [], []
    for rb, (r0, r1), (c0, c1) in tiles:
        for n in range(2):
            arrays.append((volts[n, r0:r1], torch.cat([g_pos[r0:r1, c0:c1], g_neg[r0:r1, c0:c1]], dim=1)))
            shapes.append((rb, n, r0, r1, c0, c1))
    spice = spice_column_currents(ngspice, tmp_path, device, arrays)
    for (rb, n, r0, r1, c0, c1), s in zip(shapes, spice):
        width = c1 - c0
        expected = s[:width] - s[width:]
        assert expected.abs().max() > 2e-9  # the chosen pixels really drive these columns
        slack = torch.zeros(width, dtype=torch.float64)
        if expansion is not None:
            cells = volts[n, r0:r1, None]
            for g in (g_pos[r0:r1, c0:c1], g_neg[r0:r1, c0:c1]):
                slack = slack + (expansion.current(cells, g) - device.current(cells, g)).abs().sum(0) * (1 + 1e-6)
        _assert_close(current[rb, n, c0:c1], expected, RTOL, RTOL * float(s.abs().max()), slack)
