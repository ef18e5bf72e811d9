"""Execute an IR graph on a batch: as float PyTorch math, or on a simulated chip.

The same graph runs at every stage of the pipeline. In ``float`` mode crossbar ops compute with
their float weights (the reference the chip is compared to); in ``chip`` mode they run through
:class:`ProgrammedLayer` — device I-V, DAC, tiles, ADC, neuron — and everything else (pooling,
reshapes, activations, residual adds) is the digital periphery, computed exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from rramc.errors import RuntimeSimulationError
from rramc.hardware.target import Target
from rramc.ir import (
    Add, AdaptiveAvgPool2d, AvgPool2d, BatchNorm, ChannelAffine, Clamp, Conv2d, CrossbarConv2d, CrossbarLinear,
    CrossbarOp, Graph, Linear, MaxPool2d, Node, Output, ReLU, Reshape,
)
from rramc.runtime.crossbar_layer import ProgrammedLayer

Mode = Literal["float", "chip"]


def _per_channel(x: Tensor, v: Tensor) -> Tensor:
    return v.to(x).reshape(-1, *([1] * (x.dim() - 2)))


def _float_conv(op: Conv2d | CrossbarConv2d, x: Tensor) -> Tensor:
    bias = None if op.bias is None else op.bias.to(x)
    return F.conv2d(x, op.weight.to(x), bias, op.stride, op.padding, op.dilation)


def _float_linear(op: Linear | CrossbarLinear, x: Tensor) -> Tensor:
    return F.linear(x, op.weight.to(x), None if op.bias is None else op.bias.to(x))


DIGITAL_KERNELS: dict[type, Callable[..., Tensor]] = {
    Output: lambda op, x: x,
    Reshape: lambda op, x: x.reshape(x.shape[0], *op.shape),
    ReLU: lambda op, x: torch.relu(x),
    Clamp: lambda op, x: torch.clamp(x, op.low, op.high),
    Add: lambda op, a, b: a + b,
    ChannelAffine: lambda op, x: x * _per_channel(x, op.scale) + _per_channel(x, op.shift),
    BatchNorm: lambda op, x: x * _per_channel(x, op.scale_and_shift()[0]) + _per_channel(x, op.scale_and_shift()[1]),
    MaxPool2d: lambda op, x: F.max_pool2d(x, op.kernel_size, op.stride, op.padding, op.dilation, op.ceil_mode),
    AvgPool2d: lambda op, x: F.avg_pool2d(x, op.kernel_size, op.stride, op.padding, op.ceil_mode, op.count_include_pad),
    AdaptiveAvgPool2d: lambda op, x: F.adaptive_avg_pool2d(x, op.output_size),
    Linear: _float_linear,
    Conv2d: _float_conv,
}
"""Ops computed exactly by the digital periphery (and the float ops, for the reference)."""


class Program:
    """A graph ready to execute in one mode; in chip mode, on one programmed chip instance.

    In float mode a layer that ``reconstruct`` retrained for a device is evaluated through that
    device's I-V (continuous conductances, ideal converters) when a target is given: that is the
    network it was trained to be.

    ``seed`` fixes the chip instance (programming variation, stuck cells) and the read noise.
    """

    def __init__(
        self,
        graph: Graph,
        target: Target | None = None,
        mode: Mode = "float",
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.graph, self.target, self.mode = graph, target, mode
        self.device, self.dtype = torch.device(device), dtype
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.layers: dict[str, ProgrammedLayer] = {}
        if mode == "chip":
            if target is None:
                raise RuntimeSimulationError("executing on the chip needs a target")
            for node in graph:
                if isinstance(node.op, (Linear, Conv2d)):
                    raise RuntimeSimulationError(
                        f"%{node.name} ({node.source}) is a float {node.op.kind} that was never mapped to crossbars; "
                        "run the 'quantize' and 'tile' passes first"
                    )
                if isinstance(node.op, CrossbarOp):
                    self.layers[node.name] = ProgrammedLayer.program(node, target, generator=self.generator, dtype=dtype, device=self.device)

    def evaluate_node(self, node: Node, operands: list[Tensor]) -> Tensor:
        """The value of one node given its operands' values."""
        op = node.op
        if self.mode == "float" and "reconstructed" in node.meta and self.target is not None:
            # A layer retrained through the device computes W·x only on linear cells: its float
            # model is the device-aware one.
            from rramc.runtime.device_aware import device_reference

            return device_reference(node, operands[0], self.target)
        if isinstance(op, CrossbarOp):
            if self.mode == "chip":
                return self.layers[node.name](operands[0], self.generator)
            return _float_conv(op, operands[0]) if isinstance(op, CrossbarConv2d) else _float_linear(op, operands[0])  # type: ignore[arg-type]
        kernel = DIGITAL_KERNELS.get(type(op))
        if kernel is None:
            raise RuntimeSimulationError(f"the runtime has no kernel for op '{op.kind}' (%{node.name}, from {node.source})")
        return kernel(op, *operands)

    def trace(self, *inputs: Tensor) -> dict[str, Tensor]:
        """Every node's value for a batch (inputs in the order of ``graph.inputs``)."""
        graph_inputs = self.graph.inputs
        if len(inputs) != len(graph_inputs):
            raise RuntimeSimulationError(f"the graph takes {len(graph_inputs)} inputs, got {len(inputs)}")
        values: dict[str, Tensor] = {}
        for node, x in zip(graph_inputs, inputs):
            x = x.to(device=self.device, dtype=self.dtype)
            if tuple(x.shape[1:]) != node.shape:
                raise RuntimeSimulationError(f"input %{node.name} expects samples of shape {list(node.shape)}, got {list(x.shape[1:])}")
            values[node.name] = x
        for node in self.graph:
            if node.name not in values:
                values[node.name] = self.evaluate_node(node, [values[i] for i in node.inputs])
        return values

    @torch.no_grad()
    def __call__(self, *inputs: Tensor) -> Tensor:
        return self.trace(*inputs)[self.graph.output.name]
