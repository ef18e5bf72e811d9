"""Converters for the digital tensor ops (:mod:`rramc.ir.tensor_ops`): every spelling users write.

Registers into :mod:`rramc.frontend.fx_import`'s tables: ``nn`` modules, ``torch.*`` and ``F.*``
functions, Tensor methods, Python operators, and the ATen ops ``torch.export`` produces (with and
without ``run_decompositions()``). PyTorch dims are batched; the IR's are per sample, so every dim
is normalised here and an op over the batch dimension is refused (rramc computes each sample on
its own). Calls on constants alone (a parameter transposed or scaled in ``forward``) are computed
now: a graph's only sources are its inputs.
"""

from __future__ import annotations

import builtins
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from rramc.frontend import fx_import
from rramc.frontend.fx_import import (
    FUNCTION_CONVERTERS, METHOD_CONVERTERS, MODULE_CONVERTERS, SUPPORTED, Importer, Unsupported, Value, _bind, _ints,
)
from rramc.ir import (
    Activation, Add, AdaptiveAvgPool2d, AdaptiveMaxPool2d, Affine, AvgPool2d, Binary, Clamp, Concat, Interpolate, LayerNorm,
    MatMul, MaxPool2d, Permute, PReLU, Reduce, Reshape, Slice, Softmax, Where,
)

aten = torch.ops.aten
Converter = Callable[..., Any]


# --- helpers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FirstResult:
    """The result of a call that returns several tensors of which only the first is an activation rramc
    computes (max over a dim and its indices; layer norm and its statistics). Indexing it takes the
    first; the others may be left unused, not used."""

    value: Value
    others: str

    def item(self, node: torch.fx.Node, index: Any) -> Value | None:
        if index in (0, "values"):
            return self.value
        if not node.users:  # torch.export lists every result, used or not
            return None
        raise Unsupported(f"only the first result is supported, not {self.others}")


def _batched_rank(imp: Importer, x: Value) -> int:
    return len(imp.value_shape(x)) + 1


def _described(imp: Importer, x: Value) -> str:
    """An activation's batched shape for messages: ``[N, 3, 4]``."""
    return "[" + ", ".join(["N", *map(str, imp.value_shape(x))]) + "]"


def _sample_dim(imp: Importer, x: Value, dim: int, rank: int | None = None) -> int:
    """PyTorch's ``dim`` of ``x`` (negative counts from the end; ``rank`` if not ``x``'s) as a per-sample dim."""
    rank = _batched_rank(imp, x) if rank is None else rank
    if not -rank <= dim < rank:
        raise Unsupported(f"dim {dim} is out of range for a {rank}-D tensor")
    if dim % rank == 0:
        raise Unsupported(f"it works along the batch dimension (dim={dim}); rramc computes every sample on its own, "
                          "so only the dimensions after the batch can be used")
    return dim % rank - 1


def _sample_dims(imp: Importer, x: Value, dims: Any) -> tuple[int, ...]:
    """A dim, a list of dims or None/[] (all dims, batch included) as sorted per-sample dims."""
    if dims is None or (isinstance(dims, (list, tuple)) and not dims):
        raise Unsupported("it reduces over every dimension, the batch included; give the dims of a sample")
    dims = [dims] if isinstance(dims, int) else list(dims)
    return tuple(sorted({_sample_dim(imp, x, int(d)) for d in dims}))


def _emit(imp: Importer, node: torch.fx.Node, op: Any, inputs: list[Value]) -> Value:
    """:meth:`Importer.emit`, refusing a result with no dimension per sample, which the IR cannot hold."""
    if not imp.shape(node):
        raise Unsupported("its result is a single number per sample; keep a dimension (e.g. keepdim=True, or x[:, i:i+1])")
    return imp.emit(node, op, inputs)


def _add_first(imp: Importer, node: torch.fx.Node, op: Any, x: Value) -> Value:
    """The op computing the first result of a call that returns several tensors (see :class:`FirstResult`)."""
    if not op.infer_shape([imp.value_shape(x)]):
        raise Unsupported("its result is a single number per sample; keep a dimension (keepdim=True)")
    return imp.add(node, op, [x], None)


def _emit_chain(imp: Importer, node: torch.fx.Node, ops: list[Any], x: Value, suffix: str) -> Value:
    """Ops applied one after the other to ``x``: the last is the call's result, the others are named ``suffix``."""
    if not ops:
        return x
    for i, op in enumerate(ops[:-1]):
        x = imp.add(node, op, [x], f"{suffix}{i}" if len(ops) > 2 else suffix)
    return _emit(imp, node, ops[-1], [x])


