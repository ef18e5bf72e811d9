"""The seed paper's experiment on real data: naive mapping vs reconstruction across nonlinearity.

    python bench/paper_experiment.py --dataset fashion-mnist [--networks mlp,deep_mlp,cnn]
        [--targets rram_a,rram_b] [--ks 2.5,7.5,20,70] [--periphery shipped|reference|both] [--out results.json]

For each network: train it in float (5 epochs, SGD lr 0.1, momentum 0.9, batch 128, constant
rate, seed 0); "ideal" is that network trained 3 epochs more (lr 0.05), the fair comparison
for a reconstruction of 3 epochs (with ``--optimizer adam`` the extra float epochs use Adam too). Then, for rram_a at every k and for rram_b, the chip accuracy
on the test split of the naive mapping (full-scale and least-squares neuron calibration) and of
the network reconstructed from the float one (3 epochs through the device I-V only; Adam at
0.001 by default, ``--optimizer sgd`` for the paper's SGD at 0.05).
``--periphery shipped`` uses the targets as shipped (32 levels, 8-bit DAC/ADC); ``reference``
uses continuous conductances and ideal converters, the conventions of shared/REFERENCE.md.
Rows are printed as they finish and the JSON is rewritten after each.

Every (network, target) point is one task of ``--executor`` (local, processes with ``--jobs``,
or ray with ``--address``, as ``rramc sweep``): the float training runs here, the points run
wherever the executor puts them. Each finished point is appended to ``<out>.jsonl`` at once;
``--resume`` skips the points already there, so an interrupted run loses none.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import rramc
from rramc.executors import EXECUTORS, gpus_per_task, make_executor
from rramc.hardware.currents import with_read_current
from rramc.sweep import SweepLog
from rramc.samples import models
from rramc.torch_devices import check_torch_device
from rramc.training import TrainConfig, accuracy, train_classifier

NETWORKS = {"mlp": ("MLP 784-500-250-10", models.paper_mlp), "deep_mlp": ("MLP 784-2500-2000-1500-1000-500-10", models.paper_deep_mlp),
            "cnn": ("CNN (2 conv + BN + clipped ReLU)", models.mnist_cnn)}
REFERENCE_PERIPHERY = {"conductance": {"levels": None}, "crossbar": {"dac_bits": None, "adc_bits": None}}


def targets(families: list[str], ks: list[float], periphery: str) -> list[tuple[str, rramc.Target]]:
    chosen = []
    for variant in (["shipped", "reference"] if periphery == "both" else [periphery]):
        changes = REFERENCE_PERIPHERY if variant == "reference" else {}
        suffix = "" if variant == "shipped" else " (continuous, ideal converters)"
        if "rram_a" in families:
            for k in ks:
                base = rramc.load_target("rram_a").with_changes(**changes) if changes else rramc.load_target("rram_a")
                # same largest read current as rram_a (g_min, g_max scaled): at k = 70 the same window would carry 43×
                chosen.append((f"rram_a k={k:g}{suffix}", with_read_current(base, device={"nonlinearity_k": k})))
        if "rram_b" in families:
            rram_b = rramc.load_target("rram_b")
            chosen.append((f"rram_b{suffix}", rram_b.with_changes(**changes) if changes else rram_b))
    return chosen


def target_point(shared: dict, item: tuple[str, dict]) -> dict:
    """One (network, target) point: naive with both calibrations, and reconstructed, on the test split."""
    label, mapping = item
    target = rramc.Target.from_mapping(mapping, label)
    net, calibration, train, test = shared["net"], shared["calibration"], shared["train"], shared["test"]
    example = calibration.images[:2]
    device = shared["device"]
    naive = rramc.compile(net, target, example, calibration_data=calibration, pipeline="naive").run(test, device=device)
    naive_ls = rramc.compile(net, target, example, calibration_data=calibration, pipeline="least_squares").run(test, device=device)
    start = time.perf_counter()
    lr = 1e-3 if shared["optimizer"] == "adam" else 0.05
    pipeline = rramc.named_pipeline("reconstruct", reconstruct={"epochs": shared["epochs"], "optimizer": shared["optimizer"],
                                                                "lr": lr, "batch_size": 128, "device": device})
    recon = rramc.compile(net, target, example, calibration_data=calibration, training_data=train,
                          pipeline=pipeline).run(test, device=device)
    return {"target": label, "naive": naive.chip_accuracy, "naive_least_squares": naive_ls.chip_accuracy,
            "reconstructed": recon.chip_accuracy, "reconstructed_model": recon.float_accuracy,
            "reconstruct_seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--networks", default="mlp,deep_mlp,cnn")
    parser.add_argument("--targets", default="rram_a,rram_b",
                        help="target families: rram_a (swept over --ks) and/or rram_b")
    parser.add_argument("--ks", default="2.5,7.5,20,70")
    parser.add_argument("--periphery", choices=("shipped", "reference", "both"), default="shipped")
    parser.add_argument("--float-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, help="train on this many samples only (quick runs)")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                        help="reconstruction optimizer: adam (lr 0.001, rramc's default) or sgd (lr 0.05, the seed paper's)")
    parser.add_argument("--out", type=Path, default=Path("paper_experiment.json"))
    parser.add_argument("--executor", choices=EXECUTORS, default="local")
    parser.add_argument("--jobs", type=int, help="processes: worker processes; ray: CPUs of a local Ray")
    parser.add_argument("--address", help="ray: the cluster to run on [default: a local Ray]")
    parser.add_argument("--resume", action="store_true", help="skip the points <out>.jsonl already holds")
    parser.add_argument("--device", default="cpu", help="torch device to reconstruct and simulate on (cpu, cuda); one GPU per Ray task")
    args = parser.parse_args()
    try:
        check_torch_device(args.device, here=args.address is None)
    except rramc.RramcError as exc:
        parser.error(str(exc))
    families = args.targets.split(",")
    if unknown := set(families) - {"rram_a", "rram_b"}:
        parser.error(f"--targets: unknown {sorted(unknown)}; allowed: rram_a, rram_b")
    if unknown := set(args.networks.split(",")) - set(NETWORKS):
        parser.error(f"--networks: unknown {sorted(unknown)}; allowed: {', '.join(NETWORKS)}")
    train = rramc.load_dataset(args.dataset, "train", args.data_dir)
    test = rramc.load_dataset(args.dataset, "test", args.data_dir)
    if args.samples:
        train = train.shuffled(0).take(args.samples)
    calibration = train.shuffled(1).take(512)  # a Dataset: it also declares the input range (0, 1)
    ks = [float(k) for k in args.ks.split(",")]
    rows: list[dict] = []
    options = {"dataset": args.dataset, "float_epochs": args.float_epochs, "epochs": args.epochs, "samples": args.samples,
               "optimizer": args.optimizer, "periphery": args.periphery}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = SweepLog(args.out.with_suffix(".jsonl"), {"options": options})
    try:
        finished = log.open(args.resume)
    except rramc.RramcError as exc:
        parser.error(str(exc))
    executor = make_executor(args.executor, jobs=args.jobs, address=args.address,
                             gpus_per_task=gpus_per_task(args.executor, args.device))
    print(f"{args.dataset}: {len(train)} train, {len(test)} test samples; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'network':36s} {'target':46s} {'ideal':>6s} {'naive':>6s} {'naive LS':>8s} {'recon':>6s} {'recon s':>8s}")
    for key in args.networks.split(","):
        title, factory = NETWORKS[key]
        torch.manual_seed(0)
        start = time.perf_counter()
        float_net = train_classifier(factory(), train, TrainConfig(epochs=args.float_epochs, lr=0.1, batch_size=128, schedule="constant"))
        extra = TrainConfig(epochs=args.epochs, lr=1e-3 if args.optimizer == "adam" else 0.05, optimizer=args.optimizer,
                            batch_size=128, schedule="constant")
        ideal_net = train_classifier(copy.deepcopy(float_net), train, extra)
        float_acc, ideal_acc = accuracy(float_net, test), accuracy(ideal_net, test)
        print(f"{title}: float {100 * float_acc:.2f} %, float +{args.epochs} epochs {100 * ideal_acc:.2f} % "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        shared = {"net": float_net, "calibration": calibration, "train": train, "test": test, "epochs": args.epochs,
                  "optimizer": args.optimizer, "device": args.device}
        items = [(f"{key} {label}", (label, target.to_mapping())) for label, target in targets(families, ks, args.periphery)]
        for task_key, (label, _) in items:
            if task_key in finished:
                print(f"{title:36s} {label:46s} (resumed)", flush=True)
        todo = [(k, item) for k, item in items if k not in finished]
        for outcome in executor.run(target_point, shared, todo):
            if not outcome.ok:
                print(f"{title:36s} {outcome.key:46s} FAILED: {outcome.error}", flush=True)
                continue
            point = outcome.value
            log.append(outcome.key, point)
            finished[outcome.key] = point
            print(f"{title:36s} {point['target']:46s} {100 * ideal_acc:6.2f} {100 * point['naive']:6.2f} "
                  f"{100 * point['naive_least_squares']:8.2f} {100 * point['reconstructed']:6.2f} "
                  f"{point['reconstruct_seconds']:8.0f}", flush=True)
        for task_key, _ in items:
            if task_key in finished:
                rows.append({"network": title, "float": float_acc, "ideal": ideal_acc, **finished[task_key]})
        args.out.write_text(json.dumps({"dataset": args.dataset, "rows": rows}, indent=2))
    executor.close()


if __name__ == "__main__":
    main()
