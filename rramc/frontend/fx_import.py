"""torch.fx graph → rramc IR.

Both front doors end here: ``torch.fx.symbolic_trace`` of an ``nn.Module`` (modules, torch
functions and tensor methods) and the ATen graph inside a ``torch.export`` archive. A conversion
table keyed by the fx target drives the import. Before converting anything the whole graph is
scanned, so a user sees every unsupported op in one message, each with the layer it came from.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.fx.passes.shape_prop import ShapeProp

from rramc.errors import FrontendError
from rramc.ir import (
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm, Clamp, Conv2d, Graph, Input, Linear, MaxPool2d, Output, ReLU,
    Reshape, ZeroPad2d,
)

aten = torch.ops.aten


@dataclass(frozen=True)
class Value:
    """An activation: the name of the IR node that computes it."""

    name: str


@dataclass(frozen=True)
class FoldedTokens:
    """An activation ``[batch, *tokens, features]`` viewed as ``[batch·tokens, features]``: how core ATen spells
    a linear layer on tokens (a view, ``addmm``, a view back). Only that layer and the view back take it."""

    value: Value
    lead: tuple[int, ...]  # the traced [batch, *tokens] the view folded

    @property
    def folded(self) -> str:
        return f"{list(self.lead)} folded to {math.prod(self.lead)}"


class Unsupported(Exception):
    """Raised by a converter: this call cannot be imported, and why."""


SUPPORTED: list[str] = [
    "Linear (over the last dimension: vectors or tokens), x @ W with a parameter W, Conv1d and Conv2d (any groups, "
    "zero padding, padding='same'), ConvTranspose2d, ReLU, clipped ReLU (Hardtanh, ReLU6, clamp), max and average "
    "pooling, adaptive average pooling, flatten/view/reshape, BatchNorm (eval mode), "
    "residual add of two activations, Dropout/Identity (removed)",
]
"""What the importer supports, in words, for the refusal message; converter modules add their line."""


class Importer:
    """Converts one traced ``GraphModule`` (with shapes propagated) into a :class:`Graph`."""

    def __init__(self, gm: torch.fx.GraphModule, source: str) -> None:
        self.gm, self.source = gm, source
        self.graph = Graph()
        self.env: dict[torch.fx.Node, Any] = {}
        self._dry = False
        # parameters by id: the original (kept alive, so ids stay unique) and the IR's float copy
        self._weights: dict[int, tuple[Tensor, Tensor]] = {}
        self._weight_owner: dict[int, str] = {}  # id of a float copy -> the node whose arrays it is programmed on
        self._derived: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}  # see derived()

    # --- helpers used by converters ------------------------------------------------------------

    def layer_of(self, node: torch.fx.Node) -> tuple[str, str]:
        """(layer path, module type) of the PyTorch code a node came from."""
        if node.op == "call_module":
            return str(node.target), type(self.gm.get_submodule(str(node.target))).__name__
        stack = node.meta.get("nn_module_stack")
        if stack:
            path, kind = list(stack.values())[-1]
            if path:
                kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
                return str(path), kind.rsplit(".", 1)[-1]
        return node.name, "function"

    def shape(self, node: torch.fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise Unsupported("its output is not a single tensor")
        return tuple(int(s) for s in meta.shape[1:])

    def activation(self, value: Any, what: str = "input") -> Value:
        if isinstance(value, FoldedTokens):
            raise Unsupported(f"its {what} folds the batch into the tokens ({value.folded}); rramc takes that only "
                              "around a linear layer (view, addmm, view), as core ATen spells one on tokens")
        if not isinstance(value, Value):
            raise Unsupported(f"its {what} is a constant, not an activation computed from the network's input")
        return value

    def parameter(self, value: Any, what: str) -> Tensor | None:
        """A weight or bias given as a tensor (None stays None); one computed at run time is refused."""
        if value is None or isinstance(value, Tensor):
            return value
        raise Unsupported(f"its {what} is computed at run time; rramc needs it as a parameter")

    def derived(self, tensor: Tensor, how: str, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()``, a tensor derived from parameter ``tensor`` (a transpose, a reshape), made once per
        parameter: a parameter used twice stays one tensor, and one set of arrays."""
        key = (id(tensor), how)
        if key not in self._derived:
            self._derived[key] = (tensor, compute())
        return self._derived[key][1]

    def tensor(self, value: Any, what: str) -> Tensor | None:
        if value is None or isinstance(value, Tensor):
            return None if value is None else value.detach().float()  # the caller's storage: see weighted_op
        raise Unsupported(f"its {what} is computed at run time; rramc needs it as a parameter")

    def emit(self, node: torch.fx.Node, op: Any, inputs: list[Value]) -> Value:
        """Add the one IR op a PyTorch call becomes, with the shape PyTorch computed for it."""
        if self._dry:
            return Value(node.name)
        path, kind = self.layer_of(node)
        name = path if node.op == "call_module" or isinstance(op, (Linear, Conv2d, BatchNorm)) else node.name
        shape = self.shape(node)
        if self._checked_shape(op, inputs) != shape:
            raise Unsupported(f"rramc computes a result of shape {list(self._checked_shape(op, inputs))} where PyTorch "
                              f"gives {list(shape)}")
        added = self.graph.add(name, op, [v.name for v in inputs], shape=shape, meta={"source": path, "module_type": kind})
        self._own_weight(op, added.name)
        return Value(added.name)

    def add(self, node: torch.fx.Node, op: Any, inputs: list[Value], suffix: str | None) -> Value:
        """Add one op of an expansion (a PyTorch call that becomes several IR ops, e.g. attention or an
        unrolled LSTM), named after the call's layer with ``suffix`` (None: the layer's own name, for the
        op that computes what the layer is); its shape is inferred and checked."""
        if self._dry:
            return Value(node.name)
        path, kind = self.layer_of(node)
        added = self.graph.add(path if suffix is None else f"{path}.{suffix}", op, [v.name for v in inputs], shape=self._checked_shape(op, inputs),
                               meta={"source": path, "module_type": kind})
        self._own_weight(op, added.name)
        return Value(added.name)

    def _own_weight(self, op: Any, name: str) -> None:
        if isinstance(op, (Linear, Conv2d)) and op.shares is None:
            self._weight_owner.setdefault(id(op.weight), name)

    def linear(self, node: torch.fx.Node, x: Value, weight: Tensor, bias: Tensor | None, suffix: str) -> Value:
        """A crossbar-mapped ``x @ weight.T + bias`` inside an expansion (attention projections, recurrent
        gates), over the last dimension of ``x``. Calls with the same ``weight`` tensor object (a
        recurrent net's steps, a module called twice) program one set of arrays: the later ones
        share the first's."""
        return self.add(node, self.weighted_op(Linear, weight, bias), [x], suffix)

    def weighted_op(self, kind: type, weight: Tensor, bias: Tensor | None, **fields: Any) -> Any:
        """A ``kind`` (Linear or Conv2d) op for a parameter: the IR holds one float tensor per parameter,
        and a parameter met again is marked as sharing the arrays of the node it was first used by.

        A float32 parameter is read where it lies, not copied: passes replace an op's tensors, never change
        them, and :func:`rramc.compile` gives the executable its own copies once the compile is done."""
        w = self._weights.setdefault(id(weight), (weight, weight.detach().float()))[1]
        b = None if bias is None else self._weights.setdefault(id(bias), (bias, bias.detach().float()))[1]
        return kind(weight=w, bias=b, shares=self._weight_owner.get(id(w)), **fields)

    def value_shape(self, value: Value) -> tuple[int, ...]:
        """The per-sample shape of an activation already imported."""
        return self.graph.node(value.name).shape

    def _checked_shape(self, op: Any, inputs: list[Value]) -> tuple[int, ...]:
        """The shape ``op`` computes from its operands'; a mismatch is the user's problem, said for the user."""
        shapes = [self.value_shape(v) for v in inputs]
        try:
            op.verify(shapes)
            return tuple(int(s) for s in op.infer_shape(shapes))
        except (ValueError, IndexError, TypeError) as exc:
            raise Unsupported(str(exc)) from None

    # --- driving -------------------------------------------------------------------------------

    def converter(self, node: torch.fx.Node) -> Callable[..., Any] | None:
        if node.op == "call_module":
            return MODULE_CONVERTERS.get(type(self.gm.get_submodule(str(node.target))))
        if node.op not in ("call_function", "call_method"):
            return None
        if self._computable_now(node):  # whatever the call, on constants only PyTorch computes it best
            return computed_now
        if node.op == "call_function":
            return FUNCTION_CONVERTERS.get(node.target)
        return METHOD_CONVERTERS.get(str(node.target))

    def _computable_now(self, node: torch.fx.Node) -> bool:
        """Whether a call depends on no activation (a mask built from sizes, a parameter's transpose): then the
        importer computes it once, as PyTorch would on every call, and the graph holds the constant."""
        if node.op == "call_function" and getattr(node.target, "__name__", "") in _RANDOM:
            return False  # a fresh draw on every call is not a constant
        return all(n in self.env and _is_constant(self.env[n]) for n in node.all_input_nodes)

    def describe(self, node: torch.fx.Node) -> str:
        path, kind = self.layer_of(node)
        what = kind if node.op == "call_module" else _target_name(node)
        return f"{what} at layer '{path}' (fx node {node.name})"

    def module_call(self, node: torch.fx.Node) -> tuple[str, str] | None:
        """(path, type) of the torch.nn module an exported ATen op ran in, as torch.fx would have kept it
        whole: the outermost one that is not a container. None for torch.fx's own calls and user code."""
        if node.op == "call_module":
            return None
        for path, kind in (node.meta.get("nn_module_stack") or {}).values():
            name = kind if isinstance(kind, str) else f"{kind.__module__}.{kind.__qualname__}"
            if path and name.startswith("torch.nn.") and not name.startswith("torch.nn.modules.container."):
                return str(path), name.rsplit(".", 1)[-1]
        return None

    def run(self) -> Graph:
        """Convert every node; report every unsupported op (and op attribute) in one message.

        A node that depends on one that failed is not reported again: the user sees causes only. The
        ATen ops of one torch.nn module (an exported graph's) are reported once, with the first cause.
        """
        # exported attention and recurrent nets: one call each, as torch.fx gives them
        self.gm, unrecognised = exported_modules.lift_module_calls(self.gm)
        problems = []
        outputs = [n for n in self.gm.graph.nodes if n.op == "output"]
        if outputs and len(_flat_outputs(outputs[0])) != 1:
            problems.append("  - the network returns several values; rramc needs one output tensor")
        reported: set[tuple[str, str]] = set()

        def report(node: torch.fx.Node, cause: str | None) -> None:
            call = self.module_call(node)
            if call is None:
                problems.append(f"  - {self.describe(node)}" + (f": {cause}" if cause else ""))
            elif call[0] in unrecognised and call not in reported:
                reported.add(call)
                problems.append(f"  - {call[1]} at layer '{call[0]}': {unrecognised[call[0]]}")
            elif call not in reported:  # the module's first problem stands for all of its ATen ops
                reported.add(call)
                problems.append(f"  - {_target_name(node)} at layer '{call[0]}' ({call[1]}; fx node {node.name})"
                                + (f": {cause}" if cause else ""))

        failed: set[torch.fx.Node] = set()
        for node in self.gm.graph.nodes:
            if node.op in ("call_module", "call_function", "call_method") and self.converter(node) is None \
                    and not (node.op == "call_module" and str(node.target) == "_guards_fn"):
                report(node, None)
                failed.add(node)
                continue
            if failed & set(node.all_input_nodes) or (node.op == "output" and problems):
                failed.add(node)
                problem = self.dry_run(node, failed)
                if problem:
                    report(node, problem)
                continue
            try:
                self.env[node] = self.convert(node)
            except Unsupported as exc:
                report(node, str(exc))
                failed.add(node)
        if problems:
            raise FrontendError(
                f"{self.source}: {len(problems)} unsupported operation(s):\n" + "\n".join(problems)
                + f"\nrramc supports: {'; '.join(SUPPORTED)}."
            )
        self.graph.remove_dead()
        return self.graph

    def dry_run(self, node: torch.fx.Node, failed: set[torch.fx.Node]) -> str | None:
        """Check a node downstream of a failed one for problems of its own (e.g. grouped conv).

        Failed operands stand in as activations; nothing is added to the graph.
        """
        if node.op not in ("call_module", "call_function", "call_method") or node.target is operator.getitem:
            return None  # taking an element of a failed call's result repeats that call's problem
        self.env.update({n: Value(n.name) for n in node.all_input_nodes if n in failed})
        self._dry = True
        try:
            self.convert(node)
        except Unsupported as exc:
            return str(exc)
        except Exception:  # a consequence of the failed operand, not a problem of this node
            return None
        finally:
            self._dry = False
        return None

    def convert(self, node: torch.fx.Node) -> Any:
        if node.op == "placeholder":
            shape = self.shape(node)
            return Value(self.graph.add(node.name, Input(), shape=shape, meta={"source": node.name}).name)
        if node.op == "get_attr":
            return functools.reduce(getattr, str(node.target).split("."), self.gm)
        if node.op == "output":
            (result,) = _flat_outputs(node)
            value = self.activation(self.env[result], "result")
            self.graph.add("output", Output(), [value.name], meta={"source": "output"})
            return None
        args = torch.fx.node.map_arg(node.args, lambda n: self.env[n])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: self.env[n])
        if node.op == "call_module" and str(node.target) == "_guards_fn":
            return None
        convert = self.converter(node)
        assert convert is not None
        if node.op == "call_module":
            return convert(self, node, self.gm.get_submodule(str(node.target)), *args, **kwargs)
        return convert(self, node, *args, **kwargs)


