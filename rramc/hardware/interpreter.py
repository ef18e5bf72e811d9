"""One interpreter for every way a graph is executed: a kernel per mode, plus observers.

The digital periphery (pooling, reshapes, activations, attention's products, normalisations, ...)
is computed exactly by each :class:`~rramc.ir.DigitalOp`'s own ``compute`` in every mode. Weighted
layers (``linear``, ``conv2d`` and the crossbar ops) go to the mode's :class:`Kernel`:

* :class:`FloatKernel` — the float network the chip is compared to (a layer retrained through a
  device computes its device-aware model, the function it was trained to be);
* :class:`ChipKernel` — a programmed chip instance (:class:`Chip`);
* :class:`CalibrationKernel` — calibrates each crossbar layer on the activations the nominal chip
  delivers to it, layer after layer, and passes its outputs on;
* the device-aware training kernel (:class:`~rramc.hardware.device_aware.DeviceAwareNetwork`).

Observers (:class:`~rramc.hardware.observers.Observer`) see every node and every array read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from rramc.errors import RuntimeSimulationError
from rramc.hardware.calibration import Bounds, CalibrationOptions, calibrate_layer, declared, value_bounds
from rramc.hardware.layer import CrossbarLayer, mapped_layer
from rramc.hardware.mapping import MappingPlan
from rramc.hardware.observers import Observer
from rramc.hardware.target import Target
from rramc.ir import Conv2d, CrossbarConv2d, CrossbarLinear, CrossbarOp, DigitalOp, Graph, Input, Linear, Node


WEIGHTED = (Linear, Conv2d, CrossbarOp)


def float_layer(op: Linear | Conv2d | CrossbarOp, x: Tensor) -> Tensor:
    """``W·x + b`` of a weighted op with its float weights."""
    bias = None if op.bias is None else op.bias.to(x)
    if isinstance(op, (Conv2d, CrossbarConv2d)):
        return F.conv2d(x, op.weight.to(x), bias, op.stride, op.padding, op.dilation, op.groups)
    return F.linear(x, op.weight.to(x), bias)


def executable_by_runtime(node: Node) -> bool:
    """Whether the interpreter can compute ``node`` on a chip (a crossbar op or a digital op)."""
    return isinstance(node.op, (Input, CrossbarOp, DigitalOp))


class Kernel(Protocol):
    def weighted(self, node: Node, x: Tensor) -> Tensor:
        """The value of a weighted node (``linear``, ``conv2d``, crossbar op) for input ``x``."""


class Interpreter:
    """Executes a graph on batches with one kernel for its weighted layers."""

    def __init__(self, graph: Graph, kernel: Kernel, observers: Sequence[Observer] = (), *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.graph, self.kernel, self.observers = graph, kernel, list(observers)
        self.device, self.dtype = torch.device(device), dtype
        self._order: list[tuple[Node, tuple[str, ...]]] | None = None

    def inputs(self, inputs: Sequence[Tensor]) -> dict[str, Tensor]:
        graph_inputs = self.graph.inputs
        if len(inputs) != len(graph_inputs):
            raise RuntimeSimulationError(f"the graph takes {len(graph_inputs)} inputs, got {len(inputs)}")
        values = {}
        for node, x in zip(graph_inputs, inputs):
            if not isinstance(x, Tensor):
                raise RuntimeSimulationError(f"input %{node.name} must be a tensor, got {type(x).__name__}")
            if tuple(x.shape[1:]) != node.shape:
                raise RuntimeSimulationError(f"input %{node.name} expects samples of shape {list(node.shape)}, got {list(x.shape[1:])}")
            x = x.to(device=self.device, dtype=self.dtype)
            # one reduction decides for finite batches (their sum is finite); only then look closer
            if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
                raise RuntimeSimulationError(f"input %{node.name} holds NaN or infinite values; a chip applies finite voltages only")
            values[node.name] = x
        return values

    def run(self, *inputs: Tensor, keep: Sequence[str] | bool = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """The graph's output for a batch, and the values of the nodes named in ``keep`` (True: all).

        Other values are dropped as soon as nothing needs them any more.
        """
        values = self.inputs(inputs)
        keep_all = keep is True
        kept = set() if keep_all or keep is False else set(keep)  # type: ignore[arg-type]
        observers = self.observers
        for node, freed in self._schedule():
            operands = [values[i] for i in node.inputs]
            value = self.evaluate(node, operands)
            values[node.name] = value
            for observer in observers:
                observer.on_node(node, operands, value)
            if not keep_all:
                for name in freed:
                    if name not in kept:
                        del values[name]
        result = values[self.graph.output.name]
        return result, values if keep_all else {k: values[k] for k in kept if k in values}

    def _schedule(self) -> list[tuple[Node, tuple[str, ...]]]:
        """Every computed node with the values nothing needs after it (the output excepted); built once."""
        if self._order is None:
            last_use: dict[str, str] = {}
            for node in self.graph:
                for name in node.inputs:
                    last_use[name] = node.name
            output = self.graph.output.name
            self._order = [(node, tuple(dict.fromkeys(n for n in node.inputs if last_use[n] == node.name and n != output)))
                           for node in self.graph if not isinstance(node.op, Input)]
        return self._order

    def evaluate(self, node: Node, operands: list[Tensor]) -> Tensor:
        op = node.op
        if isinstance(op, WEIGHTED):
            x = operands[0]
            if x.dim() > 2 and isinstance(op, (Linear, CrossbarLinear)):  # every token is one read of the same arrays
                return self.kernel.weighted(node, x.reshape(-1, x.shape[-1])).unflatten(0, x.shape[:-1])
            return self.kernel.weighted(node, x)
        if not isinstance(op, DigitalOp):
            raise RuntimeSimulationError(f"the runtime has no kernel for op '{op.kind}' (%{node.name}, from {node.source})")
        return op.compute(*operands)

    def __call__(self, *inputs: Tensor) -> Tensor:
        with torch.no_grad():
            return self.run(*inputs)[0]


class FloatKernel:
    """The float network. A layer retrained through a device (``trained_for``) computes its
    device-aware model: the device's I-V with continuous conductances and ideal converters."""

    def __init__(self) -> None:
        self._device_aware: dict[str, CrossbarLayer] = {}

    def weighted(self, node: Node, x: Tensor) -> Tensor:
        op = node.op
        assert isinstance(op, WEIGHTED)
        if op.trained_for is None:
            return float_layer(op, x)
        layer = self._device_aware.get(node.name)
        if layer is None or layer.cells.pairs.dtype != x.dtype or layer.cells.pairs.device != x.device:
            layer = self._device_aware[node.name] = device_reference(node, x.dtype, x.device)
        assert layer.op.input_range is not None
        return layer(x)


