"""calibrate: set each crossbar layer's input range, neuron gain and ADC ranges from sample data, or from the weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rramc.errors import PassError
from rramc.hardware.calibration import DEFAULT_INPUT_RANGE, CalibrationOptions, calibrate_from_weights
from rramc.hardware.interpreter import CalibrationKernel, Interpreter
from rramc.ir import CrossbarOp, Graph, Input
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

    Without ``ctx.calibration_data`` every range comes from the weights and the network input's
    declared range (:data:`~rramc.hardware.calibration.DEFAULT_INPUT_RANGE`, declared on the
    input, when it has none): the worst case, which nothing exceeds (see
    :func:`~rramc.hardware.calibration.calibrate_from_weights`). The pass then warns once, and
    leaves ``ctx.artifacts["calibration"]``: the executable's metadata ``calibration`` (``weights``)
    and ``calibration.input_range``.
    """

    name = "calibrate"
    samples: int = option("calibration samples used at most", 512)
    adc_percentile: float = option("percentile of |tile current| taken as an ADC's full scale", 100.0)
    input_percentile: float = option("percentile of |activation| taken as the full-scale input when unbounded", 100.0)
    gain: str = option("neuron gain: full_scale (an input of 1 gives the linear sum) or least_squares "
                       "(gain and offset per output fitted to the float layer on the samples)", "full_scale",
                       ("full_scale", "least_squares"))

    def requires(self, graph: Graph, ctx: CompileContext) -> None:
        if ctx.calibration_data is not None and len(ctx.calibration_data) == 0:
            raise PassError("the calibration data hold no samples: give some, or none to calibrate from the weights")
        if ctx.calibration_data is None and self.gain == "least_squares":
            raise PassError("gain=least_squares fits every neuron to the float layer on sample inputs, and there are none: "
                            "pass calibration_data (Python) or --calibration DATA (CLI), or use gain=full_scale")
        if not 0 < self.adc_percentile <= 100 or not 0 < self.input_percentile <= 100:
            raise PassError("percentiles must lie in (0, 100]")
        if self.samples < 1:
            raise PassError(f"samples={self.samples}: need at least one")
        for node in graph.nodes_of(CrossbarOp):
            if not node.op.is_tiled:  # type: ignore[attr-defined]
                raise PassError(f"%{node.name} ({node.source}) is not tiled; run 'tile' before 'calibrate'")

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        if ctx.calibration_data is None:
            return self.from_weights(graph, ctx)
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
                     "give calibration data (calibration_data=..., or --calibration DATA)")
        options = CalibrationOptions(self.adc_percentile, self.input_percentile, self.gain)
        with torch.no_grad():
            Interpreter(graph, CalibrationKernel(graph, ctx.target, options)).run(data)
        return graph

    def from_weights(self, graph: Graph, ctx: CompileContext) -> Graph:
        """Calibrate without data: for the declared input range, or :data:`DEFAULT_INPUT_RANGE` declared here."""
        (graph_input,) = graph.inputs
        assert isinstance(graph_input.op, Input)
        declared = graph_input.op.value_range is not None
        if not declared:
            graph_input.op = Input(value_range=DEFAULT_INPUT_RANGE)
        low, high = graph_input.op.value_range  # type: ignore[misc]
        try:
            with torch.no_grad():
                calibrate_from_weights(graph, ctx.target)
        except ValueError as exc:
            raise PassError(f"cannot calibrate without data: {exc}; give calibration data "
                            "(calibration_data=..., or --calibration DATA)") from None
        assumed = "declared" if declared else ("the default for an undeclared range; declare yours with "
                                               "--input-range LOW,HIGH (Python: input_range=(low, high)) or give data")
        ctx.warn(f"calibrated from the weights, with no calibration data: network inputs in [{low:g}, {high:g}] ({assumed}), "
                 "every input and ADC range set to the worst case those inputs allow, so the chip's accuracy will be lower "
                 "than when calibrated on data (calibration_data=..., or --calibration DATA)")
        ctx.artifacts["calibration"] = {"calibration": "weights", "calibration.input_range": [low, high]}
        return graph
