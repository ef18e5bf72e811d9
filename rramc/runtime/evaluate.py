"""Run an executable over a data set: float and chip side by side, batch by batch."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rramc.errors import DatasetError
from rramc.ir import CrossbarOp
from rramc.runtime.report import LayerReport, Report

if TYPE_CHECKING:
    from rramc.datasets import Dataset
    from rramc.runtime.executable import Executable


def fit_inputs(images: Tensor, shape: tuple[int, ...], dataset: str) -> Tensor:
    """Give data-set samples the network's input shape (flattening if the sizes agree)."""
    if tuple(images.shape[1:]) == shape:
        return images
    if math.prod(images.shape[1:]) == math.prod(shape):
        return images.reshape(images.shape[0], *shape)
    raise DatasetError(
        f"data set '{dataset}' has samples of shape {list(images.shape[1:])} ({math.prod(images.shape[1:])} values), "
        f"but the network takes {list(shape)} ({math.prod(shape)} values); use a data set of the size it was trained on"
    )


def check_classes(outputs: int, dataset: Dataset) -> None:
    if outputs < dataset.num_classes:
        raise DatasetError(f"the network has {outputs} outputs but data set '{dataset.name}' has {dataset.num_classes} classes")


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
) -> Report:
    """Accuracy of the float network and of the simulated chip, and each crossbar layer's error.

    ``limit`` evaluates the first samples only; ``seed`` selects the chip instance.
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
    reference = exe.program("float", device=device)
    chip = exe.program("chip", seed=seed, device=device)
    layers = [n for n in exe.graph.nodes_of(CrossbarOp)]
    sq_local = dict.fromkeys((n.name for n in layers), 0.0)
    sq_total = dict(sq_local)
    sq_ref = dict(sq_local)
    correct_float = correct_chip = agree = 0
    start = time.perf_counter()
    batches = dataset.batches(batch_size)
    total = -(-len(dataset) // batch_size)
    for images, labels in _progress(batches, total, progress, f"{dataset.name} on {exe.target.name}"):
        x = fit_inputs(images, graph_input.shape, dataset.name)
        ref = reference.trace(x)
        out = chip.trace(x)
        for node in layers:
            expected = ref[node.name]
            alone = chip.layers[node.name](ref[node.inputs[0]], chip.generator)
            sq_local[node.name] += float(((alone - expected) ** 2).sum())
            sq_total[node.name] += float(((out[node.name] - expected) ** 2).sum())
            sq_ref[node.name] += float((expected**2).sum())
        labels = labels.to(device)
        float_pred = ref[exe.graph.output.name].argmax(1)
        chip_pred = out[exe.graph.output.name].argmax(1)
        correct_float += int((float_pred == labels).sum())
        correct_chip += int((chip_pred == labels).sum())
        agree += int((float_pred == chip_pred).sum())
    n = len(dataset)

    def relative(sq: float, name: str) -> float:
        return math.sqrt(sq / sq_ref[name]) if sq_ref[name] > 0 else 0.0

    return Report(
        dataset=dataset.name, split=dataset.split, samples=n, target=exe.target.name, seed=seed,
        float_accuracy=correct_float / n, chip_accuracy=correct_chip / n, agreement=agree / n,
        layers=[LayerReport(node.name, node.source, node.op.kind,
                            node.op.matrix_shape, len(node.op.tiles()),  # type: ignore[attr-defined]
                            relative(sq_local[node.name], node.name), relative(sq_total[node.name], node.name))
                for node in layers],
        seconds=time.perf_counter() - start, target_description=" ".join(filter(None, [exe.target.describe(), exe.device_evaluation()])),
        reference=_reference_label(exe),
    )


def _reference_label(exe: Executable) -> str:
    trained_for = {str(n.meta["reconstructed"].get("target")) for n in exe.graph if "reconstructed" in n.meta}
    if not trained_for:
        return "float (PyTorch)"
    return f"float, device-aware (reconstructed for {', '.join(sorted(trained_for))})"


def _progress(batches, total: int, enabled: bool, label: str):  # type: ignore[no-untyped-def]
    if not enabled:
        yield from batches
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(label, total=total)
        for item in batches:
            yield item
            bar.advance(task)
