"""Digital tensor ops: activations, elementwise arithmetic, shape and reduction ops, attention maths.

Everything here runs in the chip's digital periphery, exactly, in every execution mode. Shapes
and dims are per sample, as everywhere in the IR: the batch dimension is implicit, dim 0 is the
first dimension of a sample. Constant operands of the PyTorch code (numbers, parameters,
buffers) are attributes broadcast against the per-sample shape, never graph nodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from rramc.ir.ops import Bounds, DigitalOp, Shape, _carried, _expect_rank, register_op


def _check_dim(dim: int, rank: int, field: str = "dim") -> None:
    if not 0 <= dim < rank:
        raise ValueError(f"{field} {dim} is not a dimension of a rank-{rank} sample (0..{rank - 1}; the batch is implicit)")


def _batched(dim: int) -> int:
    """A per-sample dim as a dim of the batched tensor."""
    return dim + 1


def _value(function: Callable[[Tensor], Tensor], x: float) -> float:
    return float(function(torch.tensor(x, dtype=torch.float64)))


def _high(value: float | None) -> float | None:
    """A computed upper bound; an infinite or undefined one says nothing."""
    return value if value is not None and math.isfinite(value) else None


def _low(value: float | None) -> float | None:
    """A computed lower bound; ``-inf`` is kept (it says: signed, unbounded), NaN says nothing."""
    return value if value is not None and not math.isnan(value) and value != math.inf else None


def _hull(operands: list[Bounds]) -> Bounds:
    """Bounds that hold for values taken from any of the operands."""
    lows, highs = [lo for lo, _ in operands], [hi for _, hi in operands]
    return (None if None in lows else min(lows), None if None in highs else max(highs))  # type: ignore[type-var]


# --- activation functions --------------------------------------------------------------------

BoundsRule = Callable[[Callable[[Tensor], Tensor], Bounds, float | None], Bounds]


def _increasing(low: float | None, high: float | None) -> BoundsRule:
    """An increasing function with range (``low``, ``high``): [lo, hi] maps to [f(lo), f(hi)]."""

    def rule(f: Callable[[Tensor], Tensor], operand: Bounds, alpha: float | None) -> Bounds:
        lo, hi = operand
        return (low if lo is None else _low(_value(f, lo)), high if hi is None else _high(_value(f, hi)))

    return rule


def _dip(at: float, minimum: float) -> BoundsRule:
    """A function negative below 0 with its minimum ``minimum`` left of ``at`` and increasing right of it
    (GELU, SiLU, Mish, Hardswish); ``at`` is rounded up and ``minimum`` down so the bounds stay sound."""

    def rule(f: Callable[[Tensor], Tensor], operand: Bounds, alpha: float | None) -> Bounds:
        lo, hi = operand
        return (minimum if lo is None or lo < at else _value(f, lo), None if hi is None else max(_value(f, hi), 0.0))

    return rule


def _decreasing_on_positives(f: Callable[[Tensor], Tensor], operand: Bounds, alpha: float | None) -> Bounds:
    """1/x and 1/sqrt(x): decreasing and positive where the operand is known to be positive."""
    lo, hi = operand
    if lo is None or lo <= 0:
        return (None, None)
    return (0.0 if hi is None else _value(f, hi), _high(_value(f, lo)))


def _neg(f: Callable[[Tensor], Tensor], operand: Bounds, alpha: float | None) -> Bounds:
    lo, hi = operand
    return (None if hi is None else -hi, None if lo is None else _high(-lo))


def _abs(f: Callable[[Tensor], Tensor], operand: Bounds, alpha: float | None) -> Bounds:
    lo, hi = operand
    low = lo if lo is not None and lo > 0 else (-hi if hi is not None and hi < 0 else 0.0)
    return (low, None if lo is None or hi is None else _high(max(abs(lo), abs(hi))))


def _sqrt(f: Callable[[Tensor], Tensor], operand: Bounds, alpha: float | None) -> Bounds:
    lo, hi = operand
    return (0.0 if lo is None or lo <= 0 else math.sqrt(lo), None if hi is None else _high(math.sqrt(max(hi, 0.0))))


def _sloped(f: Callable[[Tensor], Tensor], operand: Bounds, alpha: float | None) -> Bounds:
    """LeakyReLU: increasing for a non-negative slope, unknown otherwise."""
    return _increasing(None, None)(f, operand, alpha) if alpha is not None and alpha >= 0 else (None, None)


def _elu(f: Callable[[Tensor], Tensor], operand: Bounds, alpha: float | None) -> Bounds:
    """ELU: increasing, at least ``-alpha``, for a non-negative alpha."""
    return _increasing(-alpha, None)(f, operand, alpha) if alpha is not None and alpha >= 0 else (None, None)


@dataclass(frozen=True)
class ActivationFunction:
    """One function of :class:`Activation`: how to apply it, and what it does to bounds."""

    apply: Callable[[Tensor, float | None], Tensor]
    bounds: BoundsRule
    takes_alpha: bool = False


ACTIVATION_FUNCTIONS: dict[str, ActivationFunction] = {
    "gelu": ActivationFunction(lambda x, a: F.gelu(x), _dip(-0.75, -0.17)),
    "gelu_tanh": ActivationFunction(lambda x, a: F.gelu(x, approximate="tanh"), _dip(-0.75, -0.1701)),
    "silu": ActivationFunction(lambda x, a: F.silu(x), _dip(-1.27, -0.2785)),
    "mish": ActivationFunction(lambda x, a: F.mish(x), _dip(-1.19, -0.3089)),
    "hardswish": ActivationFunction(lambda x, a: F.hardswish(x), _dip(-1.5, -0.375)),
    "sigmoid": ActivationFunction(lambda x, a: torch.sigmoid(x), _increasing(0.0, 1.0)),
    "hardsigmoid": ActivationFunction(lambda x, a: F.hardsigmoid(x), _increasing(0.0, 1.0)),
    "tanh": ActivationFunction(lambda x, a: torch.tanh(x), _increasing(-1.0, 1.0)),
    "softplus": ActivationFunction(lambda x, a: F.softplus(x), _increasing(0.0, None)),
    "exp": ActivationFunction(lambda x, a: torch.exp(x), _increasing(0.0, None)),
    "log1p": ActivationFunction(lambda x, a: torch.log1p(x), _increasing(None, None)),
    "leaky_relu": ActivationFunction(lambda x, a: F.leaky_relu(x, a), _sloped, takes_alpha=True),
    "elu": ActivationFunction(lambda x, a: F.elu(x, a), _elu, takes_alpha=True),
    "neg": ActivationFunction(lambda x, a: -x, _neg),
    "abs": ActivationFunction(lambda x, a: torch.abs(x), _abs),
    "sqrt": ActivationFunction(lambda x, a: torch.sqrt(x), _sqrt),
    "rsqrt": ActivationFunction(lambda x, a: torch.rsqrt(x), _decreasing_on_positives),
    "reciprocal": ActivationFunction(lambda x, a: torch.reciprocal(x), _decreasing_on_positives),
}
"""The functions :class:`Activation` computes, by name. ``alpha`` is LeakyReLU's negative slope and ELU's alpha."""


@register_op
@dataclass(eq=False, kw_only=True)
class Activation(DigitalOp):
    """An elementwise function of one activation, named by ``function`` (see :data:`ACTIVATION_FUNCTIONS`)."""

    kind: ClassVar[str] = "activation"
    function: str
    alpha: float | None = None

    def verify_(self, operands: list[Shape]) -> None:
        entry = ACTIVATION_FUNCTIONS.get(self.function)
        if entry is None:
            raise ValueError(f"unknown activation function {self.function!r}; allowed: {', '.join(sorted(ACTIVATION_FUNCTIONS))}")
        if entry.takes_alpha and self.alpha is None:
            raise ValueError(f"{self.function} needs alpha")
        if not entry.takes_alpha and self.alpha is not None:
            with_alpha = ", ".join(name for name, f in ACTIVATION_FUNCTIONS.items() if f.takes_alpha)
            raise ValueError(f"{self.function} takes no alpha (only {with_alpha} do)")

    def compute(self, x: Tensor) -> Tensor:
        return ACTIVATION_FUNCTIONS[self.function].apply(x, self.alpha)

    def bounds(self, operands: list[Bounds]) -> Bounds:
        return ACTIVATION_FUNCTIONS[self.function].bounds(self.compute, operands[0], self.alpha)


@register_op
@dataclass(eq=False, kw_only=True)
class PReLU(DigitalOp):
    """``max(x, 0) + weight * min(x, 0)`` with one learned slope per channel (dim 0), or one for all."""

    kind: ClassVar[str] = "prelu"
    weight: Tensor

    def verify_(self, operands: list[Shape]) -> None:
        if self.weight.dim() != 1 or (self.weight.numel() != 1 and (not operands[0] or self.weight.numel() != operands[0][0])):
            channels = operands[0][0] if operands[0] else 1
            raise ValueError(f"weight has shape {list(self.weight.shape)}, expected [1] or [{channels}] (one slope per channel)")

    def compute(self, x: Tensor) -> Tensor:
        return F.prelu(x, self.weight.to(x))

    def bounds(self, operands: list[Bounds]) -> Bounds:
        lo, hi = operands[0]
        low_slope, high_slope = float(self.weight.min()), float(self.weight.max())
        if low_slope < 0:
            return (None, None)
        low = None if lo is None else (lo if lo >= 0 else (lo * high_slope if high_slope > 0 else 0.0))
        return (low, None if hi is None else (hi if hi >= 0 else hi * low_slope))


# --- arithmetic ------------------------------------------------------------------------------

def _broadcast(shapes: list[Shape], what: str) -> Shape:
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        raise ValueError(f"{what} shapes {', '.join(str(list(s)) for s in shapes)} do not broadcast") from None


@register_op
@dataclass(eq=False, kw_only=True)
class Affine(DigitalOp):
    """``x * scale + shift`` with constant tensors broadcast against each sample (scalars as 0-d tensors).

    Arithmetic with constants, normalisation constants and learned additive embeddings all take this form.
    """

    kind: ClassVar[str] = "affine"
    scale: Tensor
    shift: Tensor

    def infer_shape(self, operands: list[Shape]) -> Shape:
        return _broadcast([operands[0], tuple(self.scale.shape), tuple(self.shift.shape)], "operand, scale and shift")

    def verify_(self, operands: list[Shape]) -> None:
        for name in ("scale", "shift"):
            value = getattr(self, name)
            if value.dim() > len(operands[0]):
                raise ValueError(f"{name} has shape {list(value.shape)}, more dimensions than a sample {list(operands[0])}")
        self.infer_shape(operands)

    def compute(self, x: Tensor) -> Tensor:
        return x * self.scale.to(x) + self.shift.to(x)

    def bounds(self, operands: list[Bounds]) -> Bounds:
        lo, hi = operands[0]
        scale, shift = torch.broadcast_tensors(self.scale.double(), self.shift.double())

        def extreme(at_positive: float | None, at_negative: float | None, pick: Callable[[Tensor], Tensor]) -> float | None:
            """The extreme of ``x * scale + shift`` over elements, ``x`` at one end of its interval by the scale's sign."""
            term = torch.zeros_like(scale)
            for end, where in ((at_positive, scale > 0), (at_negative, scale < 0)):
                if bool(where.any()):
                    if end is None:
                        return None
                    term = torch.where(where, scale * end, term)
            return float(pick(term + shift))

        return (_low(extreme(lo, hi, torch.min)), _high(extreme(hi, lo, torch.max)))


