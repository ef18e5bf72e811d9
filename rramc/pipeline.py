"""Passes and the pass manager.

A pass is a frozen dataclass whose fields are its options and whose ``name`` is its name in a
pipeline, so a pipeline can be written as text: ``"canonicalize,quantize{levels=16},tile"``.
The manager runs a list of passes, verifies the IR after each, can print the IR between passes,
times them and skips named ones; a failing pass is reported with the passes that ran before it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import re
import sys
import time
import traceback
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from rramc.datasets import Dataset
from rramc.errors import PassError, RramcError
from rramc.hardware.target import Target
from rramc.ir import Graph
from rramc.registry import Registry


@dataclass
class CompileContext:
    """What passes may read besides the graph, and where they leave results.

    ``calibration_data`` is a batch of representative network inputs, ``training_data`` a data
    set for passes that train (``reconstruct``), ``seed`` the seed of passes that draw random
    numbers (unless their own option sets one). ``pipeline`` is the list of passes being run (a
    pass may read the options of those after it), ``artifacts`` collects what passes produce for
    the caller (``emit`` leaves the finished graph under ``"graph"``) and ``warnings`` what the
    caller should be told.
    """

    target: Target
    calibration_data: torch.Tensor | None = None
    training_data: Dataset | None = None
    seed: int = 0
    progress: bool = False
    log: Callable[[str], None] = lambda message: None
    artifacts: dict[str, Any] = field(default_factory=dict)
    passes_run: list[str] = field(default_factory=list)
    pipeline: list[Pass] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Record something the user should know about the result: the executable keeps it, the driver issues it as
        an :class:`RramcWarning`, the CLI prints it on stderr and every run report repeats it."""
        self.warnings.append(message)

    def after(self, current: Pass, kind: type[P]) -> P | None:
        """The first pass of type ``kind`` that runs after ``current`` in this pipeline, if any."""
        seen = False
        for p in self.pipeline:
            if p is current:
                seen = True
            elif seen and isinstance(p, kind):
                return p
        return None


P = typing.TypeVar("P", bound="Pass")


def option(help: str, default: Any, choices: tuple[str, ...] | None = None) -> Any:
    """Declare a pass option: a dataclass field with a one-line help text."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Pass:
    """Base class of compiler passes.

    Subclasses set ``name`` and implement :meth:`run`; the docstring states what the pass needs
    on the IR and what it guarantees. :meth:`requires` may check the preconditions up front.
    """

    name: ClassVar[str]

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        """Transform ``graph`` (in place or not) and return the graph to continue with."""
        raise NotImplementedError

    def requires(self, graph: Graph, ctx: CompileContext) -> None:
        """Raise :class:`PassError` if ``graph`` is not what this pass can work on."""

    @classmethod
    def options(cls) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) of every option."""
        hints = typing.get_type_hints(cls)
        return [(f.name, _type_name(hints[f.name]), f.default, f.metadata.get("help", ""))
                for f in dataclasses.fields(cls)]

    def __str__(self) -> str:
        changed = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}
        if not changed:
            return self.name
        return self.name + "{" + ",".join(f"{k}={_format_option(v)}" for k, v in changed.items()) + "}"

    @classmethod
    def summary(cls) -> str:
        """The docstring's first sentence as plain text (reST roles and literals unwrapped)."""
        doc = (cls.__doc__ or "").strip()
        return plain_text(doc.split("\n\n")[0].replace("\n", " ")) if doc else ""


def plain_text(rest: str) -> str:
    """reStructuredText inline markup as terminal text: ``:class:`~a.B``` → ``B``, ````x```` → ``x``."""
    rest = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`<]+?)`", r"\1", rest)
    rest = re.sub(r"``([^`]+)``", r"\1", rest)
    return re.sub(r"`([^`]+)`", r"\1", " ".join(rest.split()))


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}


