"""The operations of rramc's IR.

Each op is a dataclass: its fields are its attributes (tensors, numbers, tuples), ``kind`` is its
name in the printed IR and in executable files, ``arity`` the number of operands it takes.
``infer_shape`` maps the operands' per-sample shapes (the batch dimension is implicit everywhere)
to the result's; ``verify_`` checks the attributes against those shapes and raises ``ValueError``
with a plain sentence, which the graph verifier turns into a located :class:`VerifyError`.

The float ops mirror what the frontend imports from PyTorch. ``quantize`` lowers ``linear`` and
``conv2d`` to the crossbar ops ``xbar.linear`` and ``xbar.conv2d``, which carry the programmed
conductances and, after ``tile`` and ``calibrate``, their tiling and ADC settings.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from rramc.ir.attributes import Attribute, DeviceTraining, InputRange
from rramc.ir.cells import CellPairs, DensePairs

Shape = tuple[int, ...]
Bounds = tuple[float | None, float | None]
"""(low, high) of an activation's values: None where the graph says nothing; ``-inf`` low for a
graph input without a declared range (taken to be signed)."""

OPS: dict[str, type[Op]] = {}
"""Every op class by its ``kind``; filled by :func:`register_op`."""


def register_op(cls: type[Op]) -> type[Op]:
    """Class decorator: make ``cls`` known to the printer, the verifier and the file format."""
    if cls.kind in OPS:
        raise TypeError(f"op kind {cls.kind!r} is defined twice: {OPS[cls.kind]} and {cls}")
    OPS[cls.kind] = cls
    return cls


@dataclass(eq=False, kw_only=True)
class Op:
    """Base of all ops. Subclasses set ``kind`` and ``arity`` and override the shape hooks."""

    kind: ClassVar[str]
    arity: ClassVar[int | None] = 1
    """Operands the op takes; None: one or more (e.g. ``concat``)."""

    def infer_shape(self, operands: list[Shape]) -> Shape:
        return operands[0]

    def verify_(self, operands: list[Shape]) -> None:
        """Raise ``ValueError`` if the attributes do not fit the operand shapes."""

    def verify(self, operands: list[Shape]) -> None:
        """Check typed attributes, then :meth:`verify_`; the graph verifier calls this."""
        _check_attributes(self)
        self.verify_(operands)

    def bounds(self, operands: list[Bounds]) -> Bounds:
        """The range the result is known to lie in, given its operands' (the default: nothing known).

        Calibration reads it to decide, from the graph alone, whether a crossbar layer's inputs are
        signed and what their full scale is (see :func:`rramc.hardware.calibration.value_bounds`).
        """
        return (None, None)

    def attributes(self) -> dict[str, Any]:
        """The op's attributes as the IR text and the executable file spell them (its fields, unless an op says otherwise)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def attribute_types(cls) -> dict[str, Any]:
        """The declared type of every name :meth:`attributes` gives."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def from_attributes(cls, attributes: dict[str, Any]) -> Op:
        """The op :meth:`attributes` describe (raises ``TypeError`` for a missing or unknown one)."""
        return cls(**attributes)

    def replace(self, **changes: Any) -> Op:
        return dataclasses.replace(self, **changes)


@dataclass(eq=False, kw_only=True)
class DigitalOp(Op):
    """An op the chip's digital periphery computes exactly, in every execution mode.

    :meth:`compute` takes batched operands (the batch dimension first) and must be differentiable:
    ``reconstruct`` trains through it.
    """

    def compute(self, *operands: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define compute()")


def _carried(operands: list[Bounds]) -> Bounds:
    """Bounds an op leaves as they are (reshapes, max pooling, averages without padding)."""
    return operands[0]


def _per_channel(x: Tensor, v: Tensor) -> Tensor:
    """A per-channel vector shaped to broadcast against batched activations ``[batch, channels, ...]``."""
    return v.to(x).reshape(-1, *([1] * (x.dim() - 2)))


def _affine_bounds(scale: Tensor, shift: Tensor, operand: Bounds) -> Bounds:
    """Bounds of ``x·scale + shift`` over every channel, for ``x`` in a finite ``operand`` interval."""
    lo, hi = operand
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return (None, None)
    ends = torch.stack([scale.double() * lo + shift.double(), scale.double() * hi + shift.double()])
    return (float(ends.min()), float(ends.max()))


def _pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if len(value) == 1:
        return (int(value[0]), int(value[0]))
    return (int(value[0]), int(value[1]))


def _window_out(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil: bool) -> int:
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (math.ceil if ceil else math.floor)(span / stride) + 1
    # PyTorch's rule: the last window must start inside the (left-padded) input.
    if ceil and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _expect_rank(operands: list[Shape], rank: int, what: str) -> None:
    if len(operands[0]) != rank:
        raise ValueError(f"{what} needs a rank-{rank} operand per sample, got shape {list(operands[0])}")


def _verify_linear(weight: Tensor, bias: Tensor | None, operands: list[Shape], what: str) -> None:
    if not operands[0]:
        raise ValueError(f"{what} needs samples of rank 1 or more, got a scalar per sample")
    features = operands[0][-1]
    if weight.dim() != 2 or weight.shape[1] != features:
        raise ValueError(f"weight {list(weight.shape)} does not take {features} input features "
                         f"(each sample has shape {list(operands[0])}; a linear layer acts on the last dimension)")
    _check_vector("bias", bias, weight.shape[0])


def _check_vector(name: str, value: Tensor | None, length: int) -> None:
    if value is not None and tuple(value.shape) != (length,):
        raise ValueError(f"{name} has shape {list(value.shape)}, expected [{length}]")


def _check_attributes(op: Op) -> None:
    for value in (getattr(op, f.name) for f in dataclasses.fields(op)):
        if isinstance(value, Attribute):
            value.check()


@register_op
@dataclass(eq=False, kw_only=True)
class Input(Op):
    """A network input. Its per-sample shape is the node's shape.

    ``value_range`` is the declared range of its values (a data set's, or the user's): it
    decides whether the first crossbar layer reads signed inputs. Undeclared inputs are
    taken to be signed.
    """

    kind: ClassVar[str] = "input"
    arity: ClassVar[int] = 0
    value_range: tuple[float, float] | None = None

    def infer_shape(self, operands: list[Shape]) -> Shape:  # pragma: no cover - never called
        raise ValueError("an input's shape is given, not inferred")

    def verify_(self, operands: list[Shape]) -> None:
        if self.value_range is not None:
            low, high = self.value_range
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"value_range {self.value_range} must be finite with low < high")


@register_op
@dataclass(eq=False, kw_only=True)
class Output(DigitalOp):
    """The network's result; exactly one per graph, last."""

    kind: ClassVar[str] = "output"

    def compute(self, x: Tensor) -> Tensor:
        return x

    bounds = staticmethod(_carried)  # type: ignore[assignment]


