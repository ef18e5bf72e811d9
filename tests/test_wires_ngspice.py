"""Tiles with resistive word and bit lines (IR drop) against ngspice.

Every tile is written out as a SPICE netlist (``bench/spice_netlist.py``, shared with
``bench/wires_solver.py``): cells are behavioural current sources whose I-V is derived from the
device's documented fields, word lines are driven through their driver resistance from one end,
bit lines are sensed through their sense resistance at one end, neighbouring cells are joined by
the wire segments. ngspice's ``.op`` sense currents are compared with :func:`column_currents` under
:class:`~rramc.hardware.wires.ResistiveWires`. Each netlist is first checked against a Newton
solve of the same Kirchhoff equations written here (scipy sparse), so that a failure says
whether the netlist or the solver is off.

ngspice missing: the tests skip, unless ``RRAMC_REQUIRE_NGSPICE=1`` (CI), where they fail.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg
import torch

from rramc.hardware.column_solver import column_currents
from rramc.hardware.devices import DeviceModel, SinhDevice, StateDependentSinhDevice, TableDevice
from rramc.hardware.wires import ResistiveWires

BENCH = str(Path(__file__).resolve().parent.parent / "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
from spice_netlist import Wires, differential_columns, spice_column_currents  # noqa: E402

RTOL = 1e-6  # of the largest sense current: a differential output may cancel to near zero
WINDOW = (2e-8, 2e-6)  # S: the conductances drawn
VECTORS = 3  # input vectors per tile, uniform in 0..1 V
TIGHTER_OPTIONS = "reltol=1e-10 abstol=1e-16 vntol=1e-13"  # tenfold spice_netlist.TIGHT_OPTIONS (ngspice gives up at reltol=1e-12)


def _table_device() -> TableDevice:
    """A small I-V grid: sinh sweeps whose nonlinearity falls with the state, weaker under reverse bias.

    Its voltages span -1..1 V: a passive tile driven with 0..1 V has every node within 0..1 V, so
    no cell leaves the table (where ngspice's ``pwl`` would extrapolate and the device holds).
    """
    voltages = [k / 8 for k in range(-8, 9)]
    states = (1e-8, 1e-7, 1e-6, 3e-6)
    b = (4.5, 4.0, 3.5, 3.0)  # 1/V
    currents = [[g * math.sinh(bk * v) / bk * (1.0 if v >= 0 else 0.7) for g, bk in zip(states, b)] for v in voltages]
    return TableDevice(voltages=tuple(voltages), states=states, currents=tuple(tuple(row) for row in currents))


DEVICES: dict[str, DeviceModel] = {
    "sinh": SinhDevice(nonlinearity_k=7.5, k_voltage=1.0),  # rram_a's cells
    "sinh_state": StateDependentSinhDevice(nonlinearity_k_hrs=10.0, nonlinearity_k_lrs=5.0, k_voltage=1.0,
                                           g_hrs=WINDOW[0], g_lrs=WINDOW[1]),  # rram_b's
    "table": _table_device(),
}

SIZES = {"16x16": (16, 8), "64x32": (64, 16)}  # rows × bit lines: (rows, differential outputs)

CASES = [
    pytest.param(size, Wires(word_line=r, bit_line=r), name, id=f"{size}-{r:g}ohm-{name}")
    for size in SIZES for r in (0.5, 5.0) for name in DEVICES
] + [
    pytest.param("64x32", Wires(word_line=0.5, bit_line=0.5, driver=10.0, sense=20.0), "sinh_state", id="64x32-driver-sense-sinh_state"),
    # word and bit lines unlike: a solver that swapped them (or an end) would be off by ~1e-3
    pytest.param("64x32", Wires(word_line=5.0, bit_line=0.5, driven_from="right", sensed_at="top"), "sinh", id="64x32-right-top-sinh"),
    *[pytest.param("16x16", wires, name, id=f"16x16-{label}-{name}") for name in DEVICES for label, wires in (
        ("everything", Wires(word_line=5.0, bit_line=0.5, driver=10.0, sense=20.0, driven_from="right", sensed_at="top")),
        # lines of one node each, or resistance on one kind of line only (the solvers' merged-node paths)
        ("driver-sense-only", Wires(driver=10.0, sense=20.0)),
        ("word-lines-only", Wires(word_line=5.0, driver=10.0, driven_from="right")),
        ("bit-lines-only", Wires(bit_line=5.0, sense=20.0, sensed_at="top")),
    )],
]


def _tile(size: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, outputs = SIZES[size]
    gen = torch.Generator().manual_seed(seed)
    v = torch.rand(VECTORS, rows, generator=gen, dtype=torch.float64)
    g_pos, g_neg = (WINDOW[0] + (WINDOW[1] - WINDOW[0]) * torch.rand(rows, outputs, generator=gen, dtype=torch.float64) for _ in "+-")
    return v, g_pos, g_neg


def _solver(wires: Wires) -> ResistiveWires:
    return ResistiveWires(word_line_resistance=wires.word_line, bit_line_resistance=wires.bit_line,
                          driver_resistance=wires.driver, sense_resistance=wires.sense,
                          word_lines_driven_from=wires.driven_from, bit_lines_sensed_at=wires.sensed_at,
                          tolerance=1e-10, max_iterations=2000)


def kcl_currents(v: torch.Tensor, g: torch.Tensor, device: DeviceModel, wires: Wires) -> torch.Tensor:
    """Sense currents ``[vectors, bit lines]`` of a tile ``g [rows, bit lines]`` from Newton's method on
    Kirchhoff's current law at every node (scipy sparse LU), independent of the netlist (the cells
    are the device's own :meth:`~DeviceModel.current`; the netlist writes their I-V out itself).

    A zero resistance merges its two nodes; a zero driver (sense) resistance fixes its end node at
    the source voltage (0 V). A bit line's sense current is the sum of its cells' currents.
    """
    rows, cols = g.shape
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    word = r * cols + c if wires.word_line else r  # node ids; a line without resistance is one node
    n_word = int(word.max()) + 1
    bit = n_word + (r * cols + c if wires.bit_line else c)
    nodes = int(bit.max()) + 1
    driven = 0 if wires.driven_from == "left" else cols - 1
    sensed = rows - 1 if wires.sensed_at == "bottom" else 0
    end_word, end_bit = word[:, driven], bit[sensed, :]

    edges = []  # (node, node, conductance) of the wire segments
    if wires.word_line:
        edges += [(word[:, :-1].ravel(), word[:, 1:].ravel(), 1 / wires.word_line)]
    if wires.bit_line:
        edges += [(bit[:-1].ravel(), bit[1:].ravel(), 1 / wires.bit_line)]
    a = np.concatenate([e[0] for e in edges] + [np.zeros(0, int)])
    b = np.concatenate([e[1] for e in edges] + [np.zeros(0, int)])
    w = np.concatenate([np.full(len(e[0]), e[2]) for e in edges] + [np.zeros(0)])
    diag = np.zeros(nodes)
    np.add.at(diag, a, w)
    np.add.at(diag, b, w)
    if wires.driver:
        diag[end_word] += 1 / wires.driver
    if wires.sense:
        diag[end_bit] += 1 / wires.sense
    laplacian = sparse.coo_matrix((np.concatenate([-w, -w, diag]), (np.concatenate([a, b, np.arange(nodes)]),
                                   np.concatenate([b, a, np.arange(nodes)]))), shape=(nodes, nodes)).tocsr()
    incidence = sparse.coo_matrix((np.concatenate([np.ones(rows * cols), -np.ones(rows * cols)]),
                                   (np.concatenate([word.ravel(), bit.ravel()]), np.tile(np.arange(rows * cols), 2))),
                                  shape=(nodes, rows * cols)).tocsr()  # cell k: out of its word node, into its bit node
    fixed = np.zeros(nodes, bool)
    if not wires.driver:
        fixed[end_word] = True
    if not wires.sense:
        fixed[end_bit] = True
    free = np.flatnonzero(~fixed)
    g_cells = g.reshape(-1)

    def cells(u: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        x = torch.tensor(incidence.T @ u, dtype=torch.float64, requires_grad=True)
        i = device.current(x, g_cells)
        (slope,) = torch.autograd.grad(i.sum(), x)
        return i.detach(), slope.numpy()

    out = []
    for vector in v.tolist():
        source = np.zeros(nodes)  # what each driver pushes into its end node while that node is at 0 V
        u = np.zeros(nodes)
        u[word] = np.asarray(vector)[:, None]  # start from the ideal wires
        if wires.driver:
            source[end_word] = np.asarray(vector) / wires.driver
        for _ in range(100):
            i, slope = cells(u)
            residual = laplacian @ u - source + incidence @ i.numpy()
            jacobian = laplacian + incidence @ sparse.diags(slope) @ incidence.T
            step = sparse_linalg.spsolve(jacobian[free][:, free].tocsc(), -residual[free])
            u[free] += step
            if np.abs(step).max() < 1e-12:  # V; quadratic convergence: the next step would be at rounding level
                break
        else:
            raise AssertionError("the KCL reference did not converge")
        out.append(cells(u)[0].reshape(rows, cols).sum(0))
    return torch.stack(out)


@pytest.mark.parametrize(("size", "wires", "name"), CASES)
def test_sense_currents_match_ngspice(size: str, wires: Wires, name: str, ngspice: str, tmp_path: Path) -> None:
    device = DEVICES[name]
    v, g_pos, g_neg = _tile(size, seed=0)
    g = differential_columns(g_pos, g_neg)
    (spice,), _ = spice_column_currents(ngspice, tmp_path, device, [(v, g)], wires)
    scale = float(spice.abs().max())

    # the netlist is the circuit: a Newton solve of its KCL agrees far below the tolerance
    reference = kcl_currents(v, g, device, wires)
    assert float((reference - spice).abs().max()) <= 1e-3 * RTOL * scale

    # the wires matter here: the cells' currents at their word lines' voltages are far off
    ideal = device.current(v[:, :, None], g).sum(1)
    assert float((ideal - spice).abs().max()) > 100 * RTOL * scale

    expected = spice[:, 0::2] - spice[:, 1::2]
    got = column_currents(v, g_pos, g_neg, device, solver=_solver(wires))
    assert got.shape == (1, VECTORS, g_pos.shape[1]) and got.dtype == torch.float64
    error = float((got[0] - expected).abs().max()) / scale
    assert error <= RTOL, f"rramc vs ngspice: {error:.3g} of the largest sense current ({scale:.3g} A)"


def test_ngspice_is_converged_far_below_the_tolerance(ngspice: str, tmp_path: Path) -> None:
    """Tenfold tighter Newton tolerances move ngspice's currents by a small fraction of RTOL (~1e-10 here)."""
    v, g_pos, g_neg = _tile("64x32", seed=3)
    tile = [(v, differential_columns(g_pos, g_neg))]
    wires = Wires(word_line=5.0, bit_line=5.0)
    (tight,), _ = spice_column_currents(ngspice, tmp_path, DEVICES["sinh_state"], tile, wires)
    (tighter,), _ = spice_column_currents(ngspice, tmp_path, DEVICES["sinh_state"], tile, wires, options=TIGHTER_OPTIONS)
    assert float((tight - tighter).abs().max()) <= 1e-3 * RTOL * float(tighter.abs().max())


def test_wires_without_resistance_are_the_ideal_solver() -> None:
    # one separable device: a state-dependent one's expansion alone takes seconds to fit
    v, g_pos, g_neg = _tile("64x32", seed=4)
    ideal = column_currents(v, g_pos, g_neg, DEVICES["sinh"])
    zero = column_currents(v, g_pos, g_neg, DEVICES["sinh"], solver=ResistiveWires())
    assert torch.equal(zero, ideal)
