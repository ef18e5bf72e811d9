"""Golden tests of the built-in passes (xDSL/MLIR filecheck style): tests/golden/<pass>/*.rir.

Each file holds header comment lines, an input graph in IR text and, after a ``// EXPECTED`` line,
the graph the pipeline must produce (or an ``// ERROR: <regex>`` header for a pipeline that must
be refused). See tests/golden/README.md for the format. Structure, shapes, metadata and every
non-numeric attribute are compared exactly; tensors and float numbers with a tolerance (float32
results differ in the last bits across machines).

Regenerate the expected graphs after an intended change with

    RRAMC_UPDATE_GOLDENS=1 python -m pytest -q tests/test_golden.py

and review the diff (``git diff tests/golden``) before committing it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from rramc.datasets import Dataset, load_dataset
from rramc.errors import RramcError
from rramc.hardware import load_target
from rramc.ir import Attribute, Graph, parse_graph
from rramc.pipeline import PASSES, CompileContext, PassManager, resolve_pipeline

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE = os.environ.get("RRAMC_UPDATE_GOLDENS", "") not in ("", "0")
EXPECTED_MARK = "// EXPECTED"
DEFAULT_RTOL, DEFAULT_ATOL = 1e-5, 1e-6

_HEADER = re.compile(r"//\s*(RUN|TARGET|CALIBRATION|TRAINING|TOLERANCE|ERROR):\s*(.*?)\s*$")
_KEYWORD = re.compile(r"//\s*([A-Z][A-Z_]*):")
KEYWORDS = {"RUN", "TARGET", "CALIBRATION", "TRAINING", "TOLERANCE", "ERROR", "CHECKS"}
_UNIFORM = re.compile(r"uniform\(\s*(\d+)\s*,\s*seed\s*=\s*(\d+)\s*\)\Z")
_DIGITS = re.compile(r"digits\(\s*(\d+)\s*\)\Z")
_TOLERANCE = re.compile(r"rtol\s*=\s*([0-9.eE+-]+)\s*,\s*atol\s*=\s*([0-9.eE+-]+)\Z")


@dataclass
class Golden:
    path: Path
    run: str
    target: str = "ideal"
    calibration: tuple[int, int] | None = None  # (samples, seed)
    training: int | None = None  # digits samples
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    error: str | None = None
    input_text: str = ""
    expected_text: str | None = None

    @classmethod
    def read(cls, path: Path) -> Golden:
        text = path.read_text()
        lines = text.splitlines()
        marks = [i for i, line in enumerate(lines) if line.strip() == EXPECTED_MARK]
        if len(marks) > 1:
            raise ValueError(f"{path}: more than one '{EXPECTED_MARK}' line")
        split = marks[0] if marks else len(lines)
        values: dict[str, str] = {}
        for line in lines[:split]:
            keyword = _KEYWORD.match(line.strip())
            if keyword and keyword.group(1) not in KEYWORDS:  # a misspelt header must not pass as a comment
                raise ValueError(f"{path}: unknown header '{keyword.group(1)}:'; known: {', '.join(sorted(KEYWORDS))}")
            match = _HEADER.match(line.strip())
            if match:
                if match.group(1) in values:
                    raise ValueError(f"{path}: header {match.group(1)} is given twice")
                values[match.group(1)] = match.group(2)
        if "RUN" not in values:
            raise ValueError(f"{path}: no '// RUN: <pipeline>' line")
        golden = cls(path, values["RUN"], target=values.get("TARGET", "ideal"), error=values.get("ERROR"),
                     input_text="\n".join(lines[:split]) + "\n",
                     expected_text="\n".join(lines[split + 1:]).strip() + "\n" if marks else None)
        if "CALIBRATION" in values:
            match = _UNIFORM.match(values["CALIBRATION"])
            if not match:
                raise ValueError(f"{path}: CALIBRATION must be uniform(<n>, seed=<s>), got {values['CALIBRATION']!r}")
            golden.calibration = (int(match.group(1)), int(match.group(2)))
        if "TRAINING" in values:
            match = _DIGITS.match(values["TRAINING"])
            if not match:
                raise ValueError(f"{path}: TRAINING must be digits(<n>), got {values['TRAINING']!r}")
            golden.training = int(match.group(1))
        if "TOLERANCE" in values:
            match = _TOLERANCE.match(values["TOLERANCE"])
            if not match:
                raise ValueError(f"{path}: TOLERANCE must be rtol=<r>, atol=<a>, got {values['TOLERANCE']!r}")
            golden.rtol, golden.atol = float(match.group(1)), float(match.group(2))
        if golden.error is not None and golden.expected_text is not None:
            raise ValueError(f"{path}: a golden expects either an error or a graph, not both")
        if golden.error is None and golden.expected_text is None and not UPDATE:
            raise ValueError(f"{path}: no '{EXPECTED_MARK}' section and no '// ERROR:' header "
                             "(run with RRAMC_UPDATE_GOLDENS=1 to write the expected graph)")
        return golden

    def context(self, graph: Graph) -> CompileContext:
        target = load_target(self.target)
        calibration = None
        if self.calibration is not None:
            n, seed = self.calibration
            (graph_input,) = graph.inputs
            calibration = torch.rand((n, *graph_input.shape), generator=torch.Generator().manual_seed(seed))
        training: Dataset | None = None
        if self.training is not None:
            training = load_dataset("digits", "train").take(self.training)
        return CompileContext(target, calibration, training_data=training, seed=0)

    def write_expected(self, graph: Graph) -> None:
        self.path.write_text(self.input_text + EXPECTED_MARK + "\n" + graph.to_text() + "\n")


def golden_files() -> list[Path]:
    return sorted(GOLDEN_DIR.glob("*/*.rir"))


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """One thread and deterministic kernels while a golden runs (restored afterwards)."""
    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)


def run_golden(golden: Golden) -> tuple[Graph, CompileContext]:
    graph = parse_graph(golden.input_text)
    ctx = golden.context(graph)
    with deterministic_torch():
        result = PassManager(resolve_pipeline(golden.run)).run(graph, ctx)
    return result, ctx


# --- comparison ----------------------------------------------------------------------------------


def compare_values(where: str, actual: Any, expected: Any, rtol: float, atol: float) -> list[str]:
    """Differences between two attribute values: numbers within tolerance, everything else exactly.

    Tensors: same dtype and shape, values within ``rtol`` and ``atol`` times the tensor's largest
    magnitude (conductances are ~1e-7 S, weights ~1: one absolute tolerance would not fit both).
    """
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            return [f"{where}: expected a tensor, got {actual!r}"]
        if actual.dtype != expected.dtype or actual.shape != expected.shape:
            return [f"{where}: expected {expected.dtype}{list(expected.shape)}, got {actual.dtype}{list(actual.shape)}"]
        if not expected.is_floating_point():
            return [] if torch.equal(actual, expected) else [f"{where}: values differ"]
        a, e = actual.double(), expected.double()
        scale = float(e.abs().max()) if e.numel() else 0.0
        close = torch.isclose(a, e, rtol=rtol, atol=atol * scale, equal_nan=True)
        if bool(close.all()):
            return []
        worst = int((a - e).abs().nan_to_num(math.inf).argmax())
        return [f"{where}: {int((~close).sum())} of {e.numel()} values differ beyond rtol={rtol}, atol={atol}·{scale:.3g}; "
                f"worst at flat index {worst}: got {float(a.flatten()[worst])!r}, expected {float(e.flatten()[worst])!r}"]
    if isinstance(expected, float) and type(actual) is float:
        if math.isnan(expected) and math.isnan(actual):
            return []
        if math.isclose(actual, expected, rel_tol=rtol, abs_tol=atol * 1e-3):
            return []
        return [f"{where}: got {actual!r}, expected {expected!r} (rtol={rtol})"]
    if type(actual) is not type(expected):
        return [f"{where}: got {type(actual).__name__} {actual!r}, expected {type(expected).__name__} {expected!r}"]
    if isinstance(expected, Attribute):
        return compare_values(f"{where}#{expected.kind}", actual.fields(), expected.fields(), rtol, atol)
    if isinstance(expected, dict):
        if list(actual) != list(expected):
            return [f"{where}: keys {list(actual)}, expected {list(expected)}"]
        return [d for k in expected for d in compare_values(f"{where}.{k}", actual[k], expected[k], rtol, atol)]
    if isinstance(expected, (list, tuple)):
        if len(actual) != len(expected):
            return [f"{where}: got {actual!r}, expected {expected!r}"]
        return [d for i, (a, e) in enumerate(zip(actual, expected)) for d in compare_values(f"{where}[{i}]", a, e, rtol, atol)]
    return [] if actual == expected else [f"{where}: got {actual!r}, expected {expected!r}"]


def graph_differences(actual: Graph, expected: Graph, rtol: float, atol: float) -> list[str]:
    """Every difference between two graphs (empty: they match)."""
    names, wanted = [n.name for n in actual], [n.name for n in expected]
    if names != wanted:
        return [f"nodes {names}, expected {wanted}"]
    problems = []
    for a, e in zip(actual, expected):
        where = f"%{e.name}"
        if a.op.kind != e.op.kind:
            problems.append(f"{where}: op {a.op.kind}, expected {e.op.kind}")
            continue
        for what, got, want in (("operands", a.inputs, e.inputs), ("shape", a.shape, e.shape), ("meta", a.meta, e.meta)):
            if got != want:
                problems.append(f"{where} {what}: got {got}, expected {want}")
        problems += compare_values(f"{where} {{attributes}}", a.op.attributes(), e.op.attributes(), rtol, atol)
    return problems


# --- the goldens ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", golden_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden(path: Path) -> None:
    golden = Golden.read(path)
    if golden.error is not None:
        with pytest.raises(RramcError, match=golden.error):
            run_golden(golden)
        return
    result, ctx = run_golden(golden)
    # emit hands over a copy of the graph it was given; every other pass leaves no graph artifact
    if "graph" in ctx.artifacts:
        assert ctx.artifacts["graph"] is not result and ctx.artifacts["graph"].to_text() == result.to_text()
        assert ctx.artifacts["pipeline"] == ",".join(ctx.passes_run)
    if UPDATE:
        golden.write_expected(result)
        golden = Golden.read(path)
    assert golden.expected_text is not None
    expected = parse_graph(golden.expected_text)
    assert expected.to_text() + "\n" == golden.expected_text, (
        f"{path}: the expected graph is not in canonical IR text (regenerate it with RRAMC_UPDATE_GOLDENS=1)")
    problems = graph_differences(result, expected, golden.rtol, golden.atol)
    assert not problems, f"{path.relative_to(GOLDEN_DIR.parent)} ({golden.run}) differs from the expected graph:\n  " + \
        "\n  ".join(problems) + "\nIf the change is intended, regenerate with RRAMC_UPDATE_GOLDENS=1 and review the diff."


def test_every_builtin_pass_has_goldens() -> None:
    builtin = {"canonicalize", "quantize", "tile", "calibrate", "reconstruct", "emit"}
    assert builtin <= set(PASSES.names())
    for name in sorted(builtin):
        files = sorted((GOLDEN_DIR / name).glob("*.rir"))
        assert files, f"no golden for pass '{name}' in {GOLDEN_DIR / name}"
        runs = [Golden.read(f) for f in files]
        # each pass's goldens exercise that pass and expect a graph at least once
        assert all(name in [p.name for p in resolve_pipeline(g.run)] for g in runs), name
        assert any(g.error is None for g in runs), name


def test_the_comparison_catches_what_it_must() -> None:
    """The checker itself: a tensor off by more than the tolerance, a changed attribute or meta fails."""
    text = (GOLDEN_DIR / "quantize" / "differential_levels.rir").read_text()
    expected = parse_graph(text.split(EXPECTED_MARK)[1])
    same = parse_graph(expected.to_text())
    assert graph_differences(same, expected, DEFAULT_RTOL, DEFAULT_ATOL) == []
    node = next(n for n in same if n.op.kind == "xbar.linear")
    # float32 last-bit noise passes ...
    node.op = node.op.replace(g_pos=node.op.g_pos * (1 + 1e-7))
    assert graph_differences(same, expected, DEFAULT_RTOL, DEFAULT_ATOL) == []
    # ... one conductance a level off does not
    g_pos = node.op.g_pos.clone()
    g_pos[0, 0] += 3.2e-6
    node.op = node.op.replace(g_pos=g_pos)
    assert any("g_pos" in p for p in graph_differences(same, expected, DEFAULT_RTOL, DEFAULT_ATOL))
    for change, word in ((dict(adc_bits=7), "adc_bits"), (dict(weight_encoding="offset"), "weight_encoding"),
                         (dict(bias=None), "bias")):
        changed = parse_graph(expected.to_text())
        n = next(n for n in changed if n.op.kind == "xbar.linear")
        n.op = n.op.replace(**change)
        assert any(word in p for p in graph_differences(changed, expected, DEFAULT_RTOL, DEFAULT_ATOL)), word
    changed = parse_graph(expected.to_text())
    next(n for n in changed if n.op.kind == "xbar.linear").meta["extra"] = 1
    assert any("meta" in p for p in graph_differences(changed, expected, DEFAULT_RTOL, DEFAULT_ATOL))


def test_reconstruct_golden_reproduces_on_reruns() -> None:
    """Training is deterministic: two runs give bit-identical graphs (the looser tolerance of the
    reconstruct goldens is for other machines' float rounding, not for run-to-run noise)."""
    for path in sorted((GOLDEN_DIR / "reconstruct").glob("*.rir")):
        golden = Golden.read(path)
        if golden.error is not None:
            continue
        first, _ = run_golden(golden)
        second, _ = run_golden(golden)
        assert first.to_text() == second.to_text(), path


@pytest.mark.parametrize(
    ("golden", "wrong_run", "caught"),
    [
        ("canonicalize/batch_norm_fold", "canonicalize{fold_batch_norm=false}", "nodes"),
        ("quantize/differential_levels", "quantize{levels=0}", "g_pos"),
        ("quantize/differential_levels", "quantize{granularity=layer}", "conductance_per_weight"),
        ("quantize/offset_encoding", "quantize", "weight_encoding"),
        ("tile/balance", "tile{rows=2,cols=2}", "row_splits"),
        ("tile/grid", "tile{rows=2,cols=2}", "col_splits"),
        ("calibrate/adc_ranges", "calibrate{adc_percentile=90}", "adc_range"),
        ("calibrate/adc_ranges", "calibrate{input_percentile=90}", "input_range"),
        ("calibrate/least_squares", "calibrate", "offset"),
        ("reconstruct/digits_rram_a", "reconstruct{epochs=0,batch_size=16,optimizer=sgd,lr=1.0}", "weight"),
        ("reconstruct/digits_rram_a", "reconstruct{epochs=1,batch_size=16,optimizer=sgd,lr=1.0,clip_percentile=99}", "high"),
    ],
)
def test_goldens_catch_a_wrong_pass(golden: str, wrong_run: str, caught: str) -> None:
    """The goldens are sharp: the same input through a pass configured wrongly does not match."""
    path = GOLDEN_DIR / f"{golden}.rir"
    right = Golden.read(path)
    assert right.expected_text is not None
    wrong = Golden.read(path)
    wrong.run = wrong_run
    result, _ = run_golden(wrong)
    problems = graph_differences(result, parse_graph(right.expected_text), right.rtol, right.atol)
    assert any(caught in p for p in problems), problems


def test_a_batch_norm_fold_that_forgets_eps_fails_its_golden(monkeypatch: pytest.MonkeyPatch) -> None:
    from rramc.ir import BatchNorm

    def without_eps(self: BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
        scale = torch.rsqrt(self.var) * (self.weight if self.weight is not None else 1.0)
        shift = -self.mean * scale + (self.bias if self.bias is not None else 0.0)
        return scale, shift

    monkeypatch.setattr(BatchNorm, "scale_and_shift", without_eps)
    golden = Golden.read(GOLDEN_DIR / "canonicalize" / "batch_norm_fold.rir")
    assert golden.expected_text is not None
    result, _ = run_golden(golden)
    problems = graph_differences(result, parse_graph(golden.expected_text), golden.rtol, golden.atol)
    assert any("%conv {attributes}.weight" in p for p in problems), problems
