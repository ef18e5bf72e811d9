"""A small, deterministic classifier training loop shared by the samples and the compiler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from rramc.datasets import Dataset


@dataclass(frozen=True)
class TrainConfig:
    """SGD with momentum and a cosine learning-rate schedule."""

    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 128
    seed: int = 0


def accuracy(model: Callable[[Tensor], Tensor], dataset: Dataset, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (inputs reshaped to the model's if needed)."""
    correct = 0
    with torch.no_grad():
        for x, y in dataset.batches(batch_size):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(dataset)


def train_classifier(
    model: nn.Module,
    train: Dataset,
    config: TrainConfig,
    *,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> nn.Module:
    """Train ``model`` with cross-entropy; deterministic for a given ``config.seed``.

    ``on_epoch(epoch, mean loss, train accuracy)`` is called after every epoch.
    """
    torch.manual_seed(config.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(train) // config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    for epoch in range(config.epochs):
        model.train()
        total_loss = correct = 0.0
        for x, y in train.shuffled(config.seed * 1000 + epoch).batches(config.batch_size):
            optimizer.zero_grad()
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach()) * len(y)
            correct += float((logits.argmax(1) == y).sum())
        if on_epoch is not None:
            on_epoch(epoch, total_loss / len(train), correct / len(train))
    return model.eval()
