"""Run an executable over a data set: float and chip side by side, batch by batch.

The float network and the chip each run on the one interpreter; what the report needs is
gathered by observers: each crossbar layer's error (:class:`LayerErrors`), the inputs the chip
clipped (:class:`~rramc.hardware.observers.ClipCounter`) and the cost observers' counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rramc.datasets import check_classes, fit_inputs
from rramc.errors import DatasetError
from rramc.hardware.interpreter import Chip, FloatKernel, Interpreter
from rramc.hardware.observers import COST_OBSERVERS, ClipCounter, Observer
from rramc.ir import CrossbarOp, Node
from rramc.runtime.report import LayerReport, Report

if TYPE_CHECKING:
    from rramc.datasets import Dataset
    from rramc.runtime.executable import Executable

UNCORRELATED = 0.5
"""Below this correlation between chip and float outputs the report warns that the chip's output is not to be trusted."""


class LayerErrors(Observer):
    """Squared error of every crossbar layer's output against the float network's, two ways.

    ``cumulative``: the chip's activation against the float one (what has compounded by then);
    ``local``: the layer alone, fed the float network's input activation — read noise for it is
    drawn from its own ``generator``, so these diagnostics never change the chip's outputs.
    """

    def __init__(self, chip: Chip, layers: Sequence[Node], generator: torch.Generator | None) -> None:
        self.chip, self.generator = chip, generator
        self.names = {n.name for n in layers}
        self.local = dict.fromkeys(self.names, 0.0)
        self.cumulative = dict.fromkeys(self.names, 0.0)
        self.norm = dict.fromkeys(self.names, 0.0)
        self.reference: dict[str, Tensor] = {}

    def on_node(self, node: Node, operands: list[Tensor], value: Tensor) -> None:
        if node.name not in self.names:
            return
        expected = self.reference[node.name]
        alone = self.chip.layers[node.name](self.reference[node.inputs[0]], self.generator)
        self.local[node.name] += float(((alone - expected) ** 2).sum())
        self.cumulative[node.name] += float(((value - expected) ** 2).sum())
        self.norm[node.name] += float((expected**2).sum())

    def relative(self, name: str) -> tuple[float, float]:
        norm = self.norm[name]
        if norm <= 0:
            return 0.0, 0.0
        return math.sqrt(self.local[name] / norm), math.sqrt(self.cumulative[name] / norm)


class _Correlation:
    """Correlation of the chip's outputs with the float network's across samples, accumulated batch by batch.

    Each output is centred on its own mean over the data set before the two are compared (pooled
    over outputs: Σ cov / √(Σ var · Σ var)), so a per-class offset both networks share — a
    random or badly scaled network's logits are mostly that — does not pass for agreement.
    """

    def __init__(self) -> None:
        self.n = 0
        self.sums: Tensor | None = None  # [5, outputs]: x, y, xx, yy, xy

    def add(self, x: Tensor, y: Tensor) -> None:
        x, y = (t.detach().double().reshape(t.shape[0], -1).cpu() for t in (x, y))
        self.n += x.shape[0]
        batch = torch.stack([x.sum(0), y.sum(0), (x * x).sum(0), (y * y).sum(0), (x * y).sum(0)])
        self.sums = batch if self.sums is None else self.sums + batch

    def value(self) -> float:
        if self.sums is None:
            return 1.0
        sx, sy, sxx, syy, sxy = self.sums
        n = self.n
        var_x, var_y = float((sxx - sx * sx / n).sum()), float((syy - sy * sy / n).sum())
        if var_x <= 0 or var_y <= 0:
            return 1.0 if var_x == var_y == 0 else 0.0
        return float((sxy - sx * sy / n).sum()) / math.sqrt(var_x * var_y)