def _product_bounds(a: Bounds, b: Bounds) -> Bounds:
    (lo, hi), (lo2, hi2) = a, b
    ends = (lo, hi, lo2, hi2)
    if all(e is not None and math.isfinite(e) for e in ends):
        corners = [x * y for x in (lo, hi) for y in (lo2, hi2)]  # type: ignore[operator]
        return (min(corners), max(corners))
    if lo is not None and lo2 is not None and lo >= 0 and lo2 >= 0:
        return (lo * lo2, None if hi is None or hi2 is None else _high(hi * hi2))
    return (None, None)


def _binary_bounds(function: str, a: Bounds, b: Bounds) -> Bounds:
    (lo, hi), (lo2, hi2) = a, b

    def plus(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else x + y

    if function == "add":
        return (_low(plus(lo, lo2)), _high(plus(hi, hi2)))
    if function == "sub":
        return (_low(plus(lo, None if hi2 is None else -hi2)), _high(plus(hi, None if lo2 is None else -lo2)))
    if function == "mul":
        return _product_bounds(a, b)
    if function == "div":
        if lo2 is not None and hi2 is not None and (lo2 > 0 or hi2 < 0):  # the divisor keeps its sign
            return _product_bounds(a, (1 / hi2, 1 / lo2))
        return (None, None)
    known = [x for x in (lo, lo2) if x is not None], [x for x in (hi, hi2) if x is not None]
    if function == "maximum":  # at least either operand; at most the larger high, if both are known
        return (max(known[0]) if known[0] else None, max(hi, hi2) if hi is not None and hi2 is not None else None)
    # minimum
    return (min(lo, lo2) if lo is not None and lo2 is not None else None, min(known[1]) if known[1] else None)


BINARY_FUNCTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
    "maximum": torch.maximum, "minimum": torch.minimum,
}
"""The elementwise functions of two activations :class:`Binary` computes."""