def _type_name(hint: Any) -> str:
    """What an option takes, in words: 'an integer', 'a number or none', ..."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    name = getattr(base, "__name__", str(base))
    words = _TYPE_WORDS.get(name, name)
    return f"{words} or none" if args else words


def _format_option(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


PASSES: Registry[type[Pass]] = Registry(
    what="pass",
    group="rramc.passes",
    builtins={
        "canonicalize": "rramc.passes.canonicalize:Canonicalize",
        "quantize": "rramc.passes.quantize:Quantize",
        "tile": "rramc.passes.tile:Tile",
        "place": "rramc.passes.place:Place",
        "calibrate": "rramc.passes.calibrate:Calibrate",
        "reconstruct": "rramc.passes.reconstruct:Reconstruct",
        "emit": "rramc.passes.emit:Emit",
    },
    interface=Pass,
)
"""Every pass by name: the built-ins plus the ``rramc.passes`` entry-point group."""

DEFAULT_PIPELINE = "canonicalize,quantize,tile,calibrate,emit"


def default_pipeline() -> list[Pass]:
    """The conventional mapping with full-scale calibration: what ``rramc compile`` runs when none is given."""
    return parse_pipeline(DEFAULT_PIPELINE)


def least_squares_pipeline() -> list[Pass]:
    """The conventional mapping with each neuron's gain and offset fitted to the float layer (least squares)."""
    return parse_pipeline("canonicalize,quantize,tile,calibrate{gain=least_squares},emit")


def reconstruct_pipeline() -> list[Pass]:
    """Retrain the network through the device I-V (Kim et al.), then map it."""
    return parse_pipeline("canonicalize,reconstruct,quantize,tile,calibrate,emit")


PIPELINES: Registry[Callable[[], list[Pass]]] = Registry(
    what="pipeline",
    group="rramc.pipelines",
    builtins={
        "default": "rramc.pipeline:default_pipeline",
        "naive": "rramc.pipeline:default_pipeline",
        "least_squares": "rramc.pipeline:least_squares_pipeline",
        "reconstruct": "rramc.pipeline:reconstruct_pipeline",
    },
)
"""Named pipelines (``--pipeline NAME``): functions returning a fresh list of passes."""


def named_pipeline(name: str, **options: dict[str, Any]) -> list[Pass]:
    """The pipeline ``name`` with pass options changed: ``named_pipeline("reconstruct", reconstruct={"epochs": 1})``."""
    passes = PIPELINES.get(name)()
    unknown = set(options) - {p.name for p in passes}
    if unknown:
        raise PassError(f"pipeline '{name}' has no pass {', '.join(sorted(unknown))}; its passes: {', '.join(p.name for p in passes)}")
    return [make_pass(p.name, {**_options_of(p), **options[p.name]}) if p.name in options else p for p in passes]


def _options_of(p: Pass) -> dict[str, Any]:
    return {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}


def resolve_pipeline(spec: str | Sequence[Pass] | None) -> list[Pass]:
    """A list of passes from a named pipeline, pipeline text or a list (None: the default pipeline).

    Text that is exactly a pipeline's name is that pipeline (``"reconstruct"`` is the whole
    reconstruct pipeline, not the pass alone).
    """
    if spec is None:
        return default_pipeline()
    if isinstance(spec, str):
        name = spec.strip()
        return PIPELINES.get(name)() if name in PIPELINES.names() else parse_pipeline(spec)
    if not isinstance(spec, (list, tuple)):
        raise PassError(f"pipeline: expected a name, pipeline text or a list of passes, got {type(spec).__name__}")
    passes: list[Pass] = []
    for i, item in enumerate(spec):
        if isinstance(item, Pass):
            passes.append(item)
        elif isinstance(item, str):  # one pass as text: "quantize{levels=16}"
            passes.extend(parse_pipeline(item))
        else:
            raise PassError(f"pipeline item {i}: expected an rramc.Pass or pass text such as 'quantize{{levels=16}}', "
                            f"got {type(item).__name__} {item!r}")
    if not passes:
        raise PassError("the pipeline is empty")
    return passes


