"""The network as the chip computes it, as a differentiable PyTorch module.

:class:`DeviceAwareNetwork` runs a float graph whose weighted layers go through the same code
the runtime executes — :func:`~rramc.hardware.mapping.map_weights`, the device I-V inside
:class:`~rramc.runtime.crossbar_layer.ProgrammedLayer`, the neuron's full-scale gain — built
from trainable float weights at every step. ``reconstruct`` trains it; the runtime uses
:func:`device_layer` as the float reference of a reconstructed layer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from rramc.hardware.crossbar import TiledConductances, full_scale_response, program_conductances
from rramc.hardware.mapping import map_weights
from rramc.hardware.target import Target
from rramc.ir import Conv2d, CrossbarConv2d, CrossbarLinear, CrossbarOp, Graph, Input, Linear, Node
from rramc.runtime.crossbar_layer import ProgrammedLayer

ZERO_NONIDEALITIES = {"programming_sigma": 0.0, "read_noise_sigma": 0.0, "stuck_off_fraction": 0.0, "stuck_on_fraction": 0.0}


@dataclass(frozen=True)
class InLoop:
    """Which chip effects a device-aware model includes besides the device I-V."""

    levels: bool = False
    """conductances rounded to the target's levels (gradients pass straight through)"""
    converters: bool = False
    """the target's DAC and ADC, on array-sized tiles, ADC ranges tracked during training"""
    variation: bool = False
    """the target's programming variation, stuck cells and read noise, redrawn every step"""


@functools.lru_cache(maxsize=32)
def nominal(target: Target) -> Target:
    """``target`` without programming variation, faults and read noise."""
    return target.with_changes(nonidealities=ZERO_NONIDEALITIES)


@functools.lru_cache(maxsize=32)
def _response(target: Target) -> float:
    c = target.conductance
    return full_scale_response(target.device, target.crossbar.read_voltage, c.g_min, c.g_max)


def default_splits(n_rows: int, n_cols: int, target: Target) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The tiling the ``tile`` pass chooses by default."""
    from rramc.passes.tile import split_points

    return (split_points(n_rows, target.crossbar.rows, False), split_points(n_cols, target.crossbar.outputs_per_array, False))


def device_layer(
    node: Node,
    weight: Tensor,
    bias: Tensor | None,
    target: Target,
    *,
    input_scale: float,
    input_signed: bool,
    in_loop: InLoop = InLoop(),
    adc_range: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> ProgrammedLayer:
    """A crossbar layer mapped from float ``weight`` (kept differentiable) for one forward pass."""
    op = node.op
    out_features = weight.shape[0]
    flat = weight.reshape(out_features, -1)
    g_pos, g_neg, scale = map_weights(flat, target, levels="target" if in_loop.levels else None)
    response = _response(target)
    if in_loop.converters:
        row_splits, col_splits = default_splits(flat.shape[1], out_features, target)
    else:
        row_splits, col_splits = (0, flat.shape[1]), (0, out_features)
    if in_loop.variation:
        g_pos, g_neg = program_conductances(g_pos, g_neg, target, col_splits, generator)
    common = dict(weight=weight, bias=bias, g_pos=g_pos, g_neg=g_neg, conductance_per_weight=scale,
                  dac_bits=target.crossbar.dac_bits if in_loop.converters else None,
                  adc_bits=target.crossbar.adc_bits if in_loop.converters else None,
                  input_signed=input_signed, input_scale=input_scale, gain=input_scale / (scale * response),
                  row_splits=row_splits, col_splits=col_splits, adc_range=adc_range)
    if isinstance(op, (Conv2d, CrossbarConv2d)):
        mapped: CrossbarOp = CrossbarConv2d(stride=op.stride, padding=op.padding, dilation=op.dilation, **common)
    else:
        mapped = CrossbarLinear(**common)
    tiles = TiledConductances.from_matrices(g_pos, g_neg, row_splits, col_splits)
    layer_target = target if in_loop.variation else nominal(target)
    per_column = None if adc_range is None else tiles.per_column(adc_range.to(g_pos))
    return ProgrammedLayer(node, mapped, layer_target, tiles, per_column)


def device_reference(node: Node, x: Tensor, target: Target) -> Tensor:
    """A reconstructed layer's float model: its I-V with continuous conductances and ideal converters."""
    op = node.op
    assert isinstance(op, (Linear, Conv2d, CrossbarOp))
    scale = node.meta["input_scale"]
    layer = device_layer(node, op.weight.to(x), None if op.bias is None else op.bias.to(x), target,
                         input_scale=scale, input_signed=node.meta["input_signed"])
    currents, restore = layer.currents(x, scale)
    return restore(layer.neuron(layer.digitize(currents)))


