"""Loading a trained network from disk: torch.export archives, state dicts, trusted pickles.

The safe formats come first. A ``.pt2`` archive (``torch.export``) holds the graph and weights
without code; a ``state_dict`` holds tensors only and needs the user's code to build the module.
A whole pickled ``nn.Module`` runs arbitrary code when loaded, so it is refused unless the user
says ``trust_pickle``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import pickle
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from rramc.errors import FrontendError
from rramc.frontend.fx_import import import_exported, import_module
from rramc.ir import Graph

METADATA_FILE = "rramc.json"
"""Extra file inside a ``.pt2`` with rramc's facts about the model (e.g. its data set)."""

RESAVE_HINT = (
    "Re-save it in a safe format from the code that built it: "
    "torch.export.save(torch.export.export(model.eval(), (example_input,)), 'model.pt2'), "
    "or torch.save(model.state_dict(), 'model.pt') and compile with --model module:factory."
)


@dataclass
class LoadedModel:
    """An imported network and what its file said about it."""

    graph: Graph
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


def save_exported(model: nn.Module, example_input: torch.Tensor, path: str | Path, **metadata: Any) -> None:
    """Export ``model`` with ``torch.export`` to ``path`` with rramc metadata (``dataset=...``).

    The batch dimension is exported as dynamic, so the archive runs on batches of any size.
    """
    example = example_input[:1].expand(2, *example_input.shape[1:]).clone()  # a size-1 dim would be specialised
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    strip_stack_traces(program)
    torch.export.save(program, str(path), extra_files={METADATA_FILE: json.dumps(metadata)})


def strip_stack_traces(program: torch.export.ExportedProgram) -> None:
    """Drop the source stack traces torch.export records per node.

    They name the files, with absolute paths, of the machine that exported the model; an archive
    shared with others should not carry them, and rramc names layers by module path instead.
    """
    for node in program.graph.nodes:
        node.meta.pop("stack_trace", None)


def load_factory(spec: str) -> Any:
    """Resolve ``module:function`` or ``path/to/file.py:function`` to the callable it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise FrontendError(f"--model '{spec}': expected module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise FrontendError(f"--model '{spec}': file {path} does not exist")
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")  # the user's working directory, like `python -m`
            module = importlib.import_module(module_name)
    except FrontendError:
        raise
    except Exception as exc:
        raise FrontendError(f"--model '{spec}': cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    if not hasattr(module, attr):
        raise FrontendError(f"--model '{spec}': {module_name} has no attribute '{attr}'")
    return getattr(module, attr)


def _state_dict_of(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    return None


def load_model(
    path: str | Path,
    *,
    factory: str | None = None,
    trust_pickle: bool = False,
    input_shape: tuple[int, ...] | None = None,
) -> LoadedModel:
    """Load and import the network in ``path``.

    ``input_shape`` (per sample) is needed for state dicts and pickled modules, whose files do not
    record what the network takes; a ``.pt2`` carries its own example input.
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise FrontendError(f"model file {path} does not exist")
    if path.is_dir():
        raise FrontendError(f"model path {path} is a directory, expected a .pt2 archive or a state_dict file")
    if is_export_archive(path):  # .pt2 or not: torch.export.save writes one under any name (the design card's model.pt)
        return _load_exported(path)
    if path.suffix == ".pt2":
        raise FrontendError(f"{path} is not a torch.export archive (.pt2); it may be truncated or of another format")
    if path.suffix.lower() == ".npz":
        raise FrontendError(f"{path} is a numpy data file, not a model: give it to --calibration or --dataset, and the model "
                            "file first")

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        needs_trust = False
    except pickle.UnpicklingError as exc:
        # Only a pickle that names Python classes needs trust; anything else is not a model file.
        if "Unsupported global" not in str(exc):
            raise FrontendError(f"{path} is not a PyTorch model file (neither a .pt2 archive, a state_dict nor a pickled module)") from None
        obj, needs_trust = None, True
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise FrontendError(f"{path} is not a PyTorch model file (neither a .pt2 archive, a state_dict nor a pickled module; "
                            f"{type(exc).__name__}: {first_line})") from None

    if needs_trust:
        if not trust_pickle:
            raise FrontendError(
                f"{path} is a pickled Python object (a whole nn.Module saved with torch.save(model)). "
                "Loading it runs code stored in the file, so rramc refuses it by default. If you trust the file, "
                f"pass --trust-pickle (Python: trust_pickle=True). {RESAVE_HINT}"
            )
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise FrontendError(f"{path}: loading the pickled model failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(obj, nn.Module):
            raise FrontendError(f"{path} holds a {type(obj).__name__}, not an nn.Module")
        return LoadedModel(import_module(obj, _example(input_shape, source), source), source)

    if isinstance(obj, dict) and {"images", "x"} & set(obj):
        raise FrontendError(f"{path} holds data (a dict with {', '.join(repr(k) for k in obj)}), not a model: give it to "
                            "--calibration or --dataset, and the model file first")
    state = _state_dict_of(obj)
    if state is None:
        raise FrontendError(f"{path} holds a {type(obj).__name__}, not a model: rramc compiles a torch.export archive "
                            "(torch.export.save, as .pt2 or .pt), a state_dict (with --model module:factory) or a pickled "
                            "nn.Module (with --trust-pickle)")
    if factory is None:
        raise FrontendError(
            f"{path} is a state_dict: it holds weights but not the network's structure. "
            "Pass --model module:factory (Python: factory='module:factory') naming a function that builds the nn.Module."
        )
    build = load_factory(factory)
    try:
        model = build()
    except Exception as exc:
        raise FrontendError(f"--model '{factory}': calling it failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise FrontendError(f"--model '{factory}' returned a {type(model).__name__}, not an nn.Module")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that differ
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise FrontendError(f"{path} does not fit the network built by '{factory}': {detail}") from None
    if result.missing_keys or result.unexpected_keys:
        raise FrontendError(
            f"{path} does not fit the network built by '{factory}': missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
    return LoadedModel(import_module(model, _example(input_shape, source), source), source)


def _example(input_shape: tuple[int, ...] | None, source: str) -> torch.Tensor:
    if input_shape is None:
        raise FrontendError(f"{source}: the file does not record the network's input shape; give it (--input-shape, or a data set)")
    return torch.zeros(2, *input_shape)


def is_export_archive(path: str | Path) -> bool:
    """Whether ``path`` is a ``torch.export`` archive, whatever its name: such a file records its input shape."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("archive_format") or "/models/" in name for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _load_exported(path: Path) -> LoadedModel:
    extra = {METADATA_FILE: ""}
    try:
        with open(path, "rb") as file:  # a file object: torch warns of a name that does not end in .pt2
            program = torch.export.load(file, extra_files=extra)
    except Exception as exc:
        raise FrontendError(f"{path}: cannot load the torch.export archive: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    try:
        metadata = json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}
    except json.JSONDecodeError:
        metadata = {}
    return LoadedModel(import_exported(program, str(path)), str(path), metadata)
