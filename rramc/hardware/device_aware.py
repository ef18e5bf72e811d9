"""The network as the chip computes it, as a differentiable PyTorch module.

:class:`DeviceAwareNetwork` runs a float graph through the one interpreter with a training
kernel: every weighted layer is mapped from its trainable float weights at every step by the
same :func:`~rramc.hardware.layer.mapped_layer` the compiler uses and computed by the same
:class:`~rramc.hardware.layer.CrossbarLayer` the runtime executes. ``reconstruct`` trains it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from rramc.hardware.column_solver import IdealWires
from rramc.hardware.interpreter import Interpreter
from rramc.hardware.layer import mapped_layer
from rramc.hardware.mapping import MappingPlan
from rramc.hardware.target import Target
from rramc.ir import Conv2d, Graph, InputRange, Linear, Node


@dataclass(frozen=True)
class InLoop:
    """Which chip effects a device-aware model includes besides the device I-V."""

    levels: bool = False
    """conductances rounded to the plan's levels (gradients pass straight through)"""
    converters: bool = False
    """the plan's DAC and ADC, on its tiles, ADC ranges tracked during training"""
    variation: bool = False
    """the target's programming variation, stuck cells and read noise, redrawn every step"""
    wires: bool = False
    """the target's wires (IR drop) on the plan's tiles; without it the model's wires are ideal"""

    def names(self) -> tuple[str, ...]:
        return tuple(k for k, v in (("levels", self.levels), ("converters", self.converters), ("variation", self.variation),
                                    ("wires", self.wires)) if v)


class DeviceAwareNetwork(nn.Module):
    """A float graph as a trainable module whose ``linear``/``conv2d`` layers compute like the chip.

    ``input_ranges`` gives each weighted layer's input range; ``plan`` the mapping and tiling the
    compiler will use. With converters in the loop, each layer's per-tile ADC ranges follow the
    running maximum of its currents (momentum ``adc_momentum``).
    """

    def __init__(self, graph: Graph, target: Target, plan: MappingPlan, input_ranges: dict[str, InputRange],
                 in_loop: InLoop = InLoop(), *, seed: int = 0, adc_momentum: float = 0.1, device: torch.device | str = "cpu") -> None:
        super().__init__()
        if not in_loop.wires and target.wires.model != "ideal":
            target = dataclasses.replace(target, wires=IdealWires())
        self.graph, self.target, self.plan, self.in_loop = graph, target, plan, in_loop
        self.input_ranges, self.adc_momentum, self.device = input_ranges, adc_momentum, torch.device(device)
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        # A layer that shares another's arrays trains the same weights (and the same bias where it
        # applies the same one): the parameters are keyed by the layer that owns them.
        self.weight_key: dict[str, str] = {}
        self.bias_key: dict[str, str] = {}
        for node in graph.nodes_of(Linear, Conv2d):
            op = node.op
            assert isinstance(op, (Linear, Conv2d))
            owner = graph.node(op.shares).op if op.shares is not None else op
            self.weight_key[node.name] = op.shares or node.name
            if op.shares is None:
                self.weights[node.name] = nn.Parameter(op.weight.detach().to(self.device, torch.float32, copy=True))
            if op.bias is not None:
                self.bias_key[node.name] = op.shares if op.shares is not None and op.bias is owner.bias else node.name
                if self.bias_key[node.name] == node.name:
                    self.biases[node.name] = nn.Parameter(op.bias.detach().to(self.device, torch.float32, copy=True))
        self.adc_ranges: dict[str, Tensor] = {}
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.interpreter = Interpreter(graph, self, device=self.device)

    def reinitialize(self, seed: int) -> None:
        """Fresh weights (PyTorch's default initialisation), for training from scratch."""
        # Drawn on the CPU and copied, so that fresh weights are the same on every device.
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's random state
            torch.manual_seed(seed)
            for name, weight in self.weights.items():
                fresh = torch.empty(weight.shape)
                nn.init.kaiming_uniform_(fresh, a=5**0.5)
                with torch.no_grad():
                    weight.copy_(fresh)
                if name in self.biases:
                    bound = 1 / weight[0].numel() ** 0.5
                    with torch.no_grad():
                        self.biases[name].copy_(torch.empty(self.biases[name].shape).uniform_(-bound, bound))

    def weighted(self, node: Node, x: Tensor) -> Tensor:
        """The training kernel: ``node`` mapped from its current weights, computed like the chip."""
        bias = self.biases[self.bias_key[node.name]] if node.name in self.bias_key else None
        loop = self.in_loop
        layer = mapped_layer(node, self.weights[self.weight_key[node.name]], bias, self.target, self.plan, self.input_ranges[node.name],
                             tiled=loop.converters or loop.wires, levels=loop.levels, converters=loop.converters,
                             adc_range=self.adc_ranges.get(node.name), generator=self.generator, variation=loop.variation)
        scale = self.input_ranges[node.name].scale
        phases = layer.phases(x, scale, self.generator)
        if layer.op.adc_bits is not None:
            with torch.no_grad():
                lowering = layer.lowering
                peak = torch.stack([current.detach().abs().movedim(lowering.block_dim, 0).transpose(1, 2).flatten(2).amax(-1)
                                    for _, current in phases]).amax(0)  # [row blocks, outputs]
                tile_peak = layer.grid.per_tile_max(peak)
                old = self.adc_ranges.get(node.name)
                if old is None or not self.training:
                    new = tile_peak if old is None else old
                else:
                    new = (1 - self.adc_momentum) * old + self.adc_momentum * tile_peak
                self.adc_ranges[node.name] = new
            layer.calibrated(layer.op.replace(adc_range=self.adc_ranges[node.name]))  # type: ignore[arg-type]
        return layer.neuron(layer.digitize(phases))

    def forward(self, x: Tensor) -> Tensor:
        (graph_input,) = self.graph.inputs
        if tuple(x.shape[1:]) != graph_input.shape:
            x = x.reshape(x.shape[0], *graph_input.shape)
        return self.interpreter.run(x)[0]

    def write_back(self) -> None:
        """Store the trained weights in the graph's ops."""
        trained: dict[str, Tensor] = {}  # one tensor per parameter: layers sharing arrays keep sharing them

        def value(parameters: nn.ParameterDict, key: str) -> Tensor:
            name = ("bias:" if parameters is self.biases else "") + key
            if name not in trained:
                trained[name] = parameters[key].detach().to("cpu", copy=True)
            return trained[name]

        for node in self.graph.nodes_of(Linear, Conv2d):
            bias = value(self.biases, self.bias_key[node.name]) if node.name in self.bias_key else None
            node.op = node.op.replace(weight=value(self.weights, self.weight_key[node.name]), bias=bias)
