"""The input-encoding seam: how an activation becomes signals on the word lines.

An encoding turns one sign phase of a layer's inputs, scaled so that 1 is full scale, into a
list of :class:`Read` s: each is one read of the arrays (word-line voltages, applied at once),
digitised by the ADC and weighted digitally (shift-and-add) before the reads are summed. Built
in: ``amplitude`` (one read; the activation sets the voltage through the DAC). A new encoding is
a subclass in its own module plus a line in :data:`INPUT_ENCODINGS` (or an entry point in the
``rramc.input_encodings`` group).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from rramc.errors import TargetError
from rramc.hardware.converters import dac, dac_codes, dac_steps
from rramc.hardware.target import Target
from rramc.registry import Registry


@dataclass
class Read:
    """One read of the arrays: word-line voltages and the digital weight of its ADC output.

    Give the voltages either as ``voltages`` (shaped like the layer input, [V]) or as DAC
    ``codes`` (integers, same shape) with the voltage of every code in ``code_voltages``;
    codes let the column solver tabulate what it needs per code instead of per input.
    """

    weight: float
    voltages: Tensor | None = None
    codes: Tensor | None = None
    code_voltages: Tensor | None = None

    def applied(self) -> Tensor:
        """The word-line voltages [V], whichever way they were given."""
        if self.voltages is not None:
            return self.voltages
        assert self.codes is not None and self.code_voltages is not None
        return self.code_voltages.to(self.codes.device)[self.codes]


class InputEncoding(ABC):
    """Base of input encodings; ``name`` is the value of ``crossbar.input_encoding``."""

    name: ClassVar[str]

    def __init__(self, target: Target) -> None:
        self.target = target

    @abstractmethod
    def reads(self, x: Tensor, dac_bits: int | None) -> list[Read]:
        """The reads that apply ``x`` (≥ 0, 1 = full scale); differentiable if ``x`` requires grad."""

    def full_scale_response(self, dac_bits: int | None) -> float:
        """Read current per siemens of conductance difference for a full-scale input (x = 1):
        ``Σ_reads weight·[f(V, g_max) - f(V, g_min)]/(g_max - g_min)`` [A/S]. Dividing by it is the
        conventional full-scale calibration: an input of 1 gives the linear weighted sum."""
        c, device = self.target.conductance, self.target.device
        total = 0.0
        for read in self.reads(torch.ones(1, dtype=torch.float64), dac_bits):
            v = read.applied().to(torch.float64)
            hi = device.current(v, torch.tensor(c.g_max, dtype=torch.float64))
            lo = device.current(v, torch.tensor(c.g_min, dtype=torch.float64))
            total += read.weight * float(((hi - lo) / (c.g_max - c.g_min)).sum())
        return total

    def clipped(self, x: Tensor, dac_bits: int | None) -> Tensor:
        """How many of ``x`` (≥ 0) the encoding cannot represent and clips (a 0-d count)."""
        if dac_bits is None:
            return torch.zeros((), dtype=torch.long)
        return (x > 1.0).sum()


class Amplitude(InputEncoding):
    """The activation sets the read voltage: ``V = DAC(x)·Vread``, one read per phase."""

    name = "amplitude"

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._levels: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}

    def reads(self, x: Tensor, dac_bits: int | None) -> list[Read]:
        vread = self.target.crossbar.read_voltage
        if dac_bits is not None and dac_bits <= 16 and not x.requires_grad:
            key = (dac_bits, x.dtype, x.device)
            if key not in self._levels:
                steps = dac_steps(dac_bits)
                self._levels[key] = torch.arange(steps + 1, dtype=x.dtype, device=x.device) * (vread / steps)
            return [Read(1.0, codes=dac_codes(x, dac_bits), code_voltages=self._levels[key])]
        return [Read(1.0, voltages=dac(x, dac_bits) * vread)]


INPUT_ENCODINGS: Registry[type[InputEncoding]] = Registry(
    what="input encoding",
    group="rramc.input_encodings",
    builtins={"amplitude": "rramc.hardware.input_encoding:Amplitude"},
    error=TargetError,
    interface=InputEncoding,
)
"""Every input encoding by name: the built-ins plus the ``rramc.input_encodings`` entry points."""


def input_encoding(name: str, target: Target) -> InputEncoding:
    """The encoding ``name`` for ``target``."""
    return INPUT_ENCODINGS.get(name)(target)
