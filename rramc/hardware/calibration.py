"""The calibration policy, in one place: input ranges, neuron gains and ADC ranges.

* **Input range** of a crossbar layer (:func:`input_range`): what the graph proves wins. After a
  ReLU or a clamp at ≥ 0 the inputs are unsigned; a graph input is signed unless its value range
  is declared (a data set's, or the user's); a bounded activation (a clipped ReLU, a declared
  range) sets the full-scale input. Only what the graph leaves open comes from sample data: the
  full scale of an unbounded activation (a percentile of its magnitude) and the sign of an
  activation the graph says nothing about. A range fixed by ``reconstruct`` is kept.
* **Gain** (:func:`full_scale_gain`): the conventional full-scale calibration, an input of 1
  gives the linear weighted sum; with ``least_squares`` each output's gain and offset are fitted
  to the float layer on the samples instead (:func:`fit_least_squares`).
* **ADC ranges** (:func:`adc_ranges`): per tile, a percentile of its column currents' magnitude
  on the samples.
* **Without data** (:func:`calibrate_from_weights`): interval arithmetic from the declared input
  range (:data:`DEFAULT_INPUT_RANGE` when none is) through the weights gives every input range,
  and each tile's ADC range is the worst-case current of its columns: nothing clips, at the cost
  of resolution.

Calibration always runs on the nominal chip (:meth:`Target.nominal`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from rramc.hardware.converters import adc_steps, dac_steps
from rramc.hardware.expansion import device_expansion, tolerance_for
from rramc.hardware.input_encoding import InputEncoding, input_encoding
from rramc.hardware.layer import CrossbarLayer, Phase
from rramc.hardware.lowering import Lowering
from rramc.hardware.target import Target
from rramc.hardware.tiling import TileGrid
from rramc.ir import (
    AdaptiveAvgPool2d, AvgPool2d, Bounds, Conv2d, CrossbarOp, Graph, Input, InputRange, Linear, MaxPool2d, Node, Reshape,
)

SAMPLE_LIMIT = 1 << 24


def value_bounds(graph: Graph) -> dict[str, Bounds]:
    """The range every activation is known to lie in from the ops (and declared inputs) alone.

    Each op says what it does to its operands' bounds (:meth:`~rramc.ir.Op.bounds`): a clipped
    ReLU bounds its output, pooling and reshapes carry bounds through, a residual add sums them.
    """
    bounds: dict[str, Bounds] = {}
    for node in graph:
        op = node.op
        if isinstance(op, Input):
            bounds[node.name] = op.value_range if op.value_range is not None else (-math.inf, None)
        else:
            bounds[node.name] = op.bounds([bounds[name] for name in node.inputs])
    return bounds


def upper_percentile(values: Tensor, percentile: float) -> float:
    """The ``percentile``-th percentile of ``values`` (the maximum at 100), on at most 2**24 samples."""
    flat = values.detach().reshape(-1)
    if percentile >= 100.0 or flat.numel() == 0:
        return float(flat.max()) if flat.numel() else 0.0
    if flat.numel() > SAMPLE_LIMIT:
        flat = flat[torch.linspace(0, flat.numel() - 1, SAMPLE_LIMIT, dtype=torch.long, device=flat.device)]
    return float(torch.quantile(flat.float(), percentile / 100.0))


def declared(graph: Graph, name: str) -> bool:
    """Whether activation ``name`` comes straight from a graph input whose range is declared."""
    node = graph.node(name)
    while not isinstance(node.op, Input) and isinstance(node.op, (Reshape, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d)):
        node = graph.node(node.inputs[0])
    return isinstance(node.op, Input) and node.op.value_range is not None


def input_range(op: Linear | Conv2d | CrossbarOp, bounds: Bounds, samples: Tensor | None, percentile: float,
                from_declaration: bool = False) -> InputRange:
    """A weighted layer's input range (see the module docstring); ``samples`` are its inputs."""
    if op.input_range is not None and op.input_range.origin == "reconstruct":
        return op.input_range
    lo, hi = bounds
    if lo is not None and hi is not None and math.isfinite(lo) and max(abs(lo), abs(hi)) > 0:
        return InputRange(float(max(abs(lo), abs(hi))), lo < 0, "declared" if from_declaration else "static")
    if samples is None:
        raise ValueError("the graph does not bound this layer's inputs: calibration needs sample data")
    magnitude = upper_percentile(samples.abs(), percentile) or 1.0
    if not math.isfinite(magnitude):
        raise ValueError("its sample inputs are not finite (NaN or infinite values)")
    signed = (lo is not None and lo < 0) if lo is not None else bool((samples < 0).any())
    return InputRange(float(magnitude), signed, "calibrated")


