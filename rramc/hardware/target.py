"""Targets: a chip's devices, arrays and converters, loaded from a validated YAML spec.

A target file has these sections (see ``targets/rram_a.yaml``)::

    name: rram_a
    device:        {model: sinh, nonlinearity_k: 7.5}     # the cell's I-V (see devices.py)
    conductance:   {g_min: 2.0e-8, g_max: 2.0e-6, levels: 32, compliance: 2.0e-5}   # S; A
    crossbar:      {rows: 128, cols: 128, weight_encoding: differential, input_encoding: amplitude,
                    read_voltage: 1.0, dac_bits: 8, adc_bits: 8, sense_range: 2.5e-3}   # V; A
    wires:         {model: ideal}                         # optional: the column solver
    nonidealities: {programming_sigma: 0.0, read_noise_sigma: 0.0, ...}   # optional, all 0
    cost:          {adc_energy_per_step: 6.51e-15, cell_area: 1.53e-9, ...}   # optional: J, mm² (see cost.py)

Builtin targets (``ideal``, ``rram_a``, ``rram_b``) ship in the ``rramc.targets`` package.

Loading, validating and describing a target imports no torch (``rramc targets`` starts in a
fraction of a second): the checks compute their currents in Python floats
(:meth:`~rramc.hardware.devices.DeviceModel.current_at`), and the modules of the seams a target
names (device models, column solvers and wires, input and weight encodings) bind torch on first
use (:mod:`rramc._lazy`), when they compute tensors. ``tests/test_startup.py`` keeps it so.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rramc.errors import TargetError
from rramc.hardware.config import Location, build, short_repr, spec_field, to_mapping
from rramc.hardware.currents import ReadCurrents, check_limits, read_currents
from rramc.hardware.devices import DEVICE_MODELS, PRECISIONS, DeviceContext, DeviceModel, linspace, rounding

if TYPE_CHECKING:
    from rramc.hardware.column_solver import ColumnSolver


@dataclass(frozen=True)
class ConductanceSpec:
    """The programmable conductance window of one cell."""

    g_min: float = spec_field("lowest programmable conductance (high-resistance state)", unit="S", low=0.0, high=1.0)
    g_max: float = spec_field("highest programmable conductance (low-resistance state)", unit="S", low=0.0, low_open=True, high=1.0)
    levels: int | None = spec_field("programmable levels per cell, evenly spaced in G; null: continuous", low=2, high=65536, default=None)
    compliance: float | None = spec_field(
        "largest current a cell may carry at the read voltage (its access transistor / compliance limit); "
        "null: not checked", unit="A", low=0.0, low_open=True, high=1.0, default=None,
    )

    def __post_init__(self) -> None:
        if not self.g_max > self.g_min:
            raise ValueError(f"g_max ({self.g_max:g} S) must be above g_min ({self.g_min:g} S)")


@dataclass(frozen=True)
class CrossbarSpec:
    """One array and its periphery."""

    rows: int = spec_field("word lines (inputs) per array", low=1, high=65536)
    cols: int = spec_field("bit lines per array; a differential pair uses two", low=2, high=65536)
    read_voltage: float = spec_field("word-line voltage of a full-scale input (x = 1)", unit="V", low=0.0, low_open=True, high=10.0)
    weight_encoding: str = spec_field(
        "how signed weights are held: differential (a column pair, G+ - G-), offset (against one reference column "
        "per array at the middle level), or a plugin's (rramc.weight_encodings)", default="differential",
    )
    input_encoding: str = spec_field(
        "how activations reach the word lines: amplitude (the DAC sets the read voltage), bit_serial (one input bit "
        "per read at 0 V or the read voltage, shift-and-add after the ADC), pulse_width (the read voltage for a time "
        "proportional to the input, charge integrated), predistorted (DAC levels placed so that equal input steps give "
        "equal current steps), or a plugin's (rramc.input_encodings)", default="amplitude",
    )
    dac_bits: int | None = spec_field("input DAC resolution; null: ideal (no quantisation, no clipping)", low=1, high=16, default=None)
    adc_bits: int | None = spec_field("signed ADC resolution per tile output; null: ideal", low=2, high=16, default=None)
    weight_slices: int = spec_field(
        "cell pairs one weight is spread over (bit-slicing), each holding slice_bits bits of it, least significant "
        "first; their ADC outputs are shifted and added", low=1, high=16, default=1,
    )
    slice_bits: int | None = spec_field(
        "bits each slice holds (2^slice_bits levels of a cell's, which must fall on conductance.levels); null: as many "
        "as the cell's levels give (continuous cells need it set when weight_slices > 1)", low=1, high=16, default=None,
    )
    read_time: float = spec_field(
        "duration of one read: a word-line pulse long enough for the line to settle and the column to be sampled "
        "(also the shortest pulse that reads a cell)", unit="s", low=0.0, low_open=True, high=1.0, default=1.0e-7,
    )
    pulse_step: float | None = spec_field(
        "pulse_width inputs: the pulse duration of one DAC step (at least read_time); null: read_time",
        unit="s", low=0.0, low_open=True, high=1.0, default=None,
    )
    sense_range: float | None = spec_field(
        "largest column current the sense amplifier / ADC front end accepts (every cell at its largest current, "
        "full-scale input); null: not checked", unit="A", low=0.0, low_open=True, high=1.0, default=None,
    )


@dataclass(frozen=True)
class CostSpec:
    """What the periphery of one array costs, per unit: the cost model's inputs (see ``rramc/hardware/cost.py``).

    Every default comes from ISAAC (Shafiee et al., "ISAAC: A Convolutional Neural Network
    Accelerator with In-Situ Analog Arithmetic in Crossbars", ISCA 2016, table of its tile and
    in-situ multiply-accumulate unit (IMA): 8 arrays of 128×128, 8 ADCs of 8 bits at 1.2 GS/s
    drawing 16 mW in 0.0096 mm², 8×128 1-bit DACs drawing 4 mW in 0.00017 mm², 4 shift-and-add
    units drawing 0.2 mW in 0.00024 mm², the 8 arrays in 0.0002 mm², a 100 ns read); the field
    docs show the arithmetic. The upper bounds only catch a unit slip (pJ written as J).
    """

    adc_energy_per_step: float = spec_field(
        "ADC energy per conversion step: a conversion of b bits costs this × 2**b (Walden figure of merit); "
        "default ISAAC: 16 mW / 8 ADCs / 1.2 GS/s = 1.67 pJ per 8-bit conversion, / 256",
        unit="J", low=0.0, high=1e-6, default=6.51e-15,
    )
    adc_rate: float = spec_field(
        "conversions per second of one ADC; default ISAAC's 1.2 GS/s", unit="1/s", low=0.0, low_open=True, high=1e12,
        default=1.2e9,
    )
    adcs_per_array: int = spec_field(
        "ADCs per array, shared by its outputs in turn; default ISAAC's 1 (8 per IMA of 8 arrays)", low=1, high=65536,
        default=1,
    )
    dac_energy_per_bit: float = spec_field(
        "word-line DAC energy per conversion and bit: a DAC of b bits costs this × b per conversion (as b binary-"
        "weighted 1-bit drivers; an assumption); default ISAAC's 1-bit DACs: 4 mW / (8×128) × 100 ns",
        unit="J", low=0.0, high=1e-6, default=3.91e-13,
    )
    digital_energy_per_op: float = spec_field(
        "digital energy per operation (each ADC output's shift-and-add, each output's gain and offset); default "
        "ISAAC's shift-and-add: 0.2 mW / 4 units / 1.2 GHz, one operation per unit and cycle",
        unit="J", low=0.0, high=1e-6, default=4.17e-14,
    )
    cell_area: float = spec_field(
        "area of one cell; default ISAAC's 0.0002 mm² / (8 × 128 × 128): a 4F² cross-point cell at F ≈ 20 nm "
        "(a 1T1R cell is larger: set yours)", unit="mm²", low=0.0, high=1e-3, default=1.53e-9,
    )
    adc_area: float = spec_field(
        "area of one ADC (as built: not scaled with adc_bits); default ISAAC's 8-bit ADC, 0.0096 mm² / 8",
        unit="mm²", low=0.0, high=10.0, default=1.2e-3,
    )
    dac_area: float = spec_field(
        "area of one word line's DAC (as built: not scaled with dac_bits); default ISAAC's 1-bit DAC, "
        "0.00017 mm² / (8×128)", unit="mm²", low=0.0, high=10.0, default=1.66e-7,
    )
    digital_area_per_array: float = spec_field(
        "area of one array's digital periphery (shift-and-add); default ISAAC's 4 units per 8 arrays, "
        "0.00024 mm² / 8", unit="mm²", low=0.0, high=10.0, default=3.0e-5,
    )


@dataclass(frozen=True)
class NonidealitySpec:
    """The random non-idealities of a chip instance, each off (0) unless the target sets it.

    Calibration runs on the nominal chip, with all of them off (:meth:`Target.nominal`): a field
    added here is off there without further code. Deterministic effects (wires) live elsewhere.
    """

    programming_sigma: float = spec_field("std of the programmed conductance, as a fraction of g_max - g_min", low=0.0, high=1.0, default=0.0)
    read_noise_sigma: float = spec_field("std of each cell's read current, relative to it", low=0.0, high=1.0, default=0.0)
    stuck_off_fraction: float = spec_field("fraction of cells stuck at g_min", low=0.0, high=1.0, default=0.0)
    stuck_on_fraction: float = spec_field("fraction of cells stuck at g_max", low=0.0, high=1.0, default=0.0)

    def __post_init__(self) -> None:
        if self.stuck_off_fraction + self.stuck_on_fraction > 1.0:
            raise ValueError("stuck_off_fraction + stuck_on_fraction must not exceed 1")

    @property
    def any(self) -> bool:
        return any(v > 0 for v in to_mapping(self).values())


@dataclass(frozen=True)
class Target:
    """A validated chip description. Build it with :func:`load_target` or :meth:`from_mapping`."""

    name: str
    device: DeviceModel
    conductance: ConductanceSpec
    crossbar: CrossbarSpec
    nonidealities: NonidealitySpec
    description: str = ""
    source: str = field(default="<memory>", compare=False)
    wires: ColumnSolver = field(default=None)  # type: ignore[assignment]  # set in __post_init__
    cost: CostSpec = field(default_factory=CostSpec)

    def __post_init__(self) -> None:
        if self.wires is None:
            from rramc.hardware.column_solver import IdealWires

            object.__setattr__(self, "wires", IdealWires())

    @classmethod
    def from_mapping(cls, data: Any, source: str = "<memory>", directory: Path | None = None) -> Target:
        """Validate a parsed YAML mapping; errors name ``source`` and the field."""
        top = Location(source)
        if not isinstance(data, dict):
            raise top.error(f"expected a mapping with sections name, device, conductance, crossbar; got {type(data).__name__}")
        allowed = {"name", "description", "device", "conductance", "crossbar", "wires", "nonidealities", "cost"}
        unknown = sorted(set(map(str, data)) - allowed)
        if unknown:
            raise top.error(f"unknown section(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        for section in ("name", "device", "conductance", "crossbar"):
            if section not in data:
                raise top.child(section).error("missing")
        name = data["name"]
        if not isinstance(name, str) or not name:
            raise top.child("name").error(f"got {name!r}; expected a non-empty string")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise top.child("description").error("expected a string")
        conductance = build(ConductanceSpec, data["conductance"], top.child("conductance"))
        crossbar = build(CrossbarSpec, data["crossbar"], top.child("crossbar"))
        nonidealities = build(NonidealitySpec, data.get("nonidealities") or {}, top.child("nonidealities"))
        cost = build(CostSpec, data.get("cost") or {}, top.child("cost"))
        ctx = DeviceContext(crossbar.read_voltage, conductance.g_min, conductance.g_max, directory)
        device = _build_device(data["device"], top.child("device"), ctx)
        _check_encodings(crossbar, top.child("crossbar"))
        wires = _build_wires(data.get("wires") or {"model": "ideal"}, top.child("wires"))
        target = cls(name, device, conductance, crossbar, nonidealities, description, source, wires, cost)
        _check_read_currents(target, top)
        check_limits(target, top)
        _check_input_encoding(target, top.child("crossbar"))
        _check_slicing(target, top.child("crossbar"))
        return target

    def to_mapping(self) -> dict[str, Any]:
        """A self-contained mapping that :meth:`from_mapping` turns back into an equal target."""
        return {
            "name": self.name,
            "description": self.description,
            "device": self.device.to_mapping(),
            "conductance": to_mapping(self.conductance),
            "crossbar": to_mapping(self.crossbar),
            "wires": self.wires.to_mapping(),
            "nonidealities": to_mapping(self.nonidealities),
            "cost": to_mapping(self.cost),
        }

    def nominal(self) -> Target:
        """This target without its random non-idealities (variation, faults, read noise): what
        calibration sees."""
        if not self.nonidealities.any:
            return self
        return _nominal(self)

    def with_changes(self, **sections: dict[str, Any]) -> Target:
        """A new, re-validated target with fields of some sections changed.

        ``target.with_changes(crossbar={"adc_bits": 6}, device={"nonlinearity_k": 20})``; a
        ``device`` change with a ``model`` key replaces the device spec instead of merging.
        """
        return Target.from_mapping(self.changed_mapping(**sections), f"{self.source} (modified)")

    def changed_mapping(self, **sections: dict[str, Any]) -> dict[str, Any]:
        """The mapping :meth:`with_changes` validates (not validated here)."""
        data = self.to_mapping()
        for section, changes in sections.items():
            if section in ("device", "wires") and "model" in changes:
                data[section] = dict(changes)
            elif section == "device":
                data[section] = _merge_device(data[section], changes)
            else:
                data[section] = {**data.get(section, {}), **changes}
        return data

    def read_currents(self) -> ReadCurrents:
        """Its cells' currents at the read voltage and its worst-case column current (see ``currents.py``)."""
        return read_currents(self)

    def describe(self) -> str:
        c, x = self.conductance, self.crossbar
        levels = f"{c.levels} levels" if c.levels else "continuous"
        dac = f"{x.dac_bits}-bit DAC" if x.dac_bits else "ideal DAC"
        adc = f"{x.adc_bits}-bit ADC" if x.adc_bits else "ideal ADC"
        device = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.device.to_mapping().items()
                           if not isinstance(v, list))
        from rramc.hardware.weight_encoding import slice_bits

        bits = slice_bits(self)
        slices = "" if bits is None else f" in {x.weight_slices} slice{'s' if x.weight_slices > 1 else ''} of {bits} bits"
        encodings = x.weight_encoding + slices + ("" if x.input_encoding == "amplitude" else f", {x.input_encoding} inputs")
        wire_fields = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in self.wires.to_mapping().items() if k != "model")
        wires = "" if self.wires.model == "ideal" else f"; wires: {self.wires.model}" + (f" ({wire_fields})" if wire_fields else "")
        return (f"{self.name}: {device}; G {c.g_min * 1e6:g}-{c.g_max * 1e6:g} µS ({levels}); "
                f"{x.rows}×{x.cols} arrays ({encodings}); Vread {x.read_voltage:g} V; {dac}; {adc}{wires}")


