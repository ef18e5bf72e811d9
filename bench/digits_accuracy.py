"""Digits accuracy of the sample networks: float vs the simulated chips (naive mapping).

    python bench/digits_accuracy.py [--seeds 3]

The shipped MLP is used as is; the sample CNN is trained here (seeded). Each network is
compiled with the default pipeline for every builtin target and run on the digits test split;
with ``--seeds N`` the rram targets also get a variant with 2 % programming variation and
1 % read noise, averaged over N chip instances.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import rramc
from rramc.samples import models, sample_path
from rramc.training import TrainConfig, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    train, test = rramc.load_dataset("digits", "train"), rramc.load_dataset("digits", "test")
    calibration = train.shuffled(0).take(512)  # a Dataset: it also declares the input range (0, 1)
    torch.manual_seed(0)
    cnn = train_classifier(models.digits_cnn(), train, TrainConfig(epochs=30, lr=0.05, batch_size=64))
    networks = {
        "digits MLP 64-128-64-10 (ReLU, shipped)": torch.export.load(str(sample_path("digits_mlp.pt2"))),
        "digits CNN (BN, clipped ReLU)": cnn,
    }
    noisy = {"programming_sigma": 0.02, "read_noise_sigma": 0.01}
    print(f"{'network':40s} {'target':22s} {'float %':>8s} {'chip %':>8s} {'compile s':>9s}")
    for name, model in networks.items():
        for target_name in rramc.builtin_targets():
            target = rramc.load_target(target_name)
            variants = [(target_name, target, [0])]
            if target_name != "ideal":
                variants.append((f"{target_name} + variation", target.with_changes(nonidealities=noisy), list(range(args.seeds))))
            for label, spec, seeds in variants:
                start = time.perf_counter()
                exe = rramc.compile(model, spec, calibration.images[:2], calibration_data=calibration)
                seconds = time.perf_counter() - start
                reports = [exe.run(test, seed=s) for s in seeds]
                chip = statistics.mean(r.chip_accuracy for r in reports)
                spread = f" ±{100 * statistics.stdev(r.chip_accuracy for r in reports):.2f}" if len(seeds) > 1 else ""
                print(f"{name:40s} {label:22s} {100 * reports[0].float_accuracy:8.2f} {100 * chip:8.2f}{spread} {seconds:9.3f}")


if __name__ == "__main__":
    main()
