"""rramc's wire-resistance solver against ngspice on one full array, and what the wires cost.

    python bench/wires_solver.py [--rows 128] [--outputs 64] [--resistance 1.0] [--repeats 3] [--seed 0] [--threads N]

One differential array (``rows`` word lines, ``2·outputs`` bit lines) of sinh cells (k = 7.5 at
1 V), conductances uniform in 0.02-2 µS, one input vector uniform in 0-1 V, ``resistance`` ohms
per word- and bit-line segment (drivers and sense amplifiers ideal). Prints ngspice's ``.op`` wall
time (one subprocess, netlist from ``bench/spice_netlist.py``), the time of rramc's ``exact`` and
``first_order`` methods in float64 and float32 (best of the repeats, same process), the ratios,
each one's largest difference from ngspice, and how far ideal wires are from the wired currents.
Without ngspice on PATH only rramc's side is measured (errors then against rramc's float64 exact).
Errors are relative to the largest bit-line current (a differential output may cancel to zero).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from rramc.hardware.column_solver import column_currents
from rramc.hardware.devices import SinhDevice
from rramc.hardware.wires import ResistiveWires

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spice_netlist import Wires, differential_columns, spice_column_currents  # noqa: E402

WINDOW = (2e-8, 2e-6)  # S


def best_time(fn, repeats: int) -> tuple[float, torch.Tensor]:  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    assert out is not None
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--outputs", type=int, default=64, help="differential outputs: 2× as many bit lines")
    parser.add_argument("--resistance", type=float, default=1.0, help="ohms per word- and bit-line segment")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = SinhDevice(nonlinearity_k=7.5, k_voltage=1.0)
    gen = torch.Generator().manual_seed(args.seed)
    v = torch.rand(1, args.rows, generator=gen, dtype=torch.float64)
    g_pos, g_neg = (WINDOW[0] + (WINDOW[1] - WINDOW[0]) * torch.rand(args.rows, args.outputs, generator=gen, dtype=torch.float64)
                    for _ in "+-")
    g = differential_columns(g_pos, g_neg)
    r = args.resistance
    print(f"{args.rows}×{2 * args.outputs} array ({args.outputs} differential outputs), sinh k = 7.5, "
          f"{r:g} Ω per segment, one input vector; torch {torch.__version__}, {torch.get_num_threads()} threads")

    ngspice = shutil.which("ngspice")
    spice, spice_time = None, 0.0
    if ngspice is None:
        print("ngspice: not on PATH, only rramc is timed")
    else:
        with tempfile.TemporaryDirectory() as workdir:
            (spice,), spice_time = spice_column_currents(ngspice, Path(workdir), device, [(v, g)], Wires(word_line=r, bit_line=r))
        print(f"ngspice .op: {spice_time:.3f} s (subprocess wall time, netlist parsing included)")

    ideal = device.current(v[:, :, None], g).sum(1)  # every bit line's current with ideal wires
    runs = {}
    for method in ("exact", "first_order"):
        solver = ResistiveWires(word_line_resistance=r, bit_line_resistance=r, method=method, tolerance=1e-10, max_iterations=100_000)
        for dtype in (torch.float64, torch.float32):
            cells = (v.to(dtype), g_pos.to(dtype), g_neg.to(dtype), device)
            column_currents(*cells, solver=solver)  # warm-up (and the first-order method's expansions)
            seconds, out = best_time(lambda cells=cells, solver=solver: column_currents(*cells, solver=solver), args.repeats)
            runs[method, dtype] = seconds, out[0].to(torch.float64)

    if spice is not None:
        expected, scale = spice[:, 0::2] - spice[:, 1::2], float(spice.abs().max())
        against = "ngspice"
    else:
        expected = runs["exact", torch.float64][1]
        scale = float(ideal.abs().max())  # the wired bit-line currents are not known without ngspice: about this
        against = "rramc exact float64"
    print(f"{'rramc':24s} {'time [s]':>10s} {'ngspice/rramc':>14s} {'max error vs ' + against:>32s}")
    for (method, dtype), (seconds, out) in runs.items():
        error = float((out - expected).abs().max()) / scale
        ratio = f"{spice_time / seconds:14.1f}" if spice is not None else f"{'-':>14s}"
        print(f"{method + ' ' + str(dtype).removeprefix('torch.'):24s} {seconds:10.4f} {ratio} {error:32.2e}")

    output_error = (ideal[:, 0::2] - ideal[:, 1::2] - expected).abs() / scale
    print(f"ideal wires vs {against}, per output, of the largest bit-line current: "
          f"mean {float(output_error.mean()):.2e}, max {float(output_error.max()):.2e}")
    if spice is not None:
        line_error = (ideal - spice).abs() / spice.abs()
        print(f"ideal wires vs ngspice, per bit line, of its own current: mean {float(line_error.mean()):.2e}, "
              f"max {float(line_error.max()):.2e}")


if __name__ == "__main__":
    main()
