"""What a run on the simulated chip reports: accuracy, float vs chip, and where the error comes from."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rramc.errors import RramcError


@dataclass
class LayerReport:
    """Error of one crossbar layer's output against the float network, over the data set.

    ``local_error``: the layer alone, fed the float network's activations — what this layer's
    mapping costs. ``cumulative_error``: the chip's activations against the float network's —
    what has compounded by this layer. Both are ``‖chip - float‖ / ‖float‖``.
    """

    name: str
    source: str
    kind: str
    matrix: tuple[int, int]
    tiles: int
    local_error: float
    cumulative_error: float


@dataclass
class Report:
    """The result of :meth:`Executable.run`."""

    dataset: str
    split: str
    samples: int
    target: str
    seed: int
    float_accuracy: float
    chip_accuracy: float
    agreement: float
    layers: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0
    target_description: str = ""
    reference: str = "float (PyTorch)"
    """What the float accuracy is of: the PyTorch network, or for a reconstructed network its
    device-aware model (its I-V with continuous conductances and ideal converters)."""
    evaluation: str = ""
    """How the runtime computed the column currents (and how far from exact)."""
    reference_weights: str = ""
    """How the float reference's weights were held: as compiled, or as the executable file kept them (12-bit fixed point)."""
    original_accuracy: float | None = None
    """For a reconstructed network: the accuracy of the float network as it was given, before retraining."""
    output_correlation: float = 1.0
    """Correlation of the chip's outputs with the float network's across the data set's samples (each
    output centred on its mean: an offset both share does not count)."""
    clipped: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per layer that clipped inputs: negative values it could not apply, values above full scale, inputs seen."""
    costs: dict[str, Any] = field(default_factory=dict)
    """Each cost observer's summary, per inference."""
    warnings: list[str] = field(default_factory=list)
    """What in this result should not be trusted without a look."""

    def to_dict(self) -> dict[str, Any]:
        """Everything but the wall time: the same run writes the same JSON (``seconds`` is printed only)."""
        data = asdict(self)
        del data["seconds"]
        return data

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from rramc.runtime.file_format import write_atomically

            try:
                write_atomically(Path(path), (text + "\n").encode())
            except OSError as exc:
                raise RramcError(f"cannot write the report to {path}: {exc.strerror or exc}") from None
        return text

    def render(self, console: Console | None = None) -> None:
        console = console or Console()
        console.print(f"[bold]{self.dataset}[/] ({self.split}, {self.samples} samples) on [bold]{self.target}[/], chip seed {self.seed}")
        if self.target_description:
            console.print(f"  {self.target_description}", style="dim", highlight=False)
        if self.evaluation:
            console.print(f"  columns: {self.evaluation}", style="dim", highlight=False)
        if self.reference_weights:
            console.print(f"  reference weights: {self.reference_weights}", style="dim", highlight=False)
        lines = [(f"{self.reference} accuracy", f"{100 * self.float_accuracy:6.2f} %"),
                 ("simulated chip accuracy", f"{100 * self.chip_accuracy:6.2f} %   "
                                             f"({100 * (self.chip_accuracy - self.float_accuracy):+.2f} points)"),
                 ("same prediction as float", f"{100 * self.agreement:6.2f} %")]
        if self.original_accuracy is not None:
            lines.insert(0, ("float (PyTorch) as given, before reconstruction", f"{100 * self.original_accuracy:6.2f} %"))
        width = max(len(label) for label, _ in lines)
        for label, value in lines:
            console.print(f"  {label:{width}s} : {value}", highlight=False)
        table = Table(title="Where the error comes from (relative error of each crossbar layer's output)", title_justify="left")
        labels = layer_labels(self.layers, label_width(console, ERROR_COLUMNS))
        for column in ("layer", "op", "matrix", "tiles", "this layer alone", "accumulated"):  # too narrow a terminal folds, never cuts
            table.add_column(column, justify="left" if column in ("layer", "op") else "right", overflow="fold")
        for layer in self.layers:
            table.add_row(labels[layer.name], layer.kind, f"{layer.matrix[0]}×{layer.matrix[1]}", str(layer.tiles),
                          f"{100 * layer.local_error:.2f} %", f"{100 * layer.cumulative_error:.2f} %")
        console.print(table)
        operations = self.costs.get("operations", {}).get("per_inference")
        if operations:
            console.print(f"  per inference: {operations['reads']:,.0f} array reads, {operations['dac_conversions']:,.0f} DAC and "
                          f"{operations['adc_conversions']:,.0f} ADC conversions, {operations['macs']:,.0f} cell MACs", style="dim")
        energy = self.costs.get("energy")
        if energy and energy.get("layers"):
            _render_energy(console, energy)
        for warning in self.warnings:
            console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
        rate = self.samples / self.seconds if self.seconds else float("nan")
        console.print(f"  {self.seconds:.2f} s ({rate:,.0f} samples/s, float and chip passes together)", style="dim")