@register_op
@dataclass(eq=False, kw_only=True)
class Linear(Op):
    """``y = x @ weight.T + bias`` over the last dimension of each sample: a feature vector, or
    every token of a sequence (``[tokens, features]`` → ``[tokens, outputs]``), each its own read.

    ``trained_for`` marks a layer retrained through a device (its float model is then the
    device-aware one) and ``input_range`` the input range it was trained with, which the
    crossbar op it is lowered to keeps. ``shares`` names an earlier node whose weights this one
    applies again (a module called twice, a recurrent net's steps): the chip programs them once.
    """

    kind: ClassVar[str] = "linear"
    weight: Tensor
    bias: Tensor | None = None
    input_range: InputRange | None = None
    trained_for: DeviceTraining | None = None
    shares: str | None = None

    def infer_shape(self, operands: list[Shape]) -> Shape:
        return (*operands[0][:-1], self.weight.shape[0])

    def verify_(self, operands: list[Shape]) -> None:
        _verify_linear(self.weight, self.bias, operands, "linear")


def weight_matrix(weight: Tensor, groups: int = 1) -> Tensor:
    """A layer's weight as the crossbar's matrix ``[outputs, word lines]`` (differentiable).

    A convolution's word lines are its input channels times kernel offsets (the order of
    ``unfold``). In a grouped convolution each group's outputs see only its own channels: the
    matrix is block-diagonal, and the cells off the blocks hold zero weights: programmed like any
    zero (e.g. both cells of a differential pair at ``g_min``), so they carry current on a
    nonlinear or noisy chip as they would on a real one mapped this way.
    """
    flat = weight.reshape(weight.shape[0], -1)
    if groups == 1:
        return flat
    return torch.block_diag(*flat.chunk(groups, dim=0))