def full_scale_gain(op: CrossbarOp, target: Target) -> Tensor:
    """Neuron gain [output units per A] of the full-scale calibration: an input of 1 gives ``W·x``."""
    assert op.input_range is not None
    response = input_encoding(op.input_encoding, target).full_scale_response(op.dac_bits)
    return (op.input_range.scale / (op.conductance_per_weight.double() * response)).float()


def adc_ranges(phases: list[Phase], grid: TileGrid, lowering: Lowering, percentile: float) -> Tensor:
    """Full-scale current of every tile's ADC ``[row blocks, column blocks]`` [A]: the
    ``percentile`` of its columns' current magnitudes over every read."""
    magnitude = torch.stack([current.detach().abs().movedim(lowering.block_dim, 0) for _, current in phases], 1)
    # [blocks, reads, batch, outputs, ...]: the outputs are dimension 3 for every lowering
    return torch.tensor([[upper_percentile(magnitude[b, :, :, a:c], percentile) for a, c in grid.col_blocks]
                         for b in range(len(grid.row_blocks))], dtype=torch.float32)


def fit_least_squares(op: CrossbarOp, current: Tensor, expected: Tensor) -> CrossbarOp:
    """Per output, the gain and offset that best map the digitised current onto the float layer's output."""
    outputs = current.shape[1]
    i = current.movedim(1, -1).reshape(-1, outputs).double()
    y = expected.movedim(1, -1).reshape(-1, outputs).double()
    i_mean, y_mean = i.mean(0), y.mean(0)
    variance = ((i - i_mean) ** 2).mean(0)
    covariance = ((i - i_mean) * (y - y_mean)).mean(0)
    assert op.gain is not None
    fitted = torch.where(variance > 0, covariance / variance.clamp_min(torch.finfo(torch.float64).tiny), op.gain.double())
    offset = y_mean - fitted * i_mean
    return replace(op, gain=fitted.float(), offset=offset.float())


@dataclass(frozen=True)
class CalibrationOptions:
    """``calibrate``'s options: percentiles of ADC currents and unbounded inputs, and the gain rule."""

    adc_percentile: float = 100.0
    input_percentile: float = 100.0
    gain: str = "full_scale"


def calibrate_layer(node: Node, x: Tensor, bounds: Bounds, target: Target, options: CalibrationOptions,
                    expected: Tensor | None = None, from_declaration: bool = False) -> tuple[CrossbarOp, Tensor]:
    """Calibrate ``node``'s crossbar op on its inputs ``x`` (as the nominal chip delivers them).

    Returns the calibrated op and the layer's output on ``x``. ``expected`` (the float layer's
    output on ``x``) is needed for ``least_squares`` gains.
    """
    op = node.op
    assert isinstance(op, CrossbarOp)
    op = replace(op, input_range=input_range(op, bounds, x, options.input_percentile, from_declaration), offset=None, adc_range=None)
    op = replace(op, gain=full_scale_gain(op, target))
    probe = Node(node.name, op, node.inputs, node.shape, node.meta)
    layer = CrossbarLayer.program(probe, target, dtype=x.dtype, device=x.device, require_calibration=False)
    assert op.input_range is not None
    phases = layer.phases(x, op.input_range.scale)
    if op.adc_bits is not None:
        op = replace(op, adc_range=adc_ranges(phases, layer.grid, layer.lowering, options.adc_percentile))
        layer.calibrated(op)
    current = layer.digitize(phases)
    if options.gain == "least_squares":
        assert expected is not None
        op = fit_least_squares(op, current, expected)
        layer.calibrated(op)
    return op, layer.neuron(current)


