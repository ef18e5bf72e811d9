"""Property tests of the two loaders a user feeds files to: targets (YAML) and executables.

Whatever the file holds, loading it either succeeds or raises an :class:`~rramc.errors.RramcError`
(:class:`~rramc.errors.TargetError`, :class:`~rramc.errors.ExecutableFormatError`) whose message
names the file: never another exception. An executable whose bytes were changed in any way is
refused, except for the one kind of change that cannot alter what it computes (see
:func:`_harmless`); one that loads after such a change computes exactly what the original does.

Bounded for CI: the whole file runs in well under a minute on two cores.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import rramc
from rramc.errors import ExecutableFormatError, RramcError, TargetError
from rramc.hardware.target import Target, load_target

pytestmark = pytest.mark.filterwarnings("ignore::rramc.errors.RramcWarning")  # tiny calibration batches, on purpose

RRAM_A_YAML = (resources.files("rramc.targets") / "rram_a.yaml").read_text(encoding="utf-8")
RRAM_A = yaml.safe_load(RRAM_A_YAML)

# Deterministic in CI; RRAMC_PROPERTY_EXAMPLES=5000 explores further, with fresh random examples.
STRESS = int(os.environ.get("RRAMC_PROPERTY_EXAMPLES", "0"))
SETTINGS = settings(max_examples=STRESS or 150, deadline=None, derandomize=not STRESS, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- targets ---------------------------------------------------------------------------------

SECTION_FIELDS = {
    "device": ["model", "nonlinearity_k", "k_voltage", "b", "exponent", "v_ref", "file", "voltages", "states", "currents",
               "nonlinearity_k_hrs", "nonlinearity_k_lrs", "g_hrs", "g_lrs"],
    "conductance": ["g_min", "g_max", "levels", "compliance"],
    "crossbar": ["rows", "cols", "weight_encoding", "input_encoding", "read_voltage", "dac_bits", "adc_bits", "sense_range"],
    "wires": ["model", "word_line_resistance", "bit_line_resistance", "driver_resistance", "sense_resistance",
              "word_lines_driven_from", "bit_lines_sensed_at", "method", "tolerance", "max_iterations"],
    "nonidealities": ["programming_sigma", "read_noise_sigma", "stuck_off_fraction", "stuck_on_fraction"],
}
SECTIONS = ["name", "description", *SECTION_FIELDS]
FIELDS = sorted({f for fields in SECTION_FIELDS.values() for f in fields})
WORDS = ["sinh", "linear", "power", "table", "sinh_state", "ideal", "resistive", "slope", "differential", "offset",
         "amplitude", "exact", "first_order", "left", "right", "bottom", "iv.csv", "missing.csv", "rram_a"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 1, 2, 3, 8, 128, 65536, 65537, 2**63, -(2**63) - 1, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1e-12, 2e-8, 2e-6, 1e-3, 0.5, 1.0, 2.0, 7.5, 10.0, 100.0, 1e4, 1e300,
                     1.7976931348623157e308, math.nan, math.inf, -math.inf]),
    st.sampled_from(WORDS),
    st.text(max_size=12),
)
EDGES = st.sampled_from([10**400, -(10**400), 2**63, -1, 0, True, None, math.nan, math.inf, -math.inf, 1.7976931348623157e308,
                         5e-324, -0.0, "1e4", "", [], {}])
"""Values at or beyond the edge of every field's range, and of what a float holds."""
edge_or_scalar = st.booleans().flatmap(lambda edge: EDGES if edge else scalars)
keys = st.one_of(st.sampled_from(SECTIONS + FIELDS), st.text(max_size=10))
yaml_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=6)),
    max_leaves=16,
)
number_lists = st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.5, 1.0, 1e-8, 2e-6]),
                                  scalars), min_size=0, max_size=5)