_RANDOM = frozenset({"rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "bernoulli", "normal",
                     "multinomial", "poisson", "dropout", "uniform_", "normal_"})


_CONSTANT_TYPES = (Tensor, int, float, bool, str, slice, type(None), type(Ellipsis), torch.dtype, torch.device,
                   torch.memory_format, torch.layout)


def _is_constant(value: Any) -> bool:
    """Whether an imported value is a constant: tensors, numbers, sizes and the like, in tuples and lists; not
    an activation (a :class:`Value`) or anything holding one (a module's several results, folded tokens)."""
    if isinstance(value, (tuple, list)):
        return all(_is_constant(item) for item in value)
    return isinstance(value, _CONSTANT_TYPES)


def computed_now(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Any:
    """A call on constants only (see :meth:`Importer._computable_now`), computed now: what PyTorch gives."""
    if node.op == "call_method":
        receiver, *rest = args
        return getattr(receiver, str(node.target))(*rest, **kwargs)
    return node.target(*args, **kwargs)  # type: ignore[operator]


def _flat_outputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    result = node.args[0]
    while isinstance(result, (tuple, list)) and len(result) == 1:
        result = result[0]
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _target_name(node: torch.fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    return str(target) if isinstance(target, torch._ops.OpOverload) else getattr(target, "__name__", str(target))


def _bind(names: list[str], defaults: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Name positional and keyword arguments the same way for ATen schemas and torch functions."""
    bound = dict(defaults)
    bound.update(zip(names, args))
    for key, value in kwargs.items():
        bound["input" if key == "self" else key] = value
    return bound


def _ints(value: Any, n: int = 2) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    return value * n if len(value) == 1 else value


# --- converters ------------------------------------------------------------------------------
# Each takes (importer, fx node, *args) with fx nodes already replaced by Values, tensors or
# constants, and returns the Value of the result.

def _linear(imp: Importer, node: torch.fx.Node, input: Any, weight: Any, bias: Any = None) -> Value | FoldedTokens:
    op = imp.weighted_op(Linear, imp.parameter(weight, "weight"), imp.parameter(bias, "bias"))
    if isinstance(input, FoldedTokens):  # the same layer on every token: computed on the unfolded tokens
        return FoldedTokens(imp.add(node, op, [input.value], None), input.lead)
    return imp.emit(node, op, [imp.activation(input)])


def _same_padding(weight: Tensor, stride: tuple[int, ...], dilation: tuple[int, ...]) -> list[tuple[int, int]]:
    """PyTorch's ``padding='same'`` per spatial dim as (before, after): the extra zero of an even span goes after."""
    if any(s != 1 for s in stride):
        raise Unsupported("padding='same' needs stride 1 (PyTorch's own rule)")
    spans = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
    return [(span // 2, span - span // 2) for span in spans]


def _padded_conv(imp: Importer, node: torch.fx.Node, x: Value, weight: Tensor, bias: Any, stride: Any, padding: Any,
                 dilation: Any, groups: int) -> tuple[Value, Conv2d]:
    """The crossbar convolution of ``weight`` and the input it reads. ``padding='same'`` with an even span pads one
    more zero after (PyTorch's rule): the digital periphery pads, then the crossbar convolves unpadded."""
    stride, dilation = _ints(stride), _ints(dilation)
    if padding == "valid":
        padding = 0
    elif padding == "same":
        (top, bottom), (left, right) = _same_padding(weight, stride, dilation)
        if (top, left) != (bottom, right):
            x = imp.add(node, ZeroPad2d(padding=(top, bottom, left, right)), [x], "pad")
            padding = 0
        else:
            padding = (top, left)
    op = imp.weighted_op(Conv2d, weight, imp.parameter(bias, "bias"), stride=stride, padding=_ints(padding), dilation=dilation,
                         groups=int(groups))
    return x, op


def _conv2d(imp: Importer, node: torch.fx.Node, input: Any, weight: Any, bias: Any = None, stride: Any = 1,
            padding: Any = 0, dilation: Any = 1, groups: int = 1) -> Value:
    w = imp.parameter(weight, "weight")
    assert w is not None
    x, op = _padded_conv(imp, node, imp.activation(input), w, bias, stride, padding, dilation, groups)
    return imp.emit(node, op, [x])


def _conv_transpose2d(imp: Importer, node: torch.fx.Node, input: Any, weight: Any, bias: Any = None, stride: Any = 1,
                      padding: Any = 0, output_padding: Any = 0, groups: int = 1, dilation: Any = 1) -> Value:
    """A transposed convolution as the chip computes it: the digital periphery spreads the input's pixels
    ``stride`` apart and pads the borders, and the crossbar applies an ordinary stride-1 convolution
    with the flipped kernel (weights ``[in, out/groups, kh, kw]`` rearranged to ``[out, in/groups, kh, kw]``)."""
    x = imp.activation(input)
    w = imp.parameter(weight, "weight")
    assert w is not None
    stride, padding, output_padding, dilation = _ints(stride), _ints(padding), _ints(output_padding), _ints(dilation)
    per_group = w.shape[0] // groups
    kernel = imp.derived(w, "transposed", lambda: torch.cat([w[g * per_group:(g + 1) * per_group].transpose(0, 1)
                                                             for g in range(groups)]).flip(2, 3).contiguous())
    span = [d * (k - 1) for d, k in zip(dilation, w.shape[2:])]
    (top, left), (bottom, right) = [s - p for s, p in zip(span, padding)], [s - p + o for s, p, o in zip(span, padding, output_padding)]
    spread = imp.add(node, ZeroPad2d(padding=(top, bottom, left, right), spacing=stride), [x], "spread")
    op = imp.weighted_op(Conv2d, kernel, imp.parameter(bias, "bias"), dilation=dilation, groups=int(groups))
    return imp.emit(node, op, [spread])


def _as_2d(imp: Importer, node: torch.fx.Node, x: Value, convert: Callable[[Value], Value]) -> Value:
    """A 1-D layer (``[channels, length]`` samples) computed as its 2-D form on ``[channels, 1, length]``."""
    channels, length = imp.value_shape(x)
    wide = imp.add(node, Reshape(shape=(channels, 1, length)), [x], "as_2d")
    result = convert(wide)
    out_channels, _, out_length = imp.value_shape(result)
    return imp.add(node, Reshape(shape=(out_channels, out_length)), [result], "as_1d")


def _conv1d(imp: Importer, node: torch.fx.Node, input: Any, weight: Any, bias: Any = None, stride: Any = 1,
            padding: Any = 0, dilation: Any = 1, groups: int = 1) -> Value:
    x = imp.activation(input)
    if len(imp.value_shape(x)) != 2:
        raise Unsupported(f"conv1d takes samples of shape [channels, length], got {list(imp.value_shape(x))}")
    w = imp.parameter(weight, "weight")
    assert w is not None
    kernel = imp.derived(w, "as_2d", lambda: w.unsqueeze(2))
    pad = padding if isinstance(padding, str) else (0, _ints(padding, 1)[0])

    def conv(wide: Value) -> Value:
        wide, op = _padded_conv(imp, node, wide, kernel, bias, (1, _ints(stride, 1)[0]), pad, (1, _ints(dilation, 1)[0]), groups)
        return imp.add(node, op, [wide], None)  # its shape inferred: PyTorch's for the call is the 1-D one

    return _as_2d(imp, node, x, conv)


def _convolution(imp: Importer, node: torch.fx.Node, input: Any, weight: Any, bias: Any, stride: Any, padding: Any,
                 dilation: Any, transposed: bool, output_padding: Any, groups: int) -> Value:
    w = imp.parameter(weight, "weight")
    assert w is not None
    if w.dim() == 3:
        if transposed:
            raise Unsupported("transposed 1-D convolution is not supported (ConvTranspose2d is)")
        return _conv1d(imp, node, input, weight, bias, stride, padding, dilation, groups)
    if w.dim() != 4:
        raise Unsupported(f"{w.dim() - 2}-D convolution is not supported (1-D and 2-D are)")
    if transposed:
        return _conv_transpose2d(imp, node, input, weight, bias, stride, padding, output_padding, groups, dilation)
    return _conv2d(imp, node, input, weight, bias, stride, padding, dilation, groups)


def _addmm(imp: Importer, node: torch.fx.Node, bias: Any, input: Any, mat2: Any, beta: Any = 1, alpha: Any = 1) -> Value:
    # Core ATen spells linear as addmm(bias, x, weight.T).
    if beta != 1 or alpha != 1 or not isinstance(mat2, Tensor):
        raise Unsupported("only addmm(bias, x, weight.T) with constant weights (a linear layer) is supported")
    return _linear(imp, node, input, imp.derived(mat2, "T", lambda: mat2.T), bias)


def _mm(imp: Importer, node: torch.fx.Node, input: Any, mat2: Any) -> Value:
    if not isinstance(mat2, Tensor):
        raise Unsupported("only x @ weight.T with constant weights (a linear layer) is supported")
    return _linear(imp, node, input, imp.derived(mat2, "T", lambda: mat2.T))


def _matmul(imp: Importer, node: torch.fx.Node, input: Any, other: Any) -> Value:
    """``x @ W`` with a constant ``W`` (2-D) is a linear layer on the crossbar, over ``x``'s last dimension."""
    if isinstance(input, Value) and isinstance(other, Tensor):
        if other.dim() != 2:
            raise Unsupported(f"x @ W with a {other.dim()}-D constant W is not supported (2-D W is a linear layer)")
        return _linear(imp, node, input, imp.derived(other, "T", lambda: other.T))
    raise Unsupported("only x @ W with a constant 2-D W (a linear layer) is supported here")


def _batch_norm(imp: Importer, node: torch.fx.Node, x: Any, mean: Any, var: Any, weight: Any, bias: Any, eps: float) -> Value:
    op = BatchNorm(mean=imp.tensor(mean, "running mean"), var=imp.tensor(var, "running variance"),
                   weight=imp.tensor(weight, "weight"), bias=imp.tensor(bias, "bias"), eps=float(eps))
    if op.mean is None or op.var is None:
        raise Unsupported("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    return imp.emit(node, op, [imp.activation(x)])


def _aten_batch_norm(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Value:
    a = _bind(["input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps"], {}, args, kwargs)
    if a.get("training"):
        raise Unsupported("BatchNorm in training mode; call model.eval() before exporting")
    return _batch_norm(imp, node, a["input"], a["running_mean"], a["running_var"], a["weight"], a["bias"], a["eps"])


def _aten_bn_no_training(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> tuple[Value]:
    a = _bind(["input", "weight", "bias", "running_mean", "running_var", "momentum", "eps"], {}, args, kwargs)
    return (_batch_norm(imp, node, a["input"], a["running_mean"], a["running_var"], a["weight"], a["bias"], a["eps"]),)


def _bn_module(imp: Importer, node: torch.fx.Node, m: nn.modules.batchnorm._BatchNorm, x: Any) -> Value:
    if m.training:
        raise Unsupported("BatchNorm in training mode; call model.eval() first")
    return _batch_norm(imp, node, x, m.running_mean, m.running_var, m.weight, m.bias, m.eps)


def _relu(imp: Importer, node: torch.fx.Node, x: Any, *rest: Any, **kw: Any) -> Value:
    return imp.emit(node, ReLU(), [imp.activation(x)])


def _clamp_op(imp: Importer, node: torch.fx.Node, x: Any, low: Any, high: Any) -> Value:
    for bound in (low, high):
        if bound is not None and not isinstance(bound, (int, float)):
            raise Unsupported("clamp bounds must be numbers, not tensors")
    return imp.emit(node, Clamp(low=None if low is None else float(low), high=None if high is None else float(high)), [imp.activation(x)])


def _clamp(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Value:
    a = _bind(["input", "min", "max"], {"min": None, "max": None}, args, kwargs)
    return _clamp_op(imp, node, a["input"], a["min"], a["max"])


def _clamp_min(imp: Importer, node: torch.fx.Node, x: Any, low: Any) -> Value:
    return _clamp_op(imp, node, x, low, None)


def _clamp_max(imp: Importer, node: torch.fx.Node, x: Any, high: Any) -> Value:
    return _clamp_op(imp, node, x, None, high)


def _hardtanh(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Value:
    a = _bind(["input", "min_val", "max_val"], {"min_val": -1.0, "max_val": 1.0}, args, kwargs)
    return _clamp_op(imp, node, a["input"], a["min_val"], a["max_val"])


def _relu6(imp: Importer, node: torch.fx.Node, x: Any, *rest: Any, **kw: Any) -> Value:
    return _clamp_op(imp, node, x, 0.0, 6.0)


def _max_pool(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Any:
    a = _bind(["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
              {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}, args, kwargs)
    if a["return_indices"]:
        raise Unsupported("max pooling that returns indices is not supported")
    kernel = _ints(a["kernel_size"])
    op = MaxPool2d(kernel_size=kernel, stride=_ints(a["stride"]) if a["stride"] else kernel, padding=_ints(a["padding"]),
                   dilation=_ints(a["dilation"]), ceil_mode=bool(a["ceil_mode"]))
    if node.target == aten.max_pool2d_with_indices.default:  # (values, indices): rramc computes the values only
        return (imp.add(node, op, [imp.activation(a["input"])], None), None)
    return imp.emit(node, op, [imp.activation(a["input"])])


def _avg_pool(imp: Importer, node: torch.fx.Node, *args: Any, **kwargs: Any) -> Value:
    a = _bind(["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"],
              {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None}, args, kwargs)
    if a["divisor_override"] is not None:
        raise Unsupported("average pooling with divisor_override is not supported")
    kernel = _ints(a["kernel_size"])
    op = AvgPool2d(kernel_size=kernel, stride=_ints(a["stride"]) if a["stride"] else kernel, padding=_ints(a["padding"]),
                   ceil_mode=bool(a["ceil_mode"]), count_include_pad=bool(a["count_include_pad"]))
    return imp.emit(node, op, [imp.activation(a["input"])])


def _pool_module(imp: Importer, node: torch.fx.Node, m: nn.Module, x: Any) -> Value:
    if isinstance(m, nn.MaxPool2d):
        return _max_pool(imp, node, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices)
    assert isinstance(m, nn.AvgPool2d)
    return _avg_pool(imp, node, x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override)


def _adaptive_avg_pool(imp: Importer, node: torch.fx.Node, x: Any, output_size: Any) -> Value:
    shape = imp.shape(node)
    return imp.emit(node, AdaptiveAvgPool2d(output_size=(shape[1], shape[2])), [imp.activation(x)])


def _reshape(imp: Importer, node: torch.fx.Node, x: Any, *rest: Any, **kwargs: Any) -> Value:
    # The per-sample shape comes from shape propagation, which already resolved -1 and x.size(0),
    # provided the batch dimension stays first and alone.
    before, after = node.all_input_nodes[0].meta["tensor_meta"].shape, node.meta["tensor_meta"].shape
    if isinstance(x, FoldedTokens) and tuple(after[:-1]) == x.lead and imp.value_shape(x.value)[-1] == after[-1]:
        return x.value  # the view back after a linear layer on folded tokens
    value = imp.activation(x)
    if len(after) == 2 and after[0] != before[0] and after[-1] == before[-1] and after[0] == math.prod(before[:-1]):
        return FoldedTokens(value, tuple(int(d) for d in before[:-1]))
    if not after or after[0] != before[0]:
        raise Unsupported(f"it reshapes the batch dimension ({list(before)} to {list(after)}); rramc keeps the batch "
                          "first and apart: keep it as the first dimension, e.g. x.reshape(x.shape[0], ...)")
    if imp.graph.node(value.name).shape == imp.shape(node):
        return value
    return imp.emit(node, Reshape(shape=imp.shape(node)), [value])


def _identity(imp: Importer, node: torch.fx.Node, x: Any, *rest: Any, **kwargs: Any) -> Any:
    return x


def _getitem(imp: Importer, node: torch.fx.Node, container: Any, index: Any) -> Any:
    """An element of a call's several results or of a size (of activations: see tensor_converters)."""
    if isinstance(container, sequence_modules.Results):  # an LSTM's (out, (h_n, c_n)), attention's (out, weights)
        return container.get(index, used=bool(node.users))
    if isinstance(container, tuple) and index == 0:
        return container[0]
    if isinstance(container, (torch.Size, tuple, list)):
        return container[index]
    raise Unsupported(f"indexing a {type(container).__name__} is not supported")


def _size(imp: Importer, node: torch.fx.Node, x: Any, *dim: Any) -> Any:
    shape = (1, *imp.graph.node(imp.activation(x).name).shape)
    return shape[dim[0]] if dim else torch.Size(shape)


def _module_linear(imp: Importer, node: torch.fx.Node, m: nn.Linear, x: Any) -> Value:
    return _linear(imp, node, x, m.weight, m.bias)


def _module_conv(imp: Importer, node: torch.fx.Node, m: nn.Conv1d | nn.Conv2d, x: Any) -> Value:
    if m.padding_mode != "zeros":
        raise Unsupported(f"padding_mode='{m.padding_mode}' is not supported (only zero padding)")
    convert = _conv1d if isinstance(m, nn.Conv1d) else _conv2d
    return convert(imp, node, x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)


def _module_conv_transpose(imp: Importer, node: torch.fx.Node, m: nn.ConvTranspose2d, x: Any, output_size: Any = None) -> Value:
    if output_size is not None:
        raise Unsupported("ConvTranspose2d called with output_size is not supported; set output_padding instead")
    if m.padding_mode != "zeros":
        raise Unsupported(f"padding_mode='{m.padding_mode}' is not supported (only zero padding)")
    return _conv_transpose2d(imp, node, x, m.weight, m.bias, m.stride, m.padding, m.output_padding, m.groups, m.dilation)


def _module_hardtanh(imp: Importer, node: torch.fx.Node, m: nn.Hardtanh, x: Any) -> Value:
    return _clamp_op(imp, node, x, m.min_val, m.max_val)


MODULE_CONVERTERS: dict[type, Callable[..., Any]] = {
    nn.Linear: _module_linear,
    nn.Conv2d: _module_conv,
    nn.Conv1d: _module_conv,
    nn.ConvTranspose2d: _module_conv_transpose,
    nn.BatchNorm1d: _bn_module,
    nn.BatchNorm2d: _bn_module,
    nn.ReLU: lambda imp, node, m, x: _relu(imp, node, x),
    nn.ReLU6: lambda imp, node, m, x: _relu6(imp, node, x),
    nn.Hardtanh: _module_hardtanh,
    nn.MaxPool2d: _pool_module,
    nn.AvgPool2d: _pool_module,
    nn.AdaptiveAvgPool2d: lambda imp, node, m, x: _adaptive_avg_pool(imp, node, x, m.output_size),
    nn.Flatten: lambda imp, node, m, x: _reshape(imp, node, x),
    nn.Identity: lambda imp, node, m, x: _identity(imp, node, x),
    nn.Dropout: lambda imp, node, m, x: _identity(imp, node, x),
}

FUNCTION_CONVERTERS: dict[Any, Callable[..., Any]] = {
    F.linear: _linear, aten.linear.default: _linear,
    F.conv2d: _conv2d, torch.conv2d: _conv2d, aten.conv2d.default: _conv2d, aten.conv2d.padding: _conv2d,
    F.conv1d: _conv1d, torch.conv1d: _conv1d, aten.conv1d.default: _conv1d, aten.conv1d.padding: _conv1d,
    F.conv_transpose2d: _conv_transpose2d, torch.conv_transpose2d: _conv_transpose2d,
    aten.conv_transpose2d.input: _conv_transpose2d,
    aten.convolution.default: _convolution, aten.addmm.default: _addmm, aten.mm.default: _mm,
    aten.batch_norm.default: _aten_batch_norm,
    aten._native_batch_norm_legit_no_training.default: _aten_bn_no_training,
    F.relu: _relu, torch.relu: _relu, aten.relu.default: _relu, aten.relu_.default: _relu,
    F.relu6: _relu6, aten.relu6.default: _relu6,
    F.hardtanh: _hardtanh, aten.hardtanh.default: _hardtanh, aten.hardtanh_.default: _hardtanh,
    torch.clamp: _clamp, torch.clip: _clamp, aten.clamp.default: _clamp, aten.clip.default: _clamp,
    aten.clamp_min.default: _clamp_min, aten.clamp_max.default: _clamp_max,
    F.max_pool2d: _max_pool, aten.max_pool2d.default: _max_pool, aten.max_pool2d_with_indices.default: _max_pool,
    F.avg_pool2d: _avg_pool, aten.avg_pool2d.default: _avg_pool,
    F.adaptive_avg_pool2d: lambda imp, node, x, size: _adaptive_avg_pool(imp, node, x, size),
    aten.adaptive_avg_pool2d.default: lambda imp, node, x, size: _adaptive_avg_pool(imp, node, x, size),
    torch.flatten: _reshape, torch.reshape: _reshape, aten.flatten.using_ints: _reshape, aten.view.default: _reshape,
    aten.reshape.default: _reshape, aten._unsafe_view.default: _reshape,
    F.dropout: _identity, aten.dropout.default: _identity, aten.alias.default: _identity,
    aten.detach.default: _identity, aten.clone.default: _identity, aten.contiguous.default: _identity,
    aten.sym_size.int: lambda imp, node, x, dim: _size(imp, node, x, dim),
}

METHOD_CONVERTERS: dict[str, Callable[..., Any]] = {
    "relu": _relu, "relu_": _relu, "clamp": _clamp, "clip": _clamp, "clamp_min": _clamp_min, "clamp_max": _clamp_max,
    "view": _reshape, "reshape": _reshape, "flatten": _reshape, "size": _size,
    "contiguous": _identity, "detach": _identity, "clone": _identity,
}


def import_graph_module(gm: torch.fx.GraphModule, example_inputs: tuple[Tensor, ...], source: str) -> Graph:
    """Propagate shapes through ``gm`` with ``example_inputs`` and convert it to a verified IR graph."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints a traceback before re-raising
            ShapeProp(gm).propagate(*example_inputs)
    except Exception as exc:  # the user's own model code failed on the example input
        exc = exc.__cause__ or exc
        raise FrontendError(f"{source}: running the model on an example input of shape "
                            f"{[list(x.shape) for x in example_inputs]} failed: {type(exc).__name__}: {exc}") from None
    graph = Importer(gm, source).run()
    graph.verify(after_pass="import")
    return graph


def import_module(model: nn.Module, example_input: Tensor, source: str = "model") -> Graph:
    """Trace an ``nn.Module`` with ``torch.fx.symbolic_trace`` and import it."""
    if isinstance(model, torch.fx.GraphModule):
        return import_graph_module(model, (example_input,), source)  # already a graph (e.g. ExportedProgram.module())
    # Trace and propagate shapes in eval mode (BatchNorm's running statistics, no dropout), then
    # give every submodule back the mode it had: the caller's model is theirs.
    modes = {m: m.training for m in model.modules()}
    try:
        try:
            gm = torch.fx.symbolic_trace(model.eval())
        except Exception as exc:
            raise FrontendError(
                f"{source}: torch.fx cannot trace the model ({type(exc).__name__}: {exc}); data-dependent Python control "
                "flow is the usual cause. Export it with torch.export and compile the .pt2 instead."
            ) from None
        return import_graph_module(gm, (example_input,), source)
    finally:
        for module, training in modes.items():
            module.training = training


def import_exported(program: torch.export.ExportedProgram, source: str = "exported program") -> Graph:
    """Import the ATen graph of a ``torch.export`` program, using its own example inputs for shapes."""
    if program.example_inputs is None:
        raise FrontendError(f"{source}: the exported program carries no example inputs to propagate shapes with")
    args, kwargs = program.example_inputs
    if kwargs or len(args) != 1:
        raise FrontendError(f"{source}: rramc compiles networks with exactly one positional input, this one takes {len(args)} (+{len(kwargs)} keyword)")
    return import_graph_module(program.module(), tuple(args), source)


# attention, transformer and recurrent converters (they register themselves), and their exported forms lifted back
from rramc.frontend import exported_modules, sequence_modules  # noqa: E402
from rramc.frontend import tensor_converters  # noqa: E402,F401  (registers the digital tensor ops' converters)
