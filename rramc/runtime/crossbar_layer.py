"""One crossbar op as programmed on a chip instance, and its execution."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from rramc.errors import RuntimeSimulationError
from rramc.hardware.crossbar import TiledConductances, adc, currents_from_drive, dac, program_conductances, word_line_drive
from rramc.hardware.devices import SeparableExpansion, cached_expansion
from rramc.hardware.target import Target
from rramc.ir import CrossbarConv2d, CrossbarOp, Node

PhaseCurrents = list[tuple[float, Tensor]]


def to_matrix_input(op: CrossbarOp, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """The rows fed to the word lines (``[vectors, word lines]``) and how to shape the outputs back.

    A convolution is im2col-unrolled: every output pixel is one input vector of the crossbar.
    """
    if not isinstance(op, CrossbarConv2d):
        return x, lambda y: y
    batch = x.shape[0]
    cols = F.unfold(x, op.kernel_size, dilation=op.dilation, padding=op.padding, stride=op.stride)
    out_h, out_w = op.infer_shape([tuple(x.shape[1:])])[1:]
    vectors = cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def restore(y: Tensor) -> Tensor:
        return y.reshape(batch, out_h * out_w, -1).transpose(1, 2).reshape(batch, -1, out_h, out_w)

    return vectors, restore


@dataclass
class ProgrammedLayer:
    """A tiled, calibrated crossbar op with the conductances one chip instance really holds."""

    node: Node
    op: CrossbarOp
    target: Target
    tiles: TiledConductances
    adc_range: Tensor | None  # [row blocks, outputs] full-scale current per column [A]
    _drive_table: Tensor | None = field(default=None, repr=False)

    @classmethod
    def program(
        cls,
        node: Node,
        target: Target,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        require_calibration: bool = True,
    ) -> ProgrammedLayer:
        op = node.op
        assert isinstance(op, CrossbarOp)
        if op.row_splits is None or op.col_splits is None:
            raise RuntimeSimulationError(f"%{node.name} ({node.source}) is not tiled: run the 'tile' pass before executing it on the chip")
        if require_calibration and (op.input_scale is None or op.gain is None or (op.adc_bits is not None and op.adc_range is None)):
            raise RuntimeSimulationError(f"%{node.name} ({node.source}) is not calibrated: run the 'calibrate' pass before executing it on the chip")
        g_pos, g_neg = (g.to(device=device, dtype=dtype) for g in (op.g_pos, op.g_neg))
        g_pos, g_neg = program_conductances(g_pos, g_neg, target, op.col_splits, generator)
        tiles = TiledConductances.from_matrices(g_pos, g_neg, op.row_splits, op.col_splits)
        adc_range = None if op.adc_range is None else tiles.per_column(op.adc_range.to(device=device, dtype=dtype))
        return cls(node, op, target, tiles, adc_range)

    @property
    def expansion(self) -> SeparableExpansion | None:
        """How a non-separable device is computed as matmuls (None: separable, or per cell)."""
        if self.target.device.separable:
            return None
        c = self.target.conductance
        return cached_expansion(self.target.device, self.target.crossbar.read_voltage, (c.g_min, c.g_max))

    def calibrated(self, op: CrossbarOp) -> None:
        """Take over the ADC ranges (and other settings) of a newly calibrated ``op``."""
        self.op = op
        self.adc_range = None if op.adc_range is None else self.tiles.per_column(op.adc_range.to(self.tiles.g_pos))

    def drive(self, x: Tensor) -> Tensor:
        """Word-line drive (``g(V)`` or ``V``) of DAC outputs ``x`` in [0, 1].

        Without gradients, a separable device with a DAC looks ``g`` up in a table of the DAC's
        ``2**bits`` voltages instead of evaluating it per element: the values are the same.
        """
        vread = self.target.crossbar.read_voltage
        device, bits = self.target.device, self.op.dac_bits
        if device.separable and bits is not None and bits <= 16 and not x.requires_grad:
            steps = (1 << bits) - 1
            if self._drive_table is None or self._drive_table.dtype != x.dtype or self._drive_table.device != x.device:
                levels = torch.arange(steps + 1, dtype=x.dtype, device=x.device) / steps
                self._drive_table = device.unit_current(levels * vread)
            return self._drive_table[torch.round(x * steps).long()]
        return word_line_drive(x * vread, device)

    def currents(self, x: Tensor, input_scale: float, generator: torch.Generator | None = None) -> tuple[PhaseCurrents, Callable[[Tensor], Tensor]]:
        """Bit-line currents ``[row blocks, vectors, outputs]`` of each read phase (sign, current),
        before the ADC, and how to shape per-vector results back to the layer's output.

        Inputs are scaled so that ``input_scale`` is the full read voltage; signed inputs take two
        phases (positive and negative parts, subtracted after the ADC).
        """
        x = x / input_scale
        parts = [(1.0, x.clamp_min(0.0))]
        if self.op.input_signed:
            parts.append((-1.0, (-x).clamp_min(0.0)))
        sigma = self.target.nonidealities.read_noise_sigma
        phase_currents, restore = [], None
        for sign, part in parts:
            vectors, restore = to_matrix_input(self.op, self.drive(dac(part, self.op.dac_bits)))
            current = currents_from_drive(vectors, self.tiles, self.target.device, read_noise_sigma=sigma,
                                          generator=generator, expansion=self.expansion)
            phase_currents.append((sign, current))
        assert restore is not None
        return phase_currents, restore

    def digitize(self, phase_currents: PhaseCurrents) -> Tensor:
        """ADC every tile and add the partial sums digitally: ``[vectors, outputs]`` [A]."""
        total = None
        for sign, current in phase_currents:
            if self.op.adc_bits is not None:
                assert self.adc_range is not None
                current = adc(current, self.adc_range[:, None, :], self.op.adc_bits)
            part = current.sum(0) if sign > 0 else -current.sum(0)
            total = part if total is None else total + part
        assert total is not None
        return total

    def neuron(self, current: Tensor) -> Tensor:
        """Gain and bias of the neuron circuit: current → the layer's output units."""
        assert self.op.gain is not None
        y = current * self.op.gain.to(current)
        offset = self.op.bias if self.op.offset is None else self.op.offset
        return y if offset is None else y + offset.to(current)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        assert self.op.input_scale is not None
        currents, restore = self.currents(x, self.op.input_scale, generator)
        return restore(self.neuron(self.digitize(currents)))