@register_op
@dataclass(eq=False, kw_only=True)
class Binary(DigitalOp):
    """An elementwise function of two activations of the same rank, broadcast between their shapes
    (dimensions of size 1 stretch). Same-shape residual sums stay ``add``."""

    kind: ClassVar[str] = "binary"
    arity: ClassVar[int] = 2
    function: str

    def infer_shape(self, operands: list[Shape]) -> Shape:
        return _broadcast(operands, "operand")

    def verify_(self, operands: list[Shape]) -> None:
        if self.function not in BINARY_FUNCTIONS:
            raise ValueError(f"unknown binary function {self.function!r}; allowed: {', '.join(BINARY_FUNCTIONS)}")
        if len(operands[0]) != len(operands[1]):
            raise ValueError(f"operands of different ranks {list(operands[0])} and {list(operands[1])}")
        self.infer_shape(operands)

    def compute(self, a: Tensor, b: Tensor) -> Tensor:
        return BINARY_FUNCTIONS[self.function](a, b)

    def bounds(self, operands: list[Bounds]) -> Bounds:
        return _binary_bounds(self.function, operands[0], operands[1])


COMPARISONS: dict[str, Callable[[Tensor, float], Tensor]] = {"gt": torch.gt, "ge": torch.ge, "lt": torch.lt, "le": torch.le}
"""The comparisons of an activation with a number that :class:`Where` selects by."""


