"""The chip with resistive wires: time per batch against plain PyTorch, and each method's error.

    python bench/wires_runtime.py [--batch 256] [--resistance 0.5,1,2] [--exact-vectors 32]

The 784-500-250-10 MLP on rram_a (128×128 arrays) with word- and bit-line segments of each
resistance: the time of one batch on the chip divided by PyTorch's time for the same batch
(median of interleaved repeats, same process), for the ``first_order`` method and for the
``exact`` solver (timed on ``--exact-vectors`` inputs and scaled to the batch: it is linear in
the vectors). One compiled network is computed three ways; the errors of its logits against the
exact solve, relative to the largest logit: first-order, and ideal wires (what ignoring the
wires costs). Inputs are Fashion-MNIST test
images and the MLP is trained for one epoch when the data set is installed, random otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import rramc
from rramc.errors import RramcError
from rramc.runtime.executable import Executable
from rramc.samples import models
from rramc.training import TrainConfig, train_classifier


def data_and_model() -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module, str]:
    torch.manual_seed(0)
    model = models.mlp(784, 500, 250, 10)
    try:
        train = rramc.load_dataset("fashion-mnist", "train").shuffled(0).take(10000)
        test = rramc.load_dataset("fashion-mnist", "test")
    except RramcError:
        return torch.rand(1024, 1, 28, 28), torch.rand(512, 1, 28, 28), model.eval(), "random inputs, random weights"
    train_classifier(model, train, TrainConfig(epochs=1, lr=1e-3, optimizer="adam", batch_size=128, seed=0))
    return train.images[:1024], test.images[:512], model.eval(), "Fashion-MNIST, MLP trained 1 epoch on 10k images"


def median_ratio(chip, model, x: torch.Tensor, repeats: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    chip_times, torch_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        chip(x)
        chip_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        model(x)
        torch_times.append(time.perf_counter() - start)
    return statistics.median(chip_times), statistics.median(torch_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--resistance", default="0.5,1,2")
    parser.add_argument("--exact-vectors", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    calibration, test, model, what = data_and_model()
    torch.set_grad_enabled(False)
    x = test[: args.batch]
    few = x[: args.exact_vectors]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {what}; batch {args.batch}")
    base = rramc.load_target("rram_a")
    ideal_exe = rramc.compile(model, base, calibration[:2], calibration_data=calibration, input_range=(0.0, 1.0))
    chip_s, torch_s = median_ratio(ideal_exe.chip(), model, x, args.repeats)
    print(f"ideal wires: chip/torch {chip_s / torch_s:.1f} (torch {torch_s * 1e3:.2f} ms per batch)")
    print(f"{'Ω/segment':>9s} {'first-order/torch':>17s} {'exact/torch':>11s} {'exact s/batch':>14s} "
          f"{'first-order err':>15s} {'ideal-wire err':>14s} {'argmax fo=ex':>12s}")
    for r in (float(v) for v in args.resistance.split(",")):
        wires = {"model": "resistive", "word_line_resistance": r, "bit_line_resistance": r}
        fast = base.with_changes(wires={**wires, "method": "first_order"})
        exe = rramc.compile(model, fast, calibration[:2], calibration_data=calibration, input_range=(0.0, 1.0))
        # One compiled network (calibrated with the first-order wires), three ways to compute its chip.
        exact = Executable(exe.graph, base.with_changes(wires={**wires, "method": "exact"})).chip()
        ideal = Executable(exe.graph, base).chip()
        fast_chip = exe.chip()
        seconds, torch_s = median_ratio(fast_chip, model, x, args.repeats)
        start = time.perf_counter()
        reference = exact(few)
        exact_seconds = (time.perf_counter() - start) * args.batch / len(few)
        first_order, no_wires = fast_chip(few), ideal(few)
        scale = reference.abs().max()
        fo_err = float((first_order - reference).abs().max() / scale)
        ideal_err = float((no_wires - reference).abs().max() / scale)
        agree = float((first_order.argmax(1) == reference.argmax(1)).float().mean())
        print(f"{r:9g} {seconds / torch_s:17.1f} {exact_seconds / torch_s:11.0f} {exact_seconds:14.1f} "
              f"{fo_err:15.3g} {ideal_err:14.3g} {100 * agree:11.1f}%")


if __name__ == "__main__":
    main()
