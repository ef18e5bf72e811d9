"""The compiled program: a lowered graph plus its target, runnable, savable, loadable."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rramc.errors import ClippedInputWarning, ExecutableFormatError, RramcError
from rramc.hardware.interpreter import Chip, FloatKernel, Interpreter
from rramc.hardware.observers import ClipCounter
from rramc.hardware.target import Target
from rramc.hardware.weight_encoding import WEIGHT_ENCODINGS
from rramc.ir import CrossbarOp, Graph
from rramc.runtime.file_format import deserialize, serialize, write_atomically
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
                 original: Graph | None = None) -> None:
        self.graph, self.target = graph, target
        self.original = original
        """The float network as given, when compiling changed it (``reconstruct`` retrains it); None otherwise."""
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
        return evaluate(self, dataset, **options)

    # --- files ---------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the executable file (atomically: no partial file on failure)."""
        path = Path(path)
        try:
            write_atomically(path, serialize(self.graph, self.target, self.metadata, self.original))
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
        graph, target, metadata, original = deserialize(path.read_bytes(), str(path))
        return cls(graph, target, metadata, original=original)

    # --- layout --------------------------------------------------------------------------------

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
            cells = Conductances(torch.zeros(1, 1), torch.zeros(1, 1), TileGrid((0, 1), (0, 1)), Lowering(), self.target.device,
                                 self.target.crossbar.read_voltage, (c.g_min, c.g_max), bits[0], tolerance_for(bits[1]))
            lines.append(self.target.wires.describe(cells))
        return "; ".join(dict.fromkeys(lines))

    def array_count(self) -> int:
        return sum(len(n.op.tiles()) for n in self.graph.nodes_of(CrossbarOp))  # type: ignore[attr-defined]

    def array_usage(self) -> list[dict[str, Any]]:
        """One entry per tile: layer, array, rows, outputs, physical columns and cell utilisation."""
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
                    "layer": node.source, "node": node.name, "array": arrays[i] if i < len(arrays) else None,
                    "rows": (rows.start, rows.stop), "outputs": (cols.start, cols.stop),
                    "cells": cells, "utilisation": cells / (spec.rows * spec.cols),
                })
        return usage


SEED_LIMIT = 2**63
"""torch generators take seeds in [0, 2**63)."""


def check_seed(seed: object) -> None:
    """A chip seed must be an integer that torch's generators accept."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise RramcError(f"seed {seed!r}: expected an integer from 0 to 2**63 - 1")


def load_executable(path: str | Path) -> Executable:
    """Load an executable file written by :meth:`Executable.save`."""
    return Executable.load(path)
