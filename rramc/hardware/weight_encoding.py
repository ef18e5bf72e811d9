"""The weight-encoding seam: how signed weights are held by non-negative conductances.

An encoding maps a ``[outputs, inputs]`` weight matrix to a pair of conductance matrices
``g_pos``/``g_neg`` (``[inputs, outputs]``) whose column currents are subtracted before the ADC,
says how many outputs one array holds, and writes them to a chip instance (where cells shared
between columns, like a reference column, are drawn once). Built in: ``differential`` (two
columns per weight) and ``offset`` (one column per weight against a shared reference column).
A new encoding is a subclass in its own module plus a line in :data:`WEIGHT_ENCODINGS` (or an
entry point in the ``rramc.weight_encodings`` group).

A target's weight encoding is checked against :data:`WEIGHT_ENCODINGS` when it is loaded, so this
module is imported to load a target: torch and the mapping are bound on first use
(:mod:`rramc._lazy`).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from rramc._lazy import lazy_import
from rramc.errors import TargetError
from rramc.hardware.target import Target
from rramc.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from rramc.hardware import mapping
    from rramc.hardware.expansion import Expansion, UniformTable
    from rramc.hardware.mapping import ReadCurrent
    from rramc.hardware.tiling import TileGrid
    from rramc.ir import cells as cell_pairs
    from rramc.ir.cells import CellPairs
else:
    torch = lazy_import("torch", globals())
    mapping = lazy_import("rramc.hardware.mapping", globals())
    cell_pairs = lazy_import("rramc.ir.cells", globals(), "cell_pairs")


@dataclass(frozen=True)
class MappedWeights:
    """The cells ``pairs`` — ``g_pos``/``g_neg`` ``[inputs, outputs]`` [S], coded where they sit on levels
    (:mod:`rramc.ir.cells`) — and the scale ``conductance_per_weight`` [S per weight unit]."""

    pairs: CellPairs
    conductance_per_weight: Tensor

    @property
    def g_pos(self) -> Tensor:
        return self.pairs.side(0)

    @property
    def g_neg(self) -> Tensor:
        return self.pairs.side(1)


class WeightEncoding(ABC):
    """Base of weight encodings; ``name`` is the value of ``crossbar.weight_encoding``."""

    name: ClassVar[str]

    def __init__(self, target: Target) -> None:
        self.target = target

    @property
    def read_current(self) -> ReadCurrent:
        return mapping.read_current(self.target)

    @abstractmethod
    def outputs_per_array(self) -> int:
        """Weight columns (outputs) one array of the target holds."""

    @abstractmethod
    def bit_lines(self, outputs: int) -> int:
        """Physical bit lines a tile of ``outputs`` weight columns occupies."""

    @abstractmethod
    def map(self, weight: Tensor, *, per_column: bool, levels: int | None) -> MappedWeights:
        """Conductances for ``weight`` ``[outputs, inputs]``; differentiable if ``weight`` requires grad.

        ``levels``: programmable levels to round to (None: continuous).
        """

    def program(self, g_pos: Tensor, g_neg: Tensor, write: Callable[[Tensor], Tensor], grid: TileGrid) -> tuple[Tensor, Tensor]:
        """The conductances one chip instance holds: ``write`` draws variation and faults for cells."""
        return write(g_pos), write(g_neg)

    def map_planned(self, weight: Tensor, *, per_column: bool, levels: int | None, slices: int | None,
                    slice_bits: int | None) -> MappedWeights:
        """:meth:`map`, or :meth:`map_sliced` when a mapping plan slices the weights (``slices`` not None)."""
        if slices is None:
            return self.map(weight, per_column=per_column, levels=levels)
        assert slice_bits is not None
        return self.map_sliced(weight, per_column=per_column, slices=slices, bits=slice_bits, levels=levels)

    def map_sliced(self, weight: Tensor, *, per_column: bool, slices: int, bits: int, levels: int | None) -> MappedWeights:
        """Conductances for ``weight`` spread over ``slices`` cell pairs of ``bits`` bits each: ``[inputs,
        outputs·slices]``, output ``j``'s slice ``s`` (least significant first) in column ``j·slices + s``."""
        raise TargetError(f"weight encoding {self.name} cannot spread a weight over several cells (bit-slicing)")

    def cell_terms(self, weight: Tensor, expansion: Expansion, *, per_column: bool) -> tuple[Tensor, Tensor] | None:
        """Training's fast path: ``ψ(G⁺) - ψ(G⁻)`` ``[terms, outputs, inputs]`` of the continuous
        (unrounded) conductances of ``weight``, computed without the conductances, and
        ``conductance_per_weight``; None when the encoding offers none (the generic :meth:`map`
        and the expansion are used). Must equal the generic path within the expansion's tolerance.
        """
        return None


