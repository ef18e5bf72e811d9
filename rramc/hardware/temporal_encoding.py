"""Input encodings that apply only the read voltage, so a cell's I-V is met at one point only.

``bit_serial``: one bit plane of the DAC code per read, at 0 V or ``Vread``, the ADC outputs
weighted ``2^b / (2^B - 1)`` and added (shift-and-add). ``pulse_width``: every word line at
``Vread`` for a time proportional to its input, the bit line integrating the charge. Either way
each cell carries ``f(Vread, G)`` or nothing, so a column's (time-integrated) current is linear
in the inputs, whatever the device's nonlinearity in V: the sum is exact up to the read current
per siemens, which the full-scale calibration divides out.

In training (inputs that require grad) the forward pass is the chip's, and the gradient is the
straight-through one of the input: the code's bits (or the pulse's slots) are not
differentiable, the input they encode is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rramc._lazy import lazy_import
from rramc.hardware.input_encoding import InputEncoding, Read
from rramc.hardware.target import Target

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from rramc.hardware import converters
else:
    torch = lazy_import("torch", globals())
    converters = lazy_import("rramc.hardware.converters", globals())


def _needs_dac(name: str, target: Target) -> tuple[str, str] | None:
    if target.crossbar.dac_bits is None:
        return ("dac_bits", f"input_encoding {name} needs the input's resolution: set crossbar.dac_bits "
                            "(the bits of an input, 1 to 16); got null")
    return None


class _BinaryLevels(InputEncoding):
    """An encoding whose word lines are at 0 V or ``Vread``."""

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._levels: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def levels(self, x: Tensor) -> Tensor:
        key = (x.dtype, x.device)
        if key not in self._levels:
            self._levels[key] = torch.tensor([0.0, self.target.crossbar.read_voltage], dtype=x.dtype, device=x.device)
        return self._levels[key]

    def codes(self, x: Tensor, scale: float, dac_bits: int | None, rounded: bool = True) -> tuple[Tensor, int]:
        """The DAC code of every input (clipped to [0, full scale]; not rounded: the model without a
        DAC) and the code's full scale, the target's DAC's when the model leaves it out."""
        bits = dac_bits if dac_bits is not None else self.target.crossbar.dac_bits
        assert bits is not None  # refused when the target is loaded
        steps = converters.dac_steps(bits)
        codes = x.detach().mul(steps / scale).clamp_(0.0, steps)
        return (codes.round_() if rounded else codes), steps

    def clipped(self, x: Tensor, scale: float, dac_bits: int | None) -> Tensor:
        return (x > scale).sum()  # the code has a full scale even where the chip model leaves the DAC out

    def read(self, weight: float, on: Tensor, x: Tensor, scale: float, seconds: float, accumulates: bool = False) -> Read:
        """A read with the word lines where ``on`` (0 or 1) at ``Vread``; straight-through in ``x`` in training."""
        if x.requires_grad:
            u = x.clamp(0.0, scale) * (1.0 / scale)
            return Read(weight, (on + (u - u.detach())) * self.target.crossbar.read_voltage, seconds=seconds, accumulates=accumulates)
        return Read(weight, levels=self.levels(x), codes=on, seconds=seconds, accumulates=accumulates)


class BitSerial(_BinaryLevels):
    """One bit plane of the input's DAC code per read, least significant first; the ADC outputs
    are weighted ``2^b / (2^B - 1)`` and added, so that the planes sum to ``x / scale``."""

    name = "bit_serial"

    @classmethod
    def problem(cls, target: Target) -> tuple[str, str] | None:
        return _needs_dac(cls.name, target)

    def reads(self, x: Tensor, scale: float, dac_bits: int | None) -> list[Read]:
        codes, steps = self.codes(x, scale, dac_bits)
        seconds = self.target.crossbar.read_time
        reads = []
        for bit in range(steps.bit_length()):
            plane = torch.bitwise_and(codes.to(torch.int32), 1 << bit).ne_(0).to(x.dtype)
            reads.append(self.read((1 << bit) / steps, plane, x, scale, seconds))
        return reads


class PulseWidth(_BinaryLevels):
    """``Vread`` on every word line for ``code · pulse_step`` seconds; the bit line integrates the
    charge over the window of ``(2^B - 1) · pulse_step``.

    With ideal wires the cells are independent, so the charge is one read whose word lines are
    driven for their fraction of the window (:attr:`Read.durations`). With wires the currents
    change as pulses end: the window is read slot by slot (a slot is one ``pulse_step``; the lines
    still on in slot ``s`` are those whose code is at least ``s``), exact and ``2^B - 1`` times the
    work; the slots' charge adds up before the one conversion (:attr:`Read.accumulates`).
    """

    name = "pulse_width"

    @classmethod
    def problem(cls, target: Target) -> tuple[str, str] | None:
        missing = _needs_dac(cls.name, target)
        if missing is not None:
            return missing
        x = target.crossbar
        if x.pulse_step is not None and x.pulse_step < x.read_time:
            return ("pulse_step", f"{x.pulse_step:g} s is shorter than crossbar.read_time ({x.read_time:g} s): a pulse "
                                  "shorter than a read does not read the cell; lengthen pulse_step or shorten read_time")
        return None

    @property
    def pulse_step(self) -> float:
        x = self.target.crossbar
        return x.pulse_step if x.pulse_step is not None else x.read_time

    def reads(self, x: Tensor, scale: float, dac_bits: int | None) -> list[Read]:
        # without converters in the model the pulse is as long as the input says
        codes, steps = self.codes(x, scale, dac_bits, rounded=dac_bits is not None)
        if self.target.wires.accepts_durations:
            window, on = steps * self.pulse_step, (codes > 0).to(x.dtype)
            fraction = codes * (1.0 / steps)
            if x.requires_grad:
                u = x.clamp(0.0, scale) * (1.0 / scale)
                fraction = fraction + (u - u.detach())
                return [Read(1.0, on * self.target.crossbar.read_voltage, durations=fraction, seconds=window)]
            return [Read(1.0, levels=self.levels(x), codes=on, durations=fraction, seconds=window)]
        return [self.read(1.0 / steps, (codes >= slot).to(x.dtype), x, scale, self.pulse_step, accumulates=slot < steps)
                for slot in range(1, steps + 1)]
