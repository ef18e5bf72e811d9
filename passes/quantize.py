"""quantize: map each layer's weights to conductance pairs on the target's programmable levels."""

from __future__ import annotations

from dataclasses import dataclass, replace

from rramc.errors import PassError
from rramc.hardware.input_encoding import INPUT_ENCODINGS
from rramc.hardware.layer import crossbar_op
from rramc.hardware.mapping import MappingPlan
from rramc.hardware.weight_encoding import WEIGHT_ENCODINGS
from rramc.ir import Conv2d, Graph, Linear, weight_matrix
from rramc.pipeline import CompileContext, Pass, option


@dataclass(frozen=True)
class Quantize(Pass):
    """Lower ``linear``/``conv2d`` to crossbar ops holding programmed conductance pairs.

    Needs: canonical float layers (no ``batch_norm``). Guarantees: every ``linear`` and ``conv2d``
    became ``xbar.linear``/``xbar.conv2d`` with ``g_pos``/``g_neg`` from the weight encoding (coded
    where they sit on the target's levels, :mod:`rramc.ir.cells`), on
    the target's levels (chosen in the read-current domain, so a full-scale input gives the
    linear sum), the weight scale per output, the input and weight encodings, and the DAC/ADC
    resolution of its inputs and outputs. The float weights stay on the op as the reference the
    chip is compared to; an input range and device training record of the float layer are kept.
    """

    name = "quantize"
    granularity: str = option("one conductance scale per output column or per layer", "column", ("column", "layer"))
    levels: int | None = option("conductance levels per cell (default: the target's; 0: continuous)", None)
    dac_bits: int | None = option("input DAC bits (default: the target's; 0: ideal)", None)
    adc_bits: int | None = option("ADC bits (default: the target's; 0: ideal)", None)
    weight_encoding: str | None = option("weight encoding (default: the target's)", None)
    input_encoding: str | None = option("input encoding (default: the target's)", None)

    def requires(self, graph: Graph, ctx: CompileContext) -> None:
        for name, value, low, high in (("levels", self.levels, 2, 65536), ("dac_bits", self.dac_bits, 1, 16),
                                       ("adc_bits", self.adc_bits, 2, 16)):
            if value is not None and value != 0 and not low <= value <= high:
                raise PassError(f"option {name}={value} is out of range: 0 (ideal/continuous) or {low}..{high}")
        for name, registry in (("weight_encoding", WEIGHT_ENCODINGS), ("input_encoding", INPUT_ENCODINGS)):
            value = getattr(self, name)
            if value is not None and value not in registry.names():
                raise PassError(f"option {name}={value}: expected one of {', '.join(registry.names())}")
        if self.input_encoding is not None:
            problem = INPUT_ENCODINGS.get(self.input_encoding).problem(ctx.target)
            if problem is not None:
                field, message = problem
                raise PassError(f"option input_encoding={self.input_encoding} on target {ctx.target.name}: crossbar.{field}: {message}")

    def plan(self, base: MappingPlan) -> MappingPlan:
        """``base`` (the target's defaults) with this pass's options applied."""
        def resolve(option_value: int | None, default: int | None) -> int | None:
            return default if option_value is None else (None if option_value == 0 else option_value)

        return replace(base, granularity=self.granularity, levels=resolve(self.levels, base.levels),
                       dac_bits=resolve(self.dac_bits, base.dac_bits), adc_bits=resolve(self.adc_bits, base.adc_bits),
                       weight_encoding=self.weight_encoding or base.weight_encoding,
                       input_encoding=self.input_encoding or base.input_encoding)

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        plan = self.plan(MappingPlan.for_target(ctx.target))
        encoding = WEIGHT_ENCODINGS.get(plan.weight_encoding)(ctx.target)
        caveat = INPUT_ENCODINGS.get(plan.input_encoding)(ctx.target).caveat(plan.dac_bits, plan.adc_bits)
        if caveat is not None:
            ctx.warn(f"input encoding {plan.input_encoding} on {ctx.target.name}: {caveat}")
        mappings = {}  # by node: a layer that shares another's arrays is given the same conductances
        for node in graph.nodes_of(Linear, Conv2d):
            op = node.op
            assert isinstance(op, (Linear, Conv2d))
            if op.shares is not None:
                cells, per_weight = mappings[node.name] = mappings[op.shares]
            else:
                matrix = weight_matrix(op.weight, getattr(op, "groups", 1))
                mapped = encoding.map_planned(matrix, per_column=plan.granularity == "column", levels=plan.levels,
                                              slices=plan.weight_slices, slice_bits=plan.slice_bits)
                cells, per_weight = mappings[node.name] = mapped.pairs, mapped.conductance_per_weight
            node.op = crossbar_op(op, weight=op.weight, bias=op.bias, cells=cells, conductance_per_weight=per_weight,
                                  weight_encoding=plan.weight_encoding, input_encoding=plan.input_encoding,
                                  dac_bits=plan.dac_bits, adc_bits=plan.adc_bits,
                                  input_range=op.input_range, trained_for=op.trained_for, weight_slices=plan.weight_slices,
                                  slice_bits=plan.slice_bits, shares=op.shares)
        return graph
