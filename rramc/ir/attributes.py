"""Typed attributes of ops: the values that change what an op computes.

Anything that decides a result is an attribute of this kind (checked by ``verify``, printed and
parsed with the IR text), never a free-form ``meta`` entry; ``meta`` is for provenance only.
Each attribute is a frozen dataclass with a ``kind`` (its name in IR text, ``#kind<...>``)
registered in :data:`ATTRIBUTES` so the parser can rebuild it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

ATTRIBUTES: dict[str, type[Attribute]] = {}
"""Every attribute class by its ``kind``; filled by :func:`register_attribute`."""


def register_attribute(cls: type[Attribute]) -> type[Attribute]:
    if cls.kind in ATTRIBUTES:
        raise TypeError(f"attribute kind {cls.kind!r} is defined twice: {ATTRIBUTES[cls.kind]} and {cls}")
    ATTRIBUTES[cls.kind] = cls
    return cls


@dataclass(frozen=True)
class Attribute:
    """Base of typed attributes. ``check`` raises ``ValueError`` with a plain sentence."""

    kind: ClassVar[str]

    def check(self) -> None:
        """Raise ``ValueError`` if a field is out of its domain."""

    def fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


INPUT_RANGE_ORIGINS = ("static", "declared", "calibrated", "reconstruct")


@register_attribute
@dataclass(frozen=True)
class InputRange(Attribute):
    """How a crossbar layer applies its inputs to the word lines.

    ``scale`` is the activation applied as the full read voltage (inputs are divided by it and
    clipped to [0, 1] by the DAC); ``signed`` inputs are read in two phases (positive and
    negative parts, subtracted after the ADC), unsigned ones in one, negative values clipped.
    ``origin`` says what decided it: ``static`` (the graph bounds the activation, e.g. a clipped
    ReLU), ``declared`` (the network input's declared value range), ``calibrated`` (sample data)
    or ``reconstruct`` (fixed by the pass that trained the layer for the device).
    """

    kind: ClassVar[str] = "input_range"
    scale: float
    signed: bool
    origin: str

    def check(self) -> None:
        if not (isinstance(self.scale, float) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"input_range.scale = {self.scale!r}, expected a finite number > 0")
        if not isinstance(self.signed, bool):
            raise ValueError(f"input_range.signed = {self.signed!r}, expected true or false")
        if self.origin not in INPUT_RANGE_ORIGINS:
            raise ValueError(f"input_range.origin = {self.origin!r}, expected one of {', '.join(INPUT_RANGE_ORIGINS)}")


@register_attribute
@dataclass(frozen=True)
class DeviceTraining(Attribute):
    """A layer retrained through a target's device I-V (the ``reconstruct`` pass).

    Its float model is then not ``W·x`` but the device-aware one: the target's I-V with
    continuous conductances and ideal converters, the function it was trained to compute.
    ``target`` holds the whole target spec (as its YAML mapping) and ``granularity`` the weight
    mapping's scale (per output column or per layer), so the float model stays the one it was
    trained as even when the graph is compiled for another target. The other fields record how
    it was trained. (The dict field makes it unhashable: attributes are compared, not hashed.)
    """

    kind: ClassVar[str] = "device_training"
    target: dict[str, Any]
    granularity: str
    epochs: int
    init: str
    seed: int
    in_loop: tuple[str, ...] = ()
    train_accuracy: float | None = None

    @property
    def target_name(self) -> str:
        return str(self.target.get("name", "?"))

    def check(self) -> None:
        if not isinstance(self.target, dict) or not {"name", "device", "conductance", "crossbar"} <= set(self.target):
            raise ValueError("device_training.target must be a target spec with name, device, conductance and crossbar")
        if self.granularity not in ("column", "layer"):
            raise ValueError(f"device_training.granularity = {self.granularity!r}, expected column or layer")
        if self.epochs < 0 or self.init not in ("finetune", "scratch"):
            raise ValueError(f"device_training: epochs {self.epochs}, init {self.init!r} (finetune or scratch)")
        unknown = set(self.in_loop) - {"levels", "converters", "variation", "wires"}
        if unknown:
            raise ValueError(f"device_training.in_loop has unknown {sorted(unknown)}")
