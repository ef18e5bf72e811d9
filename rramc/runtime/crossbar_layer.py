"""One crossbar op as programmed on a chip instance, and its execution."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rramc.errors import RuntimeSimulationError
from rramc.hardware.crossbar import TiledConductances, adc, bitline_currents, dac, program_conductances
from rramc.hardware.target import Target
from rramc.ir import CrossbarConv2d, CrossbarOp, Node


def to_matrix_input(op: CrossbarOp, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """The rows fed to the word lines (``[vectors, word lines]``) and how to shape the outputs back.

    A convolution is im2col-unrolled: every output pixel is one input vector of the crossbar.
    """
    if not isinstance(op, CrossbarConv2d):
        return x, lambda y: y
    batch, _, height, width = x.shape
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

    def phases(self, vectors: Tensor, input_scale: float) -> list[tuple[float, Tensor]]:
        """(sign, DAC output in [0, 1]) of each read phase; signed inputs take two phases."""
        x = vectors / input_scale
        if not self.op.input_signed:
            return [(1.0, dac(x.clamp_min(0.0), self.op.dac_bits))]
        return [(1.0, dac(x.clamp_min(0.0), self.op.dac_bits)), (-1.0, dac((-x).clamp_min(0.0), self.op.dac_bits))]

    def currents(self, vectors: Tensor, input_scale: float, generator: torch.Generator | None = None) -> list[tuple[float, Tensor]]:
        """Bit-line currents ``[row blocks, vectors, outputs]`` of each read phase, before the ADC."""
        vread = self.target.crossbar.read_voltage
        sigma = self.target.nonidealities.read_noise_sigma
        return [
            (sign, bitline_currents(x * vread, self.tiles, self.target.device, read_noise_sigma=sigma, generator=generator))
            for sign, x in self.phases(vectors, input_scale)
        ]

    def digitize(self, phase_currents: list[tuple[float, Tensor]]) -> Tensor:
        """ADC every tile and add the partial sums digitally: ``[vectors, outputs]`` [A]."""
        total = None
        for sign, current in phase_currents:
            if self.op.adc_bits is not None:
                assert self.adc_range is not None
                current = adc(current, self.adc_range[:, None, :], self.op.adc_bits)
            part = sign * current.sum(0)
            total = part if total is None else total + part
        assert total is not None
        return total

    def neuron(self, current: Tensor) -> Tensor:
        """Gain and bias of the neuron circuit: current → the layer's output units."""
        assert self.op.gain is not None
        y = current * self.op.gain.to(current)
        return y if self.op.bias is None else y + self.op.bias.to(current)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        assert self.op.input_scale is not None
        vectors, restore = to_matrix_input(self.op, x)
        return restore(self.neuron(self.digitize(self.currents(vectors, self.op.input_scale, generator))))