# --- calibration without data --------------------------------------------------------------------

DEFAULT_INPUT_RANGE = (-1.0, 1.0)
"""The range calibration without data assumes for a network input whose range is not declared: it
holds both usual conventions, pixels in [0, 1] and inputs normalised to [-1, 1], at the price of a
signed first layer (two reads) for the former."""

PROBE_STEPS = 255
"""Steps between the inputs probed for the voltages a layer applies: every code of a DAC of up to 8 bits;
with a finer DAC, or none, this many evenly spaced inputs (and the largest), which holds the worst case
of any device whose current is monotonic between them."""


def calibrate_from_weights(graph: Graph, target: Target) -> dict[str, Bounds]:
    """Calibrate every crossbar op of ``graph`` from its weights alone, for network inputs in their
    declared ranges (each input must have one); return the bounds of every activation.

    Interval arithmetic carries the inputs' ranges through the graph: a digital op by its
    :meth:`~rramc.ir.Op.bounds`, a float layer by :func:`float_layer_bounds`, a crossbar layer by the
    worst case of the chip's own currents (:func:`crossbar_layer_bounds`). Each crossbar op gets the
    input range of its inputs' bounds (:func:`input_range`), the full-scale gain, and per tile the ADC
    range of the largest current one of its columns can carry in a read (:func:`column_current_bounds`):
    network inputs inside the declared ranges are never clipped by a DAC or an ADC on the nominal chip.
    The price is resolution: a range set for the worst case is wider than what data ever reach.
    Raises ``ValueError`` naming the layer whose inputs the graph leaves unbounded.
    """
    target = target.nominal()
    bounds: dict[str, Bounds] = {}
    lost: dict[str, str] = {}  # activation → the node where its range was lost (to say which op does not bound)
    for node in graph:
        op = node.op
        if isinstance(op, Input):
            if op.value_range is None:
                raise ValueError(f"input %{node.name} has no declared value range")
            bounds[node.name] = op.value_range
            continue
        operands = [bounds[name] for name in node.inputs]
        if isinstance(op, CrossbarOp):
            source = node.inputs[0]
            if not _finite(operands[0]):
                culprit = graph.node(lost[source])
                raise ValueError(f"%{node.name} ({node.source}): the range of its inputs is unknown, since %{culprit.name} "
                                 f"({culprit.op.kind}, from {culprit.source}) does not say what it does to a range")
            node.op, bounds[node.name] = calibrate_layer_from_weights(node, operands[0], target, declared(graph, source))
        elif isinstance(op, (Linear, Conv2d)):
            bounds[node.name] = float_layer_bounds(op, operands[0])
        else:
            bounds[node.name] = op.bounds(operands)
        if not _finite(bounds[node.name]):
            lost[node.name] = next((lost[name] for name in node.inputs if name in lost), node.name)
    return bounds


def _finite(bounds: Bounds) -> bool:
    lo, hi = bounds
    return lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)


def float_layer_bounds(op: Linear | Conv2d, bounds: Bounds) -> Bounds:
    """The range of ``W·x + b`` for inputs in ``bounds``, per output ``[W⁺·lo + W⁻·hi + b, W⁺·hi + W⁻·lo + b]``
    (``W⁺``, ``W⁻`` the sums of an output's positive and negative weights; a convolution's zero padding
    is an input of 0). Unknown when the inputs' bounds are."""
    if not _finite(bounds):
        return (None, None)
    lo, hi = (float(b) for b in bounds)  # type: ignore[arg-type]
    if isinstance(op, Conv2d) and any(op.padding):
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    weight = op.weight.detach().double().reshape(op.weight.shape[0], -1)
    positive, negative = weight.clamp_min(0).sum(1), weight.clamp_max(0).sum(1)
    bias = 0.0 if op.bias is None else op.bias.detach().double()
    return (float((positive * lo + negative * hi + bias).min()), float((positive * hi + negative * lo + bias).max()))


