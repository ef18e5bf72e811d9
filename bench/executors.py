"""What each executor costs and gives: the Fashion-MNIST k-sweep of the small MLP under local,
processes and ray, and the overhead of one task.

    python bench/executors.py [--jobs 2] [--ks 2.5,5,7.5,20,70] [--epochs 3] [--skip-sweep]

Prints wall times as ratios against the local executor run in the same process (these machines
are shared and noisy), and per executor the overhead of a task that does nothing: starting the
executor (a pool, a local Ray) once, then the time per no-op task beyond its work. The scaling
to N workers follows: a grid of P points of t seconds each takes about
startup + ⌈P / N⌉ · (t + overhead).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

import rramc
from rramc.executors import make_executor
from rramc.frontend import save_exported
from rramc.samples import models
from rramc.sweep import run_sweep
from rramc.training import TrainConfig, train_classifier


def nothing(shared: object, item: int) -> int:
    return item


def overhead(name: str, jobs: int, tasks: int) -> tuple[float, float]:
    """Seconds to start the executor, and seconds per no-op task (the batch of ``tasks`` over all workers, per task)."""
    start = time.perf_counter()
    with make_executor(name, jobs=None if name == "local" else jobs) as executor:
        list(executor.run(nothing, None, [("warm", 0)]))  # a pool's workers start with their first task
        started = time.perf_counter() - start
        start = time.perf_counter()
        outcomes = list(executor.run(nothing, None, [(str(i), i) for i in range(tasks)]))
        per_task = (time.perf_counter() - start) / tasks
    assert all(o.ok for o in outcomes)
    return started, per_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--ks", default="2.5,5,7.5,20,70")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=40, help="no-op tasks for the overhead figure")
    parser.add_argument("--skip-sweep", action="store_true", help="only the overhead figures")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per point under every executor (the same value: the same rows); 0: each executor's own")
    args = parser.parse_args()
    executors = ["local", "processes", "ray"]
    try:
        import ray  # noqa: F401
    except ImportError:
        executors.remove("ray")
        print("ray is not installed (pip install 'rramc[ray]'): its rows are left out")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; --jobs {args.jobs}")
    print(f"{'executor':10s} {'startup s':>10s} {'per no-op task ms':>18s}")
    for name in executors:
        started, per_task = overhead(name, args.jobs, args.tasks)
        print(f"{name:10s} {started:10.2f} {1e3 * per_task:18.2f}", flush=True)
    if args.skip_sweep:
        return
    train, test = rramc.load_dataset("fashion-mnist", "train"), rramc.load_dataset("fashion-mnist", "test")
    torch.manual_seed(0)
    net = train_classifier(models.paper_mlp(), train, TrainConfig(epochs=5, lr=0.1, batch_size=128, schedule="constant"))
    folder = Path(tempfile.mkdtemp())
    save_exported(net, train.images[:1], folder / "mlp.pt2", dataset="fashion-mnist")
    graph = rramc.frontend.load_model(folder / "mlp.pt2").graph
    axes = {"device.nonlinearity_k": [float(k) for k in args.ks.split(",")]}
    print(f"\nFashion-MNIST k-sweep, MLP 784-500-250-10, k = {args.ks}, {args.epochs} reconstruction epochs, "
          f"{args.threads or 'the executor’s'} torch thread(s) per point "
          f"({len(axes['device.nonlinearity_k']) + 1} tasks: the points and the fair baseline)")
    reference = None
    baseline_rows = None
    for name in executors:
        start = time.perf_counter()
        with make_executor(name, jobs=None if name == "local" else args.jobs) as executor:
            result = run_sweep(graph, "rram_a", train, test, axes, epochs=args.epochs, executor=executor,
                               threads=args.threads or None)
        seconds = time.perf_counter() - start
        reference = reference or seconds
        baseline_rows = baseline_rows or result.rows
        differ = [(a, b) for a, b in zip(result.rows, baseline_rows) if a != b]
        same = "same rows" if not differ else f"ROWS DIFFER, e.g. {differ[0][0]} against local's {differ[0][1]}"
        print(f"{name:10s} {seconds:8.1f} s   {reference / seconds:5.2f}× local   {same}", flush=True)
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
