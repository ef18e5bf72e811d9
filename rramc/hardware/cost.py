"""The cost model: energy, latency and area of a network on the chip, per inference.

The per-unit costs are the target's ``cost`` section (:class:`~rramc.hardware.target.CostSpec`,
defaults from ISAAC); the README's "Cost model" section writes every formula out. In short, per
crossbar layer:

* **cells** ``Σ_reads t · Σ_vectors Σ_i V_i·d_i · Σ_j I(V_i, G_ij)`` over every physical cell ``j``
  on word line ``i`` (both cells of a differential pair, a shared reference column once), ``t`` the
  read's duration and ``d_i`` the fraction of it the line is driven;
* **DAC** one conversion per word line of every array per read, ``dac_energy_per_bit · bits`` (the
  read's own levels when it lists them: one bit for 0 V or the read voltage);
* **ADC** one conversion per tile column (an output, or one bit slice of it) per read,
  ``adc_energy_per_step · 2**adc_bits``;
* **digital** one operation per ADC output (shift-and-add) and two per layer output and vector
  (the neuron's gain and offset), ``digital_energy_per_op`` each;
* **latency** ``Σ_reads max(t, ⌈tile columns / adcs_per_array⌉ / adc_rate)`` per vector: a
  sample-and-hold lets an array's ADCs convert one read while the next one is applied, so a read
  costs the longer of the two; a convolution's vectors (output positions) follow one another on
  one copy of the weights, the tiles of a layer work in parallel, layers one after another;
* **area** per array ``rows·cols·cell_area + adcs_per_array·adc_area + rows·dac_area +
  digital_area_per_array``, times the layer's arrays (one per tile).

An ideal converter (``dac_bits``/``adc_bits`` null) is no circuit: it costs nothing. Wires are
costed as ideal (the currents a cell carries at its word line's voltage), read noise at its zero
mean, and what lies outside the arrays (buffers, interconnect, pooling) not at all.

:class:`ChipCost` (the ``energy`` cost observer) measures a run; :func:`estimate` gives the part
that needs no data (area and latency at full-scale inputs). Both use the functions below.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rramc.errors import RramcError
from rramc.hardware.column_solver import PER_CELL_CHUNK_ELEMENTS
from rramc.hardware.expansion import Expansion
from rramc.hardware.observers import CostObserver
from rramc.hardware.weight_encoding import WEIGHT_ENCODINGS
from rramc.ir import CrossbarConv2d, CrossbarOp

if TYPE_CHECKING:
    from rramc.hardware.input_encoding import InputEncoding, Read
    from rramc.hardware.layer import CrossbarLayer
    from rramc.hardware.target import CostSpec, Target
    from rramc.ir import Graph, Node

NEURON_OPS = 2
"""Digital operations per layer output and vector after the ADCs' sum: the neuron's gain and offset."""

ENERGY_PARTS = ("cell_energy_J", "dac_energy_J", "adc_energy_J", "digital_energy_J")


# --- the formulas --------------------------------------------------------------------------------


def adc_conversion_energy(cost: CostSpec, adc_bits: int | None) -> float:
    """One ADC conversion [J]: ``adc_energy_per_step · 2**adc_bits``; 0 for an ideal ADC."""
    return 0.0 if adc_bits is None else cost.adc_energy_per_step * (1 << adc_bits)


def read_dac_bits(read: Read, dac_bits: int | None) -> int:
    """The bits of the DAC that drives ``read``: of its levels when it lists them (a bit-serial or pulse
    read's 0 V and read voltage: 1 bit), else the layer's ``dac_bits``; 0 for an ideal DAC."""
    if read.levels is not None:
        return max(math.ceil(math.log2(int(read.levels.numel()))), 1)
    return 0 if dac_bits is None else dac_bits


def dac_conversion_energy(cost: CostSpec, bits: int) -> float:
    """One word line's DAC conversion [J]: ``dac_energy_per_bit · bits``."""
    return cost.dac_energy_per_bit * bits


def read_seconds(read: Read, target: Target) -> float:
    """How long ``read`` lasts [s]: its own window, else the target's ``crossbar.read_time``."""
    return target.crossbar.read_time if read.seconds is None else float(read.seconds)


def read_cycle(seconds: float, conversion: float) -> float:
    """The time one read occupies its arrays [s]: a sample-and-hold pipelines the ADCs' conversion of a
    read with the next read, so the longer of the two sets the pace."""
    return max(seconds, conversion)


@dataclass(frozen=True)
class Layout:
    """What a layer's arrays are, independent of data: their count and area, and how long their ADCs
    take to convert one read."""

    arrays: int
    array_area_mm2: float
    conversion_seconds: float  # the widest tile's columns through its adcs_per_array ADCs, in turn
    full_scale_reads: tuple[float, ...]  # the duration [s] of every conversion's reads of one full-scale vector, all phases

    @property
    def area_mm2(self) -> float:
        return self.arrays * self.array_area_mm2

    def vector_seconds(self) -> float:
        """The latency of one input vector at full scale [s]."""
        return sum(read_cycle(seconds, self.conversion_seconds) for seconds in self.full_scale_reads)


def layout(op: CrossbarOp, target: Target, inputs: InputEncoding) -> Layout:
    """The arrays of a tiled crossbar ``op`` on ``target``, read through the input encoding ``inputs``."""
    assert op.row_splits is not None and op.col_splits is not None
    cost, spec = target.cost, target.crossbar
    signed = op.input_range is not None and op.input_range.signed
    reads = inputs.reads(torch.ones(1, dtype=torch.float64), 1.0, op.dac_bits) * (2 if signed else 1)  # one read list per phase
    has_dac = any(read_dac_bits(read, op.dac_bits) for read in reads)
    area = (spec.rows * spec.cols * cost.cell_area + (cost.adcs_per_array * cost.adc_area if op.adc_bits is not None else 0.0)
            + (spec.rows * cost.dac_area if has_dac else 0.0) + cost.digital_area_per_array)
    widest = max(b - a for a, b in zip(op.col_splits[:-1], op.col_splits[1:]))
    conversion = 0.0 if op.adc_bits is None else math.ceil(widest / cost.adcs_per_array) / cost.adc_rate
    return Layout(len(op.tiles()), area, conversion, tuple(conversion_groups(reads, target)))


def conversion_groups(reads: Sequence[Read], target: Target) -> list[float]:
    """The duration [s] of each group of reads converted once: reads that accumulate join the next one."""
    groups, pending = [], 0.0
    for read in reads:
        pending += read_seconds(read, target)
        if not read.accumulates:
            groups.append(pending)
            pending = 0.0
    return groups


def vectors_per_inference(node: Node) -> int:
    """Input vectors a layer reads per sample: a convolution's output positions, a linear layer's tokens (one for a vector)."""
    return math.prod(node.shape[1:]) if isinstance(node.op, CrossbarConv2d) else math.prod(node.shape[:-1])


def ideal_converter_notes(ops: Sequence[CrossbarOp]) -> list[str]:
    """What the totals leave out because a layer's converters are ideal."""
    notes = []
    if any(op.dac_bits is None for op in ops):
        notes.append("ideal DACs (dac_bits null) cost nothing: no energy, area or time")
    if any(op.adc_bits is None for op in ops):
        notes.append("ideal ADCs (adc_bits null) cost nothing: no energy, area or conversion time")
    return notes


def estimate(graph: Graph, target: Target) -> dict[str, Any]:
    """Area and latency of every crossbar layer of a compiled ``graph`` on ``target`` without data, each
    vector read at full scale: ``{"per_inference": totals, "layers": {node name: {...}}, "notes": [...]}``
    (the keys of :class:`ChipCost`'s summary that need no data). For an executable:
    ``estimate(exe.graph, exe.target)``."""
    from rramc.hardware.layer import encodings

    layers: dict[str, dict[str, float]] = {}
    ops = []
    for node in graph.nodes_of(CrossbarOp):
        op = node.op
        assert isinstance(op, CrossbarOp)
        ops.append(op)
        if not op.is_tiled:
            raise RramcError(f"%{node.name} ({node.source}) is not tiled: its arrays, and so their cost, are not known yet")
        _, inputs = encodings(op, target, f"%{node.name} ({node.source})")
        arrays = layout(op, target, inputs)
        vectors = vectors_per_inference(node)
        owned = op.shares is None  # a layer that reads another's arrays adds reads, not arrays
        layers[node.name] = {"arrays": arrays.arrays if owned else 0, "area_mm2": arrays.area_mm2 if owned else 0.0, "vectors": vectors,
                               "reads_per_vector": len(arrays.full_scale_reads), "latency_s": vectors * arrays.vector_seconds()}
    totals = {key: sum(row[key] for row in layers.values()) for key in ("arrays", "area_mm2", "latency_s")}
    return {"per_inference": totals, "layers": layers, "notes": ideal_converter_notes(ops)}


# --- cell energy ---------------------------------------------------------------------------------


def physical_cells(layer: CrossbarLayer) -> Tensor:
    """Every cell a layer's word lines drive, ``[inputs, cells per word line]`` [S], each counted once.

    ``g_neg`` holds, for each output, the cell its current is subtracted against: its own (a
    differential pair: a second bit line per output) or one its tile's outputs share (a reference
    column: fewer bit lines than two per output, repeated in every output's column). The weight
    encoding's bit lines say how many physical columns ``g_neg`` stands for in each tile; the first
    ones of the tile are taken.
    """
    cells = layer.cells
    if cells.terms is not None or 0 in cells.pairs.shape:
        raise RramcError(f"{layer.source}: the cell energy needs the programmed conductances (a chip's layer, not a training step's)")
    encoding = WEIGHT_ENCODINGS.get(layer.op.weight_encoding)(layer.target)
    g_pos, g_neg = cells.pairs.dense()
    parts = [g_pos.detach()]
    for a, b in layer.grid.col_blocks:
        shared = min(encoding.bit_lines(b - a) - (b - a), b - a)
        parts.append(g_neg.detach()[:, a : a + shared])
    return torch.cat(parts, dim=1).to(torch.float64)


def row_sums(expansion: Expansion, g: Tensor) -> Tensor:
    """``Σ_j ψ_k(G_ij)`` over each word line's cells: ``[inputs, terms]``, in row chunks (ψ has a
    value per cell and term)."""
    chunk = max(1, PER_CELL_CHUNK_ELEMENTS // max(1, g.shape[1] * expansion.terms))
    return torch.cat([expansion.conductance(g[i : i + chunk]).sum(1) for i in range(0, g.shape[0], chunk)])


def cell_power(layer: CrossbarLayer, read: Read, expansion: Expansion, rows: Tensor, cells: Tensor) -> float:
    """``Σ_vectors Σ_i V_i·d_i·Σ_j I(V_i, G_ij)`` [W summed over the read's vectors]: through the
    expansion, ``Σ_k (V_i·d_i·φ_k(V_i)) · rows_ik`` (a matmul, or for a convolution one convolution
    with a single output channel); cell by cell where the voltages lie beyond it."""
    v = read.voltages.detach()
    weight = v if read.durations is None else v * read.durations.detach()
    if not expansion.covers(v):
        return _cell_power_exact(layer, v, weight, cells)
    drive = expansion.voltage(v) * weight[..., None]  # [..., terms]; a word line at 0 V carries nothing
    rows = rows.to(drive)
    conv = layer.lowering.conv
    if conv is None:
        return float(torch.matmul(drive.reshape(drive.shape[0], -1), rows.reshape(-1)).double().sum())
    (kh, kw), stride, padding, dilation = conv
    batch, channels, terms = v.shape[0], v.shape[1], drive.shape[-1]
    x = drive.permute(0, 1, 4, 2, 3).reshape(batch, channels * terms, *v.shape[2:])
    # word line i is channel i // (kh·kw) at kernel offset i % (kh·kw) (see lowering.py)
    w = rows.reshape(channels, kh, kw, terms).permute(0, 3, 1, 2).reshape(1, channels * terms, kh, kw)
    return float(F.conv2d(x, w, None, stride, padding, dilation).double().sum())


def _cell_power_exact(layer: CrossbarLayer, v: Tensor, weight: Tensor, cells: Tensor) -> float:
    lowering, device = layer.lowering, layer.target.device
    vectors, weights = lowering.vectors(v).double(), lowering.vectors(weight).double()
    chunk = max(1, PER_CELL_CHUNK_ELEMENTS // max(1, cells.numel()))
    cells = cells.to(vectors.device)
    total = 0.0
    for start in range(0, vectors.shape[0], chunk):
        current = device.current(vectors[start : start + chunk, :, None], cells).sum(-1)
        total += float((weights[start : start + chunk] * current).sum())
    return total


# --- the observer --------------------------------------------------------------------------------


class _LayerTally:
    def __init__(self, layer: CrossbarLayer, owner: _LayerTally | None = None) -> None:
        """``owner``: the tally of the layer whose arrays (the same cells) this one reads, if counted already."""
        self.op, self.cost = layer.op, layer.target.cost
        self.columns = layer.cells.pairs.shape[1]  # one per output, or per output and bit slice
        self.layout = layout(layer.op, layer.target, layer.inputs)
        self.source_cells = layer.cells
        if owner is not None:
            self.cells, self.expansion, self.rows = owner.cells, owner.expansion, owner.rows
        else:
            self.cells = physical_cells(layer)
            self.expansion = layer.cells.expansion()
            self.rows = row_sums(self.expansion, self.cells)
        self.values: dict[str, float] = defaultdict(float)
        self.pending_seconds = 0.0  # reads accumulating into the next one's conversion


class ChipCost(CostObserver):
    """Energy, latency and area of every crossbar layer, per inference (see the module's formulas).

    Its summary: ``{"per_inference": totals, "layers": {node name: row}, "notes": [...]}``, each row
    with ``energy_J`` (the sum of ``cell_energy_J``, ``dac_energy_J``, ``adc_energy_J``,
    ``digital_energy_J``), ``latency_s``, ``area_mm2`` and ``arrays`` (the chip's, not per
    inference), and the counts they come from: ``reads`` (array reads, one per vector and read of
    its encoding), ``dac_conversions``, ``adc_conversions``, ``digital_ops``. The totals are the
    sums of the rows. A layer that reads another's arrays (``shares``) has no arrays or area of its own.
    """

    name = "energy"

    def __init__(self) -> None:
        self.layers: dict[str, _LayerTally] = {}

    def on_read(self, layer: CrossbarLayer, read: Read, currents: Tensor) -> None:
        tally = self.layers.get(layer.name)
        if tally is None:
            owner = self.layers.get(layer.op.shares) if layer.op.shares is not None else None
            same_cells = owner is not None and owner.source_cells is layer.cells
            tally = self.layers[layer.name] = _LayerTally(layer, owner if same_cells else None)
        op, values, cost = layer.op, tally.values, tally.cost
        rows, columns = op.matrix_shape[0], tally.columns
        conversions = currents.numel()  # one per tile column and vector, whatever the lowering's layout
        vectors = conversions // (len(layer.grid.row_blocks) * columns)
        seconds = read_seconds(read, layer.target)
        values["cell_energy_J"] += seconds * cell_power(layer, read, tally.expansion, tally.rows, tally.cells)
        values["reads"] += vectors
        if read.accumulates:  # charge kept for the next read: one conversion (and one DAC setting) for the group
            tally.pending_seconds += seconds
            return
        seconds, tally.pending_seconds = seconds + tally.pending_seconds, 0.0
        dac_conversions = vectors * rows * len(layer.grid.col_blocks)  # each array has its own word-line DACs
        values["latency_s"] += vectors * read_cycle(seconds, tally.layout.conversion_seconds)
        values["dac_conversions"] += dac_conversions
        values["dac_energy_J"] += dac_conversions * dac_conversion_energy(cost, read_dac_bits(read, op.dac_bits))
        values["adc_conversions"] += conversions
        values["adc_energy_J"] += conversions * adc_conversion_energy(cost, op.adc_bits)
        values["digital_ops"] += conversions

    def on_node(self, node: Node, operands: list[Tensor], value: Tensor) -> None:
        tally = self.layers.get(node.name) if isinstance(node.op, CrossbarOp) else None
        if tally is not None:
            tally.values["digital_ops"] += NEURON_OPS * value.numel()

    def summary(self, samples: int) -> dict[str, Any]:
        if samples < 1:
            raise RramcError("the cost model needs at least one inference")
        layers = {}
        for name, tally in self.layers.items():
            row = {key: tally.values[key] / samples for key in
                   ("cell_energy_J", "dac_energy_J", "adc_energy_J", "reads", "dac_conversions", "adc_conversions", "digital_ops")}
            row["digital_energy_J"] = row["digital_ops"] * tally.cost.digital_energy_per_op
            row["energy_J"] = sum(row[key] for key in ENERGY_PARTS)
            row["latency_s"] = tally.values["latency_s"] / samples
            owned = tally.op.shares is None
            row["area_mm2"], row["arrays"] = (tally.layout.area_mm2, tally.layout.arrays) if owned else (0.0, 0)
            layers[name] = row
        keys = ("energy_J", *ENERGY_PARTS, "latency_s", "area_mm2", "arrays", "reads", "dac_conversions", "adc_conversions",
                "digital_ops")
        totals = {key: sum(row[key] for row in layers.values()) for key in keys}
        notes = ideal_converter_notes([tally.op for tally in self.layers.values()])
        return {"per_inference": totals, "layers": {n: {k: r[k] for k in keys} for n, r in layers.items()}, "notes": notes}


def format_quantity(value: float, unit: str) -> str:
    """``value`` with an SI prefix: ``1.23 nJ``, ``45.6 µs``."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g} {unit}"
    for factor, prefix in ((1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p"), (1e-15, "f")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"
