"""Sample network architectures (factories usable with ``rramc compile --model``)."""

from __future__ import annotations

import torch.nn as nn


def mlp(*sizes: int, clipped: bool = False) -> nn.Sequential:
    """A multilayer perceptron ``sizes[0] → ... → sizes[-1]`` on flattened inputs.

    Hidden layers use ReLU, or with ``clipped`` the clipped ReLU ``clamp(x, 0, 1)`` that keeps
    activations in a crossbar's read range.
    """
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.Hardtanh(0.0, 1.0) if clipped else nn.ReLU())
    return nn.Sequential(*layers)


def paper_mlp() -> nn.Sequential:
    """Kim et al.'s MLP 784-500-250-10 with clipped ReLU (MNIST-format 28×28 inputs)."""
    return mlp(784, 500, 250, 10, clipped=True)


def paper_deep_mlp() -> nn.Sequential:
    """Kim et al.'s deep MLP 784-2500-2000-1500-1000-500-10 with clipped ReLU."""
    return mlp(784, 2500, 2000, 1500, 1000, 500, 10, clipped=True)


def paper_cifar_mlp() -> nn.Sequential:
    """Kim et al.'s CIFAR-10 MLP 2352-4000-1000-4000-10 (images cropped to 28×28×3) with clipped ReLU."""
    return mlp(2352, 4000, 1000, 4000, 10, clipped=True)


def digits_mlp() -> nn.Sequential:
    """The shipped digits MLP: 64-128-64-10 with ReLU (a conventionally trained network)."""
    return mlp(64, 128, 64, 10)


class SmallCNN(nn.Module):
    """Two conv blocks (conv, BatchNorm, clipped ReLU, 2×2 max pool) and a linear classifier."""

    def __init__(self, in_channels: int = 1, image_size: int = 8, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.Hardtanh(0.0, 1.0), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.Hardtanh(0.0, 1.0), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(2 * width * (image_size // 4) ** 2, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.features(x).flatten(1))


def digits_cnn() -> SmallCNN:
    return SmallCNN(1, 8, 10)


def mnist_cnn() -> SmallCNN:
    """The small CNN for 28×28 grey images (MNIST, Fashion-MNIST)."""
    return SmallCNN(1, 28, 10, width=16)


class ResidualCNN(nn.Module):
    """A conv stem, one residual block (two convs and a skip add) and average pooling."""

    def __init__(self, in_channels: int = 1, image_size: int = 8, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.Hardtanh(0.0, 1.0))
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(width * (image_size // 2) ** 2, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = self.stem(x)
        y = self.conv2(nn.functional.hardtanh(self.bn1(self.conv1(x)), 0.0, 1.0))
        x = nn.functional.hardtanh(x + y, 0.0, 1.0)
        return self.head(self.pool(x).flatten(1))
