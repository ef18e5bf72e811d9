"""The column-solver seam: the bit-line currents of a layer's tiles for given word-line voltages.

A solver is configured by the target's ``wires`` section (``model:`` picks it, the other fields
are its own, validated like a device model's). :meth:`ColumnSolver.prepare` turns one chip
instance's conductances into whatever the solver precomputes (cached with the programmed chip);
:meth:`ColumnSolver.read` gives, for one :class:`~rramc.hardware.input_encoding.Read`, the
current of every tile column before the ADC, in the :class:`~rramc.hardware.lowering.Lowering`'s
layout. Built in: ``ideal`` wires (every cell sees its word line's voltage; a column sums its
cells' currents). A new solver (wire resistance, say) is a subclass in its own module plus a line
in :data:`COLUMN_SOLVERS` (or an entry point in the ``rramc.column_solvers`` group).

A solver is also the ``wires`` section of a target's spec, so this module is imported to load a
target: torch is bound on first use (:mod:`rramc._lazy`), and the modules of the layer's parts
are imported where they are needed, so that loading a target does not import torch.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from rramc._lazy import lazy_import
from rramc.errors import TargetError
from rramc.hardware.config import Location, build, to_mapping
from rramc.hardware.devices import DeviceModel
from rramc.registry import Registry

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import Tensor

    from rramc.hardware.expansion import Expansion
    from rramc.hardware.input_encoding import Read
    from rramc.hardware.lowering import Lowering
    from rramc.hardware.tiling import TileGrid
    from rramc.ir.cells import CellPairs
else:
    torch = lazy_import("torch", globals())
    F = lazy_import("torch.nn.functional", globals(), "F")

# Per-cell evaluation materialises vectors × rows × outputs currents; vectors are cut so that one
# chunk stays below this many elements (~64 MiB in float32).
PER_CELL_CHUNK_ELEMENTS = 1 << 24


@dataclass
class Conductances:
    """One layer's cells on one chip instance (or, in training, at one step).

    ``pairs``, the cells ``g_pos``/``g_neg`` ``[inputs, outputs]`` [S] (coded, when the solver
    ``accepts_coded`` cells and they are, see :mod:`rramc.ir.cells`), the tile ``grid``, how inputs reach the arrays
    (``lowering``), the ``device``, its read voltage and programmable ``window``, the DAC
    resolution (``dac_bits``: which voltages occur), the ``tolerance`` the computed currents
    need (relative to a full-scale cell current; it follows the ADC) and the read noise.

    ``terms``, when given, are the cell pairs' ``ψ(G⁺) - ψ(G⁻)`` ``[terms, outputs, inputs]`` of the
    device's expansion at this ``dac_bits``/``tolerance``, computed straight from the weights
    (training's fast path; ``pairs`` are then empty): only a solver with
    ``accepts_terms`` may be given such cells. ``weight_encoding`` says how the pairs sit in an
    array (a solver of wires needs the cells' places).
    """

    pairs: CellPairs
    grid: TileGrid
    lowering: Lowering
    device: DeviceModel
    read_voltage: float
    window: tuple[float, float]
    dac_bits: int | None
    tolerance: float
    read_noise_sigma: float = 0.0
    terms: Tensor | None = None
    weight_encoding: str = "differential"  # how an array holds the pairs: where each cell sits (see wires)
    row_place: Tensor | None = None  # places of the word lines and outputs in their arrays (see CrossbarOp)
    col_place: Tensor | None = None

    @property
    def g_pos(self) -> Tensor:
        """The first cell of every pair (decoded: a new matrix when the pairs are coded)."""
        return self.pairs.side(0)

    @property
    def g_neg(self) -> Tensor:
        return self.pairs.side(1)

    def expansion(self, squared: bool = False) -> Expansion:
        """The device's expansion for these cells' voltages and accuracy."""
        from rramc.hardware.expansion import device_expansion

        return device_expansion(self.device, self.read_voltage, *self.window, self.dac_bits, self.tolerance, squared)


class ColumnSolver(ABC):
    """Base of column solvers: frozen dataclasses of their ``wires`` fields; ``model`` is their name."""

    model: ClassVar[str]
    accepts_terms: ClassVar[bool] = False
    """Whether :meth:`prepare` takes cells given by their expansion terms (see :class:`Conductances`)."""
    accepts_coded: ClassVar[bool] = False
    """Whether :meth:`prepare` takes coded cells (:class:`~rramc.ir.cells.CodedPairs`); others are given them decoded."""
    accepts_durations: ClassVar[bool] = False
    """Whether :meth:`read` takes reads whose word lines are driven for part of the window
    (:attr:`~rramc.hardware.input_encoding.Read.durations`): with wires, the currents change as
    pulses end, so such an encoding reads in time slots instead."""

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: Location) -> ColumnSolver:
        return build(cls, data, where)

    def to_mapping(self) -> dict[str, Any]:
        return {"model": self.model, **{k: v for k, v in to_mapping(self).items() if v is not None}}

    @abstractmethod
    def prepare(self, cells: Conductances) -> Any:
        """Precompute what :meth:`read` needs for these cells (differentiable when they require grad)."""

    @abstractmethod
    def read(self, state: Any, read: Read, generator: torch.Generator | None) -> Tensor:
        """Tile column currents [A] for one read, in the lowering's layout (see :mod:`~rramc.hardware.lowering`).

        ``generator`` draws the read noise (when the cells have any).
        """

    def describe(self, cells: Conductances) -> str:
        """How this solver computes these cells, for reports."""
        return self.model


@dataclass
class _Matrices:
    """Column sums as matmuls: ``φ(V)`` of the word lines times these per-term cell values."""

    expansion: Expansion
    rows: Tensor | None  # [inputs·terms, outputs]: word line i, term k in row i·terms + k (a linear layer)
    row_blocks: list[tuple[int, int]]  # the rows of each block of word lines (tile rows), in ``rows``
    stacked: Tensor | None  # [blocks, height, outputs]: each block's rows, zero-padded (a trainable layer of several blocks)
    index: Tensor | None  # [blocks, height] the drive row of every slot of ``stacked`` (terms·inputs: the zero pad)
    conv: list[Tensor] | None  # per row block: [outputs, its channels·terms, kh, kw], taps of other blocks zero
    conv_channels: list[tuple[int, int]] | None  # per row block: its input channels (first, last + 1)
    per_term: Tensor | None = None  # [terms, outputs, inputs] of a one-block linear layer given by its terms (training)
    tables: dict[tuple[torch.dtype, torch.device, int, bool], Tensor] = dataclasses.field(default_factory=dict)


@dataclass
class _IdealState:
    cells: Conductances
    current: _Matrices
    variance: _Matrices | None


@dataclass(frozen=True)
class IdealWires(ColumnSolver):
    """Wires without resistance: every cell sees its word line's voltage, a column sums its cells.

    The currents are matmuls through the device's :mod:`~rramc.hardware.expansion` (one per term;
    a convolution stays a convolution, no im2col), and read noise — each cell's current times
    ``1 + σ·ε`` — is drawn with its exact column variance ``σ²·Σ_i (f⁺² + f⁻²)``, itself a matmul.
    Voltages beyond the expansion's range (an ideal DAC fed more than full scale) are evaluated
    per cell, in chunks.
    """

    model: ClassVar[str] = "ideal"
    accepts_terms: ClassVar[bool] = True
    accepts_coded: ClassVar[bool] = True  # ψ(G⁺) ∓ ψ(G⁻) is a function of the pair: computed per distinct pair
    accepts_durations: ClassVar[bool] = True  # cells are independent: the charge is Σ_i d_i·f(V_i, G)

    def prepare(self, cells: Conductances) -> _IdealState:
        expansion = cells.expansion()
        current = _matrices(cells, expansion, subtract=True)
        variance = None
        if cells.read_noise_sigma > 0:
            variance = _matrices(cells, cells.expansion(squared=True), subtract=False)
        return _IdealState(cells, current, variance)

    def read(self, state: _IdealState, read: Read, generator: torch.Generator | None) -> Tensor:
        cells = state.cells
        if read.levels is None and not state.current.expansion.covers(read.voltages):
            if cells.terms is not None:
                raise ValueError(f"voltages up to {float(read.voltages.max()):.3g} V: cells given by their expansion terms "
                                 f"hold up to {state.current.expansion.v_max:g} V only")
            return _per_cell(cells, read.voltages, generator, read.durations)
        current = _matmul(state.current, cells, read)
        if state.variance is not None:
            variance = _matmul(state.variance, cells, read, squared=True)
            noise = torch.randn(current.shape, generator=generator, dtype=current.dtype, device=current.device)
            current = current + cells.read_noise_sigma * variance.clamp_min(0).sqrt() * noise
        return current

    def describe(self, cells: Conductances) -> str:
        from rramc.hardware.expansion import describe

        return "ideal wires, " + describe(cells.expansion())


def _matrices(cells: Conductances, expansion: Expansion, *, subtract: bool) -> _Matrices:
    """``ψ(G⁺) ∓ ψ(G⁻)`` of every cell pair, arranged for the layer's matmuls (linear) or convolutions.

    Computed per distinct pair where the cells are coded, and written straight into the layout the
    matmuls read: with one expansion term, the only matrix of the layer's size built here is the one kept.
    """
    grid = cells.grid
    if cells.terms is not None and subtract:
        if cells.lowering.conv is None and grid.uniform:  # kept in the weights' layout: a matmul per term, no copy
            return _Matrices(expansion, None, [], None, None, None, None, per_term=cells.terms)
        cell = cells.terms.permute(2, 1, 0)  # [inputs, outputs, terms]
    else:
        def combined(g_pos: Tensor, g_neg: Tensor) -> Tensor:
            pos, neg = expansion.conductance(g_pos), expansion.conductance(g_neg)
            return pos - neg if subtract else pos + neg

        cell = cells.pairs.per_pair(combined)  # [inputs, outputs, terms]
    n_in, outputs, terms = cell.shape
    if cells.lowering.conv is None:
        # The drive row of word line i, term k is i·terms + k: a row block is a consecutive slice.
        rows = cell.transpose(1, 2).reshape(n_in * terms, outputs)  # a view when there is one term
        row_blocks = [(a * terms, b * terms) for a, b in grid.row_blocks]
        if grid.uniform or not rows.requires_grad:
            return _Matrices(expansion, rows, row_blocks, None, None, None, None)
        # Trainable: one batched matmul over the blocks, gathered into equal heights, beats a loop of small ones.
        height = max(b - a for a, b in row_blocks)
        index = torch.full((len(row_blocks), height), terms * n_in, dtype=torch.long, device=rows.device)
        for block, (a, b) in enumerate(row_blocks):
            index[block, : b - a] = torch.arange(a, b, device=rows.device)
        padded = torch.cat([rows, rows.new_zeros(1, outputs)])
        return _Matrices(expansion, None, row_blocks, padded[index], index, None, None)
    (kh, kw), *_ = cells.lowering.conv
    taps = kh * kw
    channels = n_in // taps
    full = cell.reshape(channels, kh, kw, outputs, terms).permute(3, 0, 4, 1, 2)  # [outputs, C, terms, kh, kw]
    if grid.uniform:
        return _Matrices(expansion, None, [], None, None, [full.reshape(outputs, channels * terms, kh, kw).contiguous()],
                         [(0, channels)])
    # A row block covers consecutive (channel, tap) rows: its convolution reads the channels it
    # touches, with the taps of its neighbours' rows zeroed (at most one channel shared per edge).
    weights, spans = [], []
    row = torch.arange(n_in, device=cell.device).reshape(channels, 1, kh, kw)
    for a, b in grid.row_blocks:
        c0, c1 = a // taps, (b - 1) // taps + 1
        inside = ((row >= a) & (row < b)).to(cell.dtype)[c0:c1]  # [channels of the block, 1, kh, kw]
        weights.append((full[:, c0:c1] * inside).reshape(outputs, (c1 - c0) * terms, kh, kw).contiguous())
        spans.append((c0, c1))
    return _Matrices(expansion, None, [], None, None, weights, spans)


def _drive(matrices: _Matrices, read: Read, squared: bool = False) -> Tensor:
    """``φ(V)`` of every word-line voltage: ``[..., terms]``, times the fraction of the window it is driven
    (squared for a variance). For a factorised device, whose terms are interpolated, looked up per DAC
    level when the voltages come from a DAC; a separable device's ``g(V)`` costs less to compute than a
    gather does."""
    expansion = matrices.expansion
    if read.levels is not None and not expansion.exact:
        key = (read.levels.dtype, read.levels.device, read.levels.numel(), read.uniform)  # one layer: one DAC
        table = matrices.tables.get(key)
        if table is None:
            table = matrices.tables[key] = expansion.voltage(read.levels)
        phi = F.embedding(read.codes(), table)
    else:
        phi = expansion.voltage(read.voltages)
    if read.durations is None:
        return phi
    return phi * (read.durations.square() if squared else read.durations)[..., None]


def _matmul(matrices: _Matrices, cells: Conductances, read: Read, squared: bool = False) -> Tensor:
    if matrices.expansion.exact and matrices.rows is not None and len(matrices.row_blocks) == 1:
        return torch.matmul(_drive(matrices, read, squared)[..., 0], matrices.rows).unsqueeze(0)  # the common case
    phi = _drive(matrices, read, squared)
    if matrices.per_term is not None:
        out = F.linear(phi[..., 0], matrices.per_term[0])
        for k in range(1, phi.shape[-1]):
            out = torch.addmm(out, phi[..., k], matrices.per_term[k].T)
        return out[None]
    if cells.lowering.conv is None:
        flat = phi.reshape(phi.shape[0], -1)  # [batch, inputs·terms], term k of input i at i·terms + k
        if matrices.stacked is not None:
            assert matrices.index is not None
            padded = torch.cat([flat, flat.new_zeros(flat.shape[0], 1)], dim=1)
            return torch.bmm(padded[:, matrices.index].transpose(0, 1), matrices.stacked)
        assert matrices.rows is not None
        if torch.is_grad_enabled() and (flat.requires_grad or matrices.rows.requires_grad):  # mm(out=) does not differentiate
            return torch.stack([flat[:, a:b] @ matrices.rows[a:b] for a, b in matrices.row_blocks])
        # Each block's rows are a slice of the drive and of the matrix: a matmul per block into one buffer.
        out = flat.new_empty(len(matrices.row_blocks), flat.shape[0], matrices.rows.shape[1])
        for block, (a, b) in enumerate(matrices.row_blocks):
            torch.mm(flat[:, a:b], matrices.rows[a:b], out=out[block])
        return out
    _, stride, padding, dilation = cells.lowering.conv
    batch, channels, h, w, terms = phi.shape
    drive = phi.permute(0, 1, 4, 2, 3).reshape(batch, channels * terms, h, w) if terms > 1 else phi[..., 0]
    assert matrices.conv is not None and matrices.conv_channels is not None
    results = [F.conv2d(drive[:, c0 * terms : c1 * terms], weight, None, stride, padding, dilation)
               for (c0, c1), weight in zip(matrices.conv_channels, matrices.conv)]
    return results[0][:, None] if len(results) == 1 else torch.stack(results, dim=1)


def _per_cell(cells: Conductances, voltages: Tensor, generator: torch.Generator | None, durations: Tensor | None = None) -> Tensor:
    """Exact currents, cell by cell, for voltages the expansion does not cover (each word line's
    current times the fraction of the window it is driven, when ``durations`` say)."""
    lowering = cells.lowering
    vectors = lowering.vectors(voltages)
    fractions = None if durations is None else lowering.vectors(durations)
    outputs = cells.pairs.shape[1]
    spatial = lowering.output_size(voltages)
    blocks = []
    for a, b in cells.grid.row_blocks:
        g_pos, g_neg = cells.pairs.rows(a, b)
        chunk = max(1, PER_CELL_CHUNK_ELEMENTS // max(1, (b - a) * outputs))
        parts = []
        for start in range(0, vectors.shape[0], chunk):
            v = vectors[start : start + chunk, a:b, None]
            i_pos, i_neg = cells.device.current(v, g_pos), cells.device.current(v, g_neg)
            if fractions is not None:
                d = fractions[start : start + chunk, a:b, None]
                i_pos, i_neg = i_pos * d, i_neg * d
            current = (i_pos - i_neg).sum(1)
            if cells.read_noise_sigma > 0:
                std = cells.read_noise_sigma * (i_pos**2 + i_neg**2).sum(1).sqrt()
                current = current + std * torch.randn(current.shape, generator=generator, dtype=current.dtype, device=current.device)
            parts.append(current)
        blocks.append(lowering.restore(torch.cat(parts), voltages.shape[0], spatial))
    return torch.stack(blocks, dim=lowering.block_dim)


def column_currents(
    voltages: Tensor,
    g_pos: Tensor,
    g_neg: Tensor,
    device: DeviceModel,
    *,
    grid: TileGrid | None = None,
    solver: ColumnSolver | None = None,
    read_voltage: float | None = None,
    window: tuple[float, float] | None = None,
    read_noise_sigma: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Differential bit-line currents ``Σ_i f(V_i, G⁺_ij) - f(V_i, G⁻_ij)`` of word-line voltages
    ``[batch, inputs]`` on cells ``[inputs, outputs]``, per row block: ``[blocks, batch, outputs]`` [A].

    A convenience for exploring a device and for tests: one linear layer, ideal converters,
    ``solver`` (default: ideal wires). ``read_voltage`` and ``window`` bound where a non-separable
    device's expansion must hold (default: the largest voltage and the conductances' range).
    """
    from rramc.hardware.expansion import IDEAL_TOLERANCE
    from rramc.hardware.input_encoding import Read
    from rramc.ir.cells import DensePairs
    from rramc.hardware.lowering import Lowering
    from rramc.hardware.tiling import TileGrid

    grid = grid or TileGrid((0, g_pos.shape[0]), (0, g_pos.shape[1]))
    g = torch.cat([g_pos.detach().reshape(-1), g_neg.detach().reshape(-1)])
    window = window or (float(g.min()), float(g.max()))
    if window[1] <= window[0]:
        window = (window[0], window[0] * 1.001 + 1e-12)
    cells = Conductances(DensePairs(g_pos, g_neg), grid, Lowering(), device, read_voltage or float(voltages.max()) or 1.0, window, None,
                         IDEAL_TOLERANCE, read_noise_sigma)
    solver = solver or IdealWires()
    return solver.read(solver.prepare(cells), Read(1.0, voltages), generator)


COLUMN_SOLVERS: Registry[type[ColumnSolver]] = Registry(
    what="column solver (wires model)",
    group="rramc.column_solvers",
    builtins={"ideal": "rramc.hardware.column_solver:IdealWires", "resistive": "rramc.hardware.wires:ResistiveWires"},
    error=TargetError,
    interface=ColumnSolver,
    name_attribute="model",
)
"""Every column solver by its ``wires.model`` name: the built-ins plus the ``rramc.column_solvers`` entry points."""