BLOCK = 1 << 18
"""Weights mapped at once (whole outputs): float64 intermediates of a few MB, which stay in cache, not of the
whole layer."""

Cells = Callable[["Tensor", "Tensor"], tuple["Tensor", "Tensor"]]
"""An encoding's cell map: a block of the weight ``[outputs, inputs]`` and the peak of each of its outputs →
``g_pos``/``g_neg`` ``[outputs·k, inputs]`` (``k`` cells per weight); each cell depends on its weight and its output's peak alone."""


def _map_cells(weight: Tensor, peak: Tensor, cells: Cells) -> CellPairs:
    """``cells`` of ``weight`` as ``[inputs, outputs·k]`` conductances in the weight's precision.

    A weight being trained is mapped at once, differentiably. Otherwise the map runs in float64
    on blocks of whole outputs (the cells of a block depend on nothing outside it), which gives
    the same values as mapping the whole matrix at once in a fraction of the memory and time,
    and each block is coded as it comes (:class:`~rramc.ir.cells.PairCoder`): conductances on
    levels take a byte per pair, and the layer's dense matrices never exist.
    """
    if weight.requires_grad:
        g_pos, g_neg = cells(weight, peak)
        return cell_pairs.DensePairs(g_pos.T, g_neg.T)
    outputs, inputs = weight.shape
    peak = peak.detach().to(torch.float64)
    step = max(1, BLOCK // max(inputs, 1))
    coder = None
    for a in range(0, outputs, step):
        block_pos, block_neg = cells(weight[a:a + step].detach().to(torch.float64), peak[a:a + step])
        if coder is None:
            k = block_pos.shape[0] // min(step, outputs)  # cells per weight
            coder = cell_pairs.PairCoder(inputs, outputs * k, weight.dtype, weight.device)
        coder.write(a * k, block_pos.T, block_neg.T)
    assert coder is not None
    return coder.finish()


def _peak(weight: Tensor, per_column: bool) -> Tensor:
    """:func:`~rramc.hardware.mapping.weight_peak` in float64 (taken in the weight's precision: the same values)."""
    peak = mapping.weight_peak(weight if weight.requires_grad else weight.detach(), per_column)
    return peak if weight.requires_grad else peak.to(torch.float64)


def _scale(weight: Tensor, scale: Tensor) -> Tensor:
    """The conductance scale in the weight's own precision."""
    return scale if weight.requires_grad else scale.to(weight.dtype)


class Differential(WeightEncoding):
    """Two cells per weight on a column pair: ``I(G±) = I(g_min) + c·max(±W, 0)``.

    ``c`` is chosen per output (or per layer) so that the largest weight reaches ``g_max``.
    """

    name = "differential"

    def outputs_per_array(self) -> int:
        return self.target.crossbar.cols // 2

    def bit_lines(self, outputs: int) -> int:
        return 2 * outputs

    def map(self, weight: Tensor, *, per_column: bool, levels: int | None) -> MappedWeights:
        rc, c = self.read_current, self.target.conductance

        def cells(w: Tensor, peak: Tensor) -> tuple[Tensor, Tensor]:
            scale = (c.g_max - c.g_min) / peak  # S per weight unit (in the current domain: scale · response)
            sides = torch.stack([torch.relu(w), torch.relu(-w)])  # both cells of the pair in one pass of each operation
            if rc.linear and levels is None:
                # I linear in G and no rounding: the same map, without the round trip through currents.
                g = c.g_min + scale[:, None] * sides
            else:
                g = rc.conductance(rc.i_min + (scale * rc.response)[:, None] * sides, levels)
            return g[0], g[1]

        peak = _peak(weight, per_column)
        return MappedWeights(_map_cells(weight, peak, cells), _scale(weight, (c.g_max - c.g_min) / peak))

    def map_sliced(self, weight: Tensor, *, per_column: bool, slices: int, bits: int, levels: int | None) -> MappedWeights:
        # |W| / peak becomes an integer of slices·bits bits; each slice holds one base-2^bits digit of it, as
        # an evenly spaced read current (what the shift-and-add needs), on G⁺ for positive and G⁻ for negative weights.
        rc, c = self.read_current, self.target.conductance
        top, base = (1 << (bits * slices)) - 1, 1 << bits
        per_digit = (rc.i_max - rc.i_min) / (base - 1)

        def cells(w: Tensor, peak: Tensor) -> tuple[Tensor, Tensor]:
            magnitude = (w.detach().abs() / peak[:, None] * top).round()
            positive = w.detach() > 0
            digits = torch.stack([torch.remainder(torch.div(magnitude, base**s, rounding_mode="floor"), base) for s in range(slices)], 1)
            pair = [rc.conductance(rc.i_min + per_digit * torch.where(side[:, None], digits, torch.zeros_like(digits)), levels)
                    for side in (positive, ~positive)]  # [outputs, slices, inputs] each
            if w.requires_grad:
                # Straight through, on the most significant slice: the pair's conductance difference moves with c·W.
                most = (1 << (bits * (slices - 1))) * (base - 1) / top
                nudge = ((c.g_max - c.g_min) / peak[:, None] * (w - w.detach()) / most)[:, None]
                last = torch.arange(slices, device=w.device) == slices - 1
                pair = [pair[0] + torch.where(last[None, :, None], nudge / 2, 0.0), pair[1] - torch.where(last[None, :, None], nudge / 2, 0.0)]
            return pair[0].reshape(-1, w.shape[-1]), pair[1].reshape(-1, w.shape[-1])

        peak = _peak(weight, per_column).detach()  # the slices' digits are not trained through the peak
        return MappedWeights(_map_cells(weight, peak, cells), _scale(weight, (c.g_max - c.g_min) / peak))

    def cell_terms(self, weight: Tensor, expansion: Expansion, *, per_column: bool) -> tuple[Tensor, Tensor] | None:
        # ψ(G⁺) - ψ(G⁻) depends on the weight only through t = c·W (the read-current difference at full
        # scale): one table lookup per weight instead of two inverse maps and two ψ evaluations.
        c = self.target.conductance
        scale = (c.g_max - c.g_min) / mapping.weight_peak(weight, per_column)
        if expansion.exact:  # ψ(G) = G: the difference is the conductance difference itself
            return (weight * scale[:, None])[None], scale
        table = _difference_table(self.target, expansion)
        return table.terms_first(weight * (scale * self.read_current.response)[:, None]), scale


@functools.lru_cache(maxsize=32)
def _difference_table(target: Target, expansion: Expansion) -> UniformTable:
    """``H(t) = ψ(I⁻¹(I_min + max(t, 0))) - ψ(I⁻¹(I_min + max(-t, 0)))`` tabulated over ``t ∈ [-ΔI, ΔI]``."""
    from rramc.hardware.expansion import UniformTable

    rc = mapping.read_current(target)
    span = rc.i_max - rc.i_min
    t = torch.linspace(-span, span, DIFFERENCE_GRID, dtype=torch.float64)
    pos = expansion.conductance(rc.conductance(rc.i_min + torch.relu(t), None))
    neg = expansion.conductance(rc.conductance(rc.i_min + torch.relu(-t), None))
    return UniformTable(-span, span, pos - neg)


DIFFERENCE_GRID = 8193  # odd: t = 0, where the pair switches sides, is a node


class Offset(WeightEncoding):
    """One cell per weight against a reference cell per word line and array at the middle level:
    ``I(G) = I(g_ref) + c·W``; the reference column's current is subtracted before the ADC."""

    name = "offset"

    def outputs_per_array(self) -> int:
        return self.target.crossbar.cols - 1

    def bit_lines(self, outputs: int) -> int:
        return outputs + 1

    def reference(self, levels: int | None) -> float:
        """The reference conductance: the level nearest the middle of the window."""
        c = self.target.conductance
        mid = torch.tensor((c.g_min + c.g_max) / 2, dtype=torch.float64)
        if levels is None:
            return float(mid)
        step = (c.g_max - c.g_min) / (levels - 1)
        return float(c.g_min + torch.round((mid - c.g_min) / step) * step)

    def map(self, weight: Tensor, *, per_column: bool, levels: int | None) -> MappedWeights:
        rc = self.read_current
        g_ref = self.reference(levels)
        i_ref = rc.current_at(g_ref)
        half = min(rc.i_max - i_ref, i_ref - rc.i_min)

        def cells(w: Tensor, peak: Tensor) -> tuple[Tensor, Tensor]:
            g_pos = rc.conductance(i_ref + (half / peak)[:, None] * w, levels)
            return g_pos, torch.full_like(g_pos, g_ref)

        peak = _peak(weight, per_column)
        per_weight = half / peak  # A per weight unit
        return MappedWeights(_map_cells(weight, peak, cells), _scale(weight, per_weight / rc.response))

    def program(self, g_pos: Tensor, g_neg: Tensor, write: Callable[[Tensor], Tensor], grid: TileGrid) -> tuple[Tensor, Tensor]:
        # One reference cell per word line and array, shared by the array's columns.
        starts = [a for a, _ in grid.col_blocks]
        reference = grid.per_column(write(g_neg[:, starts]))
        return write(g_pos), reference


WEIGHT_ENCODINGS: Registry[type[WeightEncoding]] = Registry(
    what="weight encoding",
    group="rramc.weight_encodings",
    builtins={"differential": "rramc.hardware.weight_encoding:Differential", "offset": "rramc.hardware.weight_encoding:Offset"},
    error=TargetError,
    interface=WeightEncoding,
)
"""Every weight encoding by name: the built-ins plus the ``rramc.weight_encodings`` entry points."""


def slice_bits(target: Target) -> int | None:
    """Bits per slice of ``target``'s bit-sliced weights (None: unsliced): ``crossbar.slice_bits``, or the
    most that evenly spaced digits on the cell's levels allow."""
    x, levels = target.crossbar, target.conductance.levels
    if x.slice_bits is not None or x.weight_slices == 1:
        return x.slice_bits
    if levels is None:
        return None
    return max(b for b in range(1, 17) if (1 << b) <= levels and (levels - 1) % ((1 << b) - 1) == 0)


def slicing_problem(target: Target) -> tuple[str, str] | None:
    """Why ``target``'s bit-slicing fields do not fit its cells — ``(crossbar field, message)`` — or None."""
    x, levels = target.crossbar, target.conductance.levels
    if x.weight_slices == 1 and x.slice_bits is None:
        return None
    if x.weight_encoding != "differential":
        return ("weight_encoding", f"bit-slicing (weight_slices {x.weight_slices}, slice_bits {x.slice_bits}) spreads a weight over "
                                   f"differential pairs; weight_encoding {x.weight_encoding} cannot: use differential")
    bits = slice_bits(target)
    if bits is None:
        return ("slice_bits", "continuous cells (conductance.levels null) have no levels to take the slice's bits from: set slice_bits")
    if levels is not None:
        fitting = [b for b in range(1, 17) if (1 << b) <= levels and (levels - 1) % ((1 << b) - 1) == 0]
        if (1 << bits) > levels:
            return ("slice_bits", f"{bits} bits need {1 << bits} levels per cell, but conductance.levels is {levels}; "
                                  f"slices that fit: slice_bits {', '.join(map(str, fitting))}")
        if (levels - 1) % ((1 << bits) - 1):
            return ("slice_bits", f"the {1 << bits} evenly spaced levels of a {bits}-bit slice do not fall on the cell's {levels} "
                                  f"levels ({levels} - 1 is not a multiple of {(1 << bits) - 1}); slices that fit: slice_bits "
                                  f"{', '.join(map(str, fitting))}")
    if x.weight_slices * bits > 32:
        return ("weight_slices", f"{x.weight_slices} slices of {bits} bits make {x.weight_slices * bits}-bit weights; at most 32")
    return None


def weight_encoding(name: str, target: Target) -> WeightEncoding:
    """The encoding ``name`` for ``target``."""
    return WEIGHT_ENCODINGS.get(name)(target)