def device_reference(node: Node, dtype: torch.dtype, device: torch.device) -> CrossbarLayer:
    """The device-aware model of a layer retrained through a device (see :class:`FloatKernel`)."""
    op = node.op
    assert isinstance(op, WEIGHTED) and op.trained_for is not None and op.input_range is not None
    training = op.trained_for
    target = Target.from_mapping(training.target, f"the target %{node.name} was reconstructed for")
    plan = MappingPlan.for_target(target, granularity=training.granularity)
    weight = op.weight.to(device=device, dtype=dtype)
    bias = None if op.bias is None else op.bias.to(device=device, dtype=dtype)
    with torch.no_grad():
        return mapped_layer(node, weight, bias, target, plan, op.input_range, tiled=False, levels=False, converters=False)


class Chip:
    """A graph's crossbar layers programmed on one chip instance.

    ``seed`` draws the instance's programming variation and stuck cells; :meth:`noise` gives a
    fresh read-noise stream of the same seed (None without read noise), so two runs of the same
    instance on the same batches see the same noise.
    """

    def __init__(self, graph: Graph, target: Target, *, seed: int = 0, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.graph, self.target, self.seed = graph, target, seed
        self.device, self.dtype = torch.device(device), dtype
        generator = torch.Generator(device=self.device).manual_seed(seed)
        self._schedule = Interpreter(graph, FloatKernel())._schedule()
        self.layers: dict[str, CrossbarLayer] = {}
        for node in graph:
            if isinstance(node.op, (Linear, Conv2d)):
                raise RuntimeSimulationError(
                    f"%{node.name} ({node.source}) is a float {node.op.kind} that was never mapped to crossbars; "
                    "run the 'quantize' and 'tile' passes first"
                )
            if isinstance(node.op, CrossbarOp) and node.op.shares is not None:  # the owner's programmed cells, read again
                self.layers[node.name] = self.layers[node.op.shares].reading(node)
            elif isinstance(node.op, CrossbarOp):
                self.layers[node.name] = CrossbarLayer.program(node, target, generator=generator, dtype=dtype, device=self.device)

    def noise(self) -> torch.Generator | None:
        if self.target.nonidealities.read_noise_sigma == 0:
            return None
        return torch.Generator(device=self.device).manual_seed(self.seed * 2 + 1)

    def interpreter(self, observers: Sequence[Observer] = (), noise: torch.Generator | None = None) -> Interpreter:
        """An interpreter running this chip; ``noise``: the read-noise stream (default: a fresh one)."""
        interpreter = Interpreter(self.graph, ChipKernel(self, noise if noise is not None else self.noise(), observers), observers,
                                  device=self.device, dtype=self.dtype)
        interpreter._order = self._schedule  # the graph is the chip's: its schedule is too
        return interpreter

    def __call__(self, x: Tensor) -> Tensor:
        return self.interpreter()(x)


class ChipKernel:
    """Crossbar ops on a programmed :class:`Chip`; read noise from ``noise``."""

    def __init__(self, chip: Chip, noise: torch.Generator | None, observers: Sequence[Observer] = ()) -> None:
        self.chip, self.noise, self.observers = chip, noise, list(observers)

    def weighted(self, node: Node, x: Tensor) -> Tensor:
        return self.chip.layers[node.name](x, self.noise, self.observers)


class CalibrationKernel:
    """Calibrates each crossbar layer on its inputs, in graph order, and continues with its output.

    ``node.op`` of each crossbar node is replaced by the calibrated op.
    """

    def __init__(self, graph: Graph, target: Target, options: CalibrationOptions) -> None:
        self.target, self.options = target.nominal(), options
        self.graph = graph
        self.bounds: dict[str, Bounds] = value_bounds(graph)

    def weighted(self, node: Node, x: Tensor) -> Tensor:
        op = node.op
        if not isinstance(op, CrossbarOp):
            return float_layer(op, x)  # type: ignore[arg-type]
        expected = float_layer(op, x) if self.options.gain == "least_squares" else None
        source = node.inputs[0]
        try:
            node.op, output = calibrate_layer(node, x, self.bounds[source], self.target, self.options, expected,
                                              declared(self.graph, source))
        except ValueError as exc:
            raise RuntimeSimulationError(f"%{node.name} ({node.source}) cannot be calibrated: {exc}") from None
        return output
