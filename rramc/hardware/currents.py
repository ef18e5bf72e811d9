"""What a target's cells and columns carry at the read voltage, and the limits it declares for them.

``G`` is a cell's zero-bias slope, not what it conducts when read: a ``sinh`` cell with ``k = 7.5``
at 1 V carries ``G·sinh(B)/B = 6.8·G·V`` at the 1 V read, one with ``k = 70`` about 290·G·V. The
currents are therefore derived from the device, never from ``G·V``. A target may declare
``conductance.compliance`` (the largest current its access transistor lets a cell carry) and
``crossbar.sense_range`` (the largest column current its sense amplifier / ADC front end
accepts); :func:`check_limits` refuses a target that exceeds either when it is loaded.

Accuracy with ideal wires does not depend on a common scale of the conductances (weights are
mapped in the read-current domain and the ADC ranges are calibrated), so
:func:`scale_conductances` and :func:`with_read_current` move a target's currents without
changing what it computes; with wire resistance the scale matters (IR drop grows with current).

Everything here is Python floats (:meth:`~rramc.hardware.devices.DeviceModel.current_at`): loading
and describing a target does not import torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rramc.hardware.config import Location

if TYPE_CHECKING:
    from rramc.hardware.target import Target


@dataclass(frozen=True)
class ReadCurrents:
    """A target's currents at its read voltage [A]."""

    read_voltage: float
    """[V]"""
    rows: int
    cell_min: float
    """The smaller of ``|I(Vread, g_min)|`` and ``|I(Vread, g_max)|``."""
    cell_max: float
    """The larger of the two: the worst-case cell current."""
    max_at: str
    """``"g_min"`` or ``"g_max"``: where the worst-case cell current is."""

    @property
    def column_max(self) -> float:
        """The worst-case column current: every cell of a column at its largest current, full-scale input."""
        return self.rows * self.cell_max

    @property
    def on_off(self) -> float:
        """The read-current ratio of the window's two ends (``inf`` when one carries nothing)."""
        return self.cell_max / self.cell_min if self.cell_min > 0 else math.inf

    def describe(self) -> str:
        ratio = "∞" if math.isinf(self.on_off) else f"{self.on_off:.3g}"
        unit, scale = _unit(self.cell_max)
        return (f"read at {self.read_voltage:g} V: cells {self.cell_min * scale:.3g}–{self.cell_max * scale:.3g} {unit} "
                f"(on/off {ratio}), column ≤ {format_current(self.column_max)} ({self.rows} rows at {self.max_at})")


def read_currents(target: Target) -> ReadCurrents:
    """The currents of ``target``'s cells at its read voltage and its worst-case column current."""
    c, x = target.conductance, target.crossbar
    currents = [abs(target.device.current_at(x.read_voltage, g)) for g in (c.g_min, c.g_max)]
    low, high = sorted(currents)
    return ReadCurrents(x.read_voltage, x.rows, low, high, "g_max" if currents[1] >= currents[0] else "g_min")


def describe_limits(target: Target) -> str:
    """The target's read currents and its declared limits, in one line."""
    limits = [f"{name} {format_current(value)}" for name, value in
              (("compliance", target.conductance.compliance), ("sense range", target.crossbar.sense_range)) if value is not None]
    return read_currents(target).describe() + ("; limits: " + ", ".join(limits) if limits else "; no current limits declared")


def check_limits(target: Target, where: Location) -> None:
    """Refuse a target whose worst-case cell current exceeds its compliance, or whose worst-case
    column current exceeds its sense range; the message names the field, both currents and the fix."""
    limit, sense = target.conductance.compliance, target.crossbar.sense_range
    if limit is None and sense is None:
        return
    r = read_currents(target)
    g = getattr(target.conductance, r.max_at)
    if limit is not None and r.cell_max > limit:
        raise where.child("conductance").child("compliance").error(
            f"a cell at {r.max_at} = {g * 1e6:.3g} µS carries {format_current(r.cell_max)} at the read voltage {r.read_voltage:g} V, "
            f"above the compliance {format_current(limit)}; lower g_max (and g_min with it: scaling both by "
            f"{limit / r.cell_max:.3g} keeps the window's shape), the read voltage or the nonlinearity")
    if sense is not None and r.column_max > sense:
        raise where.child("crossbar").child("sense_range").error(
            f"a column of {r.rows} cells at {r.max_at} carries {format_current(r.column_max)} at full-scale input "
            f"({format_current(r.cell_max)} per cell at {r.read_voltage:g} V), above the sense range {format_current(sense)}; "
            f"use fewer rows (at most {int(sense // r.cell_max)}), a lower g_max or a lower read voltage")


def scale_conductances(target: Target, factor: float, **changes: dict[str, Any]) -> Target:
    """``target.with_changes(**changes)`` with every conductance multiplied by ``factor``.

    Scaled: ``g_min``, ``g_max`` and the device's own conductances (its fields declared in S, such
    as ``sinh_state``'s ``g_hrs``/``g_lrs``; a table's states and currents), so every read current
    scales by ``factor`` exactly for the builtin device models. The limits are not scaled.
    """
    data = target.changed_mapping(**changes)
    return _from_mapping(target, _scaled(data, factor))


def with_read_current(base: Target, **changes: dict[str, Any]) -> Target:
    """``base.with_changes(**changes)`` with its conductances scaled (:func:`scale_conductances`) so
    that its worst-case cell current equals ``base``'s.

    What a sweep over the nonlinearity or the read voltage compares: at the same zero-bias window a
    ``k = 70`` cell carries 43 times a ``k = 7.5`` one, more than any access transistor passes.
    """
    data = base.changed_mapping(**changes)
    unlimited = {**data, "conductance": {**data["conductance"], "compliance": None},
                 "crossbar": {**data["crossbar"], "sense_range": None}}
    variant = _from_mapping(base, unlimited)
    factor = read_currents(base).cell_max / read_currents(variant).cell_max
    return _from_mapping(base, _scaled(data, factor))


def format_current(amperes: float) -> str:
    """``1.74 mA``, ``13.6 µA``, ``136 nA``: three significant digits in the unit that fits."""
    unit, scale = _unit(amperes)
    return f"{amperes * scale:.3g} {unit}"


def _unit(amperes: float) -> tuple[str, float]:
    for unit, scale in (("A", 1.0), ("mA", 1e3), ("µA", 1e6), ("nA", 1e9)):
        if abs(amperes) * scale >= 0.9995:
            return unit, scale
    return "pA", 1e12


def _from_mapping(target: Target, data: dict[str, Any]) -> Target:
    from rramc.hardware.target import Target

    return Target.from_mapping(data, f"{target.source} (modified)")


def _scaled(data: dict[str, Any], factor: float) -> dict[str, Any]:
    from rramc.hardware.devices import DEVICE_MODELS

    conductance = {**data["conductance"], "g_min": data["conductance"]["g_min"] * factor,
                   "g_max": data["conductance"]["g_max"] * factor}
    device = dict(data["device"])
    cls = DEVICE_MODELS.get(device["model"]) if device.get("model") in DEVICE_MODELS.names() else None
    if cls is not None and dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.metadata.get("unit") == "S" and device.get(f.name) is not None:
                device[f.name] = device[f.name] * factor
    if "states" in device and "currents" in device:  # a table: I(V, s·G) = s·I(V, G)
        device["states"] = [s * factor for s in device["states"]]
        device["currents"] = [[i * factor for i in row] for row in device["currents"]]
    return {**data, "conductance": conductance, "device": device}