ERROR_COLUMNS = 70
"""Characters the error table's other columns and borders take (op, matrix, tiles, two errors)."""
ENERGY_COLUMNS = 96
"""The same for the cost table (energy, cells, DAC, ADC, digital, latency, arrays, area)."""
ELLIPSIS = "…"


def label_width(console: Console, others: int) -> int:
    """Characters left for layer names beside ``others`` on ``console``; never fewer than 16: in a
    narrower terminal a label folds over two lines (whole, as every cell of these tables)."""
    return max(16, console.width - others)


def layer_labels(layers: Sequence[LayerReport], width: int) -> dict[str, str]:
    """A label per layer (by node name) that tells it apart: its source, shortened by :func:`short_names`; two layers
    of one source (a module called twice) are told apart by their node names."""
    sources = [layer.source for layer in layers]
    names = [layer.source if sources.count(layer.source) == 1 else layer.name for layer in layers]
    short = short_names(names, width)
    return {layer.name: short[name] for layer, name in zip(layers, names)}


def short_names(names: Sequence[str], width: int) -> dict[str, str]:
    """A label for each of ``names``: the name when it fits ``width`` characters, else ``…`` and the longest
    tail of whole components (``…layer1.0.conv1``) that fits and ends no other name. When every such tail
    ends another name too, the shortest tail that does not, however long; at worst the whole name."""
    labels = {}
    for name in names:
        if len(name) <= width:
            labels[name] = name
            continue
        others = [other for other in names if other != name]
        tails = [name[i + 1:] for i, c in enumerate(name) if c in "./"]  # longest first
        unique = [tail for tail in tails if not any(other.endswith(tail) for other in others)]
        fitting = [tail for tail in unique if len(tail) < width]
        labels[name] = ELLIPSIS + fitting[0] if fitting else ELLIPSIS + unique[-1] if unique else name
    return labels


def _render_energy(console: Console, energy: dict[str, Any]) -> None:
    """The ``energy`` cost observer's summary: a row per crossbar layer and their total."""
    from rramc.hardware.cost import format_quantity as q

    table = Table(title="Cost per inference (formulas: README, 'Cost model')", title_justify="left")
    labels = short_names(list(energy["layers"]), label_width(console, ENERGY_COLUMNS))
    for column in ("layer", "energy", "cells", "DAC", "ADC", "digital", "latency", "arrays", "area"):
        table.add_column(column, justify="left" if column == "layer" else "right", overflow="fold")

    def add(name: str, row: dict[str, float], **style: Any) -> None:
        table.add_row(name, q(row["energy_J"], "J"), q(row["cell_energy_J"], "J"), q(row["dac_energy_J"], "J"),
                      q(row["adc_energy_J"], "J"), q(row["digital_energy_J"], "J"), q(row["latency_s"], "s"),
                      f"{row['arrays']:,.0f}", f"{row['area_mm2']:.3g} mm²", **style)

    for name, row in energy["layers"].items():
        add(labels[name], row)
    add("total", energy["per_inference"], style="bold")
    console.print(table)
    for note in energy.get("notes", []):
        console.print(f"  cost: {note}", style="dim", highlight=False)