_ITEM = re.compile(r"\s*([A-Za-z_][\w\-.]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def parse_pipeline(text: str) -> list[Pass]:
    """Build passes from ``"name,name{opt=value,opt=value},..."``."""
    passes, pos, text = [], 0, text.strip()
    while pos < len(text):
        match = _ITEM.match(text, pos)
        if not match or match.end() == pos:
            raise PassError(f"cannot parse pipeline {text!r} at position {pos}: expected name or name{{opt=value,...}}")
        passes.append(make_pass(match.group(1), _parse_options(match.group(1), match.group(2) or "")))
        pos = match.end()
    if not passes:
        raise PassError("the pipeline is empty")
    return passes


def load_pass_file(path: str | Path) -> list[str]:
    """Import the passes a local Python file defines and register them; returns their names.

    This runs the file's code, as ``python path`` would: it is the user's own pass. Every
    concrete :class:`Pass` subclass defined in the file (not merely imported into it) is
    registered under its ``name``; a name already taken is refused by the registry.
    """
    path = Path(path)
    if not path.is_file():
        raise PassError(f"--pass-file {path}: " + ("no such file" if not path.exists() else "not a file"))
    if path.suffix != ".py":
        raise PassError(f"--pass-file {path}: expected a Python file (.py) defining rramc.Pass subclasses")
    module_name = f"rramc_pass_file_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: any error it raises is theirs, reported with where it arose
        del sys.modules[module_name]
        where = ""
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        if isinstance(exc, SyntaxError):
            where = f" (line {exc.lineno})"
        elif frames:
            where = f" (line {frames[-1].lineno})"
        raise PassError(f"--pass-file {path}: importing it failed{where}: {type(exc).__name__}: {exc}") from None
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, Pass) and obj.__module__ == module_name and not inspect.isabstract(obj)]
    if not found:
        raise PassError(f"--pass-file {path}: defines no rramc.Pass subclass (a frozen dataclass with a name and a run method)")
    names = []
    for cls in found:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PassError(f"--pass-file {path}: pass class {cls.__name__} has no name (set name = \"my_pass\")")
        if name in PASSES.names() and getattr(PASSES.get(name), "__module__", None) == module_name:
            PASSES.unregister(name)  # the same file loaded again: its new class replaces the old one
        if name in PASSES.names():
            raise PassError(f"--pass-file {path}: pass '{name}' ({cls.__name__}) is already defined: {PASSES.origins()[name]}")
        PASSES.register(name, cls)
        names.append(name)
    return names


