"""The compiled program: a lowered graph plus its target, runnable, savable, loadable."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rramc.errors import ClippedInputWarning, ExecutableFormatError, RramcError
from rramc.hardware.interpreter import Chip, FloatKernel, Interpreter
from rramc.hardware.observers import ClipCounter
from rramc.hardware.target import Target
from rramc.hardware.weight_encoding import WEIGHT_ENCODINGS
from rramc.ir import CrossbarOp, Graph, Input, Node, Output
from rramc.ir.cells import DensePairs
from rramc.runtime.file_format import REFERENCE_WEIGHTS, deserialize, serialize, write_atomically
from rramc.runtime.report import Report

if TYPE_CHECKING:
    from rramc.datasets import Dataset


class Executable:
    """A network compiled for one target.

    Call it on a batch to run the simulated chip, :meth:`reference` for the float network it was
    compiled from, :meth:`run` on a data set for the accuracy report. The programmed chip of each
    seed is built once and kept (:meth:`chip`); treat the graph as read-only.
    """

    def __init__(self, graph: Graph, target: Target, metadata: dict[str, Any] | None = None, *,
                 original: Graph | None = None, reference_weights: str | None = None) -> None:
        self.graph, self.target = graph, target
        self.original = original
        """The float network as given, when compiling changed it (``reconstruct`` retrains it); None otherwise."""
        if reference_weights is None:
            reference_weights = default_reference_weights(target)
        if reference_weights not in REFERENCE_WEIGHTS:
            raise RramcError(f"reference_weights {reference_weights!r}: expected one of {', '.join(REFERENCE_WEIGHTS)}")
        self.reference_weights = reference_weights
        """How :meth:`save` keeps the layers' float weights, the reference the chip is compared with: ``fixed12``
        (12-bit fixed point, see :data:`~rramc.runtime.file_format.REFERENCE_WEIGHTS`) or ``exact``; by default
        :func:`default_reference_weights`."""
        self._weights_held = "exact"  # how the weights in memory are: as compiled, or as the file loaded kept them
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.compile_seconds: float | None = None
        self.pass_seconds: dict[str, float] = {}
        """How long compiling took, in total and per pass (not saved: the file depends on its inputs only)."""
        self._chips: dict[tuple[int, str, torch.dtype], Chip] = {}
        self._warned_clipping = False

    def __repr__(self) -> str:
        layers = self.graph.nodes_of(CrossbarOp)
        return f"Executable({len(layers)} crossbar layers, {self.array_count()} arrays, target {self.target.name})"

    # --- running -------------------------------------------------------------------------------

    def chip(self, seed: int = 0, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Chip:
        """The chip instance ``seed`` (programming variation, stuck cells), programmed once and kept."""
        check_seed(seed)
        key = (int(seed), str(torch.device(device)), dtype)
        if key not in self._chips:
            self._chips[key] = Chip(self.graph, self.target, seed=seed, device=device, dtype=dtype)
        return self._chips[key]

    def __call__(self, x: Tensor, *, seed: int = 0) -> Tensor:
        """The simulated chip's outputs for a batch (chip instance and read noise drawn from ``seed``).

        Warns once (:class:`~rramc.errors.ClippedInputWarning`) when a layer had to clip inputs.
        """
        chip = self.chip(seed)
        clips = ClipCounter()
        with torch.no_grad():
            out = chip.interpreter([clips]).run(x)[0]
        clipped = clips.worth_a_warning()
        if clipped and not self._warned_clipping:
            self._warned_clipping = True
            lost = []
            for layer, (negative, over, total) in list(clipped.items())[:3]:
                what = [f"{negative} negative values of a layer compiled for unsigned inputs"] if negative else []
                what += [f"{over} values above its calibrated full scale"] if over else []
                lost.append(f"layer {layer}: {' and '.join(what)} (of {total})")
            warnings.warn(ClippedInputWarning(
                f"the chip clipped inputs: {'; '.join(lost)}. Declare the input range when compiling "
                "(input_range=(low, high)) or calibrate on representative data."), stacklevel=2)
        return out

    def reference(self, x: Tensor) -> Tensor:
        """The float network's outputs for a batch."""
        return Interpreter(self.graph, FloatKernel())(x)

    def run(self, dataset: Dataset, **options: Any) -> Report:
        """Evaluate on a :class:`~rramc.datasets.Dataset`; see :func:`rramc.runtime.evaluate.evaluate`."""
        from rramc.datasets import Dataset
        from rramc.runtime.evaluate import evaluate

        if not isinstance(dataset, Dataset):
            raise RramcError(f"Executable.run takes an rramc Dataset (rramc.load_dataset(name, split), or "
                             f"rramc.Dataset(name, split, images, labels, num_classes)), got {type(dataset).__name__}; "
                             "for a batch of inputs, call the executable: exe(x)")
        report = evaluate(self, dataset, **options)
        report.reference_weights = self.reference_description()
        return report

    # --- files ---------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the executable file (atomically: no partial file on failure)."""
        path = Path(path)
        try:
            write_atomically(path, serialize(self.graph, self.target, self.metadata, self.original,
                                             reference_weights=self.reference_weights))
        except OSError as exc:
            raise RramcError(f"cannot write the executable to {path}: {exc.strerror or exc}") from None
        return path

    @classmethod
    def load(cls, path: str | Path) -> Executable:
        path = Path(path)
        if not path.is_file():
            raise ExecutableFormatError(f"executable {path} does not exist" if not path.exists() else f"{path} is not a file")
        from rramc.outputs import describe_kind, kind_of

        kind = kind_of(path)
        if kind == "model":
            raise ExecutableFormatError(f"{path} is {describe_kind(kind)}, not an rramc executable: compile it first "
                                        f"(rramc compile {path} -t TARGET)")
        if kind in ("report", "png", "empty"):
            raise ExecutableFormatError(f"{path} is {describe_kind(kind)}, not an rramc executable (.rramx, written by rramc compile)")
        contents = deserialize(path.read_bytes(), str(path))
        exe = cls(contents.graph, contents.target, contents.metadata, original=contents.original,
                  reference_weights=contents.reference_weights)
        exe._weights_held = contents.reference_weights
        return exe

    # --- layout --------------------------------------------------------------------------------

    def reference_description(self) -> str:
        """How the float reference's weights are held, in words: as compiled, or as the file this was loaded from kept them."""
        return REFERENCE_WEIGHTS[self._weights_held]

    def device_evaluation(self) -> str:
        """How the runtime computes the columns of each distinct converter setting, with the error."""
        layers = self.graph.nodes_of(CrossbarOp)
        if not layers:
            return ""
        from rramc.hardware.column_solver import Conductances
        from rramc.hardware.expansion import tolerance_for
        from rramc.hardware.lowering import Lowering
        from rramc.hardware.tiling import TileGrid

        c = self.target.conductance
        lines = []
        for bits in sorted({(n.op.dac_bits, n.op.adc_bits) for n in layers}, key=str):  # type: ignore[attr-defined]
            cells = Conductances(DensePairs(torch.zeros(1, 1), torch.zeros(1, 1)), TileGrid((0, 1), (0, 1)), Lowering(), self.target.device,
                                 self.target.crossbar.read_voltage, (c.g_min, c.g_max), bits[0], tolerance_for(bits[1]))
            lines.append(self.target.wires.describe(cells))
        return "; ".join(dict.fromkeys(lines))

    def array_count(self) -> int:
        """Arrays the chip programs: every tile of every crossbar layer, once for layers that share arrays."""
        return sum(len(n.op.tiles()) for n in self.graph.nodes_of(CrossbarOp) if n.op.shares is None)  # type: ignore[attr-defined]

    def layer_summary(self) -> list[LayerSummary]:
        """In graph order, a line per crossbar layer and one per run of digital ops between two (the graph's
        inputs and output left out): what ``rramc inspect`` shows by default."""
        spec = self.target.crossbar
        lines: list[LayerSummary] = []
        digital: list[Node] = []
        for node in self.graph:
            if isinstance(node.op, (Input, Output)):
                continue
            if not isinstance(node.op, CrossbarOp):
                digital.append(node)
                continue
            if digital:
                lines.append(_digital_run(digital))
                digital = []
            op = node.op
            encoding = WEIGHT_ENCODINGS.get(op.weight_encoding)(self.target)
            tiles = op.tiles()
            cells = sum((rows.stop - rows.start) * encoding.bit_lines(cols.stop - cols.start) for rows, cols in tiles)
            lines.append(LayerSummary(
                name=node.name, kind=op.kind, analog=True, matrix=op.matrix_shape, tiles=len(tiles),
                arrays=0 if op.shares is not None else len(tiles), shares=op.shares,
                utilisation=cells / (len(tiles) * spec.rows * spec.cols) if tiles else None,
                weight_encoding=op.weight_encoding + (f" {op.slices}×{op.slice_bits}b" if op.weight_slices else ""),
                input_encoding=op.input_encoding, converters=(op.dac_bits, op.adc_bits)))
        if digital:
            lines.append(_digital_run(digital))
        return lines

    def array_usage(self) -> list[dict[str, Any]]:
        """One entry per tile: layer, array, rows, outputs, physical columns and cell utilisation; ``shares``: the
        layer whose arrays the tile's layer reads (None: its own)."""
        spec = self.target.crossbar
        usage = []
        for node in self.graph.nodes_of(CrossbarOp):
            op = node.op
            assert isinstance(op, CrossbarOp)
            encoding = WEIGHT_ENCODINGS.get(op.weight_encoding)(self.target)
            arrays = node.meta.get("arrays", [])
            for i, (rows, cols) in enumerate(op.tiles()):
                n_rows, n_outs = rows.stop - rows.start, cols.stop - cols.start
                cells = n_rows * encoding.bit_lines(n_outs)
                usage.append({
                    "layer": node.source, "node": node.name, "shares": op.shares, "array": arrays[i] if i < len(arrays) else None,
                    "rows": (rows.start, rows.stop), "outputs": (cols.start, cols.stop),
                    "cells": cells, "utilisation": cells / (spec.rows * spec.cols),
                })
        return usage


