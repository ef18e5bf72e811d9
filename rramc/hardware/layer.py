"""One crossbar layer as a chip computes it: programmed cells, reads, ADCs and the neuron.

:class:`CrossbarLayer` is the single implementation of a crossbar op's computation. The runtime
executes it on programmed chips, ``calibrate`` sets its ranges through it, and ``reconstruct``
trains through it (built from trainable weights at every step by :func:`mapped_layer`).

Computation, for inputs ``x``: ``u = x / input_range.scale``; signed inputs are read in two
phases (``max(u, 0)`` and ``max(-u, 0)``, subtracted after the ADC), unsigned ones in one
(negative values clipped and counted). The input encoding turns each phase into reads; for each
read the column solver gives every tile column's current; each tile's ADC digitises it; the
reads and row blocks are added digitally; the neuron applies ``gain`` and ``offset`` (or bias).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rramc.errors import RramcError, RuntimeSimulationError
from rramc.hardware.column_solver import ColumnSolver, Conductances
from rramc.hardware.converters import adc, adc_steps
from rramc.hardware.expansion import device_expansion, tolerance_for
from rramc.hardware.input_encoding import INPUT_ENCODINGS, InputEncoding
from rramc.hardware.lowering import Lowering
from rramc.hardware.mapping import MappingPlan
from rramc.hardware.observers import Observer
from rramc.hardware.target import Target
from rramc.hardware.tiling import TileGrid, split_points
from rramc.hardware.weight_encoding import WEIGHT_ENCODINGS, WeightEncoding
from rramc.ir import Conv2d, CrossbarConv2d, CrossbarLinear, CrossbarOp, InputRange, Linear, Node, weight_matrix
from rramc.ir.cells import CellPairs, CodedPairs, DensePairs

Phase = tuple[float, Tensor]  # (digital weight: ± read weight, tile column currents)


def encodings(op: CrossbarOp, target: Target, where: str) -> tuple[WeightEncoding, InputEncoding]:
    """The op's weight and input encodings; an encoding this rramc does not know is named."""
    try:
        return WEIGHT_ENCODINGS.get(op.weight_encoding)(target), INPUT_ENCODINGS.get(op.input_encoding)(target)
    except RramcError as exc:
        raise RuntimeSimulationError(f"{where}: {exc} (was it compiled with a plugin that is not installed?)") from None


def cell_writer(target: Target, generator: torch.Generator | None) -> Callable[[Tensor], Tensor] | None:
    """Writes target conductances to one chip instance: programming variation and stuck cells.

    Programming variation is lognormal about the target conductance with the target's standard
    deviation ``programming_sigma·(g_max - g_min)``: its mean is the target and no conductance is
    negative, as with the lognormal spread of real RRAM states; nothing is clipped to the window,
    so the statistics are the ones the target states. (A cell targeted at exactly 0 S is spread
    about 1e-3·(g_max - g_min).) Stuck cells then sit at ``g_min`` or ``g_max``. None: nothing to do.
    """
    spec, c = target.nonidealities, target.conductance
    if not (spec.programming_sigma or spec.stuck_off_fraction or spec.stuck_on_fraction):
        return None

    def write(g: Tensor) -> Tensor:
        if spec.programming_sigma:
            std = spec.programming_sigma * (c.g_max - c.g_min)
            mean = g.clamp_min(1e-3 * (c.g_max - c.g_min))
            s2 = torch.log1p((std / mean) ** 2)
            noise = torch.randn(g.shape, generator=generator, dtype=g.dtype, device=g.device)
            g = mean * torch.exp(s2.sqrt() * noise - s2 / 2)
        if spec.stuck_off_fraction or spec.stuck_on_fraction:
            u = torch.rand(g.shape, generator=generator, dtype=g.dtype, device=g.device)
            g = torch.where(u < spec.stuck_off_fraction, torch.full_like(g, c.g_min), g)
            on = (u >= spec.stuck_off_fraction) & (u < spec.stuck_off_fraction + spec.stuck_on_fraction)
            g = torch.where(on, torch.full_like(g, c.g_max), g)
        return g

    return write


