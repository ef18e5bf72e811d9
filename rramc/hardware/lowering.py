"""How a layer's activations meet the crossbar: as vectors (linear) or as im2col-unrolled patches (conv).

A convolution's matrix has one row per (input channel, kernel offset), in the order of
``torch.nn.functional.unfold`` and of ``weight.reshape(out, -1)``: word line ``i`` carries channel
``i // (kh·kw)`` at offset ``i % (kh·kw)``. Currents are laid out per row block: ``[blocks,
batch, outputs]`` for a linear layer and ``[batch, blocks, outputs, H, W]`` for a convolution
(the layout its convolution kernels produce); :meth:`Lowering.per_column` shapes per-column
values to broadcast against them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from rramc.ir import CrossbarConv2d, CrossbarOp


@dataclass(frozen=True)
class Lowering:
    """``conv`` is None for a linear layer, else (kernel, stride, padding, dilation)."""

    conv: tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]] | None = None

    @classmethod
    def of(cls, op: CrossbarOp) -> Lowering:
        if isinstance(op, CrossbarConv2d):
            return cls((op.kernel_size, op.stride, op.padding, op.dilation))
        return cls(None)

    @property
    def block_dim(self) -> int:
        """The dimension of the currents that runs over row blocks."""
        return 0 if self.conv is None else 1

    def per_column(self, values: Tensor) -> Tensor:
        """``[blocks, outputs]`` → broadcastable against the currents."""
        return values[:, None, :] if self.conv is None else values[None, :, :, None, None]

    def per_output(self, values: Tensor) -> Tensor:
        """``[outputs]`` → broadcastable against the layer's output."""
        return values if self.conv is None else values[:, None, None]

    def vectors(self, x: Tensor) -> Tensor:
        """The crossbar input vectors ``[vectors, word lines]`` (every output pixel is one for a conv)."""
        if self.conv is None:
            return x
        kernel, stride, padding, dilation = self.conv
        cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def output_size(self, x: Tensor) -> tuple[int, ...]:
        """The spatial size of the outputs for input ``x``."""
        if self.conv is None:
            return ()
        kernel, stride, padding, dilation = self.conv
        return tuple((x.shape[2 + d] + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1 for d in range(2))

    def restore(self, y: Tensor, batch: int, spatial: tuple[int, ...]) -> Tensor:
        """``[vectors, outputs]`` → ``[batch, outputs, *spatial]``."""
        if self.conv is None:
            return y
        h, w = spatial
        return y.reshape(batch, h * w, -1).transpose(1, 2).reshape(batch, -1, h, w)