def _merge_device(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = {**current, **changes}
    # k and b are two spellings of one quantity: setting one drops the other.
    if "b" in changes:
        merged.pop("nonlinearity_k", None)
        merged.pop("k_voltage", None)
    if "nonlinearity_k" in changes:
        merged.pop("b", None)
    return merged


@functools.lru_cache(maxsize=64)
def _nominal(target: Target) -> Target:
    return dataclasses.replace(target, nonidealities=NonidealitySpec())


def _check_encodings(crossbar: CrossbarSpec, where: Location) -> None:
    from rramc.hardware.input_encoding import INPUT_ENCODINGS
    from rramc.hardware.weight_encoding import WEIGHT_ENCODINGS

    for name, registry in (("weight_encoding", WEIGHT_ENCODINGS), ("input_encoding", INPUT_ENCODINGS)):
        value = getattr(crossbar, name)
        if value not in registry.names():
            raise where.child(name).error(f"got {value!r}; expected one of {', '.join(registry.names())}")
        registry.get(value)  # a plugin that breaks the interface is refused here, with its origin


def _check_input_encoding(target: Target, where: Location) -> None:
    """What the input encoding needs of the rest of the target (its DAC, its pulses, its device)."""
    from rramc.hardware.input_encoding import INPUT_ENCODINGS

    problem = INPUT_ENCODINGS.get(target.crossbar.input_encoding).problem(target)
    if problem is not None:
        field, message = problem
        raise where.child(field).error(message)


def _check_slicing(target: Target, where: Location) -> None:
    from rramc.hardware.weight_encoding import slicing_problem

    problem = slicing_problem(target)
    if problem is not None:
        field, message = problem
        raise where.child(field).error(message)


def _build_wires(data: Any, where: Location) -> ColumnSolver:
    from rramc.hardware.column_solver import COLUMN_SOLVERS

    if not isinstance(data, dict) or "model" not in data:
        raise where.child("model").error(f"missing; expected one of {', '.join(COLUMN_SOLVERS.names())}")
    model = data["model"]
    if model not in COLUMN_SOLVERS.names():
        raise where.child("model").error(f"got {model!r}; expected one of {', '.join(COLUMN_SOLVERS.names())}")
    return COLUMN_SOLVERS.get(model).from_mapping({k: v for k, v in data.items() if k != "model"}, where)


def _check_read_currents(target: Target, where: Location) -> None:
    """Refuse a target whose cells' read currents are not finite, or do not rise from g_min to g_max.

    Every field may be in its range while together they overflow: a ``sinh`` cell with ``b: 100``
    read at 10 V carries ``G·sinh(1000)/100``, beyond any float, and the calibration and the DAC
    tables would index with NaN. The currents are computed in float64 (what the mapping uses) and
    in float32 (what the chip runs in by default; an intermediate such as ``sinh(B·V)`` may
    overflow there while the current itself would fit), for ``g_min``, ``g_max`` and a grid
    between them, and for a whole column of cells at the larger one.
    """
    c, x, device = target.conductance, target.crossbar, target.device
    fields = _current_fields(target)
    g = linspace(c.g_min, c.g_max, 65)  # g_min and g_max exactly, and a grid between them
    for precision in PRECISIONS:  # float64, then float32
        r = rounding(precision)
        try:
            i = [device.current_at(x.read_voltage, gk, precision) for gk in g]
        except (ArithmeticError, ValueError, RuntimeError) as exc:
            raise where.child("device").error(f"its current at the read voltage cannot be computed ({exc}); check {fields}") from None
        k = next((k for k, value in enumerate(i) if not math.isfinite(value)), None)
        if k is not None:
            at = "g_min" if k == 0 else "g_max" if k == len(g) - 1 else f"G = {r(g[k]):.3g} S"
            raise where.child("device").error(
                f"a cell at {at} carries {i[k]} A at crossbar.read_voltage = {x.read_voltage:g} V "
                f"(computed in {precision}{', the precision the chip runs in' if precision == 'float32' else ''}): "
                f"the device's fields and the read voltage together overflow ({fields}); lower the nonlinearity (or raise the "
                "voltage it is given at) or the read voltage")
        largest = max(abs(value) for value in i)
        if not math.isfinite(r(largest * x.rows)):
            raise where.child("crossbar").child("rows").error(
                f"a column of {x.rows} cells at their largest read current ({largest:.3g} A each at "
                f"{x.read_voltage:g} V) carries more current than {precision} holds "
                f"({fields}); lower the nonlinearity, the read voltage or the rows")
        if precision == "float64" and not i[-1] > i[0]:
            raise where.child("device").error(
                f"the read current at crossbar.read_voltage = {x.read_voltage:g} V must rise from g_min to g_max, but a cell "
                f"carries {i[0]:.6g} A at g_min = {c.g_min:g} S and {i[-1]:.6g} A at g_max = {c.g_max:g} S "
                f"({fields}); otherwise a conductance cannot be told from its read current")


def _current_fields(target: Target) -> str:
    """The fields that decide the read currents, with their values, for messages."""
    device = ", ".join(f"device.{k} = {v:g}" if isinstance(v, float) else f"device.{k} = {v}"
                       for k, v in target.device.to_mapping().items() if not isinstance(v, (list, tuple)))
    c = target.conductance
    return f"{device}, conductance.g_min = {c.g_min:g}, conductance.g_max = {c.g_max:g}"


def _build_device(data: Any, where: Location, ctx: DeviceContext) -> DeviceModel:
    if not isinstance(data, dict) or "model" not in data:
        raise where.child("model").error(f"missing; expected one of {', '.join(DEVICE_MODELS.names())}")
    model = data["model"]
    if model not in DEVICE_MODELS.names():
        raise where.child("model").error(f"got {model!r}; expected one of {', '.join(DEVICE_MODELS.names())}")
    cls = DEVICE_MODELS.get(model)
    fields = {k: v for k, v in data.items() if k != "model"}
    return cls.from_mapping(fields, where, ctx)


def builtin_targets() -> list[str]:
    """Names of the targets shipped with rramc."""
    return sorted(p.name[:-5] for p in resources.files("rramc.targets").iterdir() if p.name.endswith(".yaml"))


def load_target(spec: str | os.PathLike[str] | Target) -> Target:
    """Load a target from a YAML file path or a builtin name (``ideal``, ``rram_a``, ``rram_b``)."""
    if isinstance(spec, Target):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        accepts = (f"a builtin target name ({', '.join(builtin_targets())}), the path of a target YAML file, "
                   "or a Target")
        hint = ""
        if isinstance(spec, dict):
            hint = ("; to use a mapping of sections (name, device, conductance, crossbar, ...), build the target with "
                    "rramc.Target.from_mapping(mapping), or write the mapping to a YAML file and pass its path")
        raise TargetError(f"a target must be {accepts}; got {short_repr(spec)} ({type(spec).__name__}){hint}")
    try:
        path = Path(spec)
    except TypeError:  # an os.PathLike whose __fspath__ returns bytes
        raise TargetError(f"a target path must be text, got {short_repr(spec)}") from None
    if not str(spec).strip():
        raise TargetError(f"the target is an empty string; expected a builtin target name ({', '.join(builtin_targets())}) "
                          "or the path of a target YAML file")
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            raise TargetError(f"target {path} is a directory, expected a YAML file")
        if not path.is_file():
            raise TargetError(f"target file {path} does not exist; builtin targets: {', '.join(builtin_targets())}")
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise TargetError(f"cannot read the target file {path}: {exc.strerror or exc}") from None
        return _load_file(text, str(path), path.parent)
    name = str(spec)
    if name not in builtin_targets():
        raise TargetError(f"unknown target '{name}': not a file, and the builtin targets are {', '.join(builtin_targets())}")
    resource = resources.files("rramc.targets") / f"{name}.yaml"
    with resources.as_file(resource) as real:
        return _load_file(resource.read_text(encoding="utf-8"), f"builtin target {name} ({real.name})", real.parent)


class _TargetYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys, and reading ``1e4`` as a number.

    A duplicate key would otherwise keep its last value silently. YAML 1.1 (PyYAML) reads an
    exponent without a dot and a sign (``1e4``, ``2.5e6``) as a string; YAML 1.2 and every other
    tool read a number, and so does this loader.
    """

    source = "<text>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<: *anchor' merges; a key after it overrides the merged one on purpose
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: the base class refuses it with a located message
                if first is not key_node:
                    raise TargetError(
                        f"{self.source}: duplicate key {short_repr(key)} at lines {first.start_mark.line + 1} and "
                        f"{key_node.start_mark.line + 1} (in the mapping that starts at line {node.start_mark.line + 1}); "
                        "a key may appear once per mapping: remove one")
        return super().construct_mapping(node, deep=deep)


_TargetYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _parse_yaml(text: str, source: str) -> Any:
    loader = _TargetYamlLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _load_file(text: str, source: str, directory: Path) -> Target:
    try:
        data = _parse_yaml(text, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TargetError(f"{source}: not valid YAML{line}: {problem}") from None
    except RecursionError:
        raise TargetError(f"{source}: not a target: its YAML is nested too deeply") from None
    try:
        return Target.from_mapping(data, source, directory)
    except RecursionError:  # a self-referencing structure (an alias inside its own anchor)
        raise TargetError(f"{source}: not a target: it refers to itself (a YAML alias inside its own anchor)") from None


def target_fields() -> dict[str, list[tuple[str, str]]]:
    """Every section's fields with their allowed values, for ``rramc targets --fields``."""
    from rramc.hardware.config import field_docs

    sections: dict[str, list[tuple[str, str]]] = {
        "(top level)": [("name", "a string (the target's name: reports and executables show it)"),
                        ("description", "a string, optional (what the target models, and the sources of its numbers)")],
        "device": [("model", f"one of {', '.join(DEVICE_MODELS.names())} (the cell's I-V model; its fields follow below)")],
        "conductance": field_docs(ConductanceSpec),
        "crossbar": field_docs(CrossbarSpec),
        "nonidealities": field_docs(NonidealitySpec),
        "cost": field_docs(CostSpec),
    }
    for name, cls in DEVICE_MODELS:
        if dataclasses.is_dataclass(cls) and name != "table":
            sections[f"device (model: {name})"] = field_docs(cls)
    sections["device (model: table)"] = [("file", "CSV: header 'voltage,<G1>,<G2>,...' [V, S], rows of currents [A]")]
    from rramc.hardware.column_solver import COLUMN_SOLVERS

    for name in COLUMN_SOLVERS.names():
        try:  # one broken plugin must not hide the others
            sections[f"wires (model: {name})"] = field_docs(COLUMN_SOLVERS.get(name)) or [("", "no fields")]
        except TargetError as exc:
            sections[f"wires (model: {name})"] = [("", f"cannot be loaded: {exc}")]
    return sections