PLAUSIBLE: dict[str, list[Any]] = {
    "g_min": [0.0, 1e-8, 2e-8, 1e-6], "g_max": [2e-6, 1e-4, 1e-8, 1.0], "levels": [None, 2, 32, 65536],
    "compliance": [None, 2e-5, 1e-3, 1.0], "rows": [1, 16, 128, 65536], "cols": [2, 16, 128], "read_voltage": [0.2, 1.0, 10.0],
    "weight_encoding": ["differential", "offset"], "input_encoding": ["amplitude"], "dac_bits": [None, 1, 8, 16],
    "adc_bits": [None, 2, 8, 16], "sense_range": [None, 2.5e-3, 1.0], "nonlinearity_k": [2.0, 7.5, 70.0, 1e4],
    "k_voltage": [None, 0.01, 1.0, 100.0], "b": [0.0, 4.0, 30.0, 100.0], "exponent": [0.5, 1.0, 10.0], "v_ref": [1e-30, 0.5, 1.0],
    "file": ["iv.csv", "missing.csv", ".", ""], "nonlinearity_k_hrs": [2.0, 20.0, 1e4], "nonlinearity_k_lrs": [2.0, 5.0, 1e4],
    "g_hrs": [1e-12, 2e-8, 1.0], "g_lrs": [0.0, 2e-6, 1.0], "voltages": [[0.0, 0.5, 1.0], [0.0, 1.0], [1.0, 0.0]],
    "states": [[1e-8, 2e-6], [2e-6, 1e-8], [0.0, 1.0]], "currents": [[[0.0, 0.0], [5e-9, 1e-6], [1e-8, 2e-6]], [[0.0, 0.0], [1e-8, 2e-6]]],
    "word_line_resistance": [0.0, 1.0, 1e6], "bit_line_resistance": [0.0, 2.5], "driver_resistance": [0.0, 1e9],
    "sense_resistance": [0.0, 10.0], "word_lines_driven_from": ["left", "right"], "bit_lines_sensed_at": ["bottom", "top"],
    "method": ["exact", "first_order"], "tolerance": [1e-9, 1e-3], "max_iterations": [1, 1000],
    "programming_sigma": [0.0, 0.05, 1.0], "read_noise_sigma": [0.0, 0.01, 1.0], "stuck_off_fraction": [0.0, 0.5, 1.0],
    "stuck_on_fraction": [0.0, 0.5, 1.0],
}
DEVICE_FIELDS = {"sinh": ["nonlinearity_k", "k_voltage", "b"], "linear": [], "power": ["exponent", "v_ref"],
                 "sinh_state": ["nonlinearity_k_hrs", "nonlinearity_k_lrs", "k_voltage", "g_hrs", "g_lrs"],
                 "table": ["file", "voltages", "states", "currents"]}
REQUIRED = {"g_min", "g_max", "rows", "cols", "read_voltage"}


def _value(name: str) -> st.SearchStrategy[Any]:
    """Mostly a plausible value of the field (valid or at the edge of its range), else anything."""
    return _mostly(st.sampled_from(PLAUSIBLE[name]), _mostly(EDGES, st.one_of(scalars, yaml_values)))