@register_op
@dataclass(eq=False, kw_only=True)
class Where(DigitalOp):
    """Elementwise ``a`` where ``x`` compares true with ``threshold`` (``compare``: gt, ge, lt, le), else ``b``,
    broadcast like :class:`Binary`: piecewise functions (PReLU, Softplus and Mish as torch.export
    decomposes them, ``torch.where(x > 0, x, 0.1 * x)``)."""

    kind: ClassVar[str] = "where"
    arity: ClassVar[int] = 3
    compare: str
    threshold: float

    def infer_shape(self, operands: list[Shape]) -> Shape:
        return _broadcast(operands, "operand")

    def verify_(self, operands: list[Shape]) -> None:
        if self.compare not in COMPARISONS:
            raise ValueError(f"unknown comparison {self.compare!r}; allowed: {', '.join(COMPARISONS)}")
        if len({len(s) for s in operands}) != 1:
            raise ValueError(f"operands of different ranks {', '.join(str(list(s)) for s in operands)}")
        self.infer_shape(operands)

    def compute(self, x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return torch.where(COMPARISONS[self.compare](x, self.threshold), a, b)

    def bounds(self, operands: list[Bounds]) -> Bounds:
        return _hull(operands[1:])


@register_op
@dataclass(eq=False, kw_only=True)
class MatMul(DigitalOp):
    """The product of two activations, like ``torch.matmul`` on each sample's matrices (the last two
    dims; the dims before them broadcast). Computed digitally: neither factor is a stationary weight
    that could be programmed into a crossbar."""

    kind: ClassVar[str] = "matmul"
    arity: ClassVar[int] = 2

    def infer_shape(self, operands: list[Shape]) -> Shape:
        a, b = operands
        return (*_broadcast([a[:-2], b[:-2]], "the leading (batched) dims of the"), a[-2], b[-1])

    def verify_(self, operands: list[Shape]) -> None:
        a, b = operands
        if len(a) < 2 or len(b) < 2:
            raise ValueError(f"matmul needs matrices (rank 2 or more per sample), got {list(a)} and {list(b)}")
        if a[-1] != b[-2]:
            raise ValueError(f"cannot multiply {list(a)} by {list(b)}: {a[-1]} columns against {b[-2]} rows")
        self.infer_shape(operands)

    def compute(self, a: Tensor, b: Tensor) -> Tensor:
        rank = max(a.dim(), b.dim())  # the per-sample leading dims align right of the batch, as torch.matmul aligns them
        a = a.reshape(a.shape[0], *([1] * (rank - a.dim())), *a.shape[1:])
        b = b.reshape(b.shape[0], *([1] * (rank - b.dim())), *b.shape[1:])
        return torch.matmul(a, b)

    def bounds(self, operands: list[Bounds]) -> Bounds:
        (lo, hi), (lo2, hi2) = operands
        if lo is not None and lo2 is not None and lo >= 0 and lo2 >= 0:  # a sum of non-negative products
            return (0.0, None)
        return (None, None)


# --- shapes ----------------------------------------------------------------------------------

@register_op
@dataclass(eq=False, kw_only=True)
class Concat(DigitalOp):
    """Activations joined along ``dim`` (SqueezeNet, Inception, DenseNet, U-Net skips).

    ``constants`` are parts the same for every sample (a ViT's class token), each with its place
    among all the joined parts, in ascending order: ``((0, token),)`` puts ``token`` first.
    """

    kind: ClassVar[str] = "concat"
    arity: ClassVar[int | None] = None
    dim: int
    constants: tuple[tuple[int, Tensor], ...] | None = None

    def _parts(self, operands: list[Shape]) -> list[Shape]:
        parts = list(operands)
        for place, value in self.constants or ():
            parts.insert(place, tuple(value.shape))
        return parts

    def infer_shape(self, operands: list[Shape]) -> Shape:
        parts = self._parts(operands)
        first = parts[0]
        return (*first[: self.dim], sum(s[self.dim] for s in parts), *first[self.dim + 1 :])

    def verify_(self, operands: list[Shape]) -> None:
        places = [place for place, _ in self.constants or ()]
        if places != sorted(set(places)) or any(not 0 <= p < len(operands) + len(places) for p in places):
            raise ValueError(f"the places of the constants {places} must be distinct, ascending places among "
                             f"{len(operands) + len(places)} parts")
        parts = self._parts(operands)
        first = parts[0]
        _check_dim(self.dim, len(first))
        for shape in parts[1:]:
            if len(shape) != len(first) or any(a != b for i, (a, b) in enumerate(zip(shape, first)) if i != self.dim):
                raise ValueError(f"cannot concatenate {list(first)} and {list(shape)} along dim {self.dim}: "
                                 "the other dimensions must match")

    def compute(self, *operands: Tensor) -> Tensor:
        parts = list(operands)
        batch = operands[0].shape[0]
        for place, value in self.constants or ():
            parts.insert(place, value.to(operands[0]).expand(batch, *value.shape))
        return torch.cat(parts, _batched(self.dim))

    def bounds(self, operands: list[Bounds]) -> Bounds:
        return _hull([*operands, *((float(v.min()), float(v.max())) for _, v in self.constants or ())])


@register_op
@dataclass(eq=False, kw_only=True)
class Slice(DigitalOp):
    """``x[start:stop:step]`` along ``dim``, with ``0 <= start < stop <= size`` and ``step >= 1``."""

    kind: ClassVar[str] = "slice"
    dim: int
    start: int
    stop: int
    step: int = 1

    def infer_shape(self, operands: list[Shape]) -> Shape:
        shape = list(operands[0])
        shape[self.dim] = len(range(self.start, self.stop, self.step))
        return tuple(shape)

    def verify_(self, operands: list[Shape]) -> None:
        _check_dim(self.dim, len(operands[0]))
        size = operands[0][self.dim]
        if not (0 <= self.start < self.stop <= size and self.step >= 1):
            raise ValueError(f"slice {self.start}:{self.stop}:{self.step} of dim {self.dim} (size {size}) must satisfy "
                             "0 <= start < stop <= size and step >= 1")

    def compute(self, x: Tensor) -> Tensor:
        index = (slice(None),) * _batched(self.dim) + (slice(self.start, self.stop, self.step),)
        return x[index]

    bounds = staticmethod(_carried)  # type: ignore[assignment]


@register_op
@dataclass(eq=False, kw_only=True)
class Permute(DigitalOp):
    """Each sample's dims reordered: result dim ``i`` is operand dim ``dims[i]`` (transpose, permute)."""

    kind: ClassVar[str] = "permute"
    dims: tuple[int, ...]

    def infer_shape(self, operands: list[Shape]) -> Shape:
        return tuple(operands[0][d] for d in self.dims)

    def verify_(self, operands: list[Shape]) -> None:
        if sorted(self.dims) != list(range(len(operands[0]))):
            raise ValueError(f"dims {list(self.dims)} is not a permutation of a rank-{len(operands[0])} sample's dims")

    def compute(self, x: Tensor) -> Tensor:
        return x.permute(0, *(_batched(d) for d in self.dims))

    bounds = staticmethod(_carried)  # type: ignore[assignment]


# --- normalisations and reductions -------------------------------------------------------------

@register_op
@dataclass(eq=False, kw_only=True)
class Softmax(DigitalOp):
    """Softmax (or, with ``log``, log-softmax) along ``dim``."""

    kind: ClassVar[str] = "softmax"
    dim: int
    log: bool = False

    def verify_(self, operands: list[Shape]) -> None:
        _check_dim(self.dim, len(operands[0]))

    def compute(self, x: Tensor) -> Tensor:
        return (F.log_softmax if self.log else F.softmax)(x, _batched(self.dim))

    def bounds(self, operands: list[Bounds]) -> Bounds:
        return (None, 0.0) if self.log else (0.0, 1.0)


@register_op
@dataclass(eq=False, kw_only=True)
class LayerNorm(DigitalOp):
    """Layer normalisation over the trailing dims ``normalized_shape``, with optional elementwise
    ``weight`` and ``bias`` of that shape."""

    kind: ClassVar[str] = "layer_norm"
    normalized_shape: tuple[int, ...]
    weight: Tensor | None = None
    bias: Tensor | None = None
    eps: float = 1e-5

    def verify_(self, operands: list[Shape]) -> None:
        shape = tuple(self.normalized_shape)
        if not shape or len(shape) > len(operands[0]) or tuple(operands[0][len(operands[0]) - len(shape) :]) != shape:
            raise ValueError(f"normalized_shape {list(shape)} is not the trailing dims of a sample {list(operands[0])}")
        for name in ("weight", "bias"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"{name} has shape {list(value.shape)}, expected normalized_shape {list(shape)}")
        if not self.eps > 0:
            raise ValueError(f"eps = {self.eps}, expected a positive number")

    def compute(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.to(x)
        bias = None if self.bias is None else self.bias.to(x)
        return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


REDUCTIONS: dict[str, Callable[..., Tensor]] = {"mean": torch.mean, "sum": torch.sum, "amax": torch.amax, "amin": torch.amin}
"""The reductions :class:`Reduce` computes."""


@register_op
@dataclass(eq=False, kw_only=True)
class Reduce(DigitalOp):
    """Mean, sum, maximum or minimum over ``dims`` (distinct, ascending), keeping them as size 1 with ``keepdim``."""

    kind: ClassVar[str] = "reduce"
    function: str
    dims: tuple[int, ...]
    keepdim: bool = False

    def infer_shape(self, operands: list[Shape]) -> Shape:
        if self.keepdim:
            return tuple(1 if i in self.dims else s for i, s in enumerate(operands[0]))
        return tuple(s for i, s in enumerate(operands[0]) if i not in self.dims)

    def verify_(self, operands: list[Shape]) -> None:
        if self.function not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.function!r}; allowed: {', '.join(REDUCTIONS)}")
        if not self.dims or list(self.dims) != sorted(set(self.dims)):
            raise ValueError(f"dims {list(self.dims)} must be one or more distinct dims in ascending order")
        for dim in self.dims:
            _check_dim(dim, len(operands[0]), "dims entry")

    def compute(self, x: Tensor) -> Tensor:
        return REDUCTIONS[self.function](x, dim=tuple(_batched(d) for d in self.dims), keepdim=self.keepdim)

    def bounds(self, operands: list[Bounds]) -> Bounds:
        lo, hi = operands[0]
        if self.function != "sum":
            return (lo, hi)
        # n >= 1 values in [lo, hi] sum to [n*lo, n*hi]; without n only the side that keeps its sign is known
        return (lo if lo is not None and lo >= 0 else None, hi if hi is not None and hi <= 0 else None)


# --- spatial -----------------------------------------------------------------------------------

INTERPOLATION_MODES = ("nearest", "bilinear")


@register_op
@dataclass(eq=False, kw_only=True)
class Interpolate(DigitalOp):
    """2-D resampling of ``[channels, height, width]`` samples to ``size`` (Upsample, F.interpolate).

    ``scale_factor``, when the PyTorch code gave one, is what PyTorch's index arithmetic uses
    (for a scale that does not divide the sizes evenly it differs from ``size`` ratios);
    ``align_corners`` is bilinear's.
    """

    kind: ClassVar[str] = "interpolate"
    size: tuple[int, int]
    mode: str = "nearest"
    scale_factor: tuple[float, float] | None = None
    align_corners: bool | None = None

    def infer_shape(self, operands: list[Shape]) -> Shape:
        return (operands[0][0], *self.size)

    def verify_(self, operands: list[Shape]) -> None:
        _expect_rank(operands, 3, "interpolate")
        if self.mode not in INTERPOLATION_MODES:
            raise ValueError(f"unknown mode {self.mode!r}; allowed: {', '.join(INTERPOLATION_MODES)}")
        if self.mode == "nearest" and self.align_corners is not None:
            raise ValueError("align_corners applies to bilinear interpolation only")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size {list(self.size)} must be two positive sizes (height, width)")
        if self.scale_factor is not None:
            expected = tuple(math.floor(n * s) for n, s in zip(operands[0][1:], self.scale_factor))
            if len(self.scale_factor) != 2 or expected != tuple(self.size):
                raise ValueError(f"scale_factor {list(self.scale_factor)} gives size {list(expected)}, not {list(self.size)}")

    def compute(self, x: Tensor) -> Tensor:
        if self.scale_factor is not None:
            return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode, align_corners=self.align_corners,
                                 recompute_scale_factor=False)
        return F.interpolate(x, size=self.size, mode=self.mode, align_corners=self.align_corners)

    bounds = staticmethod(_carried)  # type: ignore[assignment]


@register_op
@dataclass(eq=False, kw_only=True)
class AdaptiveMaxPool2d(DigitalOp):
    """Max pooling of ``[channels, height, width]`` samples to a fixed output size."""

    kind: ClassVar[str] = "adaptive_max_pool2d"
    output_size: tuple[int, int]

    def infer_shape(self, operands: list[Shape]) -> Shape:
        return (operands[0][0], *self.output_size)

    def verify_(self, operands: list[Shape]) -> None:
        _expect_rank(operands, 3, "adaptive_max_pool2d")
        if len(self.output_size) != 2 or min(self.output_size) < 1:
            raise ValueError(f"output_size {list(self.output_size)} must be two positive sizes (height, width)")

    def compute(self, x: Tensor) -> Tensor:
        return F.adaptive_max_pool2d(x, self.output_size)

    bounds = staticmethod(_carried)  # type: ignore[assignment]
