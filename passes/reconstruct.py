"""reconstruct: retrain the network through the target's device I-V (Kim et al.).

A conventionally trained layer assumes ``I = G·V``; on cells with ``I = f(V, G)`` the crossbar
computes something else. This pass replaces each layer's weighted sum with the sum the crossbar
really computes, keeps activations in the read range with clipped ReLUs, and retrains, so the
nonlinearity becomes part of the model instead of an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rramc.datasets import Dataset, fit_inputs, load_dataset
from rramc.errors import PassError
from rramc.hardware.calibration import input_range, upper_percentile, value_bounds
from rramc.hardware.device_aware import DeviceAwareNetwork, InLoop
from rramc.hardware.interpreter import FloatKernel, Interpreter
from rramc.hardware.mapping import MappingPlan
from rramc.ir import Clamp, Conv2d, CrossbarOp, DeviceTraining, Graph, InputRange, Linear, ReLU
from rramc.pipeline import CompileContext, Pass, option
from rramc.torch_devices import check_torch_device
from rramc.training import TrainConfig, train_classifier


@dataclass(frozen=True)
class Reconstruct(Pass):
    """Retrain every weighted layer through the target's differentiable device model.

    Needs: a canonical float graph (before ``quantize``), a differentiable device and training
    data (``dataset=`` or the compile call's training data). Guarantees: ReLUs feeding crossbar
    layers are clipped at the ``clip_percentile`` of their activations; every ``linear`` and
    ``conv2d`` holds weights trained through the device I-V — mapped as the ``quantize`` and
    ``tile`` passes later in the pipeline will map it (their options included), and, if asked,
    through conductance levels, converters and variation — with its ``input_range`` fixed
    (origin ``reconstruct``, honoured by ``calibrate``) and a ``trained_for`` record.
    Training is deterministic for a given ``seed`` (default: the compile seed). Adam is the
    default: with state-dependent devices the map from weights to currents is itself nonlinear,
    and plain SGD at the seed paper's rate (0.05) oscillates where Adam converges.
    """

    name = "reconstruct"
    dataset: str | None = option("training data set (train split): digits, mnist, fashion-mnist, cifar10", None)
    data_dir: str | None = option("directory holding the data set's files", None)
    epochs: int = option("training epochs", 3)
    optimizer: str = option("adam, or sgd with momentum 0.9 (the seed paper's)", "adam", ("adam", "sgd"))
    lr: float | None = option("learning rate (default: 0.001 for adam, 0.05 for sgd)", None)
    batch_size: int = option("samples per step", 128)
    seed: int | None = option("seed of initialisation, shuffling and noise (default: the compile seed)", None)
    init: str = option("start from the trained weights or from fresh ones", "finetune", ("finetune", "scratch"))
    schedule: str = option("learning-rate schedule", "constant", ("constant", "cosine"))
    samples: int | None = option("use at most this many training samples", None)
    clip_percentile: float = option("percentile of an unbounded ReLU's activations where it is clipped", 99.9)
    levels: bool = option("train through the target's conductance levels", False)
    converters: bool = option("train through the target's DAC and ADC", False)
    variation: bool = option("train with the target's programming variation, faults and read noise", False)
    wires: bool = option("train through the target's wires (IR drop) on the tiles the pipeline will cut", False)
    device: str = option("torch device to train on: cpu, cuda, cuda:1, ... (the executable is the same wherever it was trained)", "cpu")

    def requires(self, graph: Graph, ctx: CompileContext) -> None:
        if graph.nodes_of(CrossbarOp):
            raise PassError("the graph is already mapped to crossbars: run reconstruct before quantize")
        if not graph.nodes_of(Linear, Conv2d):
            raise PassError("the graph has no linear or conv2d layer to reconstruct")
        field = ctx.target.device.non_differentiable_field()
        if field:
            raise PassError(f"target {ctx.target.name}: device model '{ctx.target.device.model}' is not differentiable "
                            f"with this device.{field} (the current's slope is unbounded at 0 V); reconstruct cannot train through it")
        if ctx.training_data is None and self.dataset is None:
            raise PassError("reconstruct needs training data: give a data set (--dataset D, or reconstruct{dataset=D})")
        for name, value, low in (("epochs", self.epochs, 0), ("batch_size", self.batch_size, 1), ("samples", self.samples, 1)):
            if value is not None and value < low:
                raise PassError(f"option {name}={value}: must be at least {low}")
        check_torch_device(self.device, "reconstruct option device", PassError)
        if (self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr))) or not 0 < self.clip_percentile <= 100:
            raise PassError("lr must be a positive number and clip_percentile in (0, 100]")

    def training_data(self, ctx: CompileContext) -> Dataset:
        data = ctx.training_data or load_dataset(str(self.dataset), "train", self.data_dir)
        return data.take(self.samples) if self.samples is not None else data

    def plan(self, ctx: CompileContext) -> MappingPlan:
        """The mapping the rest of the pipeline will apply: its quantize and tile options."""
        from rramc.passes.quantize import Quantize
        from rramc.passes.tile import Tile

        plan = MappingPlan.for_target(ctx.target)
        quantize, tile = ctx.after(self, Quantize), ctx.after(self, Tile)
        plan = quantize.plan(plan) if quantize is not None else plan
        return tile.plan(plan) if tile is not None else plan

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        seed = ctx.seed if self.seed is None else self.seed
        # The network as given, before retraining changes it: the executable keeps it so that run reports
        # show what the original network scores next to its device-aware model and the chip.
        ctx.artifacts.setdefault("original", graph.copy())
        data = self.training_data(ctx)
        if len(data) == 0:
            raise PassError("the training data set is empty")
        (graph_input,) = graph.inputs
        subset = data.shuffled(seed).take(1024)
        sample = fit_inputs(subset.images, graph_input.shape, data.name)
        self._clip_relus(graph, sample)
        ranges = self._input_ranges(graph, sample)
        plan = self.plan(ctx)
        in_loop = InLoop(self.levels, self.converters, self.variation, self.wires)
        network = DeviceAwareNetwork(graph, ctx.target, plan, ranges, in_loop, seed=seed, device=self.device)
        if self.init == "scratch":
            network.reinitialize(seed)
        lr = self.lr if self.lr is not None else (1e-3 if self.optimizer == "adam" else 0.05)
        config = TrainConfig(epochs=self.epochs, lr=lr, optimizer=self.optimizer, batch_size=self.batch_size, seed=seed,
                             schedule=self.schedule, device=self.device)
        start = self._fit(network, sample, subset.labels)
        history: list[tuple[float, float]] = []

        def on_epoch(epoch: int, loss: float, acc: float) -> None:
            history.append((loss, acc))
            ctx.log(f"reconstruct for {ctx.target.name}: epoch {epoch + 1}/{self.epochs} loss {loss:.4f} train accuracy {100 * acc:.2f} %")

        train_classifier(network, data, config, on_epoch=on_epoch, progress=ctx.progress,
                         description=f"reconstruct for {ctx.target.name}")
        if history and not math.isfinite(history[-1][0]):
            raise PassError(f"training diverged (loss {history[-1][0]}): lower the learning rate (lr={lr:g})")
        if history and (history[-1][0] > 2 * max(start[0], math.log(data.num_classes)) or history[-1][1] < start[1] - 0.1):
            ctx.warn(f"reconstruct: training diverged: the loss went from {start[0]:.3g} to {history[-1][0]:.3g} and the training "
                     f"accuracy from {100 * start[1]:.1f} % to {100 * history[-1][1]:.1f} %; lower the learning rate (lr={lr:g})")
        elif history and history[-1][1] < 1.5 / data.num_classes:
            ctx.warn(f"reconstruct: training accuracy {100 * history[-1][1]:.1f} % is near chance (loss {history[-1][0]:.3g}); "
                     "training failed (learning rate too high, or too few epochs)")
        network.write_back()
        record = DeviceTraining(target=ctx.target.to_mapping(), granularity=plan.granularity, epochs=self.epochs, init=self.init,
                                seed=seed, in_loop=in_loop.names(), train_accuracy=round(history[-1][1], 4) if history else None)
        for node in graph.nodes_of(Linear, Conv2d):
            node.op = node.op.replace(input_range=ranges[node.name], trained_for=record)
        return graph

    @staticmethod
    def _fit(network: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """Cross-entropy and accuracy of the device-aware network on a sample before training: the baseline
        that tells a diverged training from a slow one."""
        network.eval()
        with torch.no_grad():
            logits = network(inputs.to(network.device)).cpu()
        return float(torch.nn.functional.cross_entropy(logits, labels)), float((logits.argmax(1) == labels).float().mean())

    def _clip_relus(self, graph: Graph, sample: torch.Tensor) -> None:
        """Replace ReLUs (and open-ended clamps) by clipped ReLUs at a percentile of their activations."""
        with torch.no_grad():
            _, values = Interpreter(graph, FloatKernel()).run(sample, keep=True)
        for node in graph:
            op = node.op
            unbounded = isinstance(op, ReLU) or (isinstance(op, Clamp) and op.high is None and op.low is not None and op.low >= 0)
            if unbounded:
                high = upper_percentile(values[node.name], self.clip_percentile) or 1.0
                node.op = Clamp(low=0.0, high=float(high))
                node.meta["clipped_by"] = "reconstruct"

    def _input_ranges(self, graph: Graph, sample: torch.Tensor) -> dict[str, InputRange]:
        """Every weighted layer's input range, fixed for training and after it (origin ``reconstruct``)."""
        bounds = value_bounds(graph)
        with torch.no_grad():
            _, values = Interpreter(graph, FloatKernel()).run(sample, keep=True)
        ranges = {}
        for node in graph.nodes_of(Linear, Conv2d):
            decided = input_range(node.op, bounds[node.inputs[0]], values[node.inputs[0]], 100.0)  # type: ignore[arg-type]
            ranges[node.name] = InputRange(decided.scale, decided.signed, "reconstruct")
        return ranges
