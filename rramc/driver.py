"""The compiler driver: a model, a target and data → an executable, in one call.

:func:`compile` takes a model in memory (or a path) and tensors; :func:`compile_file` takes what
the command line takes — a model file, a target, data set names — and is what ``rramc
compile``, ``rramc sweep`` and the benchmarks call. Both run the frontend, the pass pipeline
and package the result with its target.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from rramc.datasets import Dataset, fit_inputs, load_dataset
from rramc.errors import PassError, RramcError, RramcWarning
from rramc.frontend import LoadedModel, import_exported, import_module, load_model
from rramc.hardware.target import Target, load_target
from rramc.ir import Graph, Input
from rramc.pipeline import CompileContext, Pass, PassInstrument, PassManager, PassTimings, PrintIR, make_pass, resolve_pipeline
from rramc.runtime.executable import Executable

CALIBRATION_SAMPLES = 512
"""Calibration samples drawn from a data set when none are given (``--calibration-samples``)."""

ModelLike = nn.Module | torch.export.ExportedProgram | Graph | str | Path
DataLike = torch.Tensor | Dataset | None


def compile(
    model: ModelLike,
    target: Target | str | Path,
    example_input: torch.Tensor | None = None,
    *,
    pipeline: str | Sequence[Pass] | None = None,
    calibration_data: DataLike = None,
    training_data: Dataset | None = None,
    input_range: tuple[float, float] | None = None,
    seed: int = 0,
    skip: Sequence[str] = (),
    print_ir: bool = False,
    instruments: Sequence[PassInstrument] = (),
    metadata: Mapping[str, Any] | None = None,
    pass_manager: PassManager | None = None,
    progress: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> Executable:
    """Compile a network for a target and return the executable.

    ``model`` is an ``nn.Module`` (traced with torch.fx on ``example_input``, by default the
    first calibration samples; left in the mode it was in), a ``torch.export`` program, an rramc
    :class:`Graph`, or a path to a ``.pt2`` archive.
    ``calibration_data`` (a batch of representative inputs, or a data set) defaults to
    ``example_input``; ``training_data`` is the data set passes that train (``reconstruct``) use.
    ``input_range`` declares the range of the network's input values, which decides whether the
    first layers read signed inputs; without it (and without a data set, which declares its own)
    the inputs are taken to be signed. ``pipeline`` is a pipeline's name (``default``, ``naive``,
    ``least_squares``, ``reconstruct``), pipeline text or a list of passes; ``pass_manager``
    replaces ``pipeline``, ``skip``, ``print_ir`` and ``instruments`` altogether.
    """
    start = time.perf_counter()
    if pass_manager is not None and (pipeline is not None or skip or print_ir or instruments):
        raise PassError("give either pass_manager or pipeline/skip/print_ir/instruments, not both: a pass manager brings its own")
    target = load_target(target)
    samples = calibration_data.images if isinstance(calibration_data, Dataset) else calibration_data
    if example_input is None and samples is not None and isinstance(model, nn.Module):
        example_input = samples[:2]  # the calibration batch shows the shapes as well as an example does
    graph, source, recorded = import_model(model, example_input)
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
        pass_manager = PassManager(resolve_pipeline(pipeline), skip=frozenset(skip), instruments=[*printing, *instruments, timings])
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
            "warnings": list(ctx.warnings), **recorded, **(metadata or {})}
    original = ctx.artifacts.get("original")
    exe = Executable(lowered, target, info, original=original if isinstance(original, Graph) else None)
    exe.compile_seconds = time.perf_counter() - start
    exe.pass_seconds = dict(timings.timings)
    return exe


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
    calibration: str | Dataset | None = None,
    calibration_samples: int = CALIBRATION_SAMPLES,
    data_dir: str | Path | None = None,
    training: str | Dataset | None = None,
    reconstruct: Mapping[str, Any] | None = None,
    pipeline: str | Sequence[Pass] | None = None,
    skip: Sequence[str] = (),
    instruments: Sequence[PassInstrument] = (),
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> Executable:
    """Compile a model file as ``rramc compile`` does.

    The calibration data set is ``calibration`` (a name or a :class:`Dataset`), else the training
    data set, else the one the ``.pt2`` records; its train split, shuffled by ``seed``, gives
    ``calibration_samples`` samples and declares the input range. ``reconstruct`` (options of the
    ``reconstruct`` pass; ``{}`` for the defaults) retrains on ``training`` (default: the
    calibration data set) inside the pipeline (default: the ``reconstruct`` pipeline).
    """
    if calibration_samples < 1:
        raise RramcError(f"--calibration-samples {calibration_samples}: need at least 1 sample to calibrate on")
    target_spec = load_target(target)
    loaded = _load(model, factory, trust_pickle, input_shape, calibration if calibration is not None else training, data_dir)
    crop = loaded.metadata.get("crop")
    name = calibration if calibration is not None else (training if training is not None else loaded.metadata.get("dataset"))
    if name is None:
        raise RramcError(f"{model} records no data set: pass --calibration DATASET (digits, mnist, fashion-mnist, cifar10) to "
                         "calibrate on, and with --reconstruct --dataset DATASET to train on")
    (graph_input,) = loaded.graph.inputs
    calibration_set = _dataset(name, data_dir, crop).shuffled(seed).take(calibration_samples)
    samples = fit_inputs(calibration_set.images, graph_input.shape, calibration_set.name)
    training_set = None
    passes = None if pipeline is None else resolve_pipeline(pipeline)
    if reconstruct is not None:
        passes = with_reconstruct(passes, dict(reconstruct))
    if passes is not None and any(p.name == "reconstruct" for p in passes):
        training_set = _dataset(training if training is not None else name, data_dir, crop)
        fit_inputs(training_set.images[:1], graph_input.shape, training_set.name)
    elif training is not None:
        raise RramcError("--dataset names the training data of --reconstruct (or of a pipeline with a reconstruct pass); "
                         "to calibrate on a data set use --calibration")
    metadata = {"source": str(model), "calibration": calibration_set.name, **{f"model.{k}": v for k, v in loaded.metadata.items()}}
    return compile(loaded.graph, target_spec, pipeline=passes, calibration_data=samples, training_data=training_set,
                   input_range=calibration_set.value_range, seed=seed, skip=skip, instruments=instruments, metadata=metadata,
                   progress=progress, log=log)


def _load(model: str | Path, factory: str | None, trust_pickle: bool, input_shape: tuple[int, ...] | None,
          data: str | Dataset | None, data_dir: str | Path | None) -> LoadedModel:
    if input_shape is None and data is not None and Path(model).suffix != ".pt2":
        input_shape = data.sample_shape if isinstance(data, Dataset) else load_dataset(data, "train", data_dir).sample_shape
    return load_model(model, factory=factory, trust_pickle=trust_pickle, input_shape=input_shape)


def _dataset(data: str | Dataset, data_dir: str | Path | None, crop: int | None) -> Dataset:
    dataset = data if isinstance(data, Dataset) else load_dataset(data, "train", data_dir)
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