@dataclass(eq=False, kw_only=True)
class _ConvGeometry:
    """Stride, padding, dilation and groups of a 2-D convolution (zero padding)."""

    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def verify_groups(self, weight: Tensor, operands: list[Shape], what: str) -> None:
        _expect_rank(operands, 3, what)
        channels = operands[0][0]
        if self.groups < 1 or weight.shape[0] % self.groups or channels % self.groups:
            raise ValueError(f"groups={self.groups} must divide the {channels} input and {weight.shape[0]} output channels")
        if weight.dim() != 4 or weight.shape[1] * self.groups != channels:
            raise ValueError(f"weight {list(weight.shape)} with groups={self.groups} does not take {channels} channels")

    def conv_out_shape(self, operand: Shape, out_channels: int, kernel: tuple[int, int]) -> Shape:
        _, h, w = operand
        return (
            out_channels,
            _window_out(h, kernel[0], self.stride[0], self.padding[0], self.dilation[0], False),
            _window_out(w, kernel[1], self.stride[1], self.padding[1], self.dilation[1], False),
        )


@register_op
@dataclass(eq=False, kw_only=True)
class Conv2d(_ConvGeometry, Op):
    """2-D convolution, ``weight`` of shape ``[out, in, kh, kw]``; ``input_range`` and
    ``trained_for`` as for :class:`Linear`."""

    kind: ClassVar[str] = "conv2d"
    weight: Tensor
    bias: Tensor | None = None
    input_range: InputRange | None = None
    trained_for: DeviceTraining | None = None
    shares: str | None = None

    def infer_shape(self, operands: list[Shape]) -> Shape:
        return self.conv_out_shape(operands[0], self.weight.shape[0], tuple(self.weight.shape[2:]))

    def verify_(self, operands: list[Shape]) -> None:
        self.verify_groups(self.weight, operands, "conv2d")
        _check_vector("bias", self.bias, self.weight.shape[0])
        if min(self.infer_shape(operands)) < 1:
            raise ValueError(f"the kernel does not fit the input {list(operands[0])}")


@register_op
@dataclass(eq=False, kw_only=True)
class ZeroPad2d(DigitalOp):
    """Spreads each channel's pixels ``spacing`` apart and pads the borders with zeros (a negative pad crops).

    Input pixel ``(i, j)`` lands at ``(top + i·spacing[0], left + j·spacing[1])``. With spacing 1 it
    is zero padding (asymmetric ``padding='same'``, ``F.pad``); with spacing ``s`` it turns a
    transposed convolution into an ordinary one: zeros between the pixels, then a convolution with
    the flipped kernel, which the crossbar computes.
    """

    kind: ClassVar[str] = "zero_pad2d"
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    spacing: tuple[int, int] = (1, 1)

    def infer_shape(self, operands: list[Shape]) -> Shape:
        c, h, w = operands[0]
        top, bottom, left, right = self.padding
        return (c, (h - 1) * self.spacing[0] + 1 + top + bottom, (w - 1) * self.spacing[1] + 1 + left + right)

    def verify_(self, operands: list[Shape]) -> None:
        _expect_rank(operands, 3, "zero_pad2d")
        if len(self.padding) != 4 or min(self.spacing) < 1:
            raise ValueError(f"padding {list(self.padding)} must give top, bottom, left, right and spacing {list(self.spacing)} be >= 1")
        if min(self.infer_shape(operands)) < 1:
            raise ValueError(f"cropping {list(self.padding)} leaves nothing of the input {list(operands[0])}")

    def compute(self, x: Tensor) -> Tensor:
        sh, sw = self.spacing
        if (sh, sw) != (1, 1):
            spread = x.new_zeros(*x.shape[:2], (x.shape[2] - 1) * sh + 1, (x.shape[3] - 1) * sw + 1)
            spread[:, :, ::sh, ::sw] = x
            x = spread
        top, bottom, left, right = self.padding
        return F.pad(x, (left, right, top, bottom))

    def bounds(self, operands: list[Bounds]) -> Bounds:
        lo, hi = operands[0]
        return (None if lo is None else min(lo, 0.0), None if hi is None else max(hi, 0.0))