@torch.no_grad()
def evaluate(
    exe: Executable,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    progress: bool = False,
    cost: Sequence[str] = ("operations", "energy"),
) -> Report:
    """Accuracy of the float network and of the simulated chip, each crossbar layer's error, the
    inputs the chip clipped and the ``cost`` observers' summaries (per inference; by default the
    operation counts and the energy, latency and area of :mod:`rramc.hardware.cost`).

    ``limit`` evaluates the first samples only; ``seed`` selects the chip instance and its read
    noise, drawn as :meth:`Executable.__call__` draws it: a single batch gives the same outputs.
    """
    if batch_size < 1:
        raise DatasetError(f"batch size {batch_size}: need at least 1")
    (graph_input,) = exe.graph.inputs
    if limit is not None:
        dataset = dataset.take(limit)
    if len(dataset) == 0:
        raise DatasetError(f"data set '{dataset.name}' ({dataset.split}) has no samples to evaluate" + (" with --limit 0" if limit == 0 else ""))
    check_classes(exe.graph.output.shape[0], dataset)
    fit_inputs(dataset.images[:1], graph_input.shape, dataset.name)
    chip = exe.chip(seed, device=device)
    layers = exe.graph.nodes_of(CrossbarOp)
    keep = sorted({n.name for n in layers} | {n.inputs[0] for n in layers})
    reference = Interpreter(exe.graph, FloatKernel(), device=device)
    original = None if exe.original is None else Interpreter(exe.original, FloatKernel(), device=device)
    noise = chip.noise()
    diagnostics = None if noise is None else torch.Generator(device=chip.device).manual_seed(seed * 2 + 2)
    errors, clips = LayerErrors(chip, layers, diagnostics), ClipCounter()
    costs = [COST_OBSERVERS.get(name)() for name in cost]
    simulate = chip.interpreter([clips, *costs, errors], noise)
    correlation = _Correlation()
    correct_float = correct_chip = agree = correct_original = 0
    start = time.perf_counter()
    total = -(-len(dataset) // batch_size)
    for images, labels in _progress(dataset.batches(batch_size), total, progress, f"{dataset.name} on {exe.target.name}"):
        x = fit_inputs(images, graph_input.shape, dataset.name)
        ref_out, errors.reference = reference.run(x, keep=keep)
        out = simulate.run(x)[0]
        correlation.add(ref_out, out)
        labels = labels.to(device)
        float_pred, chip_pred = ref_out.argmax(1), out.argmax(1)
        correct_float += int((float_pred == labels).sum())
        if original is not None:
            correct_original += int((original(x).argmax(1) == labels).sum())
        correct_chip += int((chip_pred == labels).sum())
        agree += int((float_pred == chip_pred).sum())
    n = len(dataset)
    reports = [LayerReport(node.name, node.source, node.op.kind, node.op.matrix_shape, len(node.op.tiles()),  # type: ignore[attr-defined]
                           *errors.relative(node.name)) for node in layers]
    clipped = clips.clipped()
    report = Report(
        dataset=dataset.name, split=dataset.split, samples=n, target=exe.target.name, seed=seed,
        float_accuracy=correct_float / n, chip_accuracy=correct_chip / n, agreement=agree / n, layers=reports,
        seconds=time.perf_counter() - start, target_description=exe.target.describe(), evaluation=exe.device_evaluation(),
        reference=_reference_label(exe), output_correlation=correlation.value(),
        original_accuracy=None if original is None else correct_original / n,
        clipped={layer: {"negative": neg, "over_full_scale": over, "inputs": count} for layer, (neg, over, count) in clipped.items()},
        costs={observer.name: observer.summary(n) for observer in costs},
    )
    report.warnings = _warnings(report, clips, list(exe.metadata.get("warnings", [])))
    return report


def _warnings(report: Report, clips: ClipCounter, compiled: list[str]) -> list[str]:
    warnings = [f"when compiled: {text}" for text in compiled]
    for layer in clips.worth_a_warning():
        counts = report.clipped[layer]
        share = (counts["negative"] + counts["over_full_scale"]) / max(counts["inputs"], 1)
        what = []
        if counts["negative"]:
            what.append(f"{counts['negative']:,} negative values of a layer compiled for unsigned inputs")
        if counts["over_full_scale"]:
            what.append(f"{counts['over_full_scale']:,} values above its calibrated full scale")
        warnings.append(f"layer {layer} clipped {100 * share:.2g} % of its inputs ({' and '.join(what)}): "
                        "the data differ from what it was calibrated on; declare the input range or recalibrate")
    if report.output_correlation < UNCORRELATED:
        warnings.append(f"the chip's outputs are barely correlated with the float network's (r = {report.output_correlation:.2f}): "
                        "what this chip computes is mostly error, do not trust its accuracy as a property of the network")
    return warnings


def _reference_label(exe: Executable) -> str:
    trained_for = {n.op.trained_for.target_name for n in exe.graph.nodes_of(CrossbarOp) if n.op.trained_for is not None}  # type: ignore[attr-defined]
    if not trained_for:
        return "float (PyTorch)"
    return f"float, device-aware (reconstructed for {', '.join(sorted(trained_for))})"


def _progress(batches: Iterable[Any], total: int, enabled: bool, label: str) -> Iterator[Any]:
    if not enabled:
        yield from batches
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(label, total=total)
        for item in batches:
            yield item
            bar.advance(task)
