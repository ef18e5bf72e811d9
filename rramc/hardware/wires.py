"""Wires with resistance: IR drop along word and bit lines, with the device's nonlinear cells.

The circuit of one tile (one array): word line ``i`` is driven by its DAC, an ideal source of the
read voltage behind ``driver_resistance``, at one end (``left``: the first column); neighbouring
cells on it are ``word_line_resistance`` apart. Bit line ``c`` ends at its sense amplifier, a
virtual ground behind ``sense_resistance``, at one end (``bottom``: the last row); neighbouring
cells on it are ``bit_line_resistance`` apart. Cell ``(i, c)`` joins word-line node ``(i, c)`` to
bit-line node ``(i, c)`` and carries the device's ``I(V_w - V_b, G)``. A column's current is what
reaches its sense amplifier.

Where the cells sit: a differential pair occupies neighbouring bit lines (``G⁺`` of output ``j``
on bit line ``2j``, ``G⁻`` on ``2j + 1``, counted from the left); the offset encoding's reference
column is the first bit line. The ``place`` pass may reorder word lines and outputs (see
:class:`~rramc.ir.CrossbarOp`). A tile smaller than its array sits at the array's driven and sensed ends;
the unused rows and columns carry no current (their access transistors stay off), so a tile is
solved as an array of its own size.

Two methods:

``exact``
    Kirchhoff's current law at every node, solved by nonlinear block Gauss-Seidel: all word
    lines at once for the present bit-line voltages, then all bit lines for the new word-line
    voltages, each line a tridiagonal system of the cells linearised at the present voltages
    (one Newton step per line and sweep). Linearised, a tile with passive, monotone cells is a
    symmetric positive-definite M-matrix, for which block Gauss-Seidel converges; with nonlinear
    cells it is a local argument, so convergence is checked, not assumed. It starts from the
    ideal-wire voltages and stops when no node voltage moved by more than ``tolerance`` times the
    read voltage; it runs in float64. It is checked against ngspice. Not converged within
    ``max_iterations``: an error naming the tile and the last change.

``first_order``
    The ideal-wire currents, corrected to first order in the wire resistances: each cell's
    voltage loses the drop that the ideal currents cause along its word line and its bit line,
    ``I ≈ I_ideal - Σ_i ∂I/∂V (δ_word + δ_bit)``. Computed with matmuls only (no per-cell state:
    the word-line term through one precomputed matrix per pair of expansion terms, the bit-line
    term through the leading eigenvectors of the bit line's kernel), so it is fast and
    differentiable; it is accurate while the drops are small against the read voltage (its
    error against ``exact`` is measured in ``bench/wires_solver.py``, ``bench/wires_runtime.py``
    and the README).

All resistances zero: exactly the ideal wires.

:class:`ResistiveWires` is also the ``wires`` section of a target's spec, so this module is
imported to load a target: torch is bound on first use (:mod:`rramc._lazy`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from rramc._lazy import lazy_import
from rramc.errors import RuntimeSimulationError
from rramc.hardware.column_solver import ColumnSolver, Conductances, IdealWires
from rramc.hardware.config import spec_field
from rramc.hardware.devices import DeviceModel

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from rramc.hardware.input_encoding import Read
else:
    torch = lazy_import("torch", globals())

# Vectors are cut into chunks so that one [tiles, vectors, rows, columns] tensor of the exact
# solver stays below this many elements (128 MiB in float32).
EXACT_CHUNK_ELEMENTS = 1 << 25

# Eigenvectors of the bit-line kernel the first-order method keeps. Its eigenvalues fall as
# 1/k²; what a column's cells draw on average lies in the leading ones.
FIRST_ORDER_RANK = 16

_OHM = "Ω"


class WiresNotConverged(RuntimeSimulationError):
    """The exact wire solver did not reach its tolerance."""


@dataclass(frozen=True)
class _Tile:
    block: int  # row block
    rows: tuple[int, int]
    cols: tuple[int, int]  # outputs


@dataclass
class _Group:
    """Tiles of one shape, solved together, each laid out with its drivers at bit line 0 and its
    sense amplifiers at the last row ("oriented")."""

    tiles: list[_Tile]
    g: Tensor  # [tiles, rows, bit lines]
    rows: Tensor  # [tiles, rows]: the word line (layer input) on each row
    plus: Tensor  # [tiles, outputs]: the bit line of each output's weight cell (G⁺)
    minus: Tensor  # [tiles, outputs]: the bit line of its G⁻, or of the reference column
    first_order: dict[str, Any] | None = None  # its matrices, computed when first needed


@dataclass
class _WireState:
    cells: Conductances
    groups: list[_Group]


@dataclass(frozen=True)
class ResistiveWires(ColumnSolver):
    """Word and bit lines with resistance per cell segment, driver and sense resistance (see module doc)."""

    model: ClassVar[str] = "resistive"

    word_line_resistance: float = spec_field("word-line resistance between neighbouring cells", unit=_OHM, low=0.0, high=1e6, default=0.0)
    bit_line_resistance: float = spec_field("bit-line resistance between neighbouring cells", unit=_OHM, low=0.0, high=1e6, default=0.0)
    driver_resistance: float = spec_field("output resistance of each word-line driver", unit=_OHM, low=0.0, high=1e9, default=0.0)
    sense_resistance: float = spec_field("input resistance of each sense amplifier (a virtual ground)", unit=_OHM, low=0.0, high=1e9, default=0.0)
    word_lines_driven_from: str = spec_field("the end of every word line its driver sits at", choices=("left", "right"), default="left")
    bit_lines_sensed_at: str = spec_field("the end of every bit line its sense amplifier sits at", choices=("bottom", "top"), default="bottom")
    method: str = spec_field(
        "exact (node voltages solved to the tolerance) or first_order (the ideal currents corrected to first order "
        "in the wire resistance: fast, differentiable, accurate for small drops)", choices=("exact", "first_order"),
        default="exact",
    )
    tolerance: float = spec_field(
        "exact method: stop when no node voltage changed by more than this times the read voltage in a sweep "
        "(the solve runs in float64)", low=0.0, low_open=True, high=0.01, default=1e-6,
    )
    max_iterations: int = spec_field("exact method: most Gauss-Seidel sweeps before giving up", low=1, high=1_000_000, default=1000)

    @property
    def is_ideal(self) -> bool:
        return not (self.word_line_resistance or self.bit_line_resistance or self.driver_resistance or self.sense_resistance)

    # --- the seam ------------------------------------------------------------------------------

    def prepare(self, cells: Conductances) -> Any:
        if self.is_ideal:
            return IdealWires().prepare(cells)
        if cells.terms is not None:
            raise ValueError("wires with resistance need the cells' conductances, not their expansion terms")
        if cells.weight_encoding not in ("differential", "offset"):
            raise RuntimeSimulationError(f"resistive wires know where the cells of the differential and offset encodings "
                                         f"sit, not those of '{cells.weight_encoding}'")
        layouts: dict[tuple[int, int], list[tuple[_Tile, tuple[Tensor, Tensor, Tensor, Tensor]]]] = {}
        for block, (a, b) in enumerate(cells.grid.row_blocks):
            for c, d in cells.grid.col_blocks:
                layout = self._layout(cells, (a, b), (c, d))
                layouts.setdefault(tuple(layout[0].shape), []).append((_Tile(block, (a, b), (c, d)), layout))
        groups = [_Group([tile for tile, _ in members], *(torch.stack(parts) for parts in zip(*(lay for _, lay in members))))
                  for members in layouts.values()]
        return _WireState(cells, groups)

    def read(self, state: Any, read: Read, generator: torch.Generator | None) -> Tensor:
        if self.is_ideal:
            return IdealWires().read(state, read, generator)
        cells: Conductances = state.cells
        lowering = cells.lowering
        voltages = read.voltages
        vectors = lowering.vectors(voltages)
        outputs = cells.g_pos.shape[1]
        blocks = len(cells.grid.row_blocks)
        currents = vectors.new_zeros(blocks, vectors.shape[0], outputs)
        for group in state.groups if len(vectors) else ():
            v = vectors[:, group.rows].movedim(1, 0)  # [tiles, vectors, rows], in the arrays' row order
            if self.method == "first_order":
                column, square = self._first_order(cells, group, v)
            elif torch.is_grad_enabled() and (v.requires_grad or group.g.requires_grad):
                # Training: the exact currents, with the gradient of the first-order model (the exact
                # solve is not differentiated through).
                column, square = self._first_order(cells, group, v)
                exact, _ = self._exact_chunks(cells, group, v.detach())
                column = column + (exact - column).detach()
            else:
                column, square = self._exact_chunks(cells, group, v)
            out = _pick(column, group.plus) - _pick(column, group.minus)
            if cells.read_noise_sigma > 0 and square is not None:
                variance = _pick(square, group.plus) + _pick(square, group.minus)
                noise = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
                out = out + cells.read_noise_sigma * variance.clamp_min(0).sqrt() * noise
            for index, tile in enumerate(group.tiles):
                currents[tile.block, :, tile.cols[0] : tile.cols[1]] = out[index]
        if lowering.conv is None:
            return currents
        spatial = lowering.output_size(voltages)
        return torch.stack([lowering.restore(c, voltages.shape[0], spatial) for c in currents], dim=lowering.block_dim)

    def describe(self, cells: Conductances) -> str:
        if self.is_ideal:
            return "resistive wires of 0 Ω: " + IdealWires().describe(cells)
        return (f"resistive wires ({self.method}): word line {self.word_line_resistance:g} {_OHM}, bit line "
                f"{self.bit_line_resistance:g} {_OHM} per segment, driver {self.driver_resistance:g} {_OHM}, "
                f"sense {self.sense_resistance:g} {_OHM}")

    # --- layout ---------------------------------------------------------------------------------

    def _layout(self, cells: Conductances, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One tile's array, oriented (drivers at bit line 0, sense amplifiers at the last row): its
        conductances [rows, bit lines], the word line on each row, and each output's two bit lines.

        Without a placement the matrix's order runs from the array's first row and its left bit
        line (``G⁺`` of output ``j`` on bit line ``2j``; the offset encoding's reference column
        first); with one (``row_place``/``col_place``: distances from the sense amplifiers and the
        drivers) a pair's ``G⁺`` sits nearer the driver, and the reference column next to it.
        """
        (a, b), (c, d) = rows, cols
        n_rows, outputs = b - a, d - c
        index = torch.arange(n_rows, device=cells.g_pos.device)
        offset = cells.weight_encoding == "offset"
        lines = outputs + 1 if offset else 2 * outputs
        if cells.row_place is not None:
            local = torch.empty_like(index)
            local[n_rows - 1 - cells.row_place[a:b].to(index.device)] = index
        else:
            local = index if self.bit_lines_sensed_at == "bottom" else index.flip(0)
        j = torch.arange(outputs, device=index.device)
        if cells.col_place is not None:
            q = cells.col_place[c:d].to(index.device)
            plus, minus = (1 + q, torch.zeros_like(q)) if offset else (2 * q, 2 * q + 1)
        else:
            plus, minus = (1 + j, torch.zeros_like(j)) if offset else (2 * j, 2 * j + 1)  # from the left
            if self.word_lines_driven_from == "right":
                plus, minus = lines - 1 - plus, lines - 1 - minus
        source = torch.empty(lines, dtype=torch.long, device=index.device)  # bit line → column of [G⁺ | G⁻]
        source[plus] = j
        source[minus] = outputs + (torch.zeros_like(j) if offset else j)
        word_lines = a + local
        both = torch.cat([cells.g_pos[word_lines, c:d], cells.g_neg[word_lines, c:d]], dim=1)
        return both[:, source], word_lines, plus, minus

    # --- exact -----------------------------------------------------------------------------------

    def _exact_chunks(self, cells: Conductances, group: _Group, v: Tensor) -> tuple[Tensor, Tensor | None]:
        tiles, rows, columns = group.g.shape
        chunk = max(1, EXACT_CHUNK_ELEMENTS // (tiles * rows * columns))
        parts = [self._exact(cells, group, v[:, start : start + chunk]) for start in range(0, v.shape[1], chunk)]
        column = torch.cat([p[0] for p in parts], dim=1)
        square = None if parts[0][1] is None else torch.cat([p[1] for p in parts], dim=1)  # type: ignore[misc]
        return column, square

    def _exact(self, cells: Conductances, group: _Group, source: Tensor) -> tuple[Tensor, Tensor | None]:
        """Column currents [tiles, vectors, bit lines] of the oriented arrays for word-line sources [tiles, vectors, rows]."""
        # In float64 whatever the model's precision: a cell's conductance is ~1e-6 of a wire
        # segment's, below float32's resolution of the lines' equations.
        dtype = source.dtype
        device, g, source = cells.device, group.g[:, None].double(), source.double()  # g: [tiles, 1, rows, bit lines]
        tiles, _, rows, columns = g.shape
        limit = max(self.tolerance, 16 * torch.finfo(torch.float64).eps) * cells.read_voltage
        with torch.no_grad():
            word = source[..., None].expand(-1, -1, -1, columns).clone()  # the ideal-wire answer
            bit = torch.zeros_like(word)
            change = math.inf
            for _ in range(self.max_iterations):
                # all word lines (along the bit lines' index), then all bit lines (transposed: along the rows)
                new_word = _line_step(device, g, word - bit, word, self.word_line_resistance, self.driver_resistance,
                                      source, at_start=True, sign=1.0)
                new_bit = _line_step(device, g.mT, (new_word - bit).mT, bit.mT, self.bit_line_resistance, self.sense_resistance,
                                     0.0, at_start=False, sign=-1.0).mT
                change = float(torch.maximum((new_word - word).abs().amax(), (new_bit - bit).abs().amax()))
                word, bit = new_word, new_bit
                if not math.isfinite(change):
                    break
                if change <= limit:
                    break
            if not change <= limit:
                tiles_text = ", ".join(f"row block {t.block} × outputs {t.cols[0]}-{t.cols[1] - 1}" for t in group.tiles[:3])
                more = f" and {len(group.tiles) - 3} more" if len(group.tiles) > 3 else ""
                raise WiresNotConverged(
                    f"the wire solver did not converge on the tile(s) {tiles_text}{more} ({rows}×{columns} cells): "
                    f"after {self.max_iterations} sweeps node voltages still moved by {change:.3g} V "
                    f"(tolerance {limit:.3g} V); raise wires.max_iterations or wires.tolerance, or lower the wire resistance"
                )
        cell = device.current(word - bit, g)
        square = (cell * cell).sum(2).to(dtype) if cells.read_noise_sigma > 0 else None
        return cell.sum(2).to(dtype), square

    # --- first order -------------------------------------------------------------------------------

    def _first_order_matrices(self, cells: Conductances, g: Tensor) -> dict[str, Any]:
        """What the first-order correction multiplies the drive by, for arrays ``g`` [tiles, rows, bit lines].

        With ``f = Σ_k φ_k(V)·ψ_k(G)`` and ``∂f/∂V = Σ_k φ'_k(V)·ψ'_k(G)`` (expansions of the device
        and of its slope), a cell's word-line drop is ``Σ_c' K_w(c, c')·f(V_i, G_ic')`` with
        ``K_w(c, c') = R_driver + R_word·min(c, c')``: it depends on its own row's input only, so
        ``Σ_i f'·δ_word`` is one matmul of ``φ'_k·φ_l`` with a fixed matrix. The bit-line drop is
        ``Σ_m K_b(i, m)·f(V_m, G_mc)`` with ``K_b(i, m) = R_sense + R_bit·(rows - 1 - max(i, m))``;
        ``Σ_i f'·δ_bit`` is a quadratic form, computed through the leading eigenvectors of ``K_b``.
        """
        from rramc.hardware.expansion import device_expansion

        rows, columns = g.shape[1:]
        current = cells.expansion()
        slope = device_expansion(_SlopeOf(cells.device), cells.read_voltage, *cells.window, cells.dac_bits, cells.tolerance)
        psi, dpsi = current.conductance(g), slope.conductance(g)  # [tiles, rows, bit lines, terms]
        kw = _word_line_kernel(columns, self.driver_resistance, self.word_line_resistance).to(g)
        drop = torch.einsum("cd,trdl->trcl", kw, psi)  # the word-line drop per unit drive φ_l
        word = dpsi[..., :, None] * drop[..., None, :]  # [tiles, rows, bit lines, slope terms, terms]
        projections = _bit_line_projections(rows, self.sense_resistance, self.bit_line_resistance).to(g)
        squared = cells.expansion(squared=True) if cells.read_noise_sigma > 0 else None  # read noise: of the ideal-wire currents
        return {
            "current": current, "slope": slope, "squared": squared,
            "psi": psi.permute(0, 1, 3, 2).reshape(len(g), -1, columns),  # [tiles, rows·terms, bit lines]
            "dpsi": dpsi.permute(0, 1, 3, 2).reshape(len(g), -1, columns),
            "word": word.permute(0, 1, 3, 4, 2).reshape(len(g), -1, columns),
            "psi_squared": None if squared is None else squared.conductance(g).permute(0, 1, 3, 2).reshape(len(g), -1, columns),
            "projections": projections,
        }

    def _first_order(self, cells: Conductances, group: _Group, v: Tensor) -> tuple[Tensor, Tensor | None]:
        if group.first_order is None:
            group.first_order = self._first_order_matrices(cells, group.g)
        m = group.first_order
        tiles, vectors, rows = v.shape
        phi, dphi = m["current"].voltage(v), m["slope"].voltage(v)  # [tiles, vectors, rows, terms]
        ideal = torch.bmm(phi.reshape(tiles, vectors, -1), m["psi"])
        word = torch.bmm((dphi[..., :, None] * phi[..., None, :]).reshape(tiles, vectors, -1), m["word"])
        p = m["projections"]  # bit lines: Σ_r (Σ_i e_r(i)·f'_i)(Σ_m e_r(m)·f_m), eigenvalues folded in
        rank = p.shape[1]
        slope_side = torch.bmm((dphi[:, None] * p.T[None, :, None, :, None]).reshape(tiles, rank * vectors, -1), m["dpsi"])
        current_side = torch.bmm((phi[:, None] * p.T[None, :, None, :, None]).reshape(tiles, rank * vectors, -1), m["psi"])
        bit = (slope_side * current_side).reshape(tiles, rank, vectors, -1).sum(1)
        squared = m["squared"]
        square = None if squared is None else torch.bmm(squared.voltage(v).reshape(tiles, vectors, -1), m["psi_squared"])
        return ideal - word - bit, square


@dataclass(frozen=True)
class _SlopeOf(DeviceModel):
    """A device whose "current" is another device's slope ∂I/∂V: for the slope's expansion."""

    device: DeviceModel
    model: ClassVar[str] = "slope"

    @property  # type: ignore[override]
    def separable(self) -> bool:  # a separable device's slope is G·g'(V): separable too
        return self.device.separable

    def current(self, v: Tensor, g: Tensor | float) -> Tensor:
        return self.device.slope(v, g)


def _word_line_kernel(columns: int, driver: float, wire: float) -> Tensor:
    """``K_w(c, c')``: the drop at word-line node ``c`` per ampere drawn at node ``c'`` (driver at node 0)."""
    index = torch.arange(columns, dtype=torch.float64)
    return driver + wire * torch.minimum(index[:, None], index[None, :])


@functools.lru_cache(maxsize=32)
def _bit_line_projections(rows: int, sense: float, wire: float) -> Tensor:
    """The leading eigenvectors of ``K_b``, each scaled by the root of its eigenvalue: [rows, rank]."""
    eigenvalues, vectors = torch.linalg.eigh(_bit_line_kernel(rows, sense, wire))  # ascending; K_b is positive semi-definite
    rank = min(rows, FIRST_ORDER_RANK)
    return vectors[:, -rank:] * eigenvalues[-rank:].clamp_min(0).sqrt()


def _bit_line_kernel(rows: int, sense: float, wire: float) -> Tensor:
    """``K_b(i, m)``: the rise at bit-line node ``i`` per ampere injected at node ``m`` (sense at the last row)."""
    index = torch.arange(rows, dtype=torch.float64)
    return sense + wire * (rows - 1 - torch.maximum(index[:, None], index[None, :]))


def _line_step(device: DeviceModel, g: Tensor, v: Tensor, x: Tensor, wire: float, end: float, end_voltage: Tensor | float,
               *, at_start: bool, sign: float) -> Tensor:
    """One Newton step of every line, for fixed voltages at the cells' other terminals.

    The lines run along the last dimension of ``x`` (their node voltages); cells ``g`` at voltages
    ``v`` draw ``sign·I(v)`` out of the nodes (+1 on a word line, -1 on a bit line). Neighbouring
    nodes are ``wire`` Ω apart; the end node (the first when ``at_start``, else the last) meets
    ``end_voltage`` through ``end`` Ω (0: held at it). Linearised, ``(L + diag(∂I/∂V))·x_new =
    ∂I/∂V·x - sign·I + the end's injection``: tridiagonal, or one node when ``wire`` is 0.
    """
    if wire == 0 and end == 0:
        return x
    i0, slope = device.current(v, g), device.slope(v, g)
    rhs = slope * x - sign * i0
    if wire == 0:  # one node per line
        g_end = 1.0 / end
        node = (g_end * end_voltage + rhs.sum(-1)) / (g_end + slope.sum(-1))
        return node[..., None].expand_as(x).clone()
    g_wire = 1.0 / wire
    diag = slope + 2 * g_wire
    at, far = (0, -1) if at_start else (-1, 0)
    diag[..., far] -= g_wire  # the far end has one neighbour
    if end == 0:  # the driver (sense amplifier) holds the end node at its voltage
        diag[..., at] = 1.0
        rhs[..., at] = end_voltage
    else:
        diag[..., at] += 1.0 / end - g_wire
        rhs[..., at] += end_voltage / end
    return _tridiagonal(diag, rhs, -g_wire, first_fixed=at_start and end == 0, last_fixed=not at_start and end == 0)


def _tridiagonal(diag: Tensor, rhs: Tensor, off: float, *, first_fixed: bool, last_fixed: bool) -> Tensor:
    """Solve tridiagonal systems along the last dimension: ``diag`` on the diagonal, ``off`` on both
    off-diagonals, except that a fixed first (last) row has no upper (lower) neighbour (Thomas' algorithm).

    The line runs along the first dimension of contiguous copies, so every step works on a
    contiguous slice of all the lines at once.
    """
    n = diag.shape[-1]
    d, r = diag.movedim(-1, 0).contiguous(), rhs.movedim(-1, 0).contiguous()
    upper = torch.empty_like(d)
    x = r  # overwritten in place with the solution
    inverse = 1.0 / d[0]
    upper[0] = 0.0 if first_fixed else off * inverse
    x[0].mul_(inverse)
    for k in range(1, n):
        lower = 0.0 if (last_fixed and k == n - 1) else off
        inverse = 1.0 / (d[k] - lower * upper[k - 1])
        if k < n - 1:
            torch.mul(inverse, off, out=upper[k])
        x[k].sub_(x[k - 1], alpha=lower).mul_(inverse)
    for k in range(n - 2, -1, -1):
        x[k].addcmul_(upper[k], x[k + 1], value=-1.0)
    return x.movedim(0, -1)


def _pick(columns: Tensor, lines: Tensor) -> Tensor:
    """``columns`` [tiles, vectors, bit lines] at the bit lines ``lines`` [tiles, outputs] of each tile."""
    return columns.gather(-1, lines[:, None, :].expand(-1, columns.shape[1], -1))
