"""The input-encoding seam: how an activation becomes signals on the word lines.

An encoding turns one sign phase of a layer's inputs (their positive part, ``scale`` being the
value applied as full scale) into a list of :class:`Read` s: each is one read of the arrays (word-line voltages, applied at once),
digitised by the ADC and weighted digitally (shift-and-add) before the reads are summed. Built
in: ``amplitude`` (one read; the activation sets the voltage through the DAC), ``bit_serial`` and
``pulse_width`` (:mod:`~rramc.hardware.temporal_encoding`: only 0 V and the read voltage) and
``predistorted`` (:mod:`~rramc.hardware.predistortion`: levels placed for linear currents). A new encoding is
a subclass in its own module plus a line in :data:`INPUT_ENCODINGS` (or an entry point in the
``rramc.input_encodings`` group).

A target's input encoding is checked against :data:`INPUT_ENCODINGS` when it is loaded, so this
module is imported to load a target: torch and the converters are bound on first use
(:mod:`rramc._lazy`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from rramc._lazy import lazy_import
from rramc.errors import TargetError
from rramc.hardware.target import Target
from rramc.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from rramc.hardware import converters
else:
    torch = lazy_import("torch", globals())
    converters = lazy_import("rramc.hardware.converters", globals())


class Read:
    """One read of the arrays: word-line voltages and the digital weight of its ADC output.

    ``voltages`` [V] are shaped like the layer's input. ``levels``, when given, are every voltage
    that can occur (ascending: a DAC's outputs; ``uniform`` when evenly spaced from 0 V), so a
    column solver may tabulate what it needs per level instead of computing it per input; an
    encoding that knows each input's level may give those indices (``codes``, integral values of
    any dtype) instead of the voltages, which are then derived when asked for.

    Time: the read lasts ``seconds`` (None: the target's ``crossbar.read_time``); ``durations``,
    when given, shaped like the input, is the fraction of that window each word line is driven
    (pulse-width inputs: the bit line integrates the charge). Only a solver that
    ``accepts_durations`` is given such reads. A read that ``accumulates`` adds its charge to the
    next read's before the ADC (a pulse-width window read slot by slot): the group is converted once.
    """

    def __init__(self, weight: float, voltages: Tensor | None = None, levels: Tensor | None = None,
                 codes: Tensor | None = None, *, uniform: bool = True, durations: Tensor | None = None,
                 seconds: float | None = None, accumulates: bool = False) -> None:
        if voltages is None and (codes is None or levels is None):
            raise ValueError("a read needs its voltages, or the codes of its levels")
        if not uniform and voltages is None and codes is None:
            raise ValueError("a read on uneven levels needs its codes")
        self.weight, self.levels, self.uniform = weight, levels, uniform
        self.durations, self.seconds, self.accumulates = durations, seconds, accumulates
        self._voltages, self._codes = voltages, codes

    @property
    def voltages(self) -> Tensor:
        if self._voltages is None:
            assert self._codes is not None and self.levels is not None
            if self.uniform:
                self._voltages = self._codes * self.step
            else:
                self._voltages = self.levels[self._codes.long()]
        return self._voltages

    @property
    def step(self) -> float:
        assert self.levels is not None and self.uniform
        return float(self.levels[1] - self.levels[0]) if len(self.levels) > 1 else 1.0

    def codes(self) -> Tensor:
        """The index (int32) of every voltage among ``levels``."""
        if self._codes is not None:
            return self._codes.int()
        if not self.uniform:
            raise ValueError("the codes of a read on uneven levels are the encoding's to give")
        return (self.voltages * (1.0 / self.step)).round_().int()


class InputEncoding(ABC):
    """Base of input encodings; ``name`` is the value of ``crossbar.input_encoding``."""

    name: ClassVar[str]

    def __init__(self, target: Target) -> None:
        self.target = target

    @classmethod
    def problem(cls, target: Target) -> tuple[str, str] | None:
        """Why ``target`` cannot use this encoding — ``(crossbar field, message)`` — or None. Run when
        a target is loaded, so it computes in Python floats (no torch)."""
        return None

    def caveat(self, dac_bits: int | None, adc_bits: int | None) -> str | None:
        """What the user should know of this encoding's accuracy on the target (a compile warning), or None."""
        return None

    @abstractmethod
    def reads(self, x: Tensor, scale: float, dac_bits: int | None) -> list[Read]:
        """The reads that apply ``max(x, 0)``, ``scale`` being the value applied as full scale;
        differentiable if ``x`` requires grad."""

    def full_scale_response(self, dac_bits: int | None) -> float:
        """Read current per siemens of conductance difference for a full-scale input (x = 1):
        ``Σ_reads weight·[f(V, g_max) - f(V, g_min)]/(g_max - g_min)`` [A/S]. Dividing by it is the
        conventional full-scale calibration: an input of 1 gives the linear weighted sum."""
        c, device = self.target.conductance, self.target.device
        total = 0.0
        for read in self.reads(torch.ones(1, dtype=torch.float64), 1.0, dac_bits):
            v = read.voltages.to(torch.float64)
            hi = device.current(v, torch.tensor(c.g_max, dtype=torch.float64))
            lo = device.current(v, torch.tensor(c.g_min, dtype=torch.float64))
            total += read.weight * float(((hi - lo) / (c.g_max - c.g_min)).sum())
        return total

    def clipped(self, x: Tensor, scale: float, dac_bits: int | None) -> Tensor:
        """How many positive values of ``x`` the encoding cannot represent and clips (a 0-d count)."""
        if dac_bits is None:
            return torch.zeros((), dtype=torch.long)
        return (x > scale).sum()


class Amplitude(InputEncoding):
    """The activation sets the read voltage: ``V = DAC(x)·Vread``, one read per phase."""

    name = "amplitude"

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._levels: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}

    def reads(self, x: Tensor, scale: float, dac_bits: int | None) -> list[Read]:
        vread = self.target.crossbar.read_voltage
        if dac_bits is not None and dac_bits <= 16 and not x.requires_grad:
            steps = converters.dac_steps(dac_bits)
            key = (dac_bits, x.dtype, x.device)
            if key not in self._levels:
                self._levels[key] = torch.arange(steps + 1, dtype=x.dtype, device=x.device) * (vread / steps)
            # the DAC's code of every input (negative ones and those beyond full scale clipped)
            codes = x.mul(steps / scale).clamp_(0.0, steps).round_()
            return [Read(1.0, levels=self._levels[key], codes=codes)]
        if dac_bits is None:
            return [Read(1.0, torch.relu(x) * (vread / scale))]
        return [Read(1.0, converters.dac(x * (1.0 / scale), dac_bits) * vread)]


INPUT_ENCODINGS: Registry[type[InputEncoding]] = Registry(
    what="input encoding",
    group="rramc.input_encodings",
    builtins={"amplitude": "rramc.hardware.input_encoding:Amplitude",
              "bit_serial": "rramc.hardware.temporal_encoding:BitSerial",
              "pulse_width": "rramc.hardware.temporal_encoding:PulseWidth",
              "predistorted": "rramc.hardware.predistortion:Predistorted"},
    error=TargetError,
    interface=InputEncoding,
)
"""Every input encoding by name: the built-ins plus the ``rramc.input_encodings`` entry points."""


def input_encoding(name: str, target: Target) -> InputEncoding:
    """The encoding ``name`` for ``target``."""
    return INPUT_ENCODINGS.get(name)(target)