def calibrate_layer_from_weights(node: Node, bounds: Bounds, target: Target, from_declaration: bool = False
                                 ) -> tuple[CrossbarOp, Bounds]:
    """``node``'s crossbar op calibrated for inputs in ``bounds`` (finite), and the bounds of its output.

    The input range is :func:`input_range`'s for those bounds (inputs that are all 0 get a full scale
    of 1), the gain the full-scale one; each tile's ADC range is the largest current one of its columns
    carries in a read, for any inputs up to full scale (:func:`column_current_bounds`).
    """
    op = node.op
    assert isinstance(op, CrossbarOp)
    lo, hi = (float(b) for b in bounds)  # type: ignore[arg-type]
    if max(abs(lo), abs(hi)) > 0 or (op.input_range is not None and op.input_range.origin == "reconstruct"):
        chosen = input_range(op, (lo, hi), None, 100.0, from_declaration)
    else:
        chosen = InputRange(1.0, False, "static")
    op = replace(op, input_range=chosen, offset=None, adc_range=None)
    op = replace(op, gain=full_scale_gain(op, target))
    if op.adc_bits is not None:
        positive, negative, _ = column_current_bounds(op, target, 1.0)
        grid = TileGrid(op.row_splits, op.col_splits)  # type: ignore[arg-type]
        op = replace(op, adc_range=grid.per_tile_max(torch.maximum(positive, negative)).float())
    return op, crossbar_layer_bounds(op, (lo, hi), target)


def crossbar_layer_bounds(op: CrossbarOp, bounds: Bounds, target: Target) -> Bounds:
    """The range of a calibrated crossbar op's outputs on the nominal chip for inputs in ``bounds``.

    The chip's, not the float layer's: the positive inputs' phase and the negative inputs' phase
    (subtracted) each reach at most their share of full scale, every column is at its worst case
    in both (:func:`column_current_bounds`), the ADCs round each conversion by up to half a step, and
    the neuron applies gain and bias. With a linear device and ideal converters this is the float
    layer's range (:func:`float_layer_bounds`, for inputs ranging over 0); a device whose current
    grows faster than linearly at low voltages (the gain is set at full scale) reaches further.
    """
    assert op.input_range is not None and op.gain is not None
    lo, hi = (float(b) for b in bounds)  # type: ignore[arg-type]
    scale, signed = op.input_range.scale, op.input_range.signed
    top = torch.zeros(op.columns, dtype=torch.float64)
    bottom = torch.zeros(op.columns, dtype=torch.float64)
    conversions = 0.0
    for sign, reach in ((1.0, hi / scale), (-1.0, -lo / scale if signed else 0.0)):
        if reach <= 0:
            continue
        positive, negative, weight = column_current_bounds(op, target, min(reach, 1.0))
        up, down = (positive, negative) if sign > 0 else (negative, positive)
        top += weight * up.sum(0)
        bottom -= weight * down.sum(0)
        conversions += weight
    if op.adc_bits is not None and op.adc_range is not None:  # each tile's conversion rounds by up to half a step
        grid = TileGrid(op.row_splits, op.col_splits)  # type: ignore[arg-type]
        half_steps = grid.per_column(op.adc_range.double()).sum(0) / (2 * adc_steps(op.adc_bits)) * conversions
        top, bottom = top + half_steps, bottom - half_steps
    slice_weights = op.slice_weights()
    if slice_weights is not None:  # a weight's slices add up, shifted, before the neuron
        top, bottom = (columns.unflatten(0, (-1, slice_weights.numel())) @ slice_weights.double() for columns in (top, bottom))
    gain = op.gain.double()
    bias = 0.0 if op.bias is None else op.bias.detach().double()
    ends = torch.stack([gain * top, gain * bottom])
    return (float((ends.amin(0) + bias).min()), float((ends.amax(0) + bias).max()))


