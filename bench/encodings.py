"""What each answer to the nonlinearity is worth: accuracy, energy and latency per inference of every
input encoding, naive and reconstructed, for the Fashion-MNIST MLP and CNN on rram_a, rram_b and a
k = 20 variant of rram_a.

    python bench/encodings.py [--networks mlp,cnn] [--targets rram_a,rram_b,k20] [--epochs 3]
                              [--train-samples N] [--test-samples N] [--executor processes --jobs 2] [--out DIR]

For each network and target it runs ``rramc.sweep.run_sweep`` over ``crossbar.input_encoding``
(so every point is a task of the chosen executor, logged and resumable like ``rramc sweep``) and
writes, under ``--out``, each sweep's CSV/JSON/Pareto PNG, one ``table.md`` of every design, and
``pareto_<network>.png``: every design of a network on every target on one figure. The float
networks are trained here first (``--float-epochs``, SGD 0.1 as the paper experiment), seeded.

    python bench/encodings.py --replot DIR   # redraw DIR's figures from its designs.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import rramc
from rramc.executors import EXECUTORS, make_executor
from rramc.frontend import import_module
from rramc.hardware.currents import with_read_current
from rramc.samples import models
from rramc.sweep import SweepResult, pareto_front, run_sweep
from rramc.training import TrainConfig, train_classifier

NETWORKS = {"mlp": ("MLP 784-500-250-10", models.paper_mlp), "cnn": ("CNN (2 conv + BN + clipped ReLU)", models.mnist_cnn)}
ENCODINGS = ("amplitude", "bit_serial", "pulse_width", "predistorted")


def target(name: str) -> rramc.Target:
    if name == "k20":  # rram_a's cells at k = 20, the window scaled to keep its largest read current (as rramc sweep does)
        return with_read_current(rramc.load_target("rram_a"), device={"nonlinearity_k": 20.0})
    return rramc.load_target(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--networks", default="mlp,cnn")
    parser.add_argument("--targets", default="rram_a,rram_b,k20")
    parser.add_argument("--encodings", default=",".join(ENCODINGS))
    parser.add_argument("--float-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="reconstruction epochs")
    parser.add_argument("--train-samples", type=int, help="train (float and reconstruction) on this many samples only")
    parser.add_argument("--test-samples", type=int, help="evaluate on this many test samples only")
    parser.add_argument("--executor", choices=EXECUTORS, default="local")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--out", type=Path, default=Path("encodings"))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--replot", type=Path, help="only redraw the figures of an earlier run's folder")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads((args.replot / "designs.json").read_text()), args.replot, args.dataset)
        return
    for name in args.networks.split(","):
        if name not in NETWORKS:
            parser.error(f"--networks: unknown {name!r}; allowed: {', '.join(NETWORKS)}")
    targets = {name: target(name) for name in args.targets.split(",")}
    train = rramc.load_dataset(args.dataset, "train", args.data_dir)
    test = rramc.load_dataset(args.dataset, "test", args.data_dir)
    if args.train_samples:
        train = train.shuffled(0).take(args.train_samples)
    if args.test_samples:
        test = test.take(args.test_samples)
    print(f"{args.dataset}: {len(train)} train, {len(test)} test samples; torch {torch.__version__}, {torch.get_num_threads()} threads",
          flush=True)
    designs, lines = [], ["| network | target | encoding | method | accuracy [%] | energy / inference [nJ] | latency / inference [µs] |",
                          "|---|---|---|---|---|---|---|"]
    with make_executor(args.executor, jobs=args.jobs) as executor:
        for key in args.networks.split(","):
            title, factory = NETWORKS[key]
            torch.manual_seed(0)
            start = time.perf_counter()
            net = train_classifier(factory(), train, TrainConfig(epochs=args.float_epochs, lr=0.1, batch_size=128, schedule="constant"))
            graph = import_module(net, train.images[:2])
            print(f"{title}: trained in {time.perf_counter() - start:.0f} s", flush=True)
            for label, spec in targets.items():
                start = time.perf_counter()
                folder = args.out / f"{key}_{label}"
                folder.mkdir(parents=True, exist_ok=True)
                result: SweepResult = run_sweep(graph, spec, train, test, {"crossbar.input_encoding": args.encodings.split(",")},
                                                epochs=args.epochs, least_squares=False, executor=executor,
                                                log=folder / "sweep.jsonl", resume=args.resume)
                result.meta["title"] = f"{title} on {label}, {args.dataset}"
                result.write(folder)
                for failure in result.failures.values():
                    print(f"  failed: {failure}", flush=True)
                for d in result.designs():
                    d.update(network=key, target=label)
                    designs.append(d)
                    lines.append(f"| {title} | {label} | {d['point']} | {d['method']} | {100 * d['accuracy']:.2f} | "
                                 f"{d['energy_J'] * 1e9:.3g} | {d['latency_s'] * 1e6:.3g} |")
                    print(lines[-1], flush=True)
                print(f"  float {100 * result.rows[0]['float']:.2f} %, float trained the same extra epochs "
                      f"{100 * result.rows[0].get('float_retrained', float('nan')):.2f} % ({time.perf_counter() - start:.0f} s)", flush=True)
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    (args.out / "designs.json").write_text(json.dumps(designs, indent=2))
    plot(designs, args.out, args.dataset)
    print(f"wrote {args.out}/table.md, designs.json, pareto_<network>.png", flush=True)


def plot(designs: list[dict], folder: Path, dataset: str) -> None:
    """``pareto_<network>.png``: a row of panels per target, accuracy against energy and against latency
    per inference; colour: input encoding, circle: naive, triangle: reconstructed; each panel's Pareto
    front (no design more accurate for less) joined. Networks are not each other's rivals: one figure each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, NullFormatter

    colors = dict(zip(ENCODINGS, ("tab:red", "tab:green", "tab:purple", "tab:blue")))
    for key in dict.fromkeys(d["network"] for d in designs):
        mine = [d for d in designs if d["network"] == key]
        targets = list(dict.fromkeys(d["target"] for d in mine))
        fig, panels = plt.subplots(len(targets), 2, figsize=(10, 3.1 * len(targets)), dpi=110, sharey="row", squeeze=False)
        for row, label in zip(panels, targets):
            here = [d for d in mine if d["target"] == label]
            for ax, cost, unit in ((row[0], "energy_J", "J"), (row[1], "latency_s", "s")):
                for d in here:
                    encoding = d["point"].split("=")[-1]
                    ax.scatter(d[cost], 100 * d["accuracy"], color=colors.get(encoding, "black"), s=30,
                               marker="o" if d["method"] == "naive" else "^")
                front = pareto_front(here, cost)
                ax.step([d[cost] for d in front], [100 * d["accuracy"] for d in front], where="post", color="black", lw=0.8, alpha=0.5)
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(EngFormatter(unit=unit))
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.grid(True, alpha=0.3)
                ax.set_title(f"{label}: accuracy vs {'energy' if unit == 'J' else 'latency'} per inference", fontsize=9)
            row[0].set_ylabel("test accuracy [%]")
        handles = [plt.Line2D([], [], color=c, marker="s", ls="", label=e) for e, c in colors.items()]
        handles += [plt.Line2D([], [], color="gray", marker=m, ls="", label=t) for m, t in (("o", "naive"), ("^", "reconstructed"))]
        fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, frameon=False)
        fig.suptitle(f"{NETWORKS[key][0]} on {dataset} (joined: each panel's Pareto front)", fontsize=10)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        fig.savefig(folder / f"pareto_{key}.png")
        plt.close(fig)


if __name__ == "__main__":
    main()