@dataclass
class CrossbarLayer:
    """A tiled crossbar op with the conductances one chip instance (or one training step) holds."""

    name: str
    source: str
    op: CrossbarOp
    target: Target
    cells: Conductances
    solver: ColumnSolver
    inputs: InputEncoding
    state: Any
    adc_range: Tensor | None = None  # [row blocks, outputs]
    clip_inputs: bool = False  # apply at most full scale even without a DAC (the device-aware model: see mapped_layer)
    _readout_factors: tuple[Tensor, Tensor, Tensor | None] | None = None  # see calibrated()
    _slice_weights: Tensor | None = None  # the shift-and-add of a bit-sliced layer's columns (see combine_slices)

    @property
    def grid(self) -> TileGrid:
        return self.cells.grid

    @property
    def lowering(self) -> Lowering:
        return self.cells.lowering

    @classmethod
    def program(
        cls,
        node: Node,
        target: Target,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        require_calibration: bool = True,
    ) -> CrossbarLayer:
        """Program ``node``'s crossbar op on a chip instance drawn from ``generator``."""
        op = node.op
        assert isinstance(op, CrossbarOp)
        where = f"%{node.name} ({node.source})"
        if not op.is_tiled:
            raise RuntimeSimulationError(f"{where} is not tiled: run the 'tile' pass before executing it on the chip")
        if require_calibration and not op.is_calibrated:
            raise RuntimeSimulationError(f"{where} is not calibrated: run the 'calibrate' pass before executing it on the chip")
        weights, inputs = encodings(op, target, where)
        pairs: CellPairs = op.cells.to(dtype=dtype, device=device)
        assert op.row_splits is not None and op.col_splits is not None
        write = cell_writer(target, generator)
        if write is not None:  # every cell its own value: the chip instance's cells are dense
            pairs = DensePairs(*weights.program(*pairs.dense(), write, TileGrid(op.row_splits, op.col_splits)))
        return cls.build(node.name, node.source, op, target, pairs, inputs)

    @classmethod
    def build(cls, name: str, source: str, op: CrossbarOp, target: Target, pairs: CellPairs,
              inputs: InputEncoding, *, tolerance: float | None = None, terms: Tensor | None = None) -> CrossbarLayer:
        """A layer of ``op`` on the cells ``pairs`` (decoded for a solver that does not take them coded);
        ``tolerance`` of the column currents (default: from the op's ADC), ``terms`` the cells' expansion
        terms when given directly (see :class:`Conductances`)."""
        assert op.row_splits is not None and op.col_splits is not None
        c = target.conductance
        solver = target.wires
        if isinstance(pairs, CodedPairs) and not solver.accepts_coded:
            pairs = DensePairs(*pairs.dense())
        cells = Conductances(pairs, TileGrid(op.row_splits, op.col_splits), Lowering.of(op), target.device,
                             target.crossbar.read_voltage, (c.g_min, c.g_max), op.dac_bits,
                             tolerance_for(op.adc_bits) if tolerance is None else tolerance,
                             target.nonidealities.read_noise_sigma, terms, op.weight_encoding, op.row_place, op.col_place)
        layer = cls(name, source, op, target, cells, solver, inputs, solver.prepare(cells))
        return layer.calibrated(op)

    def reading(self, node: Node) -> CrossbarLayer:
        """The layer of ``node``, which shares this layer's arrays (``shares``): the same programmed cells,
        read with ``node``'s own periphery settings (input range, gain, ADC ranges)."""
        op = node.op
        assert isinstance(op, CrossbarOp)
        _, inputs = encodings(op, self.target, f"%{node.name} ({node.source})")
        if (op.dac_bits, op.adc_bits) == (self.op.dac_bits, self.op.adc_bits):  # the same cells to the same accuracy:
            return CrossbarLayer(node.name, node.source, op, self.target, self.cells, self.solver, inputs,  # the solver's
                                 self.state).calibrated(op)  # state too (an unrolled LSTM prepares its arrays once)
        return CrossbarLayer.build(node.name, node.source, op, self.target, self.cells.pairs, inputs)

    def calibrated(self, op: CrossbarOp) -> CrossbarLayer:
        """This layer with the ranges, gain and offset of a newly calibrated ``op`` (same cells)."""
        self.op = op
        self.adc_range = self._readout_factors = None
        reference = torch.empty(0, dtype=self.cells.pairs.dtype, device=self.cells.pairs.device)  # what .to() converts to
        slice_weights = op.slice_weights()
        self._slice_weights = None if slice_weights is None else slice_weights.to(reference)
        if op.adc_range is not None:
            self.adc_range = self.grid.per_column(op.adc_range.to(reference))
            if op.adc_bits is not None and op.gain is not None:
                # For the fused readout: A → ADC code, and code → output units (with the neuron's gain),
                # per tile column, and the neuron's offset (or bias).
                steps, lowering = adc_steps(op.adc_bits), self.lowering
                codes_per_ampere = torch.where(self.adc_range > 0, steps / self.adc_range, torch.zeros_like(self.adc_range))
                gain = op.gain.to(reference)
                if self._slice_weights is not None:  # each slice column's code, shifted, in its output's units
                    gain = (gain[:, None] * self._slice_weights).flatten()
                per_code = self.adc_range / steps * gain
                offset = op.bias if op.offset is None else op.offset
                self._readout_factors = (lowering.per_column(codes_per_ampere), lowering.per_column(per_code),
                                         None if offset is None else lowering.per_output(offset.to(reference)))
        return self

    # --- computing ---------------------------------------------------------------------------

    def phases(self, x: Tensor, scale: float, generator: torch.Generator | None = None,
               observers: Sequence[Observer] = ()) -> list[Phase]:
        """Tile column currents of every read, before the ADC, for inputs ``x`` applied at ``scale``."""
        if self.clip_inputs:
            x = x.clamp(-scale, scale)
        signed = self.op.input_range.signed if self.op.input_range is not None else False
        parts = [(1.0, x), (-1.0, -x)] if signed else [(1.0, x)]  # the encoding applies each part's positive values
        if observers:
            negative = 0 if signed else int((x < 0).sum())
            over = sum(int(self.inputs.clipped(part, scale, self.op.dac_bits)) for _, part in parts)
            for observer in observers:
                observer.on_clip(self, negative, over, x.numel())
        phases = []
        for sign, part in parts:
            charge: Tensor | None = None  # reads that accumulate: their weighted currents, until the read that ends the group
            for read in self.inputs.reads(part, scale, self.op.dac_bits):
                try:
                    currents = self.solver.read(self.state, read, generator)
                except RuntimeSimulationError as exc:  # e.g. wires that did not converge: say which layer
                    raise type(exc)(f"%{self.name} ({self.source}): {exc}") from None
                for observer in observers:
                    observer.on_read(self, read, currents)
                if read.accumulates or charge is not None:
                    charge = read.weight * currents if charge is None else charge + read.weight * currents
                    if read.accumulates:
                        continue
                    phases.append((sign, charge))
                    charge = None
                else:
                    phases.append((sign * read.weight, currents))
        return phases

    def digitize(self, phases: list[Phase]) -> Tensor:
        """Every tile through its ADC, reads and row blocks added digitally: ``[batch, outputs, ...]`` [A]."""
        bits, lowering = self.op.adc_bits, self.lowering
        full_scale = None if bits is None else lowering.per_column(self.adc_range)  # type: ignore[arg-type]
        total: Tensor | None = None
        for weight, current in phases:
            if full_scale is not None:
                current = adc(current, full_scale, bits)
            part = current.sum(lowering.block_dim)
            part = part if weight == 1.0 else part * weight
            total = part if total is None else total + part
        assert total is not None
        return self.combine_slices(total)

    def combine_slices(self, columns: Tensor) -> Tensor:
        """A bit-sliced layer's digitised column values ``[batch, outputs·slices, ...]`` → ``[batch, outputs, ...]``,
        the slices shifted and added (:meth:`CrossbarOp.slice_weights`); others as they are."""
        weights = self._slice_weights
        if weights is None:
            return columns
        grouped = columns.unflatten(1, (-1, weights.numel()))
        return (grouped * weights.to(columns).reshape(-1, *([1] * (columns.dim() - 2)))).sum(2)

    def neuron(self, current: Tensor) -> Tensor:
        """Gain and offset (or the float bias) of the neuron circuit: current → the layer's output units."""
        assert self.op.gain is not None
        per_output = self.lowering.per_output
        y = current * per_output(self.op.gain.to(current))
        offset = self.op.bias if self.op.offset is None else self.op.offset
        return y if offset is None else y + per_output(offset.to(current))

    def __call__(self, x: Tensor, generator: torch.Generator | None = None, observers: Sequence[Observer] = ()) -> Tensor:
        assert self.op.input_range is not None
        if x.dim() > 2 and self.lowering.conv is None:  # a linear layer on tokens: each token is one read
            return self(x.reshape(-1, x.shape[-1]), generator, observers).unflatten(0, x.shape[:-1])
        phases = self.phases(x, self.op.input_range.scale, generator, observers)
        if self._readout_factors is None or torch.is_grad_enabled() and x.requires_grad:
            return self.neuron(self.digitize(phases))
        return self._readout(phases)

    def _readout(self, phases: list[Phase]) -> Tensor:
        """:meth:`digitize` then :meth:`neuron`, fused for inference: each tile's current becomes an ADC
        code in place, and one factor per tile column (code → A → output units) adds them up."""
        assert self._readout_factors is not None
        codes_per_ampere, per_code, offset = self._readout_factors
        dim, steps = self.lowering.block_dim, adc_steps(self.op.adc_bits)  # type: ignore[arg-type]
        sliced = self._slice_weights is not None  # columns first, then their outputs' sums (shifts are in per_code)
        total = None if sliced else offset
        for weight, current in phases:  # the currents are this call's own: converted in place
            codes = current.mul_(codes_per_ampere).clamp_(-steps, steps).round_()
            factor = per_code if weight == 1.0 else per_code * weight
            if codes.shape[dim] == 1 and total is not None:
                total = torch.addcmul(total, codes.select(dim, 0), factor.select(dim, 0))
                continue
            part = codes.select(dim, 0).mul_(factor.select(dim, 0)) if codes.shape[dim] == 1 else codes.mul_(factor).sum(dim)
            total = part if total is None else part.add_(total)
        assert total is not None
        if sliced:
            total = total.unflatten(1, (-1, self._slice_weights.numel())).sum(2)  # type: ignore[union-attr]
            total = total if offset is None else total + offset
        return total


