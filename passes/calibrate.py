"""calibrate: set each crossbar layer's input range, neuron gain and ADC ranges from sample data."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rramc.errors import PassError
from rramc.hardware.calibration import CalibrationOptions
from rramc.hardware.interpreter import CalibrationKernel, Interpreter
from rramc.ir import CrossbarOp, Graph
from rramc.pipeline import CompileContext, Pass, option

FEW_SAMPLES = 64
"""Below this many calibration samples the compiler warns: ranges from so few samples clip."""


@dataclass(frozen=True)
class Calibrate(Pass):
    """Calibrate every crossbar layer on sample inputs, layer after layer as the chip computes them.

    Needs: tiled crossbar ops and ``ctx.calibration_data``. Guarantees: every crossbar op has an
    ``input_range`` (decided by :mod:`rramc.hardware.calibration`'s policy: statically where the
    graph or the declared input range says it, from the samples otherwise; one fixed by
    ``reconstruct`` is kept), a ``gain`` (the conventional full-scale calibration: an input of 1
    gives the linear weighted sum) and an ``adc_range`` per tile from the tile's currents on the
    samples. The nominal chip is used: no programming variation, faults or read noise. With
    ``gain=least_squares`` the gain and offset of every output are instead fitted, in the
    least-squares sense, to the float layer's output on the samples: the best a smarter
    calibration of a conventionally trained network can do.
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
            if not node.op.is_tiled:  # type: ignore[attr-defined]
                raise PassError(f"%{node.name} ({node.source}) is not tiled; run 'tile' before 'calibrate'")

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        assert ctx.calibration_data is not None
        (graph_input,) = graph.inputs
        data = ctx.calibration_data[: self.samples].float()
        if tuple(data.shape[1:]) != graph_input.shape:
            raise PassError(f"calibration samples have shape {list(data.shape[1:])}, the network takes {list(graph_input.shape)}")
        if not bool(torch.isfinite(data).all()):
            raise PassError("the calibration samples contain NaN or infinite values")
        if bool((data == data[0]).all()):
            what = "all zero" if not bool(data.any()) else ("one sample" if len(data) == 1 else "all equal")
            if what != "one sample":
                ctx.warn(f"the calibration samples are {what}: every input and ADC range comes from one input pattern, and the "
                         "chip's accuracy on real data will be poor; calibrate on representative data")
        if len(data) < FEW_SAMPLES:
            ctx.warn(f"calibrated on {len(data)} sample(s): input and ADC ranges from so few samples clip other inputs; "
                     "give calibration data (calibration_data=..., or --calibration DATASET)")
        options = CalibrationOptions(self.adc_percentile, self.input_percentile, self.gain)
        with torch.no_grad():
            Interpreter(graph, CalibrationKernel(graph, ctx.target, options)).run(data)
        return graph