def _parse_options(pass_name: str, text: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise PassError(f"pass '{pass_name}': option '{item}' needs a value (name=value)")
        if key.strip() in options:
            raise PassError(f"pass '{pass_name}': option '{key.strip()}' is given twice")
        if not value.strip():
            raise PassError(f"pass '{pass_name}': option '{key.strip()}' has no value after '='")
        options[key.strip()] = value.strip()
    return options


def make_pass(name: str, options: dict[str, Any] | None = None) -> Pass:
    """Instantiate pass ``name``; string option values are converted to the option's type."""
    cls = PASSES.get(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, raw in (options or {}).items():
        if key not in fields:
            raise PassError(f"pass '{name}' has no option '{key}'; its options: {', '.join(fields) or 'none'}")
        values[key] = _convert(name, key, raw, hints[key], fields[key].metadata.get("choices"))
    return cls(**values)


def _convert(pass_name: str, key: str, raw: Any, hint: Any, choices: tuple[str, ...] | None) -> Any:
    where = f"pass '{pass_name}' option '{key}'"
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    kind = args[0] if args else hint
    if not isinstance(raw, str):
        value = raw
    elif optional and raw.lower() in ("none", "null"):
        return None
    elif kind is bool:
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise PassError(f"{where}: expected true or false, got {raw!r}")
        value = raw.lower() in ("true", "1", "yes")
    else:
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise PassError(f"{where}: expected {_type_name(hint)}, got {raw!r}") from None
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        if kind is float and isinstance(value, int):
            return float(value)
        raise PassError(f"{where}: expected {_type_name(hint)}, got {raw!r}")
    if choices and value not in choices:
        raise PassError(f"{where}: expected one of {', '.join(choices)}, got {raw!r}")
    return value


class PassInstrument:
    """Hooks around the passes of a :class:`PassManager` run (TVM's ``PassInstrument``).

    Every hook does nothing unless overridden. ``print-IR`` and timing are instruments; users add
    their own (a checker, a profiler, an IR dump to files) the same way.
    """

    def enter_pipeline(self, passes: Sequence[Pass], ctx: CompileContext) -> None:
        """Before the first pass."""

    def before_pass(self, p: Pass, graph: Graph, ctx: CompileContext) -> None:
        """Before ``p`` runs on ``graph``."""

    def after_pass(self, p: Pass, graph: Graph, ctx: CompileContext, seconds: float) -> None:
        """After ``p`` ran (and its result verified), ``seconds`` after it started."""

    def exit_pipeline(self, graph: Graph, ctx: CompileContext) -> None:
        """After the last pass."""


@dataclass
class PrintIR(PassInstrument):
    """Print the IR after every pass (``--print-ir``); ``complete`` prints every tensor value."""

    printer: Callable[[str, str], None] = lambda name, text: print(f"// IR after {name}\n{text}")
    complete: bool = False

    def after_pass(self, p: Pass, graph: Graph, ctx: CompileContext, seconds: float) -> None:
        self.printer(str(p), graph.to_text() if self.complete else str(graph))


@dataclass
class PassTimings(PassInstrument):
    """Wall time of every pass (``--time-passes``): ``timings`` holds (pass, seconds)."""

    timings: list[tuple[str, float]] = field(default_factory=list)

    def after_pass(self, p: Pass, graph: Graph, ctx: CompileContext, seconds: float) -> None:
        self.timings.append((p.name, seconds))


@dataclass
class PassManager:
    """Runs passes in order, verifying the IR after each, with instruments around them.

    ``skip`` names passes of the pipeline not to run; a failing pass is reported with the passes
    that ran before it.
    """

    passes: Sequence[Pass]
    skip: frozenset[str] = frozenset()
    instruments: Sequence[PassInstrument] = ()

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        graph.verify(after_pass=ctx.passes_run[-1] if ctx.passes_run else "import")
        unknown_skips = self.skip - {p.name for p in self.passes}
        if unknown_skips:
            raise PassError(f"cannot skip {sorted(unknown_skips)}: not in the pipeline {', '.join(p.name for p in self.passes)}")
        ctx.pipeline = [p for p in self.passes if p.name not in self.skip]
        for instrument in self.instruments:
            instrument.enter_pipeline(ctx.pipeline, ctx)
        for p in ctx.pipeline:
            ran = ", ".join(ctx.passes_run) or "none"
            for instrument in self.instruments:
                instrument.before_pass(p, graph, ctx)
            start = time.perf_counter()
            try:
                p.requires(graph, ctx)
                graph = p.run(graph, ctx)
            except RramcError as exc:
                raise type(exc)(f"pass '{p}' failed (passes run before it: {ran}): {exc}") from None
            except Exception as exc:
                raise PassError(f"pass '{p}' crashed (passes run before it: {ran}): {type(exc).__name__}: {exc}") from exc
            seconds = time.perf_counter() - start
            ctx.passes_run.append(str(p))
            graph.verify(after_pass=str(p))
            for instrument in self.instruments:
                instrument.after_pass(p, graph, ctx, seconds)
        for instrument in self.instruments:
            instrument.exit_pipeline(graph, ctx)
        return graph
