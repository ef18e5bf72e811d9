"""A small, deterministic classifier training loop shared by the samples and the compiler."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from rramc.datasets import Dataset


@dataclass(frozen=True)
class TrainConfig:
    """SGD with momentum or Adam; the learning rate constant or on a cosine schedule."""

    epochs: int = 10
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 128
    seed: int = 0
    schedule: str = "cosine"
    device: str = "cpu"
    """Where the batches go; the model must already be there. Shuffling stays on the CPU, so the
    order of the batches is the same on every device."""


def accuracy(model: Callable[[Tensor], Tensor], dataset: Dataset, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``."""
    correct = 0
    with torch.no_grad():
        for x, y in dataset.batches(batch_size):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(dataset)


@contextmanager
def progress_bar(total: int, description: str, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A rich progress bar over ``total`` steps; yields ``advance(status_text)``."""
    if not enabled:
        yield lambda status: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
               TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total, status="")
        yield lambda status: bar.update(task, advance=1, status=status)


def train_classifier(
    model: nn.Module,
    train: Dataset,
    config: TrainConfig,
    *,
    on_epoch: Callable[[int, float, float], None] | None = None,
    progress: bool = False,
    description: str = "training",
) -> nn.Module:
    """Train ``model`` with cross-entropy; deterministic for a given ``config.seed``.

    ``on_epoch(epoch, mean loss, train accuracy)`` is called after every epoch; ``progress``
    shows a bar over all batches with the running loss and accuracy.
    """
    # Seeded for determinism, without touching the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        parameters = [p for p in model.parameters() if p.requires_grad]
        if config.optimizer == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        batches_per_epoch = -(-len(train) // config.batch_size)
        schedule = None
        if config.schedule == "cosine":
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, config.epochs * batches_per_epoch))
        with progress_bar(config.epochs * batches_per_epoch, description, progress) as advance:
            for epoch in range(config.epochs):
                model.train()
                total_loss = correct = seen = 0.0
                for x, y in train.shuffled(config.seed * 1000 + epoch).batches(config.batch_size):
                    x, y = x.to(config.device), y.to(config.device)
                    optimizer.zero_grad()
                    logits = model(x)
                    loss = nn.functional.cross_entropy(logits, y)
                    loss.backward()
                    optimizer.step()
                    if schedule is not None:
                        schedule.step()
                    total_loss += float(loss.detach()) * len(y)
                    correct += float((logits.detach().argmax(1) == y).sum())
                    seen += len(y)
                    advance(f"epoch {epoch + 1}/{config.epochs} loss {total_loss / seen:.4f} acc {100 * correct / seen:.2f} %")
                if on_epoch is not None:
                    on_epoch(epoch, total_loss / seen, correct / seen)
    return model.eval()
