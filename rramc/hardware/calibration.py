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

Calibration always runs on the nominal chip (:meth:`Target.nominal`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from rramc.hardware.input_encoding import input_encoding
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
