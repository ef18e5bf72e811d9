"""calibrate: set each crossbar layer's input range, neuron gain and ADC ranges from sample data."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rramc.errors import PassError
from rramc.hardware.crossbar import full_scale_response
from rramc.hardware.target import Target
from rramc.ir import (
    Add, AdaptiveAvgPool2d, AvgPool2d, Clamp, CrossbarOp, Graph, Input, MaxPool2d, Node, Output, ReLU, Reshape,
)
from rramc.pipeline import CompileContext, Pass, option
from rramc.runtime.crossbar_layer import ProgrammedLayer
from rramc.runtime.interpreter import Program

Bounds = tuple[float | None, float | None]


def static_bounds(graph: Graph) -> dict[str, Bounds]:
    """The range every activation is known to lie in from the ops alone, ``None`` where unbounded.

    A clipped ReLU bounds its output; pooling, reshapes and ReLU carry bounds through; a residual
    add sums them. A crossbar layer fed from a bounded activation needs no data for its input range.
    """
    bounds: dict[str, Bounds] = {}
    for node in graph:
        lo, hi = bounds[node.inputs[0]] if node.inputs else (None, None)
        op = node.op
        if isinstance(op, Clamp):
            lo = op.low if lo is None else (lo if op.low is None else max(lo, op.low))
            hi = op.high if hi is None else (hi if op.high is None else min(hi, op.high))
        elif isinstance(op, ReLU):
            lo, hi = 0.0, None if hi is None else max(hi, 0.0)
        elif isinstance(op, AvgPool2d) and op.count_include_pad and any(op.padding):
            lo = None if lo is None else min(lo, 0.0)
            hi = None if hi is None else max(hi, 0.0)
        elif isinstance(op, Add):
            (lo2, hi2) = bounds[node.inputs[1]]
            lo = None if lo is None or lo2 is None else lo + lo2
            hi = None if hi is None or hi2 is None else hi + hi2
        elif not isinstance(op, (Reshape, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Output)):
            lo, hi = None, None
        bounds[node.name] = (lo, hi)
    return bounds


def upper_percentile(values: Tensor, percentile: float) -> float:
    """The ``percentile``-th percentile of ``values`` (the maximum at 100), on at most 2**24 samples."""
    flat = values.detach().reshape(-1)
    if percentile >= 100.0 or flat.numel() == 0:
        return float(flat.max()) if flat.numel() else 0.0
    if flat.numel() > 1 << 24:
        flat = flat[torch.linspace(0, flat.numel() - 1, 1 << 24, dtype=torch.long, device=flat.device)]
    return float(torch.quantile(flat.float(), percentile / 100.0))


@dataclass(frozen=True)
class Calibrate(Pass):
    """Calibrate every crossbar layer on sample inputs, layer after layer as the chip computes them.

    Needs: tiled crossbar ops and ``ctx.calibration_data``. Guarantees: every crossbar op has
    ``input_scale`` (the activation applied as the full read voltage: the clipped-ReLU bound
    when the graph bounds it, else the sample range) and ``input_signed`` (signed inputs are
    applied in two read phases), ``gain`` (the conventional full-scale calibration: an input of
    1 gives the linear weighted sum) and an ``adc_range`` per tile from the tile's currents on
    the samples. The nominal chip is used: no programming variation, faults or read noise.
    With ``gain=least_squares`` the gain and offset of every output are instead fitted, in the
    least-squares sense, to the float layer's output on the samples: the best a smarter
    calibration of a conventionally trained network can do. Input ranges fixed by
    ``reconstruct`` (``meta["input_scale"]``) are kept.
    """

    name = "calibrate"
    samples: int = option("calibration samples used at most", 512)
    adc_percentile: float = option("percentile of |tile current| taken as an ADC's full scale", 100.0)
    input_percentile: float = option("percentile of |activation| taken as the full-scale input when unbounded", 100.0)
    gain: str = option("neuron gain: full_scale (an input of 1 gives the linear sum) or least_squares "
                       "(gain and offset per output fitted to the float layer on the samples)", "full_scale",
                       ("full_scale", "least_squares"))

    def requires(self, graph: Graph, ctx: CompileContext) -> None:
        if ctx.calibration_data is None or len(ctx.calibration_data) == 0:
            raise PassError("calibrate needs sample inputs: pass calibration_data (Python) or --calibration DATASET (CLI)")
        if not 0 < self.adc_percentile <= 100 or not 0 < self.input_percentile <= 100:
            raise PassError("percentiles must lie in (0, 100]")
        if self.samples < 1:
            raise PassError(f"samples={self.samples}: need at least one")
        for node in graph.nodes_of(CrossbarOp):
            if node.op.row_splits is None:  # type: ignore[attr-defined]
                raise PassError(f"%{node.name} ({node.source}) is not tiled; run 'tile' before 'calibrate'")

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        assert ctx.calibration_data is not None
        nominal = ctx.target.with_changes(nonidealities={k: 0.0 for k in ("programming_sigma", "read_noise_sigma",
                                                                       "stuck_off_fraction", "stuck_on_fraction")})
        c = nominal.conductance
        response = full_scale_response(nominal.device, nominal.crossbar.read_voltage, c.g_min, c.g_max)
        reference = Program(graph, nominal, mode="float")
        bounds = static_bounds(graph)
        (graph_input,) = graph.inputs
        data = ctx.calibration_data[: self.samples].float()
        if tuple(data.shape[1:]) != graph_input.shape:
            raise PassError(f"calibration samples have shape {list(data.shape[1:])}, the network takes {list(graph_input.shape)}")
        values: dict[str, Tensor] = {graph_input.name: data}
        with torch.no_grad():
            for node in graph:
                if isinstance(node.op, Input):
                    continue
                operands = [values[i] for i in node.inputs]
                if isinstance(node.op, CrossbarOp):
                    values[node.name] = self._calibrate_layer(node, operands[0], bounds[node.inputs[0]], nominal, response, reference)
                else:
                    values[node.name] = reference.evaluate_node(node, operands)
        return graph

    def _input_range(self, node: Node, x: Tensor, bounds: Bounds) -> tuple[float, bool, str]:
        """(input scale, signed, where it came from) of a crossbar layer."""
        if "input_scale" in node.meta:  # fixed by the pass that trained the layer for it
            return float(node.meta["input_scale"]), bool(node.meta["input_signed"]), "reconstruct"
        lo, hi = bounds
        if lo is not None and hi is not None and lo >= 0 and hi > 0:
            return hi, False, "static"
        return upper_percentile(x.abs(), self.input_percentile) or 1.0, bool((x < 0).any()), "calibrated"

    def _calibrate_layer(self, node: Node, x: Tensor, bounds: Bounds, target: Target, response: float, reference: Program) -> Tensor:
        op = node.op
        assert isinstance(op, CrossbarOp)
        scale, signed, source = self._input_range(node, x, bounds)
        gain = scale / (op.conductance_per_weight.double() * response)
        node.op = op = op.replace(input_scale=float(scale), input_signed=signed, gain=gain.float(), offset=None, adc_range=None)
        node.meta["input_range"] = source
        layer = ProgrammedLayer.program(node, target, require_calibration=False)
        currents, restore = layer.currents(x, scale)
        if op.adc_bits is not None:
            magnitude = torch.stack([i.abs() for _, i in currents])  # [phases, row blocks, vectors, outputs]
            cols = list(zip(op.col_splits, op.col_splits[1:]))  # type: ignore[arg-type]
            ranges = torch.tensor([[upper_percentile(magnitude[:, rb, :, a:b], self.adc_percentile) for a, b in cols]
                                   for rb in range(magnitude.shape[1])])
            node.op = op = op.replace(adc_range=ranges)
            layer.calibrated(op)
        current = layer.digitize(currents)
        if self.gain == "least_squares":
            node.op = op = self._fit_gain(op, current, reference.evaluate_node(node, [x]))
            layer.calibrated(op)
        return restore(layer.neuron(current))

    @staticmethod
    def _fit_gain(op: CrossbarOp, current: Tensor, expected: Tensor) -> CrossbarOp:
        """Per output, the gain and offset that best map the digitised current onto the float layer's output."""
        outputs = current.shape[1]
        target = expected.reshape(expected.shape[0], outputs, -1).transpose(1, 2).reshape(-1, outputs).double()
        i = current.double()
        i_mean, y_mean = i.mean(0), target.mean(0)
        variance = ((i - i_mean) ** 2).mean(0)
        covariance = ((i - i_mean) * (target - y_mean)).mean(0)
        assert op.gain is not None
        fitted = torch.where(variance > 0, covariance / variance.clamp_min(torch.finfo(torch.float64).tiny), op.gain.double())
        offset = y_mean - fitted * i_mean
        return op.replace(gain=fitted.float(), offset=offset.float())
