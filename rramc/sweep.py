"""Accuracy of the conventional mapping vs the reconstructed network across a grid of chip settings.

    result = rramc.sweep.run_sweep(model, "rram_a", train, test, axes={"device.nonlinearity_k": [2.5, 7.5, 20]})
    result.write(directory)   # sweep.csv, sweep.json and one PNG per axis
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rramc.datasets import Dataset
from rramc.errors import RramcError, TargetError
from rramc.hardware.target import Target, load_target
from rramc.runtime.file_format import write_atomically

WIRE_RESISTANCE = "crossbar.wire_resistance"
"""An axis that sets both wires.word_line_resistance and wires.bit_line_resistance [Ω per segment]."""
AXIS_SHORTCUTS = {"k": "device.nonlinearity_k", "b": "device.b", "read_voltage": "crossbar.read_voltage", "adc_bits": "crossbar.adc_bits",
                  "wire_resistance": WIRE_RESISTANCE}
METHODS = ("naive", "naive_least_squares", "reconstructed")
LABELS = {"float": "float", "float_retrained": "float, trained the same extra epochs", "naive": "naive",
          "naive_least_squares": "naive least squares", "reconstructed": "reconstructed"}
"""Legend labels. ``float_retrained`` is the fair baseline of ``reconstructed``: the float network trained
the same extra epochs (reconstructed for the ideal target), so that extra training is not credited to the method."""


@dataclass
class SweepResult:
    """One row per grid point: the point, the float accuracy and each method's chip accuracy."""

    axes: dict[str, list[Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(self.rows[0]) if self.rows else list(self.axes))
        writer.writeheader()
        writer.writerows(self.rows)
        return out.getvalue()

    def to_json(self) -> str:
        return json.dumps({"axes": self.axes, "meta": self.meta, "rows": self.rows}, indent=2)

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

    def write(self, directory: Path) -> list[Path]:
        """Write sweep.csv, sweep.json and sweep_<axis>.png (each atomically)."""
        directory.mkdir(parents=True, exist_ok=True)
        files = {"sweep.csv": self.to_csv().encode(), "sweep.json": self.to_json().encode()}
        for axis in self.axes:
            files[f"sweep_{axis.split('.')[-1]}.png"] = self.plot(axis)
        for name, data in files.items():
            write_atomically(directory / name, data)
        return [directory / name for name in files]


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """``section.field=v1,v2,...`` (or a shortcut: k, b, read_voltage, adc_bits) → (field, values)."""
    name, sep, values = text.partition("=")
    name = AXIS_SHORTCUTS.get(name.strip(), name.strip())
    if not sep or "." not in name or not values.strip():
        raise RramcError(f"sweep axis {text!r}: expected section.field=v1,v2,... (e.g. device.nonlinearity_k=2.5,7.5,20)")
    parsed: list[Any] = []
    for item in values.split(","):
        item = item.strip()
        try:
            parsed.append(None if item.lower() in ("null", "none") else int(item) if item.lstrip("-").isdigit() else float(item))
        except ValueError:
            raise RramcError(f"sweep axis {name}: {item!r} is not a number") from None
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
    on_step: Callable[[str], None] | None = None,
) -> SweepResult:
    """Compile and evaluate ``model`` at every grid point: naive (full-scale and least-squares
    calibration) and reconstructed from the same float network. ``on_step(text)`` is called
    after each of the ``len(points) × len(methods)`` compilations (and the fair baseline's, with ``reconstruct``).

    Each row has the point, ``float`` (the network as given), each method's chip accuracy and, with
    ``reconstruct``, ``float_retrained``: the float network trained the same extra epochs.
    """
    from rramc.driver import compile as compile_model
    from rramc.pipeline import named_pipeline

    base = load_target(target)
    points = grid_targets(base, axes)
    calibration = train.shuffled(seed).take(calibration_samples)
    methods: dict[str, Any] = {"naive": "naive"}
    if least_squares:
        methods["naive_least_squares"] = "least_squares"
    if reconstruct:
        options: dict[str, Any] = {"epochs": epochs, "optimizer": optimizer, "batch_size": batch_size, "seed": seed}
        if lr is not None:
            options["lr"] = lr
        methods["reconstructed"] = named_pipeline("reconstruct", reconstruct=options)
    result = SweepResult({k: list(v) for k, v in axes.items()}, meta={"target": base.name, "dataset": test.name, "epochs": epochs,
                                                                        "optimizer": optimizer, "lr": lr,
                                                                        "title": f"{test.name} on {base.name}"})
    retrained = None
    if reconstruct:
        fair = compile_model(model, load_target("ideal"), calibration.images[:2], calibration_data=calibration,
                             training_data=train, pipeline=methods["reconstructed"], seed=seed)
        retrained = fair.run(test).float_accuracy
        if on_step is not None:
            on_step(f"float trained {epochs} more epochs (reconstructed for ideal): {100 * retrained:.2f} %")
    for point, spec in points:
        row: dict[str, Any] = dict(point)
        for method, pipeline in methods.items():
            exe = compile_model(model, spec, calibration.images[:2], calibration_data=calibration, training_data=train,
                                pipeline=pipeline, seed=seed)
            report = exe.run(test)
            row.setdefault("float", report.float_accuracy)
            if retrained is not None:
                row.setdefault("float_retrained", retrained)
            row[method] = report.chip_accuracy
            if on_step is not None:
                on_step(f"{point} {method}: {100 * report.chip_accuracy:.2f} %")
        result.rows.append(row)
    return result
