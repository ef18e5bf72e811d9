"""Accuracy of the conventional mapping vs the reconstructed network across a grid of chip settings.

    result = rramc.sweep.run_sweep(model, "rram_a", train, test, axes={"device.nonlinearity_k": [2.5, 7.5, 20]})
    result.write(directory)   # sweep.csv, sweep.json and one PNG per axis
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rramc.datasets import Dataset
from rramc.errors import RramcError, TargetError
from rramc.hardware.target import Target, load_target
from rramc.runtime.file_format import write_atomically

if TYPE_CHECKING:
    from rramc.executors import Executor

WIRE_RESISTANCE = "crossbar.wire_resistance"
"""An axis that sets both wires.word_line_resistance and wires.bit_line_resistance [Ω per segment]."""
AXIS_SHORTCUTS = {"k": "device.nonlinearity_k", "b": "device.b", "read_voltage": "crossbar.read_voltage", "adc_bits": "crossbar.adc_bits",
                  "wire_resistance": WIRE_RESISTANCE, "input_encoding": "crossbar.input_encoding",
                  "weight_encoding": "crossbar.weight_encoding"}
METHODS = ("naive", "naive_least_squares", "reconstructed")
LABELS = {"float": "float", "float_retrained": "float, trained the same extra epochs", "naive": "naive",
          "naive_least_squares": "naive least squares", "reconstructed": "reconstructed"}
"""Legend labels. ``float_retrained`` is the fair baseline of ``reconstructed``: the float network trained
the same extra epochs (reconstructed for the ideal target), so that extra training is not credited to the method."""
COST_COLUMNS = ("energy_J", "latency_s")
"""Per inference, for each method: ``<method>_energy_J`` and ``<method>_latency_s`` (the cost model's totals);
sweep.json's rows also hold ``<method>_layers``, the same per crossbar layer."""


@dataclass
class SweepResult:
    """One row per grid point: the point, the float accuracy and each method's chip accuracy."""

    axes: dict[str, list[Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    """Tasks that failed, by key, with their error: their rows are missing."""
    labels: dict[str, Any] = field(default_factory=dict)
    """What each task key stands for (a grid point, or the fair baseline), for messages."""

    def to_csv(self) -> str:
        out = io.StringIO()
        columns = list(dict.fromkeys(key for row in self.rows for key, value in row.items() if not isinstance(value, dict)))
        writer = csv.DictWriter(out, fieldnames=columns or list(self.axes), extrasaction="ignore")  # every row's columns: a
        writer.writeheader()                                                                         # resumed log may hold older rows
        writer.writerows(self.rows)
        return out.getvalue()

    def to_json(self) -> str:
        designs = self.designs()
        return json.dumps({"axes": self.axes, "meta": self.meta, "rows": self.rows, **({"designs": designs} if designs else {})},
                          indent=2)

    def plot(self, axis: str) -> bytes:
        """A PNG of accuracy against ``axis``, one line per method (and per value of the other axes)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        others = [a for a in self.axes if a != axis]
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        styles = {"float": ("black", "--"), "float_retrained": ("tab:gray", ":"), "naive": ("tab:red", "-"), "naive_least_squares": ("tab:orange", "-"),
                  "reconstructed": ("tab:blue", "-")}
        for combo in itertools.product(*(self.axes[o] for o in others)):
            rows = [r for r in self.rows if all(r[o] == v for o, v in zip(others, combo))]
            if not rows:  # every point of this line failed (or has not run yet): nothing to draw
                continue
            suffix = "".join(f", {o.split('.')[-1]}={v}" for o, v in zip(others, combo))
            xs = [r[axis] for r in rows]
            for method, (color, line) in styles.items():
                if method in rows[0]:
                    ax.plot(xs, [100 * r[method] for r in rows], line, color=color, marker="o", label=f"{LABELS[method]}{suffix}")
        if axis.endswith("nonlinearity_k"):
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            ax.set_xticks([v for v in self.axes[axis] if v is not None])
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(axis)
        ax.set_ylabel("test accuracy [%]")
        ax.set_title(self.meta.get("title", "rramc sweep"), fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        return buffer.getvalue()

    def designs(self) -> list[dict[str, Any]]:
        """Every (grid point, method) with its accuracy, energy and latency per inference, and whether it
        is on the Pareto front of accuracy against energy (``pareto_energy``) and against latency
        (``pareto_latency``): no other design is at least as accurate and as cheap, and better in one."""
        designs = []
        for row in self.rows:
            point = (str(row[next(iter(self.axes))]) if len(self.axes) == 1 else  # one axis: its value says it
                     ", ".join(f"{a.split('.')[-1]}={row[a]}" for a in self.axes))
            for method in METHODS:
                if method in row and f"{method}_energy_J" in row:
                    designs.append({"point": point, "method": method, "accuracy": row[method],
                                    "energy_J": row[f"{method}_energy_J"], "latency_s": row[f"{method}_latency_s"]})
        for key in COST_COLUMNS:
            front = {id(d) for d in pareto_front(designs, key)}
            for d in designs:
                d[f"pareto_{key.split('_')[0]}"] = id(d) in front
        return designs

    def plot_pareto(self) -> bytes:
        """A PNG of accuracy against energy and against latency per inference: every design a point
        (colour: method), each panel's Pareto front ringed, labelled and joined."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import EngFormatter, NullFormatter

        designs = self.designs()
        colors = {"naive": "tab:red", "naive_least_squares": "tab:orange", "reconstructed": "tab:blue"}
        fig, panels = plt.subplots(1, 2, figsize=(11, 4.4), dpi=110, sharey=True)
        for ax, key, label, unit in ((panels[0], "energy_J", "energy per inference", "J"),
                                     (panels[1], "latency_s", "latency per inference", "s")):
            for method, color in colors.items():
                chosen = [d for d in designs if d["method"] == method]
                if chosen:
                    ax.scatter([d[key] for d in chosen], [100 * d["accuracy"] for d in chosen], color=color, s=22, label=LABELS[method])
            front = pareto_front(designs, key)
            ax.step([d[key] for d in front], [100 * d["accuracy"] for d in front], where="post", color="black", lw=0.8, alpha=0.6)
            for d in front:
                ax.scatter([d[key]], [100 * d["accuracy"]], facecolors="none", edgecolors="black", s=90, linewidths=1.2)
                ax.annotate(d["point"], (d[key], 100 * d["accuracy"]), fontsize=6, xytext=(4, 3), textcoords="offset points")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(EngFormatter(unit=unit))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.tick_params(axis="x", which="both", labelsize=7)
            ax.set_xlabel(label)
            ax.grid(True, alpha=0.3)
        panels[0].set_ylabel("test accuracy [%]")
        panels[0].legend(fontsize=7, title="ringed and joined: Pareto front", title_fontsize=7)
        fig.suptitle(self.meta.get("title", "rramc sweep"), fontsize=10)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        return buffer.getvalue()

    def write(self, directory: Path) -> list[Path]:
        """Write sweep.csv, sweep.json, sweep_<axis>.png and, with costs, sweep_pareto.png (each atomically)."""
        directory.mkdir(parents=True, exist_ok=True)
        files = {"sweep.csv": self.to_csv().encode(), "sweep.json": self.to_json().encode()}
        for axis in self.axes:
            files[f"sweep_{axis.split('.')[-1]}.png"] = self.plot(axis)
        if self.designs():
            files["sweep_pareto.png"] = self.plot_pareto()
        for name, data in files.items():
            write_atomically(directory / name, data)
        return [directory / name for name in files]


def pareto_front(designs: Sequence[dict[str, Any]], cost: str) -> list[dict[str, Any]]:
    """The designs no other one beats: none at least as accurate and as cheap in ``cost`` (a key of
    each design, e.g. ``energy_J``) and better in one of them; cheapest first."""
    front = [d for d in designs if not any(o["accuracy"] >= d["accuracy"] and o[cost] <= d[cost]
                                           and (o["accuracy"] > d["accuracy"] or o[cost] < d[cost]) for o in designs)]
    return sorted(front, key=lambda d: d[cost])


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """``section.field=v1,v2,...`` (or a shortcut: k, b, read_voltage, adc_bits, wire_resistance, input_encoding,
    weight_encoding) → (field, values): numbers, null, or names (an encoding's, a model's)."""
    name, sep, values = text.partition("=")
    name = AXIS_SHORTCUTS.get(name.strip(), name.strip())
    if not sep or "." not in name or not values.strip():
        raise RramcError(f"sweep axis {text!r}: expected section.field=v1,v2,... (e.g. device.nonlinearity_k=2.5,7.5,20)")
    parsed: list[Any] = []
    for item in values.split(","):
        item = item.strip()
        if not item:
            raise RramcError(f"sweep axis {name}: an empty value in {values.strip()!r}")
        try:
            parsed.append(None if item.lower() in ("null", "none") else int(item) if item.lstrip("-").isdigit() else float(item))
        except ValueError:
            parsed.append(item)  # a name; the target checks it is one the field allows
    if len({type(v) for v in parsed if v is not None} - {int, float}) and any(isinstance(v, (int, float)) for v in parsed):
        raise RramcError(f"sweep axis {name}: values {values.strip()!r} mix numbers and names")
    return name, parsed


def grid_targets(base: Target, axes: dict[str, Sequence[Any]]) -> list[tuple[dict[str, Any], Target]]:
    """Every grid point with its validated target; an impossible value fails before any work."""
    device_fields = set(base.device.to_mapping()) - {"model"}
    for name in axes:
        section, _, key = name.partition(".")
        if section == "device" and key != "model" and key not in device_fields:
            shortcut = next((f"--{s.replace('_', '-')} " for s, full in AXIS_SHORTCUTS.items() if full == name), "")
            raise TargetError(f"sweep axis {shortcut or ''}{name}: target {base.name}'s device model "
                              f"'{base.device.to_mapping().get('model')}' has no field {key} (its fields: "
                              f"{', '.join(sorted(device_fields)) or 'none'}); sweep it on a target whose device has it")
    points = []
    for combo in itertools.product(*axes.values()):
        point = dict(zip(axes, combo))
        changes: dict[str, dict[str, Any]] = {}
        for name, value in point.items():
            if name == WIRE_RESISTANCE:
                changes.setdefault("wires", {}).update(word_line_resistance=value, bit_line_resistance=value)
                continue
            section, _, key = name.partition(".")
            if section not in ("device", "conductance", "crossbar", "wires", "nonidealities"):
                raise TargetError(f"sweep axis {name}: unknown section '{section}'; use device, conductance, crossbar, wires "
                                  "or nonidealities")
            changes.setdefault(section, {})[key] = value
        if "wires" in changes and "model" not in changes["wires"] and base.wires.model == "ideal":
            changes["wires"]["model"] = "resistive"  # resistance on a target with ideal wires: give it resistive ones
        try:
            points.append((point, _grid_target(base, changes)))
        except TargetError as exc:
            raise TargetError(f"sweep grid point {point} is impossible: {exc}") from None
    return points


def _grid_target(base: Target, changes: dict[str, dict[str, Any]]) -> Target:
    """A point that changes the cell's I-V (a device field or the read voltage) but not the window
    keeps the base's largest read current: g_min and g_max are scaled (``with_read_current``).
    Otherwise a k = 70 variant of rram_a would carry 43 times its current and fail its compliance;
    with ideal wires the scale changes no accuracy, with wire resistance it keeps IR drop comparable."""
    from rramc.hardware.currents import with_read_current

    changes_iv = "device" in changes or "read_voltage" in changes.get("crossbar", {})
    if changes_iv and not {"g_min", "g_max"} & set(changes.get("conductance", {})):
        return with_read_current(base, **changes)
    return base.with_changes(**changes)


@dataclass
class SweepData:
    """What every grid point reads: the model, the data and the options (sent once per worker)."""

    model: Any
    calibration: Dataset
    train: Dataset
    test: Dataset
    options: dict[str, Any]


def sweep_point(shared: SweepData, item: tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]) -> dict[str, Any]:
    """One grid point, as a task an executor runs anywhere: compile ``shared.model`` for the point's
    target by each method, run it on the test set, and return the row."""
    from rramc.driver import compile as compile_model

    import torch

    point, target_mapping, methods = item
    options = shared.options
    spec = Target.from_mapping(target_mapping, f"sweep point {point}")
    row: dict[str, Any] = dict(point)
    threads = torch.get_num_threads()
    if options["threads"]:  # CPU sums are reduced in another order with another thread count: fix it for equal rows
        torch.set_num_threads(options["threads"])
    try:
        for method in methods:
            exe = compile_model(shared.model, spec, shared.calibration.images[:2], calibration_data=shared.calibration,
                                training_data=shared.train, pipeline=_pipeline(method, options), seed=options["seed"])
            report = exe.run(shared.test, device=options["device"])
            row.setdefault("float", report.float_accuracy)
            row[method] = report.chip_accuracy
            cost = report.costs.get("energy", {})
            for key in COST_COLUMNS:
                if key in cost.get("per_inference", {}):
                    row[f"{method}_{key}"] = cost["per_inference"][key]
            if "layers" in cost:  # in sweep.json (the CSV keeps to one value per cell)
                row[f"{method}_layers"] = {layer: {key: values[key] for key in COST_COLUMNS}
                                           for layer, values in cost["layers"].items()}
    finally:
        torch.set_num_threads(threads)
    return row


def _pipeline(method: str, options: dict[str, Any]) -> Any:
    from rramc.pipeline import named_pipeline

    if method == "naive":
        return "naive"
    if method == "naive_least_squares":
        return "least_squares"
    training = {k: options[k] for k in ("epochs", "optimizer", "batch_size", "seed", "device")}
    if options["lr"] is not None:
        training["lr"] = options["lr"]
    return named_pipeline("reconstruct", reconstruct=training)


BASELINE = "float_retrained"
"""The key of the fair baseline's task: the float network reconstructed for ``ideal``."""


class SweepLog:
    """``sweep.jsonl``: the sweep's description, then one line per finished task, appended and flushed
    at once, so that a killed sweep loses no finished point and ``--resume`` skips them.

    A task's key hashes what decides its result: the model, the point's target, the options and
    the seed. The first line holds the sweep's description; resuming a log of another model,
    base target, grid or options is refused, naming what differs.
    """

    def __init__(self, path: Path, description: dict[str, Any]) -> None:
        self.path, self.description = path, description

    def open(self, resume: bool) -> dict[str, dict[str, Any]]:
        """The finished rows by key (empty for a new log); a partial last line (a killed write) is dropped."""
        if not self.path.exists():
            self._write_lines([{"sweep": self.description}], "w")
            return {}
        if not resume:
            raise RramcError(f"{self.path} holds an earlier sweep: pass --resume to continue it (its finished points are "
                             "kept), or choose another --output")
        lines = self.path.read_bytes().split(b"\n")
        entries = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except ValueError:
                if number == len(lines) or (number == len(lines) - 1 and not lines[-1].strip()):
                    break  # the last line, cut by a kill: that point runs again
                raise RramcError(f"{self.path}, line {number}: not a sweep log line; --resume needs the file rramc sweep "
                                 "wrote") from None
        if not entries or not isinstance(entries[0], dict) or not isinstance(entries[0].get("sweep"), dict):
            raise RramcError(f"{self.path}: not a sweep log (its first line does not describe a sweep)")
        theirs = entries[0]["sweep"]
        differ = [name for name in self.description if theirs.get(name) != self.description[name]]
        if differ:
            raise RramcError(f"--resume: {self.path} is a sweep of another {', '.join(differ)} (it has "
                             f"{'; '.join(f'{n} = {theirs.get(n)}' for n in differ)}); choose another --output for this one")
        rows = {e["key"]: e["row"] for e in entries[1:] if isinstance(e, dict) and "key" in e and "row" in e}
        complete = b"\n".join(json.dumps(e, sort_keys=True).encode() for e in entries) + b"\n"
        write_atomically(self.path, complete)  # drop a cut last line before appending after it (a kill now loses nothing)
        return rows

    def append(self, key: str, row: dict[str, Any]) -> None:
        self._write_lines([{"key": key, "row": row}], "a")

    def _write_lines(self, entries: list[dict[str, Any]], mode: str) -> None:
        with open(self.path, mode, encoding="utf-8") as file:
            file.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
            file.flush()
            os.fsync(file.fileno())


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_sweep(
    model: Any,
    target: Target | str,
    train: Dataset,
    test: Dataset,
    axes: dict[str, Sequence[Any]],
    *,
    epochs: int = 3,
    optimizer: str = "adam",
    lr: float | None = None,
    batch_size: int = 128,
    seed: int = 0,
    calibration_samples: int = 512,
    reconstruct: bool = True,
    least_squares: bool = True,
    executor: Executor | None = None,
    log: Path | None = None,
    resume: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    on_event: Callable[[str, str], None] | None = None,
    on_row: Callable[[str, dict[str, Any] | None, str | None], None] | None = None,
) -> SweepResult:
    """Compile and evaluate ``model`` (a :class:`~rramc.ir.Graph`) at every grid point: naive
    (full-scale and least-squares calibration) and reconstructed from the same float network.

    Every point is one task of ``executor`` (default: here, one after another). Each row has the
    point, ``float`` (the network as given), each method's chip accuracy and, with
    ``reconstruct``, ``float_retrained``: the float network trained the same extra epochs (one
    more task). With ``log`` (``sweep.jsonl``) every finished task is appended at once and
    ``resume`` skips those already there. ``on_row(key, row, error)`` is called as each task ends;
    a failed task leaves its row out (``result.failures``) and the others run on.

    ``threads``: torch's CPU threads per task (default: what the executor gives, all cores here or
    ``cores / jobs`` per process). The rows are bit-identical under every executor when it is the
    same: sums reduced by another number of threads round differently, and a network retrained from
    them drifts apart.
    """
    from rramc.executors import LocalExecutor

    base = load_target(target)
    points = grid_targets(base, axes)
    calibration = train.shuffled(seed).take(calibration_samples)
    methods = ("naive", *(["naive_least_squares"] if least_squares else []), *(["reconstructed"] if reconstruct else []))
    if threads is not None and threads < 1:
        raise RramcError(f"--threads {threads}: need at least 1")
    options = {"epochs": epochs, "optimizer": optimizer, "lr": lr, "batch_size": batch_size, "seed": seed, "device": device,
               "threads": threads}
    model_hash = _digest(model.to_text()) if hasattr(model, "to_text") else _digest(repr(model))
    decisive = {**{k: v for k, v in options.items() if k not in ("device", "threads")}, "methods": list(methods), "dataset": test.name,
                "train_samples": len(train), "test_samples": len(test), "calibration_samples": calibration_samples}
    tasks: list[tuple[str, tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]]] = []
    if reconstruct:
        ideal = load_target("ideal").to_mapping()
        tasks.append((_digest([model_hash, ideal, decisive, BASELINE]), ({}, ideal, ("reconstructed",))))
    keys = []
    for point, spec in points:
        mapping = spec.to_mapping()
        key = _digest([model_hash, mapping, decisive, point])
        keys.append(key)
        tasks.append((key, (point, mapping, methods)))
    result = SweepResult({k: list(v) for k, v in axes.items()}, meta={"target": base.name, "dataset": test.name, "epochs": epochs,
                                                                        "optimizer": optimizer, "lr": lr,
                                                                        "title": f"{test.name} on {base.name}"})
    done: dict[str, dict[str, Any]] = {}
    sweep_log = None
    if log is not None:
        sweep_log = SweepLog(log, {"model": model_hash, "target": _digest(base.to_mapping()), "axes": result.axes, "options": decisive})
        done = sweep_log.open(resume)
    todo = [(key, item) for key, item in tasks if key not in done]
    result.meta["resumed"] = len(tasks) - len(todo)
    shared = SweepData(model, calibration, train, test, options)
    runner = executor or LocalExecutor()
    for outcome in runner.run(sweep_point, shared, todo, on_event):
        if outcome.ok:
            done[outcome.key] = outcome.value
            if sweep_log is not None:
                sweep_log.append(outcome.key, outcome.value)
        else:
            result.failures[outcome.key] = outcome.error or "failed"
        if on_row is not None:
            on_row(outcome.key, outcome.value, outcome.error)
    retrained = done.get(tasks[0][0], {}).get("float") if reconstruct else None
    for (point, _), key in zip(points, keys):
        if key not in done:
            continue
        row = dict(done[key])
        if retrained is not None:  # next to float: the fair baseline of the reconstruction
            row = {k: row[k] for k in (*point, "float")} | {BASELINE: retrained} | {k: v for k, v in row.items() if k not in point and k != "float"}
        result.rows.append(row)
    result.labels = {key: (point if key in keys else "float trained the same extra epochs (reconstructed for ideal)")
                     for key, (point, _, _) in tasks}
    return result