def _mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` seven times in eight, else ``other`` (``one_of`` would weigh each of their branches alike)."""
    return st.tuples(st.booleans(), st.booleans(), st.booleans()).flatmap(lambda b: usual if any(b) else other)


def _fields(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({n: _value(n) for n in names if n in REQUIRED},
                                 optional={n: _value(n) for n in names if n not in REQUIRED})


def _section(name: str) -> st.SearchStrategy[Any]:
    """A section of its own fields, an unknown field or two added, or any value at all."""
    if name in ("device", "wires"):
        models = DEVICE_FIELDS if name == "device" else {"ideal": [], "resistive": SECTION_FIELDS["wires"][1:]}
        own = st.sampled_from(sorted(models)).flatmap(
            lambda model: _fields(models[model]).map(lambda fields: {"model": model, **fields}))
    else:
        own = _fields(SECTION_FIELDS[name])
    extra = st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), scalars, min_size=1, max_size=2)
    return _mostly(own, st.one_of(st.tuples(own, extra).map(lambda t: {**t[1], **t[0]}), yaml_values))


target_like = st.fixed_dictionaries(
    {"name": _mostly(st.just("x"), scalars),
     **{section: _section(section) for section in ("device", "conductance", "crossbar")}},
    optional={"description": _mostly(st.text(max_size=20), scalars),
              **{section: _section(section) for section in ("wires", "nonidealities")}},
)
"""Mappings with the required sections, of mostly plausible fields: most reach the cross-field checks."""


@st.composite
def rram_a_mutations(draw: st.DrawFn) -> dict[str, Any]:
    """rram_a with a few fields dropped, replaced by random values or added, or a section replaced."""
    data = json.loads(json.dumps(RRAM_A))
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(data)))
        action = draw(st.sampled_from(["drop", "replace", "add", "replace_section", "drop_section"]))
        if action == "drop_section":
            del data[section]
        elif action == "replace_section":
            data[section] = draw(yaml_values)
        elif not isinstance(data[section], dict) or not data[section] or action == "add":
            if isinstance(data[section], dict):
                data[section][draw(st.sampled_from(SECTION_FIELDS.get(section, FIELDS)))] = draw(edge_or_scalar)
        elif action == "drop":
            del data[section][draw(st.sampled_from(sorted(data[section])))]
        else:
            data[section][draw(st.sampled_from(sorted(data[section])))] = draw(edge_or_scalar)
        if not data:
            break
    return data


@st.composite
def rram_a_text_edits(draw: st.DrawFn) -> str:
    """The rram_a file with lines deleted, duplicated (duplicate keys) or characters replaced."""
    lines = RRAM_A_YAML.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "char", "number"]))
        if action == "delete":
            del lines[i]
        elif action == "duplicate":
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif action == "char" and lines[i]:
            j = draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:j] + draw(st.characters()) + lines[i][j + 1:]
        elif action == "number" and ":" in lines[i]:
            lines[i] = lines[i].split(":")[0] + ": " + draw(st.sampled_from(["1e4", "1.0e+4", "-1", ".nan", ".inf", "1e400", "0x10",
                                                                            "0o7", "1_000", "!!binary aGVsbG8=", "[1, 2]", "~"]))
        if not lines:
            break
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("targets")
    volts = [0.0, 0.5, 1.0]
    (d / "iv.csv").write_text("voltage,1e-8,2e-6\n" + "\n".join(f"{v},{1e-8 * v},{2e-6 * v}" for v in volts) + "\n")
    return d


def _loads_or_refuses(path: Path) -> None:
    try:
        target = load_target(path)
    except RramcError as exc:
        assert str(path) in str(exc), f"the message does not name the file: {exc}"
        return
    assert isinstance(target, Target)
    # What loads must also round-trip through its mapping (what executables embed).
    assert Target.from_mapping(target.to_mapping(), "again") == target


def _write_yaml(directory: Path, data: Any) -> Path:
    path = directory / "t.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@SETTINGS
@given(data=st.one_of(target_like, target_like, target_like, yaml_values,
                      st.dictionaries(keys, yaml_values, min_size=1, max_size=2).flatmap(
                          lambda extra: target_like.map(lambda d: {**extra, **d}))))
def test_any_yaml_mapping_loads_or_is_refused(data: Any, target_dir: Path) -> None:
    _loads_or_refuses(_write_yaml(target_dir, data))


@SETTINGS
@given(data=rram_a_mutations())
def test_mutations_of_a_real_target_load_or_are_refused(data: dict[str, Any], target_dir: Path) -> None:
    _loads_or_refuses(_write_yaml(target_dir, data))


@SETTINGS
@given(text=rram_a_text_edits())
def test_text_edits_of_a_real_target_load_or_are_refused(text: str, target_dir: Path) -> None:
    path = target_dir / "t.yaml"
    path.write_text(text, encoding="utf-8")
    _loads_or_refuses(path)


@SETTINGS
@given(content=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_arbitrary_text_or_bytes_as_a_target_file_are_refused(content: str | bytes, target_dir: Path) -> None:
    path = target_dir / "t.yaml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    _loads_or_refuses(path)


@SETTINGS
@given(spec=st.one_of(st.none(), st.integers(), st.floats(), st.booleans(), st.binary(max_size=8),
                      st.dictionaries(st.text(max_size=5), scalars, max_size=3), st.lists(scalars, max_size=3)))
def test_load_target_refuses_what_is_not_a_name_a_path_or_a_target(spec: Any) -> None:
    with pytest.raises(RramcError, match="builtin target name|YAML"):
        load_target(spec)


csv_cells = st.one_of(st.sampled_from(["0", "0.0", "0.5", "1", "1.0", "1e-8", "2e-6", "5e-9", "1e-6", "nan", "inf", "-inf", "-1",
                                       "1e400", "", " ", "x", "voltage", "# c"]),
                      st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=6))


@SETTINGS
@given(content=st.one_of(
    st.lists(st.lists(csv_cells, min_size=0, max_size=4), max_size=5).map(lambda rows: "\n".join(",".join(r) for r in rows)),
    st.lists(st.lists(csv_cells, min_size=3, max_size=3), min_size=3, max_size=5).map(
        lambda rows: "voltage,1e-8,2e-6\n" + "\n".join(",".join(r) for r in rows)),
    st.binary(max_size=64),
))
def test_any_iv_table_loads_or_is_refused(content: str | bytes, target_dir: Path) -> None:
    (target_dir / "fuzz_iv.csv").write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
    data = {**RRAM_A, "device": {"model": "table", "file": "fuzz_iv.csv"}}
    data["conductance"] = {**data["conductance"], "compliance": None}
    data["crossbar"] = {**data["crossbar"], "sense_range": None}
    _loads_or_refuses(_write_yaml(target_dir, data))


# --- the cases the properties and the bug reports found, by name --------------------------------


def _target_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _rram_a_with(**sections: dict[str, Any]) -> str:
    data = json.loads(json.dumps(RRAM_A))
    for section, changes in sections.items():
        data[section] = {k: v for k, v in {**data[section], **changes}.items() if v != "DROP"}
    return yaml.safe_dump(data)


def test_duplicate_keys_are_refused_with_both_lines(tmp_path: Path) -> None:
    text = RRAM_A_YAML.replace("  rows: 128\n", "  rows: 128\n  read_voltage: 0.5\n")
    path = _target_file(tmp_path, text)
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("  read_voltage: 0.5")) + 1
    second = next(i for i, line in enumerate(lines) if line.startswith("  read_voltage: 1.0")) + 1
    with pytest.raises(TargetError) as info:
        load_target(path)
    message = str(info.value)
    assert str(path) in message and "duplicate key 'read_voltage'" in message and f"lines {first} and {second}" in message
    # a duplicate section too, and a merge key overriding a merged one is not a duplicate
    with pytest.raises(TargetError, match="duplicate key 'name' at lines 1 and 2"):
        load_target(_target_file(tmp_path, "name: a\nname: b\n"))
    merged = RRAM_A_YAML.replace("crossbar:\n", "base: &base {rows: 64, cols: 64}\ncrossbar:\n  <<: *base\n", 1)
    with pytest.raises(TargetError, match="unknown section.*base"):  # loads past the merge; 'base' is no section
        load_target(_target_file(tmp_path, merged))


def test_exponents_without_a_dot_or_sign_are_numbers(tmp_path: Path) -> None:
    text = RRAM_A_YAML.replace("g_min: 2.0e-8", "g_min: 2e-8").replace("sense_range: 2.5e-3", "sense_range: 25e-4")
    target = load_target(_target_file(tmp_path, text))
    assert target.conductance.g_min == 2e-8 and target.crossbar.sense_range == 25e-4


@pytest.mark.parametrize(("device", "crossbar", "words"), [
    ({"model": "sinh", "b": 100.0, "nonlinearity_k": "DROP", "k_voltage": "DROP"}, {"read_voltage": 10.0},
     ["field 'device'", "g_min", "inf A", "device.b = 100", "crossbar.read_voltage = 10 V"]),
    ({"model": "sinh", "nonlinearity_k": 1e4, "k_voltage": 0.01}, {},
     ["field 'device'", "inf A", "device.nonlinearity_k = 10000", "device.k_voltage = 0.01"]),
    ({"model": "sinh", "b": 100.0, "nonlinearity_k": "DROP", "k_voltage": "DROP"}, {},  # finite in float64, not in float32
     ["field 'device'", "float32", "device.b = 100"]),
    ({"model": "power", "exponent": 10.0, "v_ref": 1e-30, "nonlinearity_k": "DROP", "k_voltage": "DROP"}, {},
     ["field 'device'", "inf A", "device.v_ref = 1e-30"]),
])
def test_targets_whose_currents_overflow_are_refused(tmp_path: Path, device: dict[str, Any], crossbar: dict[str, Any],
                                                     words: list[str]) -> None:
    """Each field in its range, together beyond any float: refused when loaded, with or without
    the current limits (which used to be the only check, and only when declared)."""
    for limits in ({}, {"compliance": None}):
        path = _target_file(tmp_path, _rram_a_with(device=device, crossbar={**crossbar, "sense_range": None},
                                                   conductance=limits))
        with pytest.raises(TargetError) as info:
            load_target(path)
        assert all(w in str(info.value) for w in [str(path), *words]), str(info.value)


def test_read_currents_that_do_not_rise_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "flat.csv"
    path.write_text("voltage,1e-8,2e-6\n0,0,0\n1.0,1e-6,1e-6\n")
    with pytest.raises(TargetError, match="must rise with G"):
        load_target(_target_file(tmp_path, _rram_a_with(device={"model": "table", "file": "flat.csv", "nonlinearity_k": "DROP",
                                                                "k_voltage": "DROP"})))


@pytest.mark.parametrize(("row", "column", "words"), [
    ("0.5,5e-9,nan", 3, ["line 4, column 3", "state 2e-6 current", "'nan'"]),
    ("inf,5e-9,1e-6", 1, ["line 4, column 1", "voltage", "'inf'"]),
    ("0.5,5e-9,1e-6,7", 0, ["line 4", "4 values", "every row needs 3"]),
    ("0.5,5e-9,abc", 3, ["line 4, column 3", "not a number", "'abc'"]),
])
def test_a_bad_iv_table_names_its_file_line_and_column(tmp_path: Path, row: str, column: int, words: list[str]) -> None:
    csv_path = tmp_path / "m_iv.csv"
    csv_path.write_text(f"voltage,1e-8,2e-6\n# a comment line\n0,0,0\n{row}\n1.0,1e-8,2e-6\n")
    path = _target_file(tmp_path, _rram_a_with(device={"model": "table", "file": "m_iv.csv", "nonlinearity_k": "DROP",
                                                       "k_voltage": "DROP"}, conductance={"compliance": None}))
    with pytest.raises(TargetError) as info:
        load_target(path)
    assert all(w in str(info.value) for w in [str(path), "device.file", str(csv_path), *words]), str(info.value)


def test_an_inline_table_with_nan_is_refused() -> None:
    data = {**RRAM_A, "device": {"model": "table", "voltages": [0.0, 1.0], "states": [1e-8, 2e-6],
                                 "currents": [[0.0, 0.0], [1e-8, math.nan]]}}
    with pytest.raises(TargetError, match=r"'device.currents': row 1 \(at 1 V\), entry 1: nan"):
        Target.from_mapping(data, "inline")


def test_load_target_says_what_it_accepts() -> None:
    with pytest.raises(TargetError) as info:
        load_target(RRAM_A)  # type: ignore[arg-type]
    assert all(w in str(info.value) for w in ["builtin target name", "rram_a", "YAML file", "Target", "got {", "(dict)",
                                              "Target.from_mapping"]), str(info.value)
    for spec in (None, 3, b"rram_a"):
        with pytest.raises(TargetError, match=f"got {re.escape(repr(spec))} \\({type(spec).__name__}\\)"):
            load_target(spec)  # type: ignore[arg-type]
    with pytest.raises(TargetError, match="empty"):
        load_target("")
    assert load_target(Target.from_mapping(RRAM_A, "mapping")) == load_target("rram_a")


# --- executables -----------------------------------------------------------------------------


class Compiled:
    """A tiny executable's bytes, a batch and what the executable computes on it."""

    def __init__(self, data: bytes, x: torch.Tensor, expected: torch.Tensor) -> None:
        self.data, self.x, self.expected = data, x, expected

    def __repr__(self) -> str:  # hypothesis prints the test's arguments on a failure
        return f"Compiled({len(self.data)} bytes)"


@pytest.fixture(scope="module")
def executable(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    torch.manual_seed(0)
    exe = rramc.compile(torch.nn.Sequential(torch.nn.Linear(8, 4)), "rram_a", calibration_data=torch.rand(32, 8),
                        input_range=(0, 1))
    path = exe.save(tmp_path_factory.mktemp("exe") / "tiny.rramx")
    x = torch.rand(6, 8)
    return Compiled(path.read_bytes(), x, rramc.load_executable(path)(x))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scratch")


def _header_end(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


@st.composite
def corruptions(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` changed by one to three edits: flipped bits, a truncation, inserted or deleted
    bytes, or a stretch overwritten (anywhere, or in the length prefix or the JSON header)."""
    out = bytearray(data)
    header_end = _header_end(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "flip_header", "truncate", "insert", "delete", "overwrite", "overwrite_header",
                                     "length"]))
        n = len(out)
        if kind in ("flip", "flip_header") and n:
            i = draw(st.integers(0, (min(n, header_end) if kind == "flip_header" else n) - 1))
            out[i] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del out[draw(st.integers(0, max(n - 1, 0))):]
        elif kind == "insert":
            i = draw(st.integers(0, n))
            out[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete" and n:
            i = draw(st.integers(0, n - 1))
            del out[i:i + draw(st.integers(1, 16))]
        elif kind in ("overwrite", "overwrite_header") and n:
            i = draw(st.integers(0, (min(n, header_end) if kind == "overwrite_header" else n) - 1))
            patch = draw(st.one_of(st.binary(min_size=1, max_size=16),
                                   st.sampled_from([b'"', b"}", b"{", b"0", b"9", b"F64", b"I32", b"[]", b" ", b"\\"])))
            out[i:i + len(patch)] = patch
        elif kind == "length" and n >= 8:
            (length,) = struct.unpack("<Q", out[:8])
            out[:8] = struct.pack("<Q", max(0, length + draw(st.integers(-16, 16))) % 2**64)
    return bytes(out)


def _harmless(original: bytes, changed: bytes) -> bool:
    """A change that cannot alter what the executable computes: the safetensors header (the JSON
    between the length prefix and the tensor data) parses to the same value (only its whitespace,
    including the space padding, changed) and the tensor data is byte for byte the same."""
    try:
        a, b = _header_end(original), _header_end(changed)
        return (changed[b:] == original[a:]
                and json.loads(changed[8:b]) == json.loads(original[8:a]))
    except (ValueError, UnicodeDecodeError, struct.error):
        return False


@settings(SETTINGS, max_examples=STRESS or 300)
@given(data=st.data())
def test_a_changed_executable_is_refused(data: st.DataObject, executable: Compiled, scratch: Path) -> None:
    original, x, expected = executable.data, executable.x, executable.expected
    changed = data.draw(corruptions(original), label="changed")
    assume(changed != original)
    path = scratch / "corrupt.rramx"
    path.write_bytes(changed)
    try:
        loaded = rramc.load_executable(path)
    except ExecutableFormatError as exc:
        assert str(path) in str(exc), f"the message does not name the file: {exc}"
        return
    assert _harmless(original, changed), "a changed executable loaded"
    assert torch.equal(loaded(x), expected)


def test_a_respaced_header_is_harmless(executable: Compiled, tmp_path: Path) -> None:
    """The one change that loads: the header's JSON re-spaced (what a tool that rewrites it writes)."""
    end = _header_end(executable.data)
    header = json.dumps(json.loads(executable.data[8:end]), indent="\t").encode()
    respaced = struct.pack("<Q", len(header)) + header + executable.data[end:]
    assert respaced != executable.data and _harmless(executable.data, respaced)
    path = tmp_path / "respaced.rramx"
    path.write_bytes(respaced)
    assert torch.equal(rramc.load_executable(path)(executable.x), executable.expected)


