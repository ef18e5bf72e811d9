"""Accuracy against wire resistance: what IR drop costs, and what the compiler can win back.

    python bench/wires_experiment.py --dataset fashion-mnist [--networks mlp,cnn]
        [--resistance 0,0.5,1,2] [--method first_order] [--epochs 1] [--samples 20000]
        [--out wires_experiment.json] [--figure wires_experiment.png]

For each network (trained in float as in ``paper_experiment.py``) on ``rram_a`` with word- and
bit-line segments of each resistance: the chip accuracy on the test split of
* naive: the conventional mapping, calibrated with the wires in place;
* naive + place: the same with the ``place`` pass (large currents on short wires);
* reconstructed: trained through the device I-V on ideal wires (once), compiled for each resistance;
* reconstructed, wires in the loop: trained through the I-V and the wires at that resistance;
* reconstructed, wires in the loop + place.
The wires are solved with ``--method`` (``first_order`` by default: the exact solver costs
minutes per batch on a CPU; ``bench/wires_runtime.py`` measures the first-order error). Rows
are printed as they finish and the JSON is rewritten after each; the figure is drawn at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import rramc
from rramc.samples import models
from rramc.training import TrainConfig, accuracy, train_classifier

NETWORKS = {"mlp": ("MLP 784-500-250-10", models.paper_mlp), "cnn": ("CNN (2 conv + BN + clipped ReLU)", models.mnist_cnn)}
PLACED = "canonicalize,quantize,tile,place,calibrate,emit"
METHODS = ("naive", "naive + place", "reconstructed", "reconstructed, wires in loop", "reconstructed, wires in loop + place")


def wired(resistance: float, method: str) -> rramc.Target:
    return rramc.load_target("rram_a").with_changes(
        wires={"model": "resistive", "word_line_resistance": resistance, "bit_line_resistance": resistance, "method": method})


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = sorted({r["network"] for r in rows})
    fig, axes = plt.subplots(1, len(networks), figsize=(5.5 * len(networks), 4), squeeze=False)
    for ax, network in zip(axes[0], networks):
        mine = [r for r in rows if r["network"] == network]
        for method in METHODS:
            points = [(r["resistance"], 100 * r[method]) for r in mine if r.get(method) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=method)
        ax.axhline(100 * mine[0]["float"], color="gray", linestyle=":", label="float")
        ax.set_title(network)
        ax.set_xlabel("wire resistance per cell segment [Ω]")
        ax.set_ylabel("test accuracy [%]")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--networks", default="mlp,cnn")
    parser.add_argument("--resistance", default="0,0.5,1,2")
    parser.add_argument("--method", choices=("first_order", "exact"), default="first_order")
    parser.add_argument("--float-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1, help="reconstruction epochs")
    parser.add_argument("--samples", type=int, default=20000, help="reconstruction samples")
    parser.add_argument("--test-samples", type=int, help="evaluate on this many test samples only")
    parser.add_argument("--out", type=Path, default=Path("wires_experiment.json"))
    parser.add_argument("--figure", type=Path, default=Path("wires_experiment.png"))
    args = parser.parse_args()
    train = rramc.load_dataset(args.dataset, "train", args.data_dir)
    test = rramc.load_dataset(args.dataset, "test", args.data_dir)
    if args.test_samples:
        test = test.take(args.test_samples)
    retrain = train.shuffled(2).take(args.samples)
    calibration = train.shuffled(1).take(512)
    example = calibration.images[:2]
    resistances = [float(r) for r in args.resistance.split(",")]
    options = {"epochs": args.epochs, "batch_size": 128, "seed": 0}
    rows: list[dict] = []
    print(f"{args.dataset}: rram_a, wires solved {args.method}; reconstruction {args.epochs} epoch(s) on {len(retrain)} samples; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'network':36s} {'Ω':>4s} " + " ".join(f"{m:>14.14s}" for m in METHODS) + f" {'s':>6s}")
    for key in args.networks.split(","):
        title, factory = NETWORKS[key]
        torch.manual_seed(0)
        float_net = train_classifier(factory(), train, TrainConfig(epochs=args.float_epochs, lr=0.1, batch_size=128))
        float_acc = accuracy(float_net, test)
        no_wires = rramc.named_pipeline("reconstruct", reconstruct=options)
        recon_graph = None
        for resistance in resistances:
            start = time.perf_counter()
            target = wired(resistance, args.method)

            def chip(pipeline, data=None):  # type: ignore[no-untyped-def]
                exe = rramc.compile(float_net, target, example, calibration_data=calibration, pipeline=pipeline,
                                    training_data=data)
                return exe.run(test).chip_accuracy

            row = {"network": title, "resistance": resistance, "float": float_acc, "naive": chip("naive"),
                   "naive + place": chip(PLACED)}
            # Reconstructed on ideal wires: trained once (the wires are not in its loop), compiled per resistance.
            if recon_graph is None:
                keep = KeepTrained()
                rramc.compile(float_net, target, example, calibration_data=calibration, pipeline=no_wires,
                              training_data=retrain, instruments=[keep])
                recon_graph = keep.graph
            row["reconstructed"] = _recompile(recon_graph, target, calibration, test)
            if resistance > 0:
                in_loop = rramc.named_pipeline("reconstruct", reconstruct={**options, "wires": True})
                keep = KeepTrained()
                trained = rramc.compile(float_net, target, example, calibration_data=calibration, pipeline=in_loop,
                                        training_data=retrain, instruments=[keep])
                row["reconstructed, wires in loop"] = trained.run(test).chip_accuracy
                row["reconstructed, wires in loop + place"] = _recompile(keep.graph, target, calibration, test, PLACED)
            else:
                row["reconstructed, wires in loop"] = row["reconstructed, wires in loop + place"] = None
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            cells = " ".join(f"{'-':>14s}" if row[m] is None else f"{100 * row[m]:14.2f}" for m in METHODS)
            print(f"{title:36s} {resistance:4g} {cells} {row['seconds']:6.0f}", flush=True)
            args.out.write_text(json.dumps({"dataset": args.dataset, "method": args.method, "rows": rows}, indent=2))
    figure(rows, args.figure)


class KeepTrained(rramc.PassInstrument):
    """Keeps a copy of the float graph that ``reconstruct`` trained, to map it again for other targets."""

    def __init__(self) -> None:
        self.graph: rramc.Graph | None = None

    def after_pass(self, p, graph, ctx, seconds) -> None:  # type: ignore[no-untyped-def]
        if p.name == "reconstruct":
            self.graph = graph.copy()


def _recompile(graph, target, calibration, test, pipeline: str = "naive") -> float:  # type: ignore[no-untyped-def]
    """Map a reconstructed float graph (trained weights, input ranges fixed) for ``target`` and evaluate it."""
    exe = rramc.compile(graph, target, calibration.images[:2], calibration_data=calibration, pipeline=pipeline)
    return exe.run(test).chip_accuracy


if __name__ == "__main__":
    main()
