"""Runtime throughput and compile time, as ratios against plain PyTorch in the same process.

    python bench/runtime_throughput.py [--batch 256] [--repeats 15] [--device cpu] [--targets ideal,rram_a,rram_b]
                                       [--encodings amplitude,bit_serial,pulse_width,predistorted] [--slices 1,2]

For each network and target: the chip simulation's time per batch divided by PyTorch's time
for the same model and batch (both measured interleaved, median of the repeats), and the
compile time. Machines are shared and noisy: read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

import rramc
from rramc.samples import models, sample_path


def networks() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    shipped = torch.export.load(str(sample_path("digits_mlp.pt2"))).module()  # an fx GraphModule
    return {
        "digits MLP 64-128-64-10 (shipped)": (shipped, torch.rand(1, 1, 8, 8)),
        "digits CNN (2 conv + linear)": (models.SmallCNN(1, 8, 10).eval(), torch.rand(1, 1, 8, 8)),
        "MLP 784-500-250-10": (models.mlp(784, 500, 250, 10).eval(), torch.rand(1, 1, 28, 28)),
        "CNN 28x28 (2 conv + linear)": (models.SmallCNN(1, 28, 10, width=16).eval(), torch.rand(1, 1, 28, 28)),
    }


def timed(fn, x: torch.Tensor) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--targets", default="ideal,rram_a,rram_b")
    parser.add_argument("--encodings", default="amplitude", help="input encodings to time on each target")
    parser.add_argument("--slices", default="1", help="weight slices to time on each target (its levels' bits each)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, batch {args.batch}")
    print(f"{'network':36s} {'target':30s} {'compile s':>9s} {'torch ms':>9s} {'chip ms':>9s} {'chip/torch':>10s}")
    variants = []
    for name in args.targets.split(","):
        base = rramc.load_target(name)
        if base.crossbar.dac_bits is None and args.encodings != "amplitude":
            base = base.with_changes(crossbar={"dac_bits": 8})  # the other encodings need the input's bits
        for encoding in args.encodings.split(","):
            for slices in map(int, args.slices.split(",")):
                sliced = {"weight_slices": slices, **({"slice_bits": 4} if base.conductance.levels is None else {})}
                changes = {"input_encoding": encoding, **(sliced if slices > 1 else {})}
                label = name + ("" if encoding == "amplitude" else f"/{encoding}") + ("" if slices == 1 else f"/{slices} slices")
                variants.append((label, base.with_changes(crossbar=changes)))
    for name, (model, example) in networks().items():
        model = model.to(args.device)
        x = torch.rand(args.batch, *example.shape[1:], device=args.device)
        calibration = torch.rand(256, *example.shape[1:])
        for label, target in variants:
            start = time.perf_counter()
            exe = rramc.compile(model.cpu(), target, calibration[:2] if isinstance(model, torch.fx.GraphModule) else calibration,
                                calibration_data=calibration, input_range=(0.0, 1.0))
            compile_seconds = time.perf_counter() - start
            model = model.to(args.device)
            chip = exe.chip(device=args.device)
            for _ in range(2):  # warm-up
                chip(x), model(x)
            torch_times, chip_times = [], []
            for _ in range(args.repeats):
                torch_times.append(timed(model, x))
                chip_times.append(timed(chip, x))
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
            t, c = statistics.median(torch_times), statistics.median(chip_times)
            print(f"{name:36s} {label:30s} {compile_seconds:9.3f} {1e3 * t:9.3f} {1e3 * c:9.3f} {c / t:10.1f}")


if __name__ == "__main__":
    main()
