"""Cost of one reconstruct epoch, as a ratio to one float training epoch in the same process.

    python bench/training_throughput.py [--samples 4096] [--batch 128] [--targets rram_a,rram_b] [--networks mlp,deep_mlp,cnn]

For each network: one epoch of plain PyTorch training (Adam, batch 128) and one epoch through
the device-aware model of each target (the ``reconstruct`` pass's training, device I-V only),
on the same random data, interleaved and repeated; the median ratio is printed. Machines are
shared and noisy: read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import rramc
from rramc.datasets import Dataset
from rramc.frontend import import_module
from rramc.hardware.calibration import upper_percentile, value_bounds
from rramc.hardware.device_aware import DeviceAwareNetwork
from rramc.hardware.interpreter import FloatKernel, Interpreter
from rramc.hardware.mapping import MappingPlan
from rramc.ir import Conv2d, InputRange, Linear
from rramc.pipeline import CompileContext, make_pass
from rramc.samples import models
from rramc.training import TrainConfig, train_classifier

NETWORKS = {
    "mlp": ("MLP 784-500-250-10", lambda: models.paper_mlp(), (1, 28, 28)),
    "deep_mlp": ("MLP 784-2500-2000-1500-1000-500-10", lambda: models.paper_deep_mlp(), (1, 28, 28)),
    "cnn": ("CNN 28x28 (2 conv + BN + linear)", lambda: models.mnist_cnn(), (1, 28, 28)),
}


def device_aware(model: torch.nn.Module, shape: tuple[int, ...], target: rramc.Target, data: Dataset) -> DeviceAwareNetwork:
    """The network ``reconstruct`` trains: canonical graph, clipped ReLUs, input ranges from the data."""
    graph = import_module(model, data.images[:2], "bench")
    graph = make_pass("canonicalize").run(graph, CompileContext(target))
    sample = data.images[:512]
    with torch.no_grad():
        values = Interpreter(graph, FloatKernel()).run(sample, keep=True)[1]
    bounds = value_bounds(graph)
    ranges = {}
    for node in graph.nodes_of(Linear, Conv2d):
        lo, hi = bounds[node.inputs[0]]
        scale = hi if hi is not None else upper_percentile(values[node.inputs[0]].abs(), 100.0)
        ranges[node.name] = InputRange(float(scale or 1.0), False, "reconstruct")
    return DeviceAwareNetwork(graph, target, MappingPlan.for_target(target), ranges)


def epoch_seconds(model: torch.nn.Module, data: Dataset, batch: int) -> float:
    start = time.perf_counter()
    train_classifier(model, data, TrainConfig(epochs=1, lr=1e-3, optimizer="adam", batch_size=batch, schedule="constant"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--targets", default="rram_a,rram_b")
    parser.add_argument("--networks", default="mlp,deep_mlp,cnn")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.samples} samples, batch {args.batch}, Adam")
    print(f"{'network':36s} {'target':8s} {'float s':>8s} {'device s':>9s} {'device/float':>12s}")
    generator = torch.Generator().manual_seed(0)
    for key in args.networks.split(","):
        title, factory, shape = NETWORKS[key]
        images = torch.rand(args.samples, *shape, generator=generator)
        labels = torch.randint(0, 10, (args.samples,), generator=generator)
        data = Dataset("random", "train", images, labels, 10)
        torch.manual_seed(0)
        model = factory().eval()
        epoch_seconds(copy.deepcopy(model), data.take(256), args.batch)  # warm-up: thread pools, allocator
        for name in args.targets.split(","):
            target = rramc.load_target(name)
            epoch_seconds(device_aware(copy.deepcopy(model), shape, target, data), data.take(256), args.batch)
            float_times, device_times = [], []
            for _ in range(args.repeats):
                float_times.append(epoch_seconds(copy.deepcopy(model), data, args.batch))
                network = device_aware(copy.deepcopy(model), shape, target, data)
                device_times.append(epoch_seconds(network, data, args.batch))
            f, d = statistics.median(float_times), statistics.median(device_times)
            print(f"{title:36s} {name:8s} {f:8.2f} {d:9.2f} {d / f:12.2f}", flush=True)


if __name__ == "__main__":
    main()
