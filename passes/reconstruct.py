"""reconstruct: retrain the network through the target's device I-V (Kim et al.).

A conventionally trained layer assumes ``I = G·V``; on cells with ``I = f(V, G)`` the crossbar
computes something else. This pass replaces each layer's weighted sum with the sum the crossbar
really computes, keeps activations in the read range with clipped ReLUs, and retrains, so the
nonlinearity becomes part of the model instead of an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rramc.datasets import Dataset, load_dataset
from rramc.errors import PassError
from rramc.ir import Clamp, Conv2d, CrossbarOp, Graph, Linear, ReLU
from rramc.passes.calibrate import static_bounds, upper_percentile
from rramc.pipeline import CompileContext, Pass, option
from rramc.runtime.device_aware import DeviceAwareNetwork, InLoop
from rramc.runtime.evaluate import fit_inputs
from rramc.runtime.interpreter import Program
from rramc.training import TrainConfig, train_classifier


@dataclass(frozen=True)
class Reconstruct(Pass):
    """Retrain every weighted layer through the target's differentiable device model.

    Needs: a canonical float graph (before ``quantize``), a differentiable device and training
    data (``dataset=`` or the compile call's training data). Guarantees: ReLUs feeding crossbar
    layers are clipped at the ``clip_percentile`` of their activations; every ``linear`` and
    ``conv2d`` holds weights trained through the device I-V (and, if asked, through conductance
    levels, converters and variation), and ``meta`` records its fixed input range
    (``input_scale``, ``input_signed``, honoured by ``calibrate``) and ``reconstructed``.
    Training is deterministic for a given ``seed``. Adam is the default: with state-dependent
    devices the map from weights to currents is itself nonlinear, and plain SGD at the seed
    paper's rate (0.05) oscillates where Adam converges.
    """

    name = "reconstruct"
    dataset: str | None = option("training data set (train split): digits, mnist, fashion-mnist, cifar10", None)
    data_dir: str | None = option("directory holding the data set's files", None)
    epochs: int = option("training epochs", 3)
    optimizer: str = option("adam, or sgd with momentum 0.9 (the seed paper's)", "adam", ("adam", "sgd"))
    lr: float | None = option("learning rate (default: 0.001 for adam, 0.05 for sgd)", None)
    batch_size: int = option("samples per step", 128)
    seed: int = option("seed of initialisation, shuffling and noise", 0)
    init: str = option("start from the trained weights or from fresh ones", "finetune", ("finetune", "scratch"))
    schedule: str = option("learning-rate schedule", "constant", ("constant", "cosine"))
    samples: int | None = option("use at most this many training samples", None)
    clip_percentile: float = option("percentile of an unbounded ReLU's activations where it is clipped", 99.9)
    levels: bool = option("train through the target's conductance levels", False)
    converters: bool = option("train through the target's DAC and ADC", False)
    variation: bool = option("train with the target's programming variation, faults and read noise", False)

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
        for name, value, low in (("epochs", self.epochs, 0), ("batch_size", self.batch_size, 1)):
            if value < low:
                raise PassError(f"option {name}={value}: must be at least {low}")
        if (self.lr is not None and not self.lr > 0) or not 0 < self.clip_percentile <= 100:
            raise PassError("lr must be positive and clip_percentile in (0, 100]")

    def training_data(self, ctx: CompileContext) -> Dataset:
        data = ctx.training_data or load_dataset(str(self.dataset), "train", self.data_dir)
        return data.take(self.samples) if self.samples is not None else data

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        data = self.training_data(ctx)
        (graph_input,) = graph.inputs
        sample = fit_inputs(data.shuffled(self.seed).take(1024).images, graph_input.shape, data.name)
        self._clip_relus(graph, sample)
        ranges = self._input_ranges(graph, sample)
        network = DeviceAwareNetwork(graph, ctx.target, ranges, InLoop(self.levels, self.converters, self.variation), seed=self.seed)
        if self.init == "scratch":
            network.reinitialize(self.seed)
        lr = self.lr if self.lr is not None else (1e-3 if self.optimizer == "adam" else 0.05)
        config = TrainConfig(epochs=self.epochs, lr=lr, optimizer=self.optimizer, batch_size=self.batch_size, seed=self.seed,
                             schedule=self.schedule)
        history: list[tuple[float, float]] = []

        def on_epoch(epoch: int, loss: float, acc: float) -> None:
            history.append((loss, acc))
            ctx.log(f"reconstruct for {ctx.target.name}: epoch {epoch + 1}/{self.epochs} loss {loss:.4f} train accuracy {100 * acc:.2f} %")

        train_classifier(network, data, config, on_epoch=on_epoch, progress=ctx.progress,
                         description=f"reconstruct for {ctx.target.name}")
        network.write_back()
        record = {"target": ctx.target.name, "epochs": self.epochs, "init": self.init, "seed": self.seed,
                  "in_loop": [k for k, v in (("levels", self.levels), ("converters", self.converters), ("variation", self.variation)) if v],
                  "train_accuracy": round(history[-1][1], 4) if history else None}
        for node in graph.nodes_of(Linear, Conv2d):
            scale, signed = ranges[node.name]
            node.meta.update(input_scale=scale, input_signed=signed, reconstructed=record)
        return graph

    def _clip_relus(self, graph: Graph, sample: torch.Tensor) -> None:
        """Replace ReLUs (and open-ended clamps) by clipped ReLUs at a percentile of their activations."""
        values = Program(graph).trace(sample)
        for node in graph:
            op = node.op
            unbounded = isinstance(op, ReLU) or (isinstance(op, Clamp) and op.high is None and op.low is not None and op.low >= 0)
            if unbounded:
                high = upper_percentile(values[node.name], self.clip_percentile) or 1.0
                node.op = Clamp(low=0.0, high=float(high))
                node.meta["clipped_by"] = "reconstruct"

    def _input_ranges(self, graph: Graph, sample: torch.Tensor) -> dict[str, tuple[float, bool]]:
        bounds = static_bounds(graph)
        values = Program(graph).trace(sample)
        ranges = {}
        for node in graph.nodes_of(Linear, Conv2d):
            lo, hi = bounds[node.inputs[0]]
            if lo is not None and hi is not None and lo >= 0 and hi > 0:
                ranges[node.name] = (float(hi), False)
            else:
                x = values[node.inputs[0]]
                ranges[node.name] = (upper_percentile(x.abs(), 100.0) or 1.0, bool((x < 0).any()))
        return ranges