@register_op
@dataclass(eq=False, kw_only=True)
class BatchNorm(DigitalOp):
    """Inference-mode batch normalisation over the first (channel) dimension."""

    kind: ClassVar[str] = "batch_norm"
    mean: Tensor
    var: Tensor
    weight: Tensor | None = None
    bias: Tensor | None = None
    eps: float = 1e-5

    def verify_(self, operands: list[Shape]) -> None:
        channels = operands[0][0]
        for name in ("mean", "var", "weight", "bias"):
            _check_vector(name, getattr(self, name), channels)

    def scale_and_shift(self) -> tuple[Tensor, Tensor]:
        """The per-channel affine map this normalisation applies: ``y = x * scale + shift``."""
        scale = torch.rsqrt(self.var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -self.mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        return scale, shift

    def compute(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_and_shift()
        return x * _per_channel(x, scale) + _per_channel(x, shift)

    def bounds(self, operands: list[Bounds]) -> Bounds:
        return _affine_bounds(*self.scale_and_shift(), operands[0])


@register_op
@dataclass(eq=False, kw_only=True)
class ChannelAffine(DigitalOp):
    """``y = x * scale + shift`` per channel (first dimension), computed digitally."""

    kind: ClassVar[str] = "channel_affine"
    scale: Tensor
    shift: Tensor

    def compute(self, x: Tensor) -> Tensor:
        return x * _per_channel(x, self.scale) + _per_channel(x, self.shift)

    def bounds(self, operands: list[Bounds]) -> Bounds:
        return _affine_bounds(self.scale, self.shift, operands[0])

    def verify_(self, operands: list[Shape]) -> None:
        _check_vector("scale", self.scale, operands[0][0])
        _check_vector("shift", self.shift, operands[0][0])


@register_op
@dataclass(eq=False, kw_only=True)
class ReLU(DigitalOp):
    kind: ClassVar[str] = "relu"

    def compute(self, x: Tensor) -> Tensor:
        return torch.relu(x)

    def bounds(self, operands: list[Bounds]) -> Bounds:
        hi = operands[0][1]
        return (0.0, None if hi is None else max(hi, 0.0))


@register_op
@dataclass(eq=False, kw_only=True)
class Clamp(DigitalOp):
    """Clipped activation ``min(max(x, low), high)``; either bound may be None."""

    kind: ClassVar[str] = "clamp"
    low: float | None = None
    high: float | None = None

    def verify_(self, operands: list[Shape]) -> None:
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low bound {self.low} is above high bound {self.high}")

    def compute(self, x: Tensor) -> Tensor:
        return torch.clamp(x, self.low, self.high)

    def bounds(self, operands: list[Bounds]) -> Bounds:
        lo, hi = operands[0]
        lo = self.low if lo is None else (lo if self.low is None else max(lo, self.low))
        hi = self.high if hi is None else (hi if self.high is None else min(hi, self.high))
        return (lo, hi)


@dataclass(eq=False, kw_only=True)
class _Pool2d(DigitalOp):
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    ceil_mode: bool = False

    def _dilation(self) -> tuple[int, int]:
        return (1, 1)

    def infer_shape(self, operands: list[Shape]) -> Shape:
        c, h, w = operands[0]
        d = self._dilation()
        return (
            c,
            _window_out(h, self.kernel_size[0], self.stride[0], self.padding[0], d[0], self.ceil_mode),
            _window_out(w, self.kernel_size[1], self.stride[1], self.padding[1], d[1], self.ceil_mode),
        )

    def verify_(self, operands: list[Shape]) -> None:
        _expect_rank(operands, 3, self.kind)
        for k, p in zip(self.kernel_size, self.padding):
            if p * 2 > k:
                raise ValueError(f"padding {self.padding} exceeds half the kernel {self.kernel_size}")
        if min(self.infer_shape(operands)) < 1:
            raise ValueError(f"the window does not fit the input {list(operands[0])}")


@register_op
@dataclass(eq=False, kw_only=True)
class MaxPool2d(_Pool2d):
    kind: ClassVar[str] = "max_pool2d"
    dilation: tuple[int, int] = (1, 1)

    def _dilation(self) -> tuple[int, int]:
        return self.dilation

    def compute(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    bounds = staticmethod(_carried)  # type: ignore[assignment]


@register_op
@dataclass(eq=False, kw_only=True)
class AvgPool2d(_Pool2d):
    kind: ClassVar[str] = "avg_pool2d"
    count_include_pad: bool = True

    def compute(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def bounds(self, operands: list[Bounds]) -> Bounds:
        lo, hi = operands[0]
        if self.count_include_pad and any(self.padding):  # the zero padding is averaged in
            lo = None if lo is None else min(lo, 0.0)
            hi = None if hi is None else max(hi, 0.0)
        return (lo, hi)


@register_op
@dataclass(eq=False, kw_only=True)
class AdaptiveAvgPool2d(DigitalOp):
    """Average pooling to a fixed output size; canonicalize rewrites it as ``avg_pool2d``."""

    kind: ClassVar[str] = "adaptive_avg_pool2d"
    output_size: tuple[int, int]

    def infer_shape(self, operands: list[Shape]) -> Shape:
        return (operands[0][0], *self.output_size)

    def verify_(self, operands: list[Shape]) -> None:
        _expect_rank(operands, 3, "adaptive_avg_pool2d")

    def compute(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, self.output_size)

    bounds = staticmethod(_carried)  # type: ignore[assignment]


@register_op
@dataclass(eq=False, kw_only=True)
class Reshape(DigitalOp):
    """View each sample with a new shape (flatten, view, reshape)."""

    kind: ClassVar[str] = "reshape"
    shape: tuple[int, ...]

    def infer_shape(self, operands: list[Shape]) -> Shape:
        return tuple(self.shape)

    def verify_(self, operands: list[Shape]) -> None:
        if math.prod(self.shape) != math.prod(operands[0]):
            raise ValueError(f"cannot reshape {list(operands[0])} to {list(self.shape)}")

    def compute(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)

    bounds = staticmethod(_carried)  # type: ignore[assignment]


@register_op
@dataclass(eq=False, kw_only=True)
class Add(DigitalOp):
    """Elementwise sum of two activations of the same shape (residual connections)."""

    kind: ClassVar[str] = "add"
    arity: ClassVar[int] = 2

    def verify_(self, operands: list[Shape]) -> None:
        if operands[0] != operands[1]:
            raise ValueError(f"operand shapes differ: {list(operands[0])} and {list(operands[1])}")

    def compute(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b

    def bounds(self, operands: list[Bounds]) -> Bounds:
        (lo, hi), (lo2, hi2) = operands
        return (None if lo is None or lo2 is None else lo + lo2, None if hi is None or hi2 is None else hi + hi2)


@dataclass(eq=False, kw_only=True)
class CrossbarOp(Op):
    """A weighted sum computed on crossbar arrays.

    Conductances are stored as a matrix with one row per word line (input) and one column per
    output: ``g_pos`` and ``g_neg`` are the two cells of each weight as the weight encoding
    ``weight_encoding`` places them (the two columns of a differential pair, or the weight column
    and the shared reference column), in siemens. ``cells`` holds them (:mod:`rramc.ir.cells`):
    coded, one byte per pair, when they sit on the target's levels; ``g_pos``/``g_neg`` decode
    them (the IR text and the file name them so). ``conductance_per_weight`` (S per weight unit,
    per output) is the mapping's scale. ``input_encoding`` names how activations become
    word-line signals (``amplitude``: the activation sets the read voltage).

    The fields after the conductances are filled by later passes: ``tile`` sets ``row_splits`` and
    ``col_splits`` (the grid of array-sized tiles, partial sums added after the ADC), ``calibrate``
    sets ``input_range`` (the activation applied as the full read voltage, and whether inputs are
    signed), ``gain`` (A → output units, per output), ``adc_range`` (full-scale current of each
    tile's ADC, in A) and, when it fits the neuron to data, ``offset`` (added after the gain
    instead of ``bias``; ``bias`` stays the float layer's). ``trained_for`` is carried over from
    the float layer (see :class:`Linear`). ``place`` may set ``row_place`` and ``col_place``
    (int64, per word line and per output): where each sits in its tile's array, counted from the
    array's sense amplifiers (rows) and from its drivers (outputs); unset, the matrix's order from
    the array's first row and column. Only wires with resistance tell the places apart.

    ``weight_slices`` (None: one) spreads each weight over that many cell pairs of ``slice_bits``
    bits each, least significant first: the matrix then has ``outputs · weight_slices`` columns
    (output ``j``'s slice ``s`` in column ``j·weight_slices + s``), each with its own ADC, and the
    digitised slices are added with the weights :meth:`slice_weights` (shift-and-add) before the
    neuron. Tiles, places and ADC ranges count columns; gain, offset and bias count outputs.

    ``shares`` (see :class:`Linear`) names the node whose arrays this one reads again: its
    conductances, tiles and places are that node's (the same tensors), programmed once; its
    periphery settings (input range, gain, ADC ranges) are its own.
    """

    weight: Tensor
    bias: Tensor | None = None
    cells: CellPairs
    conductance_per_weight: Tensor
    weight_encoding: str = "differential"
    input_encoding: str = "amplitude"
    dac_bits: int | None = None
    adc_bits: int | None = None
    input_range: InputRange | None = None
    gain: Tensor | None = None
    offset: Tensor | None = None
    row_splits: tuple[int, ...] | None = None
    col_splits: tuple[int, ...] | None = None
    adc_range: Tensor | None = None
    trained_for: DeviceTraining | None = None
    row_place: Tensor | None = None
    col_place: Tensor | None = None
    weight_slices: int | None = None
    slice_bits: int | None = None
    shares: str | None = None

    @property
    def g_pos(self) -> Tensor:
        """The first cell of every pair ``[word lines, columns]`` [S] (decoded: a new matrix when ``cells`` are coded)."""
        return self.cells.side(0)

    @property
    def g_neg(self) -> Tensor:
        """The second cell of every pair (see :attr:`g_pos`)."""
        return self.cells.side(1)

    def attributes(self) -> dict[str, Any]:
        """The fields, with ``cells`` spelt as the conductances ``g_pos`` and ``g_neg``."""
        attributes: dict[str, Any] = {}
        for name, value in super().attributes().items():
            if name == "cells":
                attributes["g_pos"], attributes["g_neg"] = value.dense()
            else:
                attributes[name] = value
        return attributes

    @classmethod
    def attribute_types(cls) -> dict[str, Any]:
        types: dict[str, Any] = {}
        for name, hint in super().attribute_types().items():
            if name == "cells":
                types["g_pos"] = types["g_neg"] = Tensor
            else:
                types[name] = hint
        return types

    def replace(self, **changes: Any) -> Op:
        """Also takes new ``g_pos`` and/or ``g_neg`` (held as they are given, dense)."""
        if "g_pos" in changes or "g_neg" in changes:
            g_pos, g_neg = changes.pop("g_pos", None), changes.pop("g_neg", None)
            changes["cells"] = DensePairs(self.g_pos if g_pos is None else g_pos, self.g_neg if g_neg is None else g_neg)
        return super().replace(**changes)

    @classmethod
    def from_attributes(cls, attributes: dict[str, Any]) -> Op:
        """Also takes ``cells`` itself in place of ``g_pos`` and ``g_neg`` (a file's coded pairs)."""
        attributes = dict(attributes)
        if "cells" not in attributes:
            g_pos, g_neg = attributes.pop("g_pos", None), attributes.pop("g_neg", None)
            if not isinstance(g_pos, Tensor) or not isinstance(g_neg, Tensor):
                raise TypeError("a crossbar op needs the tensors g_pos and g_neg")
            attributes["cells"] = DensePairs(g_pos, g_neg)
        return cls(**attributes)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(word lines, outputs) of the unrolled weight matrix."""
        return (int(self.weight[0].numel()) * getattr(self, "groups", 1), int(self.weight.shape[0]))

    @property
    def slices(self) -> int:
        return self.weight_slices or 1

    @property
    def columns(self) -> int:
        """Conductance columns: one per output and slice."""
        return self.matrix_shape[1] * self.slices

    def slice_weights(self) -> Tensor | None:
        """The digital weight of each slice's ADC output, ``2^(b·s)·(2^b - 1)/(2^(S·b) - 1)``: the slices of
        a weight add up to what one unsliced pair carries for it (None: unsliced)."""
        if self.weight_slices is None:
            return None
        assert self.slice_bits is not None
        b, slices = self.slice_bits, self.weight_slices
        return torch.tensor([(1 << (b * s)) * ((1 << b) - 1) / ((1 << (b * slices)) - 1) for s in range(slices)], dtype=torch.float64)

    def flat_weight(self) -> Tensor:
        """The float weight as the crossbar sees it: ``[outputs, word lines]`` (see :func:`weight_matrix`)."""
        return weight_matrix(self.weight, getattr(self, "groups", 1))

    def tiles(self) -> list[tuple[slice, slice]]:
        """(rows, columns) of every tile, row-block major; empty before ``tile`` ran."""
        if self.row_splits is None or self.col_splits is None:
            return []
        rows = list(zip(self.row_splits[:-1], self.row_splits[1:]))
        cols = list(zip(self.col_splits[:-1], self.col_splits[1:]))
        return [(slice(r0, r1), slice(c0, c1)) for r0, r1 in rows for c0, c1 in cols]

    @property
    def grid(self) -> tuple[int, int]:
        assert self.row_splits is not None and self.col_splits is not None
        return (len(self.row_splits) - 1, len(self.col_splits) - 1)

    @property
    def is_tiled(self) -> bool:
        return self.row_splits is not None

    @property
    def is_calibrated(self) -> bool:
        """Everything the chip needs to run it is set: input range, gain and, with an ADC, its ranges."""
        return self.input_range is not None and self.gain is not None and (self.adc_bits is None or self.adc_range is not None)

    def verify_mapping(self) -> None:
        rows, cols = self.matrix_shape
        if (self.weight_slices is None) != (self.slice_bits is None):
            raise ValueError("weight_slices and slice_bits must be set together")
        if self.weight_slices is not None and not (1 <= self.weight_slices <= 16 and 1 <= self.slices * (self.slice_bits or 0) <= 32):
            raise ValueError(f"weight_slices={self.weight_slices}, slice_bits={self.slice_bits}: expected 1..16 slices of at most 32 bits in all")
        if not isinstance(self.cells, CellPairs):
            raise ValueError(f"cells must be conductance pairs (rramc.ir.cells), not a {type(self.cells).__name__}")
        if isinstance(self.cells, DensePairs) and self.cells.g_neg.shape != self.cells.g_pos.shape:
            raise ValueError(f"g_neg {list(self.cells.g_neg.shape)} differs from g_pos {list(self.cells.g_pos.shape)}")
        if self.cells.shape != (rows, self.columns):
            raise ValueError(f"g_pos {list(self.cells.shape)} does not match the weight {list(self.weight.shape)}"
                             + (f" in {self.slices} slices" if self.weight_slices else ""))
        _check_vector("bias", self.bias, cols)
        _check_vector("conductance_per_weight", self.conductance_per_weight, cols)
        _check_vector("gain", self.gain, cols)
        _check_vector("offset", self.offset, cols)
        if self.cells.extrema()[0] < 0:
            raise ValueError("conductances must be non-negative")
        for name in ("weight_encoding", "input_encoding"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must name an encoding")
        for name, bits in (("dac_bits", self.dac_bits), ("adc_bits", self.adc_bits)):
            if bits is not None and not 1 <= bits <= 32:
                raise ValueError(f"{name} = {bits}, expected 1..32 or None (ideal)")
        if (self.row_splits is None) != (self.col_splits is None):
            raise ValueError("row_splits and col_splits must be set together")
        if self.row_splits is not None:
            _check_splits("row_splits", self.row_splits, rows)
            _check_splits("col_splits", self.col_splits, self.columns)
            if self.adc_range is not None and tuple(self.adc_range.shape) != self.grid:
                raise ValueError(f"adc_range {list(self.adc_range.shape)} does not match the tile grid {list(self.grid)}")
            for name, place, splits in (("row_place", self.row_place, self.row_splits), ("col_place", self.col_place, self.col_splits)):
                _check_place(name, place, splits)
        elif self.adc_range is not None:
            raise ValueError("adc_range is set but the layer is not tiled")
        elif self.row_place is not None or self.col_place is not None:
            raise ValueError("row_place/col_place are set but the layer is not tiled")
        if self.adc_range is not None and not bool(torch.isfinite(self.adc_range).all() and (self.adc_range >= 0).all()):
            raise ValueError("adc_range must be finite and non-negative")
        for name in ("gain", "offset"):
            value = getattr(self, name)
            if value is not None and not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} has non-finite values")


def _check_place(name: str, place: Tensor | None, splits: tuple[int, ...] | None) -> None:
    """A placement gives every block's rows (or outputs) distinct places 0..size-1 of the block."""
    if place is None:
        return
    assert splits is not None
    if place.dtype != torch.int64 or tuple(place.shape) != (splits[-1],):
        raise ValueError(f"{name} must be int64 [{splits[-1]}], got {str(place.dtype).removeprefix('torch.')} {list(place.shape)}")
    for a, b in zip(splits[:-1], splits[1:]):
        if not torch.equal(place[a:b].sort().values, torch.arange(b - a)):
            raise ValueError(f"{name}[{a}:{b}] is not a permutation of the places 0..{b - a - 1} of its tile")


def _check_splits(name: str, splits: tuple[int, ...] | None, size: int) -> None:
    assert splits is not None
    if len(splits) < 2 or splits[0] != 0 or splits[-1] != size or any(b <= a for a, b in zip(splits, splits[1:])):
        raise ValueError(f"{name} {list(splits)} must rise strictly from 0 to {size}")


@register_op
@dataclass(eq=False, kw_only=True)
class CrossbarLinear(CrossbarOp):
    """``linear`` mapped onto crossbar arrays (over the last dimension of each sample, like ``linear``)."""

    kind: ClassVar[str] = "xbar.linear"

    def infer_shape(self, operands: list[Shape]) -> Shape:
        return (*operands[0][:-1], self.matrix_shape[1])

    def verify_(self, operands: list[Shape]) -> None:
        if not operands[0]:
            raise ValueError("xbar.linear needs samples of rank 1 or more")
        if operands[0][-1] != self.matrix_shape[0]:
            raise ValueError(f"{operands[0][-1]} inputs for {self.matrix_shape[0]} word lines")
        self.verify_mapping()


@register_op
@dataclass(eq=False, kw_only=True)
class CrossbarConv2d(_ConvGeometry, CrossbarOp):
    """``conv2d`` mapped onto crossbar arrays as an im2col-unrolled matrix.

    Word line ``i`` carries input channel ``i // (kh*kw)`` at kernel offset ``i % (kh*kw)``, the
    order of ``torch.nn.functional.unfold`` and of ``weight.reshape(out, -1)``; a grouped
    convolution's matrix is block-diagonal (:func:`weight_matrix`).
    """

    kind: ClassVar[str] = "xbar.conv2d"

    @property
    def kernel_size(self) -> tuple[int, int]:
        return (int(self.weight.shape[2]), int(self.weight.shape[3]))

    def infer_shape(self, operands: list[Shape]) -> Shape:
        return self.conv_out_shape(operands[0], self.matrix_shape[1], self.kernel_size)

    def verify_(self, operands: list[Shape]) -> None:
        self.verify_groups(self.weight, operands, "xbar.conv2d")
        self.verify_mapping()


CROSSBAR_KINDS = frozenset(kind for kind, cls in OPS.items() if issubclass(cls, CrossbarOp))