def tile_grid(rows: int, outputs: int, target: Target, plan: MappingPlan) -> TileGrid:
    """The tiles the ``tile`` pass cuts a ``rows × outputs`` matrix into under ``plan``."""
    weights = WEIGHT_ENCODINGS.get(plan.weight_encoding)(target)
    tile_rows = plan.tile_rows or target.crossbar.rows
    tile_cols = plan.tile_cols or weights.outputs_per_array()
    return TileGrid(split_points(rows, tile_rows, plan.balance), split_points(outputs, tile_cols, plan.balance))


def crossbar_op(float_op: Linear | Conv2d | CrossbarOp, **fields: Any) -> CrossbarOp:
    """The crossbar op for a float (or crossbar) layer, with ``fields`` set."""
    if isinstance(float_op, (Conv2d, CrossbarConv2d)):
        return CrossbarConv2d(stride=float_op.stride, padding=float_op.padding, dilation=float_op.dilation, groups=float_op.groups,
                              **fields)
    return CrossbarLinear(**fields)


def mapped_layer(
    node: Node,
    weight: Tensor,
    bias: Tensor | None,
    target: Target,
    plan: MappingPlan,
    input_range: InputRange,
    *,
    tiled: bool,
    levels: bool,
    converters: bool,
    adc_range: Tensor | None = None,
    generator: torch.Generator | None = None,
    variation: bool = False,
) -> CrossbarLayer:
    """A crossbar layer mapped from float ``weight`` (kept differentiable) for one forward pass.

    The device-aware model of a layer: ``plan``'s encodings and mapping, the full-scale gain,
    and, when asked, its conductance levels, its tiles with their DAC and ADC (ADC ranges
    ``adc_range`` per tile), and the target's programming variation and faults. Inputs beyond the
    full scale are clipped to it, as the chip's DAC will: the device is only modelled up to the
    read voltage.
    """
    flat = weight_matrix(weight, getattr(node.op, "groups", 1))
    weights = WEIGHT_ENCODINGS.get(plan.weight_encoding)(target)
    inputs = INPUT_ENCODINGS.get(plan.input_encoding)(target)
    per_column = plan.granularity == "column"
    dac_bits, adc_bits = (plan.dac_bits, plan.adc_bits) if converters else (None, None)
    # The accuracy the chip needs follows its ADC even where the model leaves converters out.
    tolerance = tolerance_for(plan.adc_bits)
    columns = flat.shape[0] * (plan.weight_slices or 1)
    grid = tile_grid(flat.shape[1], columns, target, plan) if tiled else TileGrid((0, flat.shape[1]), (0, columns))
    fast = None
    if not levels and not variation and target.wires.accepts_terms and plan.weight_slices is None:
        c = target.conductance
        expansion = device_expansion(target.device, target.crossbar.read_voltage, c.g_min, c.g_max, dac_bits, tolerance)
        fast = weights.cell_terms(flat, expansion, per_column=per_column)
    if fast is not None:
        terms, per_weight = fast
        pairs: CellPairs = DensePairs(flat.new_empty(0), flat.new_empty(0))
    else:
        # a sliced weight's digits are the chip's whether or not its levels are in the loop
        mapped = weights.map_planned(flat, per_column=per_column, levels=plan.levels if levels else None,
                                     slices=plan.weight_slices, slice_bits=plan.slice_bits)
        terms, per_weight, pairs = None, mapped.conductance_per_weight, mapped.pairs
        write = cell_writer(target, generator) if variation else None
        if write is not None:
            pairs = DensePairs(*weights.program(*pairs.dense(), write, grid))
    response = inputs.full_scale_response(dac_bits)
    op = crossbar_op(node.op, weight=weight, bias=bias, cells=pairs, conductance_per_weight=per_weight,
                     weight_encoding=plan.weight_encoding, input_encoding=plan.input_encoding, dac_bits=dac_bits,
                     adc_bits=adc_bits, input_range=input_range, gain=input_range.scale / (per_weight * response),
                     row_splits=grid.row_splits, col_splits=grid.col_splits, adc_range=adc_range, weight_slices=plan.weight_slices,
                     slice_bits=plan.slice_bits)
    layer_target = target if variation else target.nominal()
    layer = CrossbarLayer.build(node.name, node.source, op, layer_target, pairs, inputs, tolerance=tolerance, terms=terms)
    layer.clip_inputs = True
    return layer
