"""The compiler driver: a model, a target and data → an executable, in one call.

:func:`compile` takes a model in memory (or a path) and data in memory (or paths);
:func:`compile_file` takes what the command line takes — a model file, a target, data set names
or data files — and is what ``rramc compile``, ``rramc sweep`` and the benchmarks call. Both run
the frontend, the pass pipeline and package the result with its target.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from rramc.datasets import Dataset, fit_inputs, require_labels
from rramc.datasets.user_data import DataSource, is_builtin, load_data, to_dataset
from rramc.errors import PassError, RramcError, RramcWarning
from rramc.frontend import import_exported, import_module, load_model
from rramc.frontend.model_files import is_export_archive
from rramc.hardware.target import Target, load_target
from rramc.ir import Graph, Input
from rramc.passes.calibrate import Calibrate
from rramc.pipeline import CompileContext, Pass, PassInstrument, PassManager, PassTimings, PrintIR, make_pass, resolve_pipeline
from rramc.runtime.executable import Executable

CALIBRATION_SAMPLES = 512
"""Calibration samples drawn from a data set when none are given (``--calibration-samples``)."""

ModelLike = nn.Module | torch.export.ExportedProgram | Graph | str | Path


def compile(
    model: ModelLike,
    target: Target | str | Path,
    example_input: torch.Tensor | None = None,
    *,
    pipeline: str | Sequence[Pass] | None = None,
    calibration_data: DataSource | None = None,
    training_data: DataSource | None = None,
    trust_data: bool = False,
    input_range: tuple[float, float] | None = None,
    seed: int = 0,
    skip: Sequence[str] = (),
    print_ir: bool = False,
    instruments: Sequence[PassInstrument] = (),
    metadata: Mapping[str, Any] | None = None,
    pass_manager: PassManager | None = None,
    exact_weights: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> Executable:
    """Compile a network for a target and return the executable.

    ``model`` is an ``nn.Module`` (traced with torch.fx on ``example_input``, by default the
    first calibration samples; left in the mode it was in), a ``torch.export`` program, an rramc
    :class:`Graph`, or a path to a torch.export archive (``.pt2``, or any name).
    ``calibration_data`` (representative inputs) defaults to ``example_input``, else to the data
    set a ``.pt2`` records; with none at all, ``calibrate`` sets every range from the weights for
    inputs in ``input_range`` (default [-1, 1]) and warns. ``training_data`` is the data set passes
    that train (``reconstruct``) use. Each is a tensor (inputs only), an rramc :class:`Dataset`, a
    ``torch.utils.data`` Dataset or DataLoader, or the path of a data file or image folder
    (:func:`~rramc.datasets.user_data.to_dataset`; ``trust_data`` allows a ``.pt`` that needs pickle);
    of calibration data at most what ``calibrate`` uses is drawn. ``input_range`` declares the
    range of the network's input values, which decides whether the first layers read signed
    inputs; without it a data set declares its own (a tensor declares none: the inputs are then
    taken to be signed). ``pipeline`` is a pipeline's name (``default``, ``naive``,
    ``least_squares``, ``reconstruct``), pipeline text or a list of passes; ``pass_manager``
    replaces ``pipeline``, ``skip``, ``print_ir`` and ``instruments`` altogether. The executable's
    file keeps the float weights (the reference the chip is compared with) in 12-bit fixed point
    for a target whose cells have levels (:func:`~rramc.runtime.executable.default_reference_weights`),
    or with ``exact_weights`` as they are.
    """
    start = time.perf_counter()
    if pass_manager is not None and (pipeline is not None or skip or print_ir or instruments):
        raise PassError("give either pass_manager or pipeline/skip/print_ir/instruments, not both: a pass manager brings its own")
    target = load_target(target)
    passes = resolve_pipeline(pipeline) if pass_manager is None else pass_manager.passes
    # An nn.Module without an example is traced on the calibration samples; otherwise the graph comes first, so that
    # an image folder is read with the network's channel count.
    tracing = isinstance(model, nn.Module) and example_input is None
    graph: Graph | None = None
    source, recorded = "", {}
    if not tracing:
        graph, source, recorded = import_model(model, example_input)
    shape = None if graph is None else graph.inputs[0].shape
    if calibration_data is not None and not isinstance(calibration_data, (torch.Tensor, Dataset)):
        limit = max((p.samples for p in passes if isinstance(p, Calibrate)), default=CALIBRATION_SAMPLES)
        calibration_data = to_dataset(calibration_data, what="calibration_data", limit=limit, seed=seed, trust=trust_data,
                                      shape=shape)
    if training_data is not None:
        training_data = require_labels(to_dataset(training_data, what="training_data", trust=trust_data, shape=shape),
                                       "training")
    samples = calibration_data.images if isinstance(calibration_data, Dataset) else calibration_data
    if graph is None:
        graph, source, recorded = import_model(model, None if samples is None else samples[:2])
    if samples is None and example_input is None and recorded.get("model.dataset"):
        # A .pt2 written by rramc.frontend.save_exported names its data set (and crop): calibrate and train on it, as
        # compile_file (the CLI) does, through the same loader.
        recorded_set = _dataset(recorded["model.dataset"], None, recorded.get("model.crop"))
        calibration_data = recorded_set.shuffled(seed).take(CALIBRATION_SAMPLES)
        samples = calibration_data.images
        if training_data is None:
            training_data = recorded_set
        log(f"calibrating on {len(samples)} samples of {calibration_data.name} (train), the data set {model} records")
        recorded["calibration"] = calibration_data.name
    if samples is None:
        samples = example_input
    declared = input_range
    for data in (calibration_data, training_data):
        if declared is None and isinstance(data, Dataset):
            declared = data.value_range
    declare_input_range(graph, declared)
    if samples is not None:
        (graph_input,) = graph.inputs
        samples = fit_inputs(samples, graph_input.shape, "calibration data")
    timings = PassTimings()
    if pass_manager is None:
        printing = [PrintIR()] if print_ir else []
        pass_manager = PassManager(passes, skip=frozenset(skip), instruments=[*printing, *instruments, timings])
    else:
        pass_manager = PassManager(pass_manager.passes, pass_manager.skip, [*pass_manager.instruments, timings])
    ctx = CompileContext(target, samples, training_data=training_data, seed=seed, progress=progress, log=log)
    pass_manager.run(graph, ctx)
    lowered = ctx.artifacts.get("graph")
    if not isinstance(lowered, Graph):
        raise PassError(f"the pipeline {', '.join(ctx.passes_run)} produced no executable; end it with 'emit'")
    for message in ctx.warnings:
        warnings.warn(RramcWarning(message), stacklevel=2)
    # Timings are kept on the executable, not in its file: the same compile writes the same bytes.
    info = {"source": source, "pipeline": ctx.artifacts.get("pipeline", ",".join(ctx.passes_run)),
            "warnings": list(ctx.warnings), **recorded, **ctx.artifacts.get("calibration", {}), **(metadata or {})}
    original = ctx.artifacts.get("original")
    if isinstance(model, (nn.Module, torch.export.ExportedProgram)):
        # The import reads the caller's parameters without copying them (passes replace tensors, never change
        # them); the executable takes its own copies now, past the compile's peak memory, so that a model
        # trained further leaves the executable as it was compiled.
        caller = caller_tensors(model)
        for graph_of_exe in (lowered, original if isinstance(original, Graph) else None):
            if graph_of_exe is not None:
                graph_of_exe.own_copies(caller)
    exe = Executable(lowered, target, info, original=original if isinstance(original, Graph) else None,
                     reference_weights="exact" if exact_weights else None)
    exe.compile_seconds = time.perf_counter() - start
    exe.pass_seconds = dict(timings.timings)
    return exe


def caller_tensors(model: nn.Module | torch.export.ExportedProgram) -> list[torch.Tensor]:
    """The parameters, buffers and constants of a model the caller keeps."""
    if isinstance(model, nn.Module):
        return [*model.parameters(), *model.buffers()]
    return [t for t in (*model.state_dict.values(), *model.constants.values()) if isinstance(t, torch.Tensor)]


def import_model(model: ModelLike, example_input: torch.Tensor | None) -> tuple[Graph, str, dict[str, Any]]:
    """The IR graph of a model in any accepted form, a name for it and what its file records (``model.*``)."""
    if isinstance(model, Graph):
        return model.copy(), "graph", {}
    if isinstance(model, torch.export.ExportedProgram):
        return import_exported(model), "exported program", {}
    if isinstance(model, nn.Module):
        if example_input is None:
            raise RramcError("compiling an nn.Module needs example_input (a batch of inputs) to trace shapes")
        if not isinstance(example_input, torch.Tensor):
            raise RramcError(f"example_input must be a tensor (a batch of inputs), got {type(example_input).__name__}")
        return import_module(model, example_input, type(model).__name__), type(model).__name__, {}
    if isinstance(model, (str, Path)):
        loaded = load_model(model, input_shape=None if example_input is None else tuple(example_input.shape[1:]))
        return loaded.graph, loaded.source, {f"model.{k}": v for k, v in loaded.metadata.items()}
    raise RramcError(f"cannot compile a {type(model).__name__}: expected an nn.Module, an ExportedProgram, a Graph or a path")


def declare_input_range(graph: Graph, value_range: tuple[float, float] | None) -> None:
    """Record the declared value range of the graph's input (None leaves it undeclared: signed)."""
    if value_range is None:
        return
    low, high = (float(v) for v in value_range)
    if not low < high:
        raise RramcError(f"input_range {value_range}: expected (low, high) with low < high")
    for node in graph.inputs:
        node.op = Input(value_range=(low, high))


