"""The compiled program: a lowered graph plus its target, runnable, savable, loadable."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rramc.errors import ExecutableFormatError, RramcError
from rramc.hardware.target import Target
from rramc.ir import CrossbarOp, Graph
from rramc.runtime.file_format import deserialize, serialize, write_atomically
from rramc.runtime.interpreter import Mode, Program
from rramc.runtime.report import Report

if TYPE_CHECKING:
    from rramc.datasets import Dataset


class Executable:
    """A network compiled for one target.

    Call it on a batch to run the simulated chip, :meth:`reference` for the float network it was
    compiled from, :meth:`run` on a data set for the accuracy report.
    """

    def __init__(self, graph: Graph, target: Target, metadata: dict[str, Any] | None = None) -> None:
        self.graph, self.target = graph, target
        self.metadata: dict[str, Any] = dict(metadata or {})

    def __repr__(self) -> str:
        layers = self.graph.nodes_of(CrossbarOp)
        return f"Executable({len(layers)} crossbar layers, {self.array_count()} arrays, target {self.target.name})"

    # --- running -------------------------------------------------------------------------------

    def program(self, mode: Mode = "chip", *, seed: int = 0, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> Program:
        """A runnable instance; in chip mode ``seed`` draws the chip's variation and read noise."""
        return Program(self.graph, self.target, mode, seed=seed, device=device, dtype=dtype)

    def __call__(self, x: Tensor, *, seed: int = 0) -> Tensor:
        """The simulated chip's outputs for a batch."""
        return self.program("chip", seed=seed)(x)

    def reference(self, x: Tensor) -> Tensor:
        """The float network's outputs for a batch."""
        return self.program("float")(x)

    def run(self, dataset: Dataset, **options: Any) -> Report:
        """Evaluate on a :class:`~rramc.datasets.Dataset`; see :func:`rramc.runtime.evaluate.evaluate`."""
        from rramc.runtime.evaluate import evaluate

        return evaluate(self, dataset, **options)

    # --- files ---------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the executable file (atomically: no partial file on failure)."""
        path = Path(path)
        try:
            write_atomically(path, serialize(self.graph, self.target, self.metadata))
        except OSError as exc:
            raise RramcError(f"cannot write the executable to {path}: {exc.strerror or exc}") from None
        return path

    @classmethod
    def load(cls, path: str | Path) -> Executable:
        path = Path(path)
        if not path.is_file():
            raise ExecutableFormatError(f"executable {path} does not exist" if not path.exists() else f"{path} is not a file")
        graph, target, metadata = deserialize(path.read_bytes(), str(path))
        return cls(graph, target, metadata)

    # --- layout --------------------------------------------------------------------------------

    def device_evaluation(self) -> str:
        """How the runtime computes a non-separable device, with the expansion's measured error."""
        from rramc.hardware.devices import cached_expansion

        device = self.target.device
        if device.separable:
            return ""
        c = self.target.conductance
        expansion = cached_expansion(device, self.target.crossbar.read_voltage, (c.g_min, c.g_max))
        if expansion is None:
            return f"device '{device.model}' is not separable: evaluated per cell"
        return (f"device '{device.model}' is not separable: evaluated as {expansion.description} (one matmul per term), "
                f"max error {expansion.max_error:.1e} of full-scale current; per cell with read noise")

    def array_count(self) -> int:
        return sum(len(n.op.tiles()) for n in self.graph.nodes_of(CrossbarOp))  # type: ignore[attr-defined]

    def array_usage(self) -> list[dict[str, Any]]:
        """One entry per tile: layer, array, rows, outputs, physical columns and cell utilisation."""
        spec = self.target.crossbar
        extra = (lambda outs: 2 * outs) if spec.weight_encoding == "differential" else (lambda outs: outs + 1)
        usage = []
        for node in self.graph.nodes_of(CrossbarOp):
            op = node.op
            assert isinstance(op, CrossbarOp)
            arrays = node.meta.get("arrays", [])
            for i, (rows, cols) in enumerate(op.tiles()):
                n_rows, n_outs = rows.stop - rows.start, cols.stop - cols.start
                usage.append({
                    "layer": node.source, "node": node.name, "array": arrays[i] if i < len(arrays) else None,
                    "rows": (rows.start, rows.stop), "outputs": (cols.start, cols.stop),
                    "cells": n_rows * extra(n_outs), "utilisation": n_rows * extra(n_outs) / (spec.rows * spec.cols),
                })
        return usage


def load_executable(path: str | Path) -> Executable:
    """Load an executable file written by :meth:`Executable.save`."""
    return Executable.load(path)
