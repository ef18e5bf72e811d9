"""Typed, validated configuration: frozen dataclasses built from YAML mappings.

A config class declares each field with :func:`spec_field` (unit, one-line doc, allowed range or
choices); :func:`build` turns a parsed YAML mapping into an instance and reports the first problem
as a :class:`TargetError` naming the file, the dotted field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import reprlib
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar, Union

from rramc.errors import TargetError

T = TypeVar("T")


def spec_field(
    doc: str,
    *,
    unit: str = "",
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    choices: tuple[str, ...] | None = None,
    default: Any = MISSING,
) -> Any:
    """Declare a config field; ``low``/``high`` bound numbers (``low_open``: exclusive low)."""
    meta = {"doc": doc, "unit": unit, "low": low, "high": high, "low_open": low_open, "choices": choices}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Location:
    """Where a config mapping came from, for messages: the file and the dotted path inside it."""

    source: str
    path: str = ""

    def child(self, name: str) -> Location:
        return Location(self.source, f"{self.path}.{name}" if self.path else name)

    def error(self, problem: str) -> TargetError:
        where = f"field '{self.path}'" if self.path else "top level"
        return TargetError(f"{self.source}: {where}: {problem}")


def describe_allowed(f: dataclasses.Field[Any], hint: Any) -> str:
    """The allowed values of a field, in words, with its unit and doc."""
    m = f.metadata
    kind = _base_type(hint)
    if m.get("choices"):
        allowed = "one of " + ", ".join(m["choices"])
    else:
        noun = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, kind.__name__)
        bounds = []
        if m.get("low") is not None:
            bounds.append(f"{'>' if m['low_open'] else '>='} {m['low']:g}")
        if m.get("high") is not None:
            bounds.append(f"<= {m['high']:g}")
        allowed = noun + (" " + " and ".join(bounds) if bounds else "")
    if _optional(hint):
        allowed += " or null"
    unit = f" [{m['unit']}]" if m.get("unit") else ""
    return f"{allowed}{unit} ({m.get('doc', '')})"


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _base_type(hint: Any) -> type:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong, _REPR.maxlevel = 60, 60, 30, 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a readable length, for messages (a YAML file may hold huge or self-referencing values)."""
    return _REPR.repr(value)


def check_value(f: dataclasses.Field[Any], hint: Any, value: Any, where: Location) -> Any:
    """Check one value against its field declaration; return it converted (int → float)."""
    kind = _base_type(hint)
    m = f.metadata
    original = value

    def wrong() -> Exception:
        return where.error(f"got {short_repr(original)}; expected {describe_allowed(f, hint)}")

    if value is None:
        if _optional(hint):
            return None
        raise wrong()
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float (YAML reads 1 followed by 400 zeros as one)
            raise wrong() from None
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise wrong()
    if m.get("choices") and value not in m["choices"]:
        raise wrong()
    if kind in (int, float):
        low, high = m.get("low"), m.get("high")
        if value != value or (low is not None and (value <= low if m["low_open"] else value < low)):
            raise wrong()
        if high is not None and value > high:
            raise wrong()
    return value


def build(cls: type[T], data: Any, where: Location, **extra: Any) -> T:
    """Instantiate config class ``cls`` from a YAML mapping, validating every field.

    ``extra`` supplies fields that do not come from the mapping (resolved by the caller).
    """
    if not isinstance(data, dict):
        raise where.error(f"expected a mapping of fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in extra}  # type: ignore[arg-type]
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        allowed = ", ".join(fields) if fields else "none (this section takes no fields)"
        raise where.error(f"unknown field(s) {', '.join(unknown)}; allowed: {allowed}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            values[name] = check_value(f, hints[name], data[name], where.child(name))
        elif f.default is MISSING and f.default_factory is MISSING:
            raise where.child(name).error(f"missing; expected {describe_allowed(f, hints[name])}")
    try:
        return cls(**values, **extra)
    except ValueError as exc:  # cross-field checks in __post_init__
        raise where.error(str(exc)) from None


def to_mapping(obj: Any) -> dict[str, Any]:
    """The YAML mapping a config instance was (or could have been) built from."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}


def field_docs(cls: type) -> list[tuple[str, str]]:
    """(name, allowed values and doc) for every field of a config class, for help texts."""
    hints = typing.get_type_hints(cls)
    return [(f.name, describe_allowed(f, hints[f.name])) for f in dataclasses.fields(cls) if f.init]