def column_current_bounds(op: CrossbarOp, target: Target, reach: float) -> tuple[Tensor, Tensor, float]:
    """The largest positive and negative current ``[row blocks, columns]`` [A] each tile column carries in one
    read of the nominal chip, for any inputs up to ``reach`` (a share of full scale) on its word lines, and
    the total digital weight of a phase's reads.

    A read applies voltages ``v_i`` from the set the op's input encoding and DAC can apply (:func:`applied_voltages`)
    and column ``j`` carries ``Σ_i d_ij(v_i)``, ``d_ij(v) = f(v, G⁺_ij) - f(v, G⁻_ij)`` for the cells' I-V ``f``
    (the weight encoding's two cells, subtracted) as the chip computes it (:func:`cell_differences`). Each
    word line is free, so the largest current is ``Σ_i max_v max(d_ij(v), 0)``, reached when every line
    applies its own worst voltage; the most negative likewise. Exact for ideal wires; a phase read in
    several reads converts each one (or their weighted sum) within the same bound. With resistive
    wires it is the bound of the wires' ideal, which their IR drop lowers (observed, not proven).
    """
    device = target.device
    voltages, weight = applied_voltages(input_encoding(op.input_encoding, target), op.dac_bits, reach)
    if device.separable:  # d_ij(v) = ΔG_ij · g(v): its extremes are at g's
        unit = device.unit_current(voltages)
        high, low = float(unit.max().clamp_min(0)), float((-unit).max().clamp_min(0))

    def extremes(g_pos: Tensor, g_neg: Tensor) -> Tensor:
        """``[pairs, 2]``: the largest positive and negative current of each pair over the voltages."""
        if device.separable:
            rising, falling = (g_pos - g_neg).clamp_min(0), (g_neg - g_pos).clamp_min(0)
            return torch.stack([rising * high + falling * low, rising * low + falling * high], -1)
        positive, negative = torch.zeros_like(g_pos), torch.zeros_like(g_pos)
        for difference in cell_differences(op, target, voltages, g_pos, g_neg):
            positive, negative = torch.maximum(positive, difference), torch.maximum(negative, -difference)
        return torch.stack([positive, negative], -1)

    # Per block of tile rows (per distinct pair where the cells are coded): no matrix of the layer's size.
    pairs = op.cells.to(torch.float64)
    grid = TileGrid(op.row_splits, op.col_splits)  # type: ignore[arg-type]
    per_block = torch.stack([pairs.per_pair(extremes, a, b).sum(0) for a, b in grid.row_blocks])  # [blocks, columns, 2]
    return per_block[..., 0], per_block[..., 1], weight


def cell_differences(op: CrossbarOp, target: Target, voltages: Tensor, g_pos: Tensor, g_neg: Tensor) -> Iterator[Tensor]:
    """``f(v, G⁺) - f(v, G⁻)`` of the cell pairs ``g_pos``/``g_neg`` (float64) of ``op`` [A] at each voltage ``v``, as the
    chip computes it: through the device's expansion (:func:`~rramc.hardware.expansion.device_expansion`) where the
    column solver takes one (ideal wires), whose error is within its tolerance of the I-V; else by the I-V itself."""
    if not target.wires.accepts_terms:
        for v in voltages:
            yield target.device.current(v, g_pos) - target.device.current(v, g_neg)
        return
    c = target.conductance
    expansion = device_expansion(target.device, target.crossbar.read_voltage, c.g_min, c.g_max, op.dac_bits,
                                 tolerance_for(op.adc_bits))
    terms = (expansion.conductance(g_pos) - expansion.conductance(g_neg)).double()  # [pairs, terms]
    for phi in expansion.voltage(voltages).double():
        yield terms @ phi


def applied_voltages(encoding: InputEncoding, dac_bits: int | None, reach: float) -> tuple[Tensor, float]:
    """Every word-line voltage [V] ``encoding`` applies for inputs from 0 to ``reach`` of full scale (float64),
    and the total weight of the reads of one phase (the sum of their digital weights' magnitudes)."""
    steps = min(dac_steps(dac_bits), PROBE_STEPS) if dac_bits is not None else PROBE_STEPS
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    probe = torch.cat([grid[grid < reach], torch.tensor([reach], dtype=torch.float64)])
    with torch.no_grad():
        reads = encoding.reads(probe, 1.0, dac_bits)
    voltages = torch.cat([read.voltages.reshape(-1).double() for read in reads]).unique()
    return voltages, sum(abs(read.weight) for read in reads)