def _rewrite_header(data: bytes, change: Any) -> bytes:
    end = _header_end(data)
    header = json.loads(data[8:end])
    change(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[end:]


def _swap_offsets(header: dict[str, Any]) -> None:
    a, b = "0.bias", "0.gain"  # two tensors of the same dtype and shape
    header[a]["data_offsets"], header[b]["data_offsets"] = header[b]["data_offsets"], header[a]["data_offsets"]


def _add_tensor(header: dict[str, Any]) -> None:
    header["extra"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}


def _add_metadata(header: dict[str, Any]) -> None:
    header["__metadata__"]["note"] = "added"


@pytest.mark.parametrize(("change", "words"), [
    (_swap_offsets, ["corrupt", "does not match its checksum"]),
    (_add_tensor, ["corrupt", "tensor 'extra' is not in the manifest"]),
    (_add_metadata, ["corrupt", "'note'"]),
])
def test_header_edits_that_safetensors_accepts_are_refused(executable: Compiled, tmp_path: Path, change: Any,
                                                           words: list[str]) -> None:
    path = tmp_path / "edited.rramx"
    path.write_bytes(_rewrite_header(executable.data, change))
    with pytest.raises(ExecutableFormatError) as info:
        rramc.load_executable(path)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_swapped_offsets_of_identical_tensors_are_refused(tmp_path: Path) -> None:
    """Two byte-identical tensors with their data_offsets swapped pass the tensor checksums; the
    offsets the manifest records catch it."""
    exe = rramc.compile(torch.nn.Linear(4, 3), "ideal", torch.rand(8, 4))
    (node,) = [n for n in exe.graph if n.op.kind == "xbar.linear"]
    node.op.gain = node.op.conductance_per_weight.clone()
    path = exe.save(tmp_path / "m.rramx")
    a, b = f"{node.name}.gain", f"{node.name}.conductance_per_weight"

    def swap(header: dict[str, Any]) -> None:
        header[a]["data_offsets"], header[b]["data_offsets"] = header[b]["data_offsets"], header[a]["data_offsets"]

    (tmp_path / "swapped.rramx").write_bytes(_rewrite_header(path.read_bytes(), swap))
    with pytest.raises(ExecutableFormatError, match="data_offsets of tensor"):
        rramc.load_executable(tmp_path / "swapped.rramx")


@st.composite
def manifest_edits(draw: st.DrawFn, data: bytes) -> bytes:
    """The file with its manifest JSON edited and its checksum recomputed: what a hand edit or a
    buggy tool writes. Such a file is not corrupt; it must load or be refused with a message."""
    end = _header_end(data)
    header = json.loads(data[8:end])
    manifest = json.loads(header["__metadata__"]["rramx.manifest"])
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k in list(node):
                paths.append((node, k))
                walk(node[k])
        elif isinstance(node, list):
            for i in range(len(node)):
                paths.append((node, i))
                walk(node[i])

    walk(manifest)
    for _ in range(draw(st.integers(1, 3))):
        parent, key = draw(st.sampled_from(paths))
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[key]
            paths = [(p, k) for p, k in paths if not (p is parent and k == key)]
            break
        parent[key] = draw(edge_or_scalar)
    text = json.dumps(manifest, sort_keys=True)
    header["__metadata__"] = {"rramx.manifest": text, "rramx.manifest_sha256": hashlib.sha256(text.encode()).hexdigest()}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[end:]


@SETTINGS
@given(data=st.data())
def test_an_edited_manifest_loads_or_is_refused(data: st.DataObject, executable: Compiled, scratch: Path) -> None:
    path = scratch / "edited.rramx"
    path.write_bytes(data.draw(manifest_edits(executable.data), label="edited"))
    try:
        loaded = rramc.load_executable(path)
    except ExecutableFormatError as exc:
        assert str(path) in str(exc), f"the message does not name the file: {exc}"
        return
    try:  # what loads is well typed: it runs, or says why not
        loaded(executable.x)
    except RramcError:
        pass


# --- temporary files of interrupted writes ---------------------------------------------------


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_next_save_removes_stale_temporary_files(tmp_path: Path) -> None:
    """What a SIGKILLed save leaves (a hidden ``.<name>.<host>-<pid>.<random>.tmp``) is removed by
    the next save of the same output, once its writer is gone (and the file a minute old) or the
    file is ten minutes old; nothing else is touched."""
    import time

    from rramc.runtime import file_format

    exe = rramc.compile(torch.nn.Linear(4, 3), "ideal", torch.rand(8, 4))
    host, gone = file_format._HOST, _dead_pid()
    other_host = "0" * 8 if host != "0" * 8 else "1" * 8
    files = {
        "dead": f".m.rramx.{host}-{gone}.abcd1234.tmp",               # its writer was SIGKILLed two minutes ago
        "dead_fresh": f".m.rramx.{host}-{gone}.fresh000.tmp",         # ... a second ago (another PID namespace?)
        "old": ".m.rramx.zyxw9876.tmp",                               # the name without host and pid (earlier rramc), an hour old
        "live": f".m.rramx.{host}-{os.getpid()}.live0000.tmp",        # a writer still at it
        "elsewhere": f".m.rramx.{other_host}-{gone}.othr0000.tmp",    # another host's: its pid says nothing here
        "other_output": f".n.rramx.{host}-{gone}.abcd1234.tmp",       # another output's
        "user": ".m.rramx.notes.tmp",                                 # not a temporary file of rramc's
    }
    now = time.time()
    for key, name in files.items():
        (tmp_path / name).write_bytes(b"partial")
        age = {"dead": 120, "old": 3600, "other_output": 3600}.get(key, 1)
        os.utime(tmp_path / name, (now - age, now - age))
    exe.save(tmp_path / "m.rramx")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"m.rramx"} | {files[k] for k in ("dead_fresh", "live", "elsewhere", "other_output", "user")}
    # a live writer's file goes once it is stale by age, whatever its pid
    for key in ("live", "elsewhere"):
        os.utime(tmp_path / files[key], (now - 3600, now - 3600))
    exe.save(tmp_path / "m.rramx")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"m.rramx"} | {files[k] for k in ("dead_fresh", "other_output", "user")}
    assert rramc.load_executable(tmp_path / "m.rramx").graph.to_text() == exe.graph.to_text()


def test_what_a_sigkilled_writer_leaves_is_removed(tmp_path: Path) -> None:
    """A real writer killed between writing its temporary file and renaming it."""
    import signal
    import subprocess
    import sys
    import threading
    import time

    out = tmp_path / "m.rramx"
    script = (
        "import os, sys, time\n"
        "from rramc.runtime import file_format\n"
        "os.replace = lambda *a: (print('written', flush=True), time.sleep(600))\n"
        f"file_format.write_atomically(file_format.Path({str(out)!r}), b'x' * 1000)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, child.kill)  # a child that never gets there must not hang the test
    watchdog.start()
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "written"
    finally:
        watchdog.cancel()
        child.send_signal(signal.SIGKILL)
        child.wait()
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".m.rramx.") and left.name.endswith(".tmp") and f"-{child.pid}." in left.name
    then = time.time() - 120
    os.utime(left, (then, then))
    rramc.compile(torch.nn.Linear(4, 3), "ideal", torch.rand(8, 4)).save(out)
    assert [p.name for p in tmp_path.iterdir()] == ["m.rramx"]
