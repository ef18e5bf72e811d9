"""How much accuracy the sinh transfer itself costs, measured in plain PyTorch, without rramc's crossbar code.

    python bench/sinh_transfer_ceiling.py [--k 2.5,7.5,20,70] [--epochs 8] [--data-dir DIR]

On a separable sinh device a crossbar layer computes W·s(x) with s(x) = sinh(B·x)/sinh(B) for an
input x in [0, 1] of the read voltage, so a reconstructed MLP is, up to quantization and
converters, a float MLP whose activations pass through s. This script trains MLP 784-500-250-10 on
Fashion-MNIST from scratch, four ways with the same seed and recipe (rramc's float training loop:
Adam 1e-3, cosine schedule; clipped ReLU at 1): s nowhere, on the input pixels only, on the
hidden activations only, and everywhere, for each k. Only B comes from rramc (the targets'
k -> B relation); no crossbar, mapping or device-current code runs. The difference between
"nowhere" and "everywhere" is what the device's transfer costs a network trained with that
recipe, whatever the compiler does; it tells the device's share of a reconstruction's gap to
ideal from the compiler's.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import rramc
from rramc.hardware.devices import sinh_b_from_k
from rramc.training import TrainConfig, accuracy, train_classifier

# Where the sinh transfer applies, as (on the input pixels, on the hidden activations).
PLACEMENTS = {"input only": (True, False), "hidden only": (False, True), "everywhere": (True, True)}


class SinhTransferMLP(nn.Module):
    """MLP 784-500-250-10 with clipped ReLUs whose layer inputs may pass through sinh(B·x)/sinh(B)."""

    def __init__(self, b: float, on_input: bool, on_hidden: bool) -> None:
        super().__init__()
        self.b, self.on_input, self.on_hidden = b, on_input, on_hidden
        self.layers = nn.ModuleList([nn.Linear(784, 500), nn.Linear(500, 250), nn.Linear(250, 10)])

    def _transfer(self, x: torch.Tensor, applies: bool) -> torch.Tensor:
        return torch.sinh(self.b * x) / math.sinh(self.b) if applies else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._transfer(x.flatten(1), self.on_input)
        for layer in self.layers[:-1]:
            h = self._transfer(torch.clamp(layer(h), 0.0, 1.0), self.on_hidden)
        return self.layers[-1](h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="2.5,7.5,20,70", help="half-bias nonlinearities I(V)/I(V/2), comma-separated")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    try:
        ks = [float(k) for k in args.k.split(",")]
    except ValueError:
        parser.error(f"--k must be comma-separated numbers, got {args.k!r}")
    if any(k <= 2 for k in ks):
        parser.error(f"every --k must be above 2 (a linear cell has k = 2), got {args.k}")
    train = rramc.load_dataset("fashion-mnist", "train", args.data_dir)
    test = rramc.load_dataset("fashion-mnist", "test", args.data_dir)

    config = TrainConfig(epochs=args.epochs, lr=1e-3, optimizer="adam", batch_size=args.batch_size, schedule="cosine")

    def trained_accuracy(b: float, on_input: bool, on_hidden: bool) -> float:
        torch.manual_seed(0)  # the same initial weights for every variant
        return 100 * accuracy(train_classifier(SinhTransferMLP(b, on_input, on_hidden), train, config), test)

    start = time.perf_counter()
    print(f"Fashion-MNIST, MLP 784-500-250-10, {args.epochs} epochs Adam + cosine, test accuracy in %")
    print(f"sinh transfer nowhere: {trained_accuracy(0.0, False, False):.2f}", flush=True)
    print(f"{'k':>6s} {'B·Vread':>8s} " + " ".join(f"{label:>12s}" for label in PLACEMENTS))
    for k in ks:
        b = sinh_b_from_k(k, voltage=1.0)  # x is in units of the read voltage
        row = [trained_accuracy(b, on_input, on_hidden) for on_input, on_hidden in PLACEMENTS.values()]
        print(f"{k:6g} {b:8.3f} " + " ".join(f"{value:12.2f}" for value in row), flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
