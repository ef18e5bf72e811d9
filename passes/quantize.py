"""quantize: map each layer's weights to conductance pairs on the target's programmable levels."""

from __future__ import annotations

from dataclasses import dataclass

from rramc.errors import PassError
from rramc.hardware.mapping import map_weights
from rramc.ir import Conv2d, CrossbarConv2d, CrossbarLinear, Graph, Linear
from rramc.pipeline import CompileContext, Pass, option


@dataclass(frozen=True)
class Quantize(Pass):
    """Lower ``linear``/``conv2d`` to crossbar ops holding programmed conductance pairs.

    Needs: canonical float layers (no ``batch_norm``). Guarantees: every ``linear`` and ``conv2d``
    became ``xbar.linear``/``xbar.conv2d`` with ``g_pos``/``g_neg`` on the target's levels within
    [g_min, g_max], the weight scale per output, and the DAC/ADC resolution of its inputs and
    outputs (activations are applied as DAC codes of ``dac_bits``). The float weights stay on
    the op as the reference the chip is compared to.
    """

    name = "quantize"
    granularity: str = option("one conductance scale per output column or per layer", "column", ("column", "layer"))
    levels: int | None = option("conductance levels per cell (default: the target's; 0: continuous)", None)
    dac_bits: int | None = option("input DAC bits (default: the target's; 0: ideal)", None)
    adc_bits: int | None = option("ADC bits (default: the target's; 0: ideal)", None)

    def requires(self, graph: Graph, ctx: CompileContext) -> None:
        for name, value, low in (("levels", self.levels, 2), ("dac_bits", self.dac_bits, 1), ("adc_bits", self.adc_bits, 2)):
            if value is not None and value != 0 and not low <= value <= (65536 if name == "levels" else 16):
                raise PassError(f"option {name}={value} is out of range")

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        target = ctx.target
        levels = self._resolve(self.levels, target.conductance.levels)
        dac_bits = self._resolve(self.dac_bits, target.crossbar.dac_bits)
        adc_bits = self._resolve(self.adc_bits, target.crossbar.adc_bits)
        for node in graph.nodes_of(Linear, Conv2d):
            op = node.op
            assert isinstance(op, (Linear, Conv2d))
            g_pos, g_neg, scale = map_weights(op.weight.reshape(op.weight.shape[0], -1), target,
                                              per_column=self.granularity == "column", levels=levels)
            common = dict(weight=op.weight, bias=op.bias, g_pos=g_pos, g_neg=g_neg, conductance_per_weight=scale,
                          dac_bits=dac_bits, adc_bits=adc_bits)
            if isinstance(op, Conv2d):
                node.op = CrossbarConv2d(stride=op.stride, padding=op.padding, dilation=op.dilation, **common)
            else:
                node.op = CrossbarLinear(**common)
        return graph

    @staticmethod
    def _resolve(option_value: int | None, target_value: int | None) -> int | None:
        if option_value is None:
            return target_value
        return None if option_value == 0 else option_value