class DeviceAwareNetwork(nn.Module):
    """A float graph as a trainable module whose ``linear``/``conv2d`` layers compute like the chip.

    ``input_ranges`` gives each weighted layer's input scale (the activation applied as the
    read voltage) and whether its inputs are signed. With converters in the loop, each layer's
    per-tile ADC ranges follow the running maximum of its currents (momentum ``adc_momentum``).
    """

    def __init__(self, graph: Graph, target: Target, input_ranges: dict[str, tuple[float, bool]], in_loop: InLoop = InLoop(),
                 *, seed: int = 0, adc_momentum: float = 0.1) -> None:
        super().__init__()
        self.graph, self.target, self.in_loop = graph, target, in_loop
        self.input_ranges, self.adc_momentum = input_ranges, adc_momentum
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        for node in graph.nodes_of(Linear, Conv2d):
            op = node.op
            self.weights[node.name] = nn.Parameter(op.weight.detach().clone().float())
            if op.bias is not None:
                self.biases[node.name] = nn.Parameter(op.bias.detach().clone().float())
        self.adc_ranges: dict[str, Tensor] = {}
        self.generator = torch.Generator().manual_seed(seed)

    def reinitialize(self, seed: int) -> None:
        """Fresh weights (PyTorch's default initialisation), for training from scratch."""
        torch.manual_seed(seed)
        for name, weight in self.weights.items():
            nn.init.kaiming_uniform_(weight, a=5**0.5)
            if name in self.biases:
                bound = 1 / weight[0].numel() ** 0.5
                nn.init.uniform_(self.biases[name], -bound, bound)

    def layer_output(self, node: Node, x: Tensor) -> Tensor:
        scale, signed = self.input_ranges[node.name]
        bias = self.biases[node.name] if node.name in self.biases else None
        layer = device_layer(node, self.weights[node.name], bias, self.target, input_scale=scale, input_signed=signed,
                             in_loop=self.in_loop, adc_range=self.adc_ranges.get(node.name), generator=self.generator)
        currents, restore = layer.currents(x, scale, self.generator)
        if layer.op.adc_bits is not None:
            with torch.no_grad():
                peak = torch.stack([i.detach().abs().amax(1) for _, i in currents]).amax(0)  # [row blocks, outputs]
                tile_peak = layer.tiles.per_tile_max(peak)
                old = self.adc_ranges.get(node.name)
                new = tile_peak if old is None or not self.training else (1 - self.adc_momentum) * old + self.adc_momentum * tile_peak
                if self.training or old is None:
                    self.adc_ranges[node.name] = new
            layer.calibrated(layer.op.replace(adc_range=self.adc_ranges[node.name]))
        return restore(layer.neuron(layer.digitize(currents)))

    def forward(self, x: Tensor) -> Tensor:
        from rramc.runtime.evaluate import fit_inputs
        from rramc.runtime.interpreter import DIGITAL_KERNELS

        values: dict[str, Tensor] = {}
        (graph_input,) = self.graph.inputs
        values[graph_input.name] = fit_inputs(x, graph_input.shape, "training data")
        for node in self.graph:
            if isinstance(node.op, Input):
                continue
            operands = [values[i] for i in node.inputs]
            if isinstance(node.op, (Linear, Conv2d)):
                values[node.name] = self.layer_output(node, operands[0])
            else:
                values[node.name] = DIGITAL_KERNELS[type(node.op)](node.op, *operands)
        return values[self.graph.output.name]

    def write_back(self) -> None:
        """Store the trained weights in the graph's ops."""
        for node in self.graph.nodes_of(Linear, Conv2d):
            bias = self.biases[node.name].detach().clone() if node.name in self.biases else None
            node.op = node.op.replace(weight=self.weights[node.name].detach().clone(), bias=bias)