def _constant(imp: Importer, x: Value, value: Any, what: str) -> Tensor:
    """A number or tensor operand as a tensor that broadcasts against each sample of ``x``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise Unsupported(f"its {what} is a {type(value).__name__}, expected a number or a tensor")
    t = value.detach().clone().float() if isinstance(value, Tensor) else torch.tensor(float(value))
    rank = _batched_rank(imp, x)
    if t.dim() > rank:
        raise Unsupported(f"its {what} of shape {list(t.shape)} has more dimensions than the activation {_described(imp, x)}: "
                          "the batch would not stay first")
    if t.dim() == rank and not _same_for_every_sample(t):
        raise Unsupported(f"its {what} of shape {list(t.shape)} varies along the batch dimension of the activation "
                          f"{_described(imp, x)}; a constant must be the same for every sample")
    return t[0] if t.dim() == rank else t


def _same_for_every_sample(t: Tensor) -> bool:
    """Whether a constant with a batch dimension holds one value for all samples (its batch is 1, or it was
    expanded to an exported program's fixed batch)."""
    return bool((t == t[:1]).all())


# --- elementwise functions -------------------------------------------------------------------

def _activation(function: str, alpha: float | None = None) -> Converter:
    def convert(imp: Importer, node: torch.fx.Node, x: Any, *rest: Any, **kwargs: Any) -> Value:
        return _emit(imp, node, Activation(function=function, alpha=alpha), [imp.activation(x)])

    return convert


def _gelu(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Value:
    a = _bind(["input", "approximate"], {"approximate": "none"}, args, kwargs)
    if a["approximate"] not in ("none", "tanh"):
        raise Unsupported(f"GELU approximate={a['approximate']!r}; allowed: 'none', 'tanh'")
    return _activation("gelu" if a["approximate"] == "none" else "gelu_tanh")(imp, node, a["input"])


def _leaky_relu(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Value:
    a = _bind(["input", "negative_slope"], {"negative_slope": 0.01}, args, kwargs)
    return _activation("leaky_relu", float(a["negative_slope"]))(imp, node, a["input"])


def _elu(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Value:
    a = _bind(["input", "alpha", "scale", "input_scale"], {"alpha": 1.0, "scale": 1, "input_scale": 1}, args, kwargs)
    if a["scale"] != 1 or a["input_scale"] != 1:
        raise Unsupported("ELU with scale or input_scale other than 1 (e.g. SELU) is not supported")
    return _activation("elu", float(a["alpha"]))(imp, node, a["input"])


def _softplus(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Value:
    a = _bind(["input", "beta", "threshold"], {"beta": 1.0, "threshold": 20.0}, args, kwargs)
    if a["beta"] != 1 or a["threshold"] != 20:
        raise Unsupported(f"Softplus with beta={a['beta']}, threshold={a['threshold']}; only beta=1, threshold=20 is supported")
    return _activation("softplus")(imp, node, a["input"])


def _prelu(imp: Importer, node: torch.fx.Node, x: Any, weight: Any) -> Value:
    value = imp.activation(x)
    slopes = imp.tensor(weight, "weight")
    assert slopes is not None
    return _emit(imp, node, PReLU(weight=slopes.reshape(-1)), [value])


# --- arithmetic --------------------------------------------------------------------------------

def _affine(imp: Importer, node: torch.fx.Node, x: Value, scale: Any = 1.0, shift: Any = 0.0) -> Value:
    op = Affine(scale=_constant(imp, x, scale, "factor"), shift=_constant(imp, x, shift, "term"))
    return _emit(imp, node, op, [x])


def _two_activations(imp: Importer, node: torch.fx.Node, function: str, a: Value, b: Value) -> Value:
    if function == "add" and imp.value_shape(a) == imp.value_shape(b):
        return _emit(imp, node, Add(), [a, b])
    if _batched_rank(imp, a) != _batched_rank(imp, b):
        raise Unsupported(f"its operands have different ranks ({_described(imp, a)} and {_described(imp, b)}), so PyTorch "
                          "aligns the batch dimension of one with a dimension of a sample of the other; unsqueeze the "
                          "smaller one after the batch")
    return _emit(imp, node, Binary(function=function), [a, b])


ARITHMETIC = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}


def _arithmetic(function: str) -> Converter:
    """``+``, ``-``, ``*``, ``/`` between activations and constants (``alpha`` scales the second operand)."""

    def convert(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Any:
        a = _bind(["input", "other", "alpha"], {"alpha": 1}, args, kwargs)
        x, y, alpha = a["input"], a["other"], a["alpha"]
        if not isinstance(x, Value) and not isinstance(y, Value):
            return ARITHMETIC[function](x, y * alpha if alpha != 1 else y)
        if isinstance(x, Value) and isinstance(y, Value):
            if alpha != 1:
                y = imp.add(node, Affine(scale=torch.tensor(float(alpha)), shift=torch.tensor(0.0)), [y], "alpha")
            return _two_activations(imp, node, function, x, y)
        if isinstance(x, Value):  # activation ⊕ constant
            c = y * alpha if isinstance(y, Tensor) else float(y) * alpha
            if function == "add":
                return _affine(imp, node, x, shift=c)
            if function == "sub":
                return _affine(imp, node, x, shift=-c)
            if function == "mul":
                return _affine(imp, node, x, scale=c)
            return _affine(imp, node, x, scale=1 / c if isinstance(c, Tensor) else 1.0 / c)
        # constant ⊕ activation
        if function == "add":
            return _affine(imp, node, y, scale=alpha, shift=x)
        if function == "sub":
            return _affine(imp, node, y, scale=-alpha, shift=x)
        if function == "mul":
            return _affine(imp, node, y, scale=x)
        inverse = imp.add(node, Activation(function="reciprocal"), [y], "reciprocal")
        return _affine(imp, node, inverse, scale=x)

    return convert


def _rsub(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Any:
    """``other - alpha * input`` (``1 - x``): a subtraction with the operands swapped."""
    a = _bind(["input", "other", "alpha"], {"alpha": 1}, args, kwargs)
    return _sub(imp, node, a["other"], a["input"], alpha=a["alpha"])


def _extremum(function: str) -> Converter:
    """Elementwise maximum/minimum of two activations, or of an activation and a number (a clamp)."""

    def convert(imp: Importer, node: torch.fx.Node, x: Any, other: Any) -> Any:
        if isinstance(x, Value) and isinstance(other, Value):
            return _two_activations(imp, node, function, x, other)
        value, bound = (x, other) if isinstance(x, Value) else (imp.activation(other), x)
        if isinstance(bound, Tensor) and bound.numel() == 1:
            bound = float(bound)
        if not isinstance(bound, (int, float)):
            raise Unsupported(f"{function} of an activation and a constant tensor is not supported (a number is: a clamp)")
        op = Clamp(low=float(bound)) if function == "maximum" else Clamp(high=float(bound))
        return _emit(imp, node, op, [value])

    return convert


@dataclass(frozen=True)
class Comparison:
    """``value`` compared with a number (``x > 0``): the condition of a ``torch.where``, nothing else."""

    value: Value
    compare: str
    threshold: float


MIRRORED = {"gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}


def _comparison(compare: str) -> Converter:
    def convert(imp: Importer, node: torch.fx.Node, x: Any, other: Any) -> Comparison:
        if any(user.target not in WHERE for user in node.users):
            raise Unsupported("a comparison is supported only as the condition of torch.where")
        if isinstance(x, Value) and isinstance(other, (int, float)) and not isinstance(other, bool):
            return Comparison(x, compare, float(other))
        if isinstance(other, Value) and isinstance(x, (int, float)) and not isinstance(x, bool):
            return Comparison(other, MIRRORED[compare], float(x))
        raise Unsupported("only comparisons of an activation with a number are supported")

    return convert


def _where(imp: Importer, node: torch.fx.Node, condition: Any, input: Any, other: Any) -> Value:
    if not isinstance(condition, Comparison):
        raise Unsupported("torch.where needs a condition comparing an activation with a number (x > 0)")
    if not (isinstance(input, Value) and isinstance(other, Value)):
        raise Unsupported("torch.where between an activation and a constant is not supported (between two activations it is)")
    operands = [condition.value, input, other]
    if len({_batched_rank(imp, v) for v in operands}) != 1:
        raise Unsupported("torch.where's condition and operands have different ranks; unsqueeze them to one rank")
    return _emit(imp, node, Where(compare=condition.compare, threshold=condition.threshold), operands)


POWERS = {1.0: None, 2.0: "square", 0.5: "sqrt", -0.5: "rsqrt", -1.0: "reciprocal"}


def _pow(imp: Importer, node: torch.fx.Node, x: Any, exponent: Any) -> Any:
    value = imp.activation(x)
    if not isinstance(exponent, (int, float)) or float(exponent) not in POWERS:
        raise Unsupported(f"x ** {exponent!r} is not supported; exponents: {', '.join(f'{p:g}' for p in POWERS)}")
    function = POWERS[float(exponent)]
    if function is None:
        return value
    if function == "square":
        return _emit(imp, node, Binary(function="mul"), [value, value])
    return _emit(imp, node, Activation(function=function), [value])


# --- indexing and shapes ---------------------------------------------------------------------

def _whole(entry: Any) -> bool:
    """Whether an index entry takes all of a dimension whatever its size (``:``, or ATen's ``0:INT64_MAX``)."""
    return isinstance(entry, slice) and entry.start in (None, 0) and entry.step in (None, 1) \
        and (entry.stop is None or entry.stop >= sys.maxsize)


def _slices(imp: Importer, x: Value, index: Any) -> list[Slice]:
    """The slices an index (ints, slices, None, Ellipsis) takes of ``x``; ints keep their dim (of size 1)."""
    entries = list(index) if isinstance(index, tuple) else [index]
    if any(not (e is None or e is Ellipsis or isinstance(e, (int, slice))) or isinstance(e, bool) for e in entries):
        raise Unsupported("indexing an activation with tensors or lists is not supported (slices, integers, None and ... are)")
    shape = imp.value_shape(x)
    taken = sum(e is not None and e is not Ellipsis for e in entries)
    if Ellipsis in entries:
        at = entries.index(Ellipsis)
        entries[at:at + 1] = [slice(None)] * (len(shape) + 1 - taken)
    slices, dim = [], -1  # dim: the per-sample dim the next entry indexes (-1: the batch)
    for entry in entries:
        if entry is None:
            if dim < 0:
                raise Unsupported("it adds a dimension before the batch dimension; rramc keeps the batch first")
            continue
        if dim < 0:
            if not _whole(entry):
                raise Unsupported(f"it indexes the batch dimension ({entry}); rramc computes every sample on its own")
        else:
            size = shape[dim]
            if isinstance(entry, int):
                start, stop, step = entry % size, entry % size + 1, 1
            else:
                start, stop, step = entry.indices(size)
            count = len(range(start, stop, step))
            if count == 0:
                raise Unsupported(f"it takes an empty slice of dimension {dim + 1}")
            if count != size:
                slices.append(Slice(dim=dim, start=start, stop=start + (count - 1) * step + 1, step=step))
        dim += 1
    return slices


def _index(imp: Importer, node: torch.fx.Node, x: Value, index: Any) -> Value:
    """``x[index]`` as slices, then a reshape that drops integer-indexed dims and adds None ones."""
    ops: list[Any] = _slices(imp, x, index)
    sliced = imp.value_shape(x)
    for op in ops:
        sliced = op.infer_shape([sliced])
    if sliced != imp.shape(node):
        ops.append(Reshape(shape=imp.shape(node)))
    return _emit_chain(imp, node, ops, x, "slice")


def _getitem(imp: Importer, node: torch.fx.Node, container: Any, index: Any) -> Any:
    if isinstance(container, Tensor):
        return container[index]
    if isinstance(container, Value):
        return _index(imp, node, container, index)
    if isinstance(container, FirstResult):
        return container.item(node, index)
    return fx_import._getitem(imp, node, container, index)


def _select(imp: Importer, node: torch.fx.Node, x: Any, dim: int, index: int) -> Value:
    value = imp.activation(x)
    return _index(imp, node, value, (slice(None),) * (dim % _batched_rank(imp, value)) + (index,))


def _slice(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Value:
    a = _bind(["input", "dim", "start", "end", "step"], {"dim": 0, "start": None, "end": None, "step": 1}, args, kwargs)
    value = imp.activation(a["input"])
    dim = a["dim"] % _batched_rank(imp, value)
    return _index(imp, node, value, (slice(None),) * dim + (slice(a["start"], a["end"], a["step"]),))


def _pieces(imp: Importer, node: torch.fx.Node, x: Any, dim: int,
            cut: Callable[[Tensor], tuple[Tensor, ...]]) -> tuple[Value, ...]:
    """``x`` cut along ``dim`` into the pieces ``cut`` makes of the indices (chunk, split): one slice each."""
    value = imp.activation(x)
    d = _sample_dim(imp, value, dim)
    pieces = cut(torch.arange(imp.value_shape(value)[d]))
    if len(pieces) == 1:
        return (value,)
    return tuple(imp.add(node, Slice(dim=d, start=int(p[0]), stop=int(p[-1]) + 1), [value], str(i)) for i, p in enumerate(pieces))


def _chunk(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> tuple[Value, ...]:
    a = _bind(["input", "chunks", "dim"], {"dim": 0}, args, kwargs)
    return _pieces(imp, node, a["input"], a["dim"], lambda indices: indices.chunk(a["chunks"]))


def _split(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> tuple[Value, ...]:
    a = _bind(["input", "split_size_or_sections", "dim"], {"dim": 0}, args, kwargs)
    sizes = a.get("split_size_or_sections", a.get("split_size", a.get("split_sizes")))
    return _pieces(imp, node, a["input"], a["dim"], lambda indices: indices.split(sizes))


def _permute(imp: Importer, node: torch.fx.Node, x: Any, *dims: Any, **kwargs: Any) -> Any:
    order = kwargs.get("dims", dims[0] if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims)
    if isinstance(x, Tensor):
        return x.permute(*order)
    value = imp.activation(x)
    rank = _batched_rank(imp, value)
    order = [int(d) % rank for d in order]
    if order[0] != 0:
        raise Unsupported(f"it moves the batch dimension (dims {list(order)}); rramc keeps the batch first")
    dims_per_sample = tuple(d - 1 for d in order[1:])
    if dims_per_sample == tuple(range(rank - 1)):
        return value
    return _emit(imp, node, Permute(dims=dims_per_sample), [value])


def _transpose(imp: Importer, node: torch.fx.Node, x: Any, dim0: int, dim1: int) -> Any:
    if isinstance(x, Tensor):
        return x.transpose(dim0, dim1)
    rank = _batched_rank(imp, imp.activation(x))
    order = list(range(rank))
    order[dim0 % rank], order[dim1 % rank] = order[dim1 % rank], order[dim0 % rank]
    return _permute(imp, node, x, order)


def _t(imp: Importer, node: torch.fx.Node, x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.t()
    return _transpose(imp, node, x, 0, 1)


def _getattr(imp: Importer, node: torch.fx.Node, x: Any, name: str) -> Any:
    """``x.shape``, ``x.mT`` and ``max(...).values`` of activations; any attribute of a constant."""
    if isinstance(x, FirstResult):
        return x.item(node, name)
    if not isinstance(x, Value):
        return getattr(x, name)
    if name == "shape":
        return fx_import._size(imp, node, x)
    if name == "mT":
        return _transpose(imp, node, x, -2, -1)
    if name == "T":
        return _permute(imp, node, x, list(reversed(range(_batched_rank(imp, x)))))
    raise Unsupported(f"the attribute .{name} of an activation is not supported")


def _checked_dim(convert: Converter, names: list[str], defaults: dict[str, Any], field: str, extra: int = 0) -> Converter:
    """A reshape-like converter whose dim argument ``field`` must not be the batch dimension
    (``extra``: the dims the result has more than the operand, e.g. 1 for unsqueeze)."""

    def checked(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Any:
        a = _bind(names, defaults, args, kwargs)
        if isinstance(a["input"], Value) and a.get(field) is not None:
            dims = a[field] if isinstance(a[field], (list, tuple)) else [a[field]]
            for d in dims:
                _sample_dim(imp, a["input"], int(d), _batched_rank(imp, a["input"]) + extra)
        return convert(imp, node, *args, **kwargs)

    return checked


_reshape = fx_import._reshape
_unsqueeze = _checked_dim(_reshape, ["input", "dim"], {}, "dim", extra=1)
_squeeze = _checked_dim(_reshape, ["input", "dim"], {"dim": None}, "dim")
_unflatten = _checked_dim(_reshape, ["input", "dim", "sizes"], {}, "dim")


def _expand(imp: Importer, node: torch.fx.Node, x: Any, *sizes: Any, **kwargs: Any) -> Any:
    """``x.expand(...)``/``expand_as`` of size-1 dims of a sample: a product with ones of the expanded sizes."""
    value = imp.activation(x)
    shape, target = imp.value_shape(value), imp.shape(node)
    if len(target) != len(shape):
        raise Unsupported(f"it expands {_described(imp, value)} to another rank; only size-1 dims of a sample expand")
    if target == shape:
        return value
    ones = torch.ones([t if s != t else 1 for s, t in zip(shape, target)])
    return _emit(imp, node, Affine(scale=ones, shift=torch.tensor(0.0)), [value])


def _cat(imp: Importer, node: torch.fx.Node, tensors: Any, dim: int = 0, **kwargs: Any) -> Value:
    """Activations joined, and constants the same for every sample (a class token, expanded to the batch or not)."""
    values = [t for t in tensors if isinstance(t, Value)]
    d = _sample_dim(imp, values[0], kwargs.get("axis", dim))
    constants = []
    for place, part in enumerate(tensors):
        if isinstance(part, Value):
            continue
        if not isinstance(part, Tensor) or part.dim() != _batched_rank(imp, values[0]) or not _same_for_every_sample(part):
            raise Unsupported("a constant joined to activations must be a tensor of their rank, the same for every sample "
                              "(a batch dimension of 1, or expanded to the batch)")
        constants.append((place, part[0].detach().clone().float()))
    if len(tensors) == 1:
        return values[0]
    return _emit(imp, node, Concat(dim=d, constants=tuple(constants) or None), values)


def _stack(imp: Importer, node: torch.fx.Node, tensors: Any, dim: int = 0) -> Value:
    values = [imp.activation(t, "operand") for t in tensors]
    d = _sample_dim(imp, values[0], dim, _batched_rank(imp, values[0]) + 1)
    shape = imp.value_shape(values[0])
    lifted = [imp.add(node, Reshape(shape=(*shape[:d], 1, *shape[d:])), [v], f"{i}") for i, v in enumerate(values)]
    return _emit(imp, node, Concat(dim=d), lifted)


# --- matmul, normalisation, reductions ---------------------------------------------------------

def _matmul(imp: Importer, node: torch.fx.Node, input: Any, other: Any) -> Value:
    """Activation × activation on the digital periphery; a constant factor is the crossbar's (fx_import)."""
    if not (isinstance(input, Value) and isinstance(other, Value)):
        return fx_import._matmul(imp, node, input, other)
    ranks = (_batched_rank(imp, input), _batched_rank(imp, other))
    if min(ranks) < 3 or ranks[0] != ranks[1]:
        raise Unsupported(f"the product of {ranks[0]}-D and {ranks[1]}-D activations mixes samples; both need the "
                          "same rank, at least 3 (batch, rows, columns)")
    return _emit(imp, node, MatMul(), [input, other])


def _softmax(log: bool) -> Converter:
    def convert(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Value:
        a = _bind(["input", "dim"], {"dim": None}, args, kwargs)
        if a["dim"] is None:
            raise Unsupported("softmax without dim (an implicit dim, deprecated) is not supported; give dim")
        value = imp.activation(a["input"])
        return _emit(imp, node, Softmax(dim=_sample_dim(imp, value, int(a["dim"])), log=log), [value])

    return convert


def _layer_norm_op(imp: Importer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[LayerNorm, Value]:
    a = _bind(["input", "normalized_shape", "weight", "bias", "eps"], {"weight": None, "bias": None, "eps": 1e-5}, args, kwargs)
    value = imp.activation(a["input"])
    shape = tuple(_ints(a["normalized_shape"], 1))
    if len(shape) >= _batched_rank(imp, value):
        raise Unsupported(f"it normalises over {list(shape)}, the batch dimension included")
    op = LayerNorm(normalized_shape=shape, weight=imp.tensor(a["weight"], "weight"), bias=imp.tensor(a["bias"], "bias"),
                   eps=float(a["eps"]))
    return op, value


def _layer_norm(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Value:
    op, value = _layer_norm_op(imp, args, kwargs)
    return _emit(imp, node, op, [value])


def _native_layer_norm(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> FirstResult:
    op, value = _layer_norm_op(imp, args, kwargs)
    return FirstResult(_add_first(imp, node, op, value), "the mean and inverse deviation layer norm also returns")


def _reduce(function: str) -> Converter:
    def convert(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Value:
        a = _bind(["input", "dim", "keepdim"], {"dim": None, "keepdim": False}, args, kwargs)
        value = imp.activation(a["input"])
        op = Reduce(function=function, dims=_sample_dims(imp, value, a["dim"]), keepdim=bool(a["keepdim"]))
        return _emit(imp, node, op, [value])

    return convert


def _max_or_min(function: str) -> Converter:
    """``torch.max(x, dim)`` (values and indices), ``torch.max(x, y)`` (elementwise) and ``torch.max(x)`` (refused)."""

    def convert(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Any:
        a = _bind(["input", "dim", "keepdim"], {"dim": None, "keepdim": False}, args, kwargs)
        if "other" in kwargs or isinstance(a["dim"], (Value, Tensor)):
            return _extremum("maximum" if function == "amax" else "minimum")(imp, node, a["input"], kwargs.get("other", a["dim"]))
        value = imp.activation(a["input"])
        op = Reduce(function=function, dims=_sample_dims(imp, value, a["dim"]), keepdim=bool(a["keepdim"]))
        return FirstResult(_add_first(imp, node, op, value), f"the indices {function[1:]} also returns")

    return convert


# --- spatial -----------------------------------------------------------------------------------

def _interpolate(imp: Importer, node: torch.fx.Node, x: Any, mode: str, scale_factor: Any, align_corners: Any,
                 antialias: bool = False) -> Value:
    value = imp.activation(x)
    if len(imp.value_shape(value)) != 3:
        raise Unsupported(f"only 2-D resampling of [N, channels, height, width] is supported, not of {_described(imp, value)}")
    if mode not in ("nearest", "bilinear"):
        raise Unsupported(f"interpolation mode {mode!r} is not supported; modes: 'nearest', 'bilinear'")
    if antialias:
        raise Unsupported("antialiased interpolation is not supported")
    scales = None if scale_factor is None else tuple(float(s) for s in _ints_or_floats(scale_factor))
    op = Interpolate(size=tuple(imp.shape(node)[1:]), mode=mode, scale_factor=scales,  # type: ignore[arg-type]
                     align_corners=bool(align_corners) if mode == "bilinear" else None)
    return _emit(imp, node, op, [value])


def _ints_or_floats(value: Any) -> tuple[float, float]:
    values = [value] if isinstance(value, (int, float)) else list(value)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _f_interpolate(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Value:
    a = _bind(["input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias"],
              {"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None, "recompute_scale_factor": None,
               "antialias": False}, args, kwargs)
    # PyTorch computes indices from the scale factor, unless told to recompute it from the sizes
    scale = None if a["recompute_scale_factor"] else a["scale_factor"]
    return _interpolate(imp, node, a["input"], a["mode"], scale, a["align_corners"], a["antialias"])


def _upsample_module(imp: Importer, node: torch.fx.Node, m: nn.Upsample, x: Any) -> Value:
    return _f_interpolate(imp, node, x, m.size, m.scale_factor, m.mode, m.align_corners, m.recompute_scale_factor)


def _aten_upsample(mode: str) -> Converter:
    def convert(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Value:
        names = ["input", "output_size", *(["align_corners"] if mode == "bilinear" else []), "scale_factors"]
        a = _bind(names, {"align_corners": False, "scale_factors": None}, args, kwargs)
        return _interpolate(imp, node, a["input"], mode, a["scale_factors"], a.get("align_corners"))

    return convert


def _adaptive_max_pool(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Any:
    a = _bind(["input", "output_size", "return_indices"], {"return_indices": False}, args, kwargs)
    value = imp.activation(a["input"])
    if len(imp.value_shape(value)) != 3:
        raise Unsupported("adaptive max pooling takes [N, channels, height, width]")
    if node.target == aten.adaptive_max_pool2d.default or a["return_indices"]:
        shape = imp.value_shape(value)
        size = tuple(s if o is None else o for o, s in zip(_ints(a["output_size"]), shape[1:]))
        pooled = _add_first(imp, node, AdaptiveMaxPool2d(output_size=size), value)  # type: ignore[arg-type]
        return FirstResult(pooled, "the indices of the maxima")
    return _emit(imp, node, AdaptiveMaxPool2d(output_size=tuple(imp.shape(node)[1:])), [value])  # type: ignore[arg-type]


def _pool1d(make: Callable[[dict[str, Any]], Any], names: list[str], defaults: dict[str, Any]) -> Converter:
    """A 1-D pooling of ``[channels, length]`` samples as its 2-D form on ``[channels, 1, length]``."""

    def convert(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Value:
        a = _bind(names, defaults, args, kwargs)
        value = imp.activation(a["input"])
        if len(imp.value_shape(value)) != 2:
            raise Unsupported(f"1-D pooling takes samples of shape [channels, length], got {list(imp.value_shape(value))}")
        if a.get("return_indices"):
            raise Unsupported("max pooling that returns indices is not supported")
        return fx_import._as_2d(imp, node, value, lambda wide: imp.add(node, make(a), [wide], None))

    return convert


def _one(value: Any) -> int:
    return _ints(value, 1)[0]


_max_pool1d = _pool1d(
    lambda a: MaxPool2d(kernel_size=(1, _one(a["kernel_size"])), stride=(1, _one(a["stride"] or a["kernel_size"])),
                        padding=(0, _one(a["padding"])), dilation=(1, _one(a["dilation"])), ceil_mode=bool(a["ceil_mode"])),
    ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
    {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False})
_avg_pool1d = _pool1d(
    lambda a: AvgPool2d(kernel_size=(1, _one(a["kernel_size"])), stride=(1, _one(a["stride"] or a["kernel_size"])),
                        padding=(0, _one(a["padding"])), ceil_mode=bool(a["ceil_mode"]),
                        count_include_pad=bool(a["count_include_pad"])),
    ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"],
    {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True})
_adaptive_avg_pool1d = _pool1d(lambda a: AdaptiveAvgPool2d(output_size=(1, _one(a["output_size"]))), ["input", "output_size"], {})


def _module_pool1d(imp: Importer, node: torch.fx.Node, m: nn.Module, x: Any) -> Value:
    if isinstance(m, nn.MaxPool1d):
        return _max_pool1d(imp, node, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices)
    if isinstance(m, nn.AvgPool1d):
        return _avg_pool1d(imp, node, x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad)
    assert isinstance(m, nn.AdaptiveAvgPool1d)
    return _adaptive_avg_pool1d(imp, node, x, m.output_size)


# --- the tables ----------------------------------------------------------------------------------

def _module(convert: Converter, *fields: str) -> Converter:
    """A module converter passing the module's ``fields`` after the input, as the functional form takes them."""
    return lambda imp, node, m, x: convert(imp, node, x, *(getattr(m, f) for f in fields))


_identity = fx_import._identity
_add, _sub, _mul, _div = (_arithmetic(f) for f in ("add", "sub", "mul", "div"))
_neg, _exp, _abs, _log1p = _activation("neg"), _activation("exp"), _activation("abs"), _activation("log1p")
_gt, _ge, _lt, _le = (_comparison(c) for c in ("gt", "ge", "lt", "le"))
WHERE = (torch.where, aten.where.self)
_sqrt, _rsqrt, _reciprocal = _activation("sqrt"), _activation("rsqrt"), _activation("reciprocal")
_sigmoid, _tanh, _silu = _activation("sigmoid"), _activation("tanh"), _activation("silu")
_hardswish, _hardsigmoid, _mish = _activation("hardswish"), _activation("hardsigmoid"), _activation("mish")
_mean, _sum, _amax, _amin = (_reduce(f) for f in ("mean", "sum", "amax", "amin"))
_max, _min = _max_or_min("amax"), _max_or_min("amin")
_maximum, _minimum = _extremum("maximum"), _extremum("minimum")
_t_softmax, _t_log_softmax = _softmax(False), _softmax(True)

MODULE_CONVERTERS.update({
    nn.GELU: _module(_gelu, "approximate"), nn.SiLU: _module(_silu), nn.Sigmoid: _module(_sigmoid), nn.Tanh: _module(_tanh),
    nn.LeakyReLU: _module(_leaky_relu, "negative_slope"), nn.ELU: _module(_elu, "alpha"),
    nn.Hardswish: _module(_hardswish), nn.Hardsigmoid: _module(_hardsigmoid), nn.Mish: _module(_mish),
    nn.Softplus: _module(_softplus, "beta", "threshold"), nn.PReLU: _module(_prelu, "weight"),
    nn.Softmax: _module(_t_softmax, "dim"), nn.LogSoftmax: _module(_t_log_softmax, "dim"),
    nn.Softmax2d: lambda imp, node, m, x: _t_softmax(imp, node, x, -3),
    nn.LayerNorm: _module(_layer_norm, "normalized_shape", "weight", "bias", "eps"),
    nn.Dropout1d: _module(_identity), nn.Dropout2d: _module(_identity), nn.Dropout3d: _module(_identity),
    nn.AlphaDropout: _module(_identity), nn.FeatureAlphaDropout: _module(_identity),
    nn.Upsample: _upsample_module, nn.UpsamplingNearest2d: _upsample_module, nn.UpsamplingBilinear2d: _upsample_module,
    nn.AdaptiveMaxPool2d: _module(_adaptive_max_pool, "output_size", "return_indices"),
    nn.MaxPool1d: _module_pool1d, nn.AvgPool1d: _module_pool1d, nn.AdaptiveAvgPool1d: _module_pool1d,
    nn.Unflatten: _module(_unflatten, "dim", "unflattened_size"),
})

FUNCTION_CONVERTERS.update({
    # activations
    F.gelu: _gelu, aten.gelu.default: _gelu, F.silu: _silu, aten.silu.default: _silu,
    torch.sigmoid: _sigmoid, aten.sigmoid.default: _sigmoid, torch.tanh: _tanh, aten.tanh.default: _tanh,
    F.leaky_relu: _leaky_relu, aten.leaky_relu.default: _leaky_relu, F.elu: _elu, aten.elu.default: _elu,
    F.hardswish: _hardswish, aten.hardswish.default: _hardswish, F.hardsigmoid: _hardsigmoid,
    aten.hardsigmoid.default: _hardsigmoid, F.softplus: _softplus, aten.softplus.default: _softplus,
    F.mish: _mish, aten.mish.default: _mish, F.prelu: _prelu, torch.prelu: _prelu, aten.prelu.default: _prelu,
    aten._prelu_kernel.default: _prelu,
    torch.exp: _exp, aten.exp.default: _exp, torch.neg: _neg, operator.neg: _neg, aten.neg.default: _neg,
    torch.abs: _abs, operator.abs: _abs, aten.abs.default: _abs, torch.sqrt: _sqrt, aten.sqrt.default: _sqrt,
    torch.rsqrt: _rsqrt, aten.rsqrt.default: _rsqrt, torch.reciprocal: _reciprocal, aten.reciprocal.default: _reciprocal,
    # arithmetic
    operator.add: _add, operator.iadd: _add, torch.add: _add, aten.add.Tensor: _add, aten.add_.Tensor: _add,
    aten.add.Scalar: _add,
    operator.sub: _sub, operator.isub: _sub, torch.sub: _sub, torch.subtract: _sub, aten.sub.Tensor: _sub,
    aten.sub.Scalar: _sub, aten.rsub.Scalar: _rsub, aten.rsub.Tensor: _rsub,
    operator.mul: _mul, operator.imul: _mul, torch.mul: _mul, torch.multiply: _mul, aten.mul.Tensor: _mul,
    aten.mul.Scalar: _mul,
    operator.truediv: _div, operator.itruediv: _div, torch.div: _div, torch.divide: _div, aten.div.Tensor: _div,
    aten.div.Scalar: _div,
    torch.maximum: _maximum, aten.maximum.default: _maximum, aten.max.other: _maximum,
    torch.minimum: _minimum, aten.minimum.default: _minimum, aten.min.other: _minimum,
    operator.pow: _pow, torch.pow: _pow, aten.pow.Tensor_Scalar: _pow,
    operator.gt: _gt, torch.gt: _gt, aten.gt.Scalar: _gt, operator.ge: _ge, torch.ge: _ge, aten.ge.Scalar: _ge,
    operator.lt: _lt, torch.lt: _lt, aten.lt.Scalar: _lt, operator.le: _le, torch.le: _le, aten.le.Scalar: _le,
    torch.where: _where, aten.where.self: _where, torch.log1p: _log1p, aten.log1p.default: _log1p,
    operator.matmul: _matmul, torch.matmul: _matmul, aten.matmul.default: _matmul, torch.bmm: _matmul, aten.bmm.default: _matmul,
    # indexing and shapes
    aten.select.int: _select, aten.slice.Tensor: _slice,
    torch.chunk: _chunk, aten.chunk.default: _chunk,
    torch.split: _split, aten.split.Tensor: _split, aten.split_with_sizes.default: _split,
    torch.permute: _permute, aten.permute.default: _permute, torch.transpose: _transpose, aten.transpose.int: _transpose,
    aten.t.default: _t, aten.mT.default: lambda imp, node, x: _transpose(imp, node, x, -2, -1),
    torch.unsqueeze: _unsqueeze, aten.unsqueeze.default: _unsqueeze, torch.squeeze: _squeeze,
    aten.squeeze.dim: _squeeze, aten.squeeze.dims: _squeeze, aten.squeeze.default: _squeeze,
    torch.unflatten: _unflatten, aten.unflatten.int: _unflatten, aten.expand.default: _expand,
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat, aten.cat.default: _cat, torch.stack: _stack,
    aten.stack.default: _stack,
    torch.reshape: _reshape, aten.view.default: _reshape, aten.reshape.default: _reshape,
    # normalisation and reductions
    F.softmax: _t_softmax, torch.softmax: _t_softmax, aten.softmax.int: _t_softmax, aten._softmax.default: _t_softmax,
    F.log_softmax: _t_log_softmax, torch.log_softmax: _t_log_softmax, aten.log_softmax.int: _t_log_softmax,
    aten._log_softmax.default: _t_log_softmax,
    F.layer_norm: _layer_norm, aten.layer_norm.default: _layer_norm, aten.native_layer_norm.default: _native_layer_norm,
    torch.mean: _mean, aten.mean.dim: _mean, torch.sum: _sum, aten.sum.dim_IntList: _sum,
    torch.amax: _amax, aten.amax.default: _amax, torch.amin: _amin, aten.amin.default: _amin,
    torch.max: _max, aten.max.dim: _max, torch.min: _min, aten.min.dim: _min,
    # dropout (inference: the identity)
    F.dropout1d: _identity, F.dropout2d: _identity, F.dropout3d: _identity, F.alpha_dropout: _identity,
    F.feature_alpha_dropout: _identity, aten.feature_dropout.default: _identity, aten.alpha_dropout.default: _identity,
    aten.feature_alpha_dropout.default: _identity,
    # spatial
    F.interpolate: _f_interpolate, aten.upsample_nearest2d.vec: _aten_upsample("nearest"),
    aten.upsample_bilinear2d.vec: _aten_upsample("bilinear"),
    F.adaptive_max_pool2d: _adaptive_max_pool, aten.adaptive_max_pool2d.default: _adaptive_max_pool,
    F.max_pool1d: _max_pool1d, aten.max_pool1d.default: _max_pool1d, F.avg_pool1d: _avg_pool1d,
    aten.avg_pool1d.default: _avg_pool1d, F.adaptive_avg_pool1d: _adaptive_avg_pool1d,
    aten.adaptive_avg_pool1d.default: _adaptive_avg_pool1d,
    aten._adaptive_avg_pool2d.default: lambda imp, node, x, size: fx_import._adaptive_avg_pool(imp, node, x, size),
})
FUNCTION_CONVERTERS.update({operator.getitem: _getitem, builtins.getattr: _getattr})

METHOD_CONVERTERS.update({
    "sigmoid": _sigmoid, "sigmoid_": _sigmoid, "tanh": _tanh, "tanh_": _tanh, "exp": _exp, "neg": _neg, "abs": _abs,
    "sqrt": _sqrt, "rsqrt": _rsqrt, "reciprocal": _reciprocal, "log1p": _log1p,
    "gt": _gt, "ge": _ge, "lt": _lt, "le": _le,
    "add": _add, "add_": _add, "sub": _sub, "sub_": _sub, "mul": _mul, "mul_": _mul, "div": _div, "div_": _div,
    "maximum": _maximum, "minimum": _minimum, "pow": _pow, "matmul": _matmul, "bmm": _matmul,
    "permute": _permute, "transpose": _transpose, "t": _t, "chunk": _chunk, "split": _split,
    "unsqueeze": _unsqueeze, "squeeze": _squeeze, "unflatten": _unflatten, "expand": _expand, "expand_as": _expand,
    "view": _reshape, "reshape": _reshape,
    "softmax": _t_softmax, "log_softmax": _t_log_softmax,
    "mean": _mean, "sum": _sum, "amax": _amax, "amin": _amin, "max": _max, "min": _min,
})

SUPPORTED.append(
    "GELU, SiLU, Sigmoid, Tanh, LeakyReLU, ELU, PReLU, Hardswish, Hardsigmoid, Softplus, Mish, exp/sqrt/rsqrt/abs, "
    "log1p, Softmax/LogSoftmax, LayerNorm, torch.where(x > c, a, b), +, -, *, / with constants or between activations, "
    "maximum/minimum, x ** 2, "
    "activation @ activation, mean/sum/amax/amin/max over sample dims, torch.cat/stack, slicing and integer indexing "
    "(not of the batch), chunk/split, permute/transpose, unsqueeze/squeeze/unflatten/expand, Upsample/interpolate "
    "(nearest, bilinear), AdaptiveMaxPool2d, MaxPool1d/AvgPool1d/AdaptiveAvgPool1d, Dropout1d/2d/3d/AlphaDropout (removed)"
)