def compile_file(
    model: str | Path,
    target: Target | str | Path,
    *,
    factory: str | None = None,
    trust_pickle: bool = False,
    input_shape: tuple[int, ...] | None = None,
    input_range: tuple[float, float] | None = None,
    calibration: str | Path | Dataset | None = None,
    calibration_samples: int = CALIBRATION_SAMPLES,
    data_dir: str | Path | None = None,
    training: str | Path | Dataset | None = None,
    trust_data: bool = False,
    reconstruct: Mapping[str, Any] | None = None,
    pipeline: str | Sequence[Pass] | None = None,
    skip: Sequence[str] = (),
    instruments: Sequence[PassInstrument] = (),
    seed: int = 0,
    exact_weights: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> Executable:
    """Compile a model file as ``rramc compile`` does.

    The calibration data set is ``calibration`` (a builtin name, a data file or image folder, or
    a :class:`Dataset`), else the training data set, else the one the ``.pt2`` records; its train
    split (a file: all of it), shuffled by ``seed``, gives ``calibration_samples`` samples and
    declares the input range. With none of them, ``calibrate`` works from the weights (see
    :func:`compile`). ``reconstruct`` (options of the ``reconstruct`` pass; ``{}`` for the
    defaults) retrains on ``training`` (default: the calibration data set) inside the pipeline
    (default: the ``reconstruct`` pipeline). ``input_range`` declares the range of the network's
    input values (default: the calibration data's). ``trust_data`` allows a ``.pt`` data file that needs pickle;
    ``exact_weights`` as in :func:`compile`.
    """
    if calibration_samples < 1:
        raise RramcError(f"--calibration-samples {calibration_samples}: need at least 1 sample to calibrate on")
    target_spec = load_target(target)
    passes = None if pipeline is None else resolve_pipeline(pipeline)
    if reconstruct is not None:
        passes = with_reconstruct(passes, dict(reconstruct))
    trains = passes is not None and any(p.name == "reconstruct" for p in passes)
    if training is not None and not trains:
        raise RramcError("--dataset names the training data of --reconstruct (or of a pipeline with a reconstruct pass); "
                         "to calibrate on a data set use --calibration")
    named = calibration if calibration is not None else training
    if input_shape is None and named is not None and not is_export_archive(model):  # the file does not record it: the data's
        input_shape = _dataset(named, data_dir, None, trust=trust_data, limit=calibration_samples, seed=seed).sample_shape
    loaded = load_model(model, factory=factory, trust_pickle=trust_pickle, input_shape=input_shape)
    (graph_input,) = loaded.graph.inputs
    crop = loaded.metadata.get("crop")
    name = named if named is not None else loaded.metadata.get("dataset")
    if name is None and trains:
        raise RramcError(f"{model} records no data set: pass --calibration DATASET (digits, mnist, fashion-mnist, cifar10, "
                         "or a data file) to calibrate on, and with --reconstruct --dataset DATASET to train on")
    metadata: dict[str, Any] = {"source": str(model)}
    samples, value_range = None, None
    if name is not None:
        calibration_set = _dataset(name, data_dir, crop, trust=trust_data, shape=graph_input.shape, limit=calibration_samples,
                                   seed=seed)
        samples = fit_inputs(calibration_set.images, graph_input.shape, calibration_set.name)
        value_range = calibration_set.value_range
        metadata["calibration"] = calibration_set.name
        if not isinstance(name, Dataset) and not is_builtin(name):
            low, high = value_range
            log(f"calibrating on {len(calibration_set)} samples of {calibration_set.name}: the network's inputs are declared "
                f"in [{low:g}, {high:g}], the range of those values")
    metadata.update({f"model.{k}": v for k, v in loaded.metadata.items()})
    training_set = None
    if trains:
        training_set = _dataset(training if training is not None else name, data_dir, crop, trust=trust_data,  # type: ignore[arg-type]
                                shape=graph_input.shape)
        require_labels(training_set, "training (--reconstruct)")
        fit_inputs(training_set.images[:1], graph_input.shape, training_set.name)
    return compile(loaded.graph, target_spec, pipeline=passes, calibration_data=samples, training_data=training_set,
                   input_range=input_range if input_range is not None else value_range, seed=seed, skip=skip, instruments=instruments, metadata=metadata,
                   exact_weights=exact_weights, progress=progress, log=log)


def _dataset(data: str | Path | Dataset, data_dir: str | Path | None, crop: int | None, *, trust: bool = False,
             shape: tuple[int, ...] | None = None, limit: int | None = None, seed: int = 0) -> Dataset:
    """The train split of a builtin data set, a data file or folder, or a :class:`Dataset`; ``limit`` samples drawn by
    ``seed`` (see :func:`~rramc.datasets.user_data.load_data`), center-cropped to ``crop``."""
    if isinstance(data, Dataset):
        dataset = data if limit is None else data.shuffled(seed).take(limit)
    else:
        dataset = load_data(data, "train", data_dir, trust=trust, shape=shape, limit=limit, seed=seed)
    return dataset.center_crop(crop) if crop and dataset.sample_shape[-1] > crop else dataset


def with_reconstruct(pipeline: list[Pass] | None, options: dict[str, Any]) -> list[Pass]:
    """``pipeline`` (default: the ``reconstruct`` pipeline) with a ``reconstruct`` pass configured by ``options``,
    placed after ``canonicalize`` when the pipeline has none."""
    if pipeline is None:
        pipeline = resolve_pipeline("reconstruct")
        at = [p.name for p in pipeline].index("reconstruct")
        return [*pipeline[:at], make_pass("reconstruct", options), *pipeline[at + 1:]]
    if any(p.name == "reconstruct" for p in pipeline):
        raise RramcError("--reconstruct: the pipeline already has a reconstruct pass; configure it there instead")
    names = [p.name for p in pipeline]
    at = names.index("canonicalize") + 1 if "canonicalize" in names else 0
    return [*pipeline[:at], make_pass("reconstruct", options), *pipeline[at:]]