@dataclass(frozen=True)
class LayerSummary:
    """A line of :meth:`Executable.layer_summary`: a crossbar layer (analog), or a run of digital ops between two."""

    name: str
    """A crossbar layer's node name (its PyTorch layer's path, or the path and the part of a module it computes:
    an LSTM's steps); for a digital run, the source of its first and last op."""
    kind: str
    """The op kind; for a digital run, its ops' kinds with their counts."""
    analog: bool
    ops: int = 1
    matrix: tuple[int, int] | None = None
    """Word lines × outputs of a crossbar layer's weight matrix."""
    tiles: int = 0
    arrays: int = 0
    """Arrays the layer programs: one per tile, none when it reads another layer's (``shares``)."""
    shares: str | None = None
    utilisation: float | None = None
    """Share of its arrays' cells that hold its weights."""
    weight_encoding: str = ""
    """The weight encoding, with ``S×Bb`` when each weight is spread over ``S`` slices of ``B`` bits."""
    input_encoding: str = ""
    converters: tuple[int | None, int | None] = (None, None)
    """Bits of the DAC that drives its word lines and of the ADCs that read its bit lines (None: ideal)."""


def _digital_run(nodes: list[Node]) -> LayerSummary:
    kinds = Counter(node.op.kind for node in nodes)
    sources = list(dict.fromkeys(node.source for node in nodes))
    return LayerSummary(name=sources[0] if len(sources) == 1 else f"{sources[0]} … {sources[-1]}",
                        kind=", ".join(kind if count == 1 else f"{kind} ×{count}" for kind, count in kinds.items()),
                        analog=False, ops=len(nodes))


def default_reference_weights(target: Target) -> str:
    """``fixed12`` for a chip whose cells have levels, ``exact`` for continuous cells (the ``ideal`` target).

    A reference in 12-bit fixed point is off by under 1/2047 of each output's largest weight, far
    below what a chip with levels loses; a chip of continuous cells computes the weights as given,
    and only an exact reference shows it (its file keeps float32 conductances anyway).
    """
    return "exact" if target.conductance.levels is None else "fixed12"


SEED_LIMIT = 2**63
"""torch generators take seeds in [0, 2**63)."""


def check_seed(seed: object) -> None:
    """A chip seed must be an integer that torch's generators accept."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise RramcError(f"seed {seed!r}: expected an integer from 0 to 2**63 - 1")


def load_executable(path: str | Path) -> Executable:
    """Load an executable file written by :meth:`Executable.save`."""
    return Executable.load(path)
