"""``rramc.compile``: frontend, pass pipeline and emission in one call."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from rramc.datasets import Dataset
from rramc.errors import PassError, RramcError
from rramc.frontend import import_exported, import_module, load_model
from rramc.hardware.target import Target, load_target
from rramc.ir import Graph
from rramc.pipeline import CompileContext, Pass, PassManager, default_pipeline, parse_pipeline
from rramc.runtime.executable import Executable


def compile(
    model: nn.Module | torch.export.ExportedProgram | Graph | str | Path,
    target: Target | str | Path,
    example_input: torch.Tensor | None = None,
    *,
    pipeline: str | Sequence[Pass] | None = None,
    calibration_data: torch.Tensor | None = None,
    training_data: Dataset | None = None,
    seed: int = 0,
    skip: Sequence[str] = (),
    print_ir: bool = False,
    metadata: dict[str, Any] | None = None,
    pass_manager: PassManager | None = None,
    progress: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> Executable:
    """Compile a network for a target and return the executable.

    ``model`` is an ``nn.Module`` (traced with torch.fx on ``example_input``), a
    ``torch.export`` program, an rramc :class:`Graph`, or a path to a ``.pt2`` archive.
    ``calibration_data`` (a batch of representative inputs) defaults to ``example_input``;
    ``training_data`` is the data set passes that train (``reconstruct``) use.
    ``pipeline`` is pipeline text or a list of passes (default: :func:`default_pipeline`).
    """
    start = time.perf_counter()
    target = load_target(target)
    graph, source = _import(model, example_input)
    passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline or default_pipeline())
    manager = pass_manager or PassManager(passes, skip=frozenset(skip), print_after_each=print_ir)
    ctx = CompileContext(target, calibration_data if calibration_data is not None else example_input,
                         training_data=training_data, seed=seed, progress=progress, log=log)
    manager.run(graph, ctx)
    exe = ctx.artifacts.get("executable")
    if not isinstance(exe, Executable):
        raise PassError(f"the pipeline {', '.join(ctx.passes_run)} produced no executable; end it with 'emit'")
    exe.metadata.update({"source": source, "compile_seconds": round(time.perf_counter() - start, 3),
                         "pass_seconds": {name: round(t, 4) for name, t in manager.timings}, **(metadata or {})})
    return exe


def _import(model: Any, example_input: torch.Tensor | None) -> tuple[Graph, str]:
    if isinstance(model, Graph):
        return model.copy(), "graph"
    if isinstance(model, torch.export.ExportedProgram):
        return import_exported(model), "exported program"
    if isinstance(model, nn.Module):
        if example_input is None:
            raise RramcError("compiling an nn.Module needs example_input (a batch of inputs) to trace shapes")
        return import_module(model, example_input, type(model).__name__), type(model).__name__
    if isinstance(model, (str, Path)):
        loaded = load_model(model, input_shape=None if example_input is None else tuple(example_input.shape[1:]))
        return loaded.graph, loaded.source
    raise RramcError(f"cannot compile a {type(model).__name__}: expected an nn.Module, an ExportedProgram, a Graph or a path")
