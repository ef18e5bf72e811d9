"""Compile time, peak memory and executable size of ImageNet-sized networks, per parameter.

    python bench/compile_scale.py [--models vgg11,resnet18,resnet50] [--samples 2] [--target rram_a]
                                  [--exact-weights] [--repeat 1] [--profile vgg11.prof]

Each network (compact definitions written here, random weights, 3×224×224 inputs) is compiled
in a fresh subprocess, so that its peak resident memory (``ru_maxrss``) is its own: wall time of
the import and of every pass, peak RSS, parameters, bytes per parameter (of the peak RSS and of
the saved executable), and the time to save and load it. The house rule
asks for a ratio against a baseline run in the same process: compile time over the time of one
plain PyTorch forward pass at batch 1. Machines are shared and noisy: read the ratios, and with
``--repeat N`` the fastest of N compiles of each network.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

# --- networks (the shapes of the ImageNet classics: VGG-11 without BatchNorm, ResNet-18, ResNet-50) ----------


def vgg11(classes: int = 1000) -> nn.Module:
    """VGG "A": eight 3×3 convolutions in five stages, then three fully connected layers."""
    layers: list[nn.Module] = []
    channels = 3
    for width in (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool", 512, 512, "pool"):
        if width == "pool":
            layers.append(nn.MaxPool2d(2))
        else:
            assert isinstance(width, int)
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                         nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
                         nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, classes))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout))


class Residual(nn.Module):
    """``relu(body(x) + shortcut(x))``; the shortcut projects when the shape changes."""

    def __init__(self, body: nn.Module, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = body
        self.shortcut = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def basic_block(cin: int, width: int, stride: int) -> tuple[nn.Module, int]:
    body = nn.Sequential(_conv_bn(cin, width, 3, stride), nn.ReLU(), _conv_bn(width, width, 3))
    return Residual(body, cin, width, stride), width


def bottleneck(cin: int, width: int, stride: int) -> tuple[nn.Module, int]:
    out = 4 * width
    body = nn.Sequential(_conv_bn(cin, width, 1), nn.ReLU(), _conv_bn(width, width, 3, stride), nn.ReLU(), _conv_bn(width, out, 1))
    return Residual(body, cin, out, stride), out


def resnet(block: Callable[[int, int, int], tuple[nn.Module, int]], depths: tuple[int, ...], classes: int = 1000) -> nn.Module:
    """A stem (7×7 stride-2 convolution, max pool), four stages of residual blocks, global pooling, one linear layer."""
    stages: list[nn.Module] = []
    channels = 64
    for stage, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
        blocks = []
        for i in range(depth):
            module, channels = block(channels, width, 2 if i == 0 and stage > 0 else 1)
            blocks.append(module)
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(_conv_bn(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1), *stages,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


NETWORKS: dict[str, Callable[[], nn.Module]] = {
    "vgg11": vgg11,
    "resnet18": lambda: resnet(basic_block, (2, 2, 2, 2)),
    "resnet50": lambda: resnet(bottleneck, (3, 4, 6, 3)),
}

# --- one network, in this process ------------------------------------------------------------------------------


def measure(name: str, target: str, samples: int, exact_weights: bool, profile: str | None) -> dict[str, object]:
    """Compile network ``name`` and return its figures (run in a fresh process: the peak RSS is the process's)."""
    import rramc

    torch.manual_seed(0)
    model = NETWORKS[name]().eval()
    for module in model.modules():  # BatchNorm statistics as a trained network has them, not the identity
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    parameters = sum(p.numel() for p in model.parameters())
    x = torch.rand(samples, 3, 224, 224)
    with torch.no_grad():
        model(x[:1])  # warm-up
        start = time.perf_counter()
        model(x[:1])
        forward = time.perf_counter() - start
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    exe = rramc.compile(model, target, calibration_data=x, input_range=(0.0, 1.0), exact_weights=exact_weights)
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    rss_compile = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        path = exe.save(Path(folder) / f"{name}.rramx")
        save = time.perf_counter() - start
        size = path.stat().st_size
        start = time.perf_counter()
        rramc.load_executable(path)
        load = time.perf_counter() - start
    assert exe.compile_seconds is not None
    passes = dict(exe.pass_seconds)
    return {"name": name, "parameters": parameters, "forward_s": forward, "compile_s": exe.compile_seconds,
            "import_s": exe.compile_seconds - sum(passes.values()), "passes": passes, "save_s": save, "load_s": load,
            "rss_model": rss_model, "rss_compile": rss_compile, "size": size}


# --- the table ------------------------------------------------------------------------------------------------

PASSES = ("canonicalize", "quantize", "tile", "calibrate", "emit")


def table(rows: list[dict[str, object]]) -> str:
    head = (f"{'network':9s} {'params':>7s} {'compile s':>9s} {'/fwd':>6s} {'import':>6s} "
            + " ".join(f"{p[:8]:>8s}" for p in PASSES)
            + f" {'save s':>6s} {'load s':>6s} {'base MB':>7s} {'RSS MB':>7s} {'B/param':>7s} {'file MB':>7s} {'B/param':>7s}")
    lines = [head]
    for r in rows:
        params, passes = int(r["parameters"]), r["passes"]  # type: ignore[call-overload]
        assert isinstance(passes, dict)
        compile_s, peak, size = float(r["compile_s"]), int(r["rss_compile"]), int(r["size"])  # type: ignore[arg-type]
        lines.append(f"{r['name']!s:9s} {params / 1e6:6.1f}M {compile_s:9.2f} {compile_s / float(r['forward_s']):6.0f} "  # type: ignore[arg-type]
                     f"{float(r['import_s']):6.2f} " + " ".join(f"{passes.get(p, 0.0):8.2f}" for p in PASSES)  # type: ignore[arg-type]
                     + f" {float(r['save_s']):6.2f} {float(r['load_s']):6.2f} {int(r['rss_model']) / 2**20:7.0f}"  # type: ignore[call-overload]
                     f" {peak / 2**20:7.0f} {peak / params:7.1f}"
                     f" {size / 2**20:7.1f} {size / params:7.2f}")
    lines.append("/fwd: compile time over one PyTorch forward pass at batch 1 in the same process. import: the compile's "
                 "time outside the passes (the frontend, and the IR checks between passes). base: resident memory before "
                 "compiling (torch and the model); RSS: peak resident memory of the compile, model included.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(NETWORKS), help=f"networks to compile ({', '.join(NETWORKS)})")
    parser.add_argument("--target", default="rram_a")
    parser.add_argument("--samples", type=int, default=2, help="random calibration inputs")
    parser.add_argument("--exact-weights", action="store_true", help="keep the float reference weights in float32")
    parser.add_argument("--repeat", type=int, default=1, help="compile each network this many times, keep the fastest")
    parser.add_argument("--profile", help="write a cProfile of the compile to this file (with one network)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the subprocess: measure one network, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.target, args.samples, args.exact_weights, args.profile)))
        return
    names = args.models.split(",")
    unknown = [n for n in names if n not in NETWORKS]
    if unknown:
        parser.error(f"unknown network {unknown[0]}: expected some of {', '.join(NETWORKS)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, target {args.target}, {args.samples} calibration "
          f"samples, {'float32' if args.exact_weights else 'compact'} reference weights")
    rows = []
    for name in names:
        command = [sys.executable, __file__, "--one", name, "--target", args.target, "--samples", str(args.samples),
                   *(["--exact-weights"] if args.exact_weights else []), *(["--profile", args.profile] if args.profile else [])]
        runs = []
        for _ in range(max(1, args.repeat)):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"{name}: the compile failed:\n{result.stderr[-3000:]}")
            runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
        rows.append(min(runs, key=lambda run: run["compile_s"]))
    print(table(rows))


if __name__ == "__main__":
    main()
