"""Attention, transformer encoders and recurrent nets: crossbar matmuls and digital maths.

``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``, ``nn.TransformerEncoder``, ``nn.LSTM``,
``nn.GRU`` and ``nn.RNN`` are expanded into IR ops when imported. Every product with a weight that
does not change between inputs is a ``linear`` op on crossbar arrays, over the last dimension of
each sample (every token, or every time step, one read of the same arrays): the attention's input
and output projections, the feed-forward layers, a recurrent net's input-to-hidden matrices
(applied to all time steps at once) and its hidden-to-hidden matrices (applied step by step, the
same arrays at every step). Products of two activations (attention scores, the weighted sum of
values, a recurrent net's gates), softmax, layer norm and the gate functions run in the digital
periphery.

Samples are ``[tokens, features]`` (the module built with ``batch_first=True``); a recurrent net is
unrolled over the time steps of the example input and starts from zero states. Modules that
return several tensors give back :class:`Results`, which ``operator.getitem`` takes apart the way
the PyTorch code does (``out, (h, c) = lstm(x)``, ``h[-1]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from rramc.frontend import fx_import
from rramc.frontend.fx_import import Importer, Unsupported, Value
from rramc.ir import Activation, Add, Affine, Binary, Concat, LayerNorm, MatMul, Permute, ReLU, Reshape, Slice, Softmax

MASKED = -1e9
"""The score added where a mask forbids attention. Finite, unlike PyTorch's ``-inf``, so the chip's
digital periphery never meets infinities; after softmax it weighs exactly 0 in float32."""

Constant = Tensor | None
"""A recurrent net's hidden-state term before its first step: the hidden-to-hidden bias, or None."""


@dataclass(frozen=True)
class Results:
    """Several results of one module call, held by the importer instead of one IR value.

    ``items`` are in PyTorch's order: Values, nested :class:`Results`, or a string that says why
    that result cannot be imported (refused only where the PyTorch code uses it). ``what`` names
    the results in messages (``"h_n of LSTM"``).
    """

    items: tuple[Any, ...]
    what: str

    def get(self, index: Any, used: bool = True) -> Any:
        """``results[index]``, as the PyTorch code indexes it; ``used`` is False for an element the code drops."""
        if not isinstance(index, int) or isinstance(index, bool):
            raise Unsupported(f"{self.what}[{_index_text(index)}] is not supported: index one element (e.g. [-1])")
        if not -len(self.items) <= index < len(self.items):
            raise Unsupported(f"{self.what} has {len(self.items)} elements; index {index} is out of range")
        item = self.items[index]
        if isinstance(item, str):
            if used:
                raise Unsupported(item)
            return None
        return item


def _index_text(index: Any) -> str:
    parts = index if isinstance(index, tuple) else (index,)
    return ", ".join(":" if p == slice(None) else (f"{p.start or ''}:{p.stop or ''}" if isinstance(p, slice) else repr(p))
                     for p in parts)


def _name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _sequence(imp: Importer, value: Any, what: str, layer: str) -> Value:
    """An activation of per-sample shape ``[tokens, features]``."""
    x = imp.activation(value, what)
    shape = imp.value_shape(x)
    if len(shape) != 2:
        raise Unsupported(f"{layer} takes samples of shape [tokens, features] (batch first), got {list(shape)} per sample")
    return x


def _batch_first(m: nn.Module, batch_first: bool) -> None:
    if not batch_first:
        raise Unsupported(f"{type(m).__name__} with batch_first=False puts time first; rramc keeps the batch dimension "
                          f"first: construct it with batch_first=True (and feed [batch, tokens, features])")


def _constant(imp: Importer, value: Tensor) -> Tensor:
    """A parameter used as a digital op's attribute: a float copy, detached from autograd."""
    copied = imp.tensor(value, "parameter")
    assert copied is not None
    return copied


# --- attention -------------------------------------------------------------------------------

def _mask_shift(mask: Any, tokens: int, keys: int, is_causal: bool) -> Tensor | None:
    """The additive mask of the attention scores: a boolean mask's True and a float mask's ``-inf``
    forbid (become :data:`MASKED`), other float values add; ``is_causal`` forbids later keys."""
    if is_causal:
        return torch.full((tokens, keys), MASKED).triu(1)
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise Unsupported("attn_mask is computed from the input; rramc needs a constant mask (a buffer, or built from sizes)")
    if tuple(mask.shape) != (tokens, keys):
        raise Unsupported(f"attn_mask of shape {list(mask.shape)}: rramc takes one [tokens, keys] = [{tokens}, {keys}] mask "
                          "for every sample and head")
    if mask.dtype == torch.bool:
        return torch.where(mask, MASKED, 0.0)
    return mask.detach().float().clamp(min=MASKED)


def attention(imp: Importer, node: torch.fx.Node, m: nn.MultiheadAttention, query: Value, key: Value, value: Value,
              mask: Tensor | None, prefix: str) -> Value:
    """``m(query, key, value)``'s output with the additive score mask ``mask`` ([tokens, keys] or None).

    The input projection is one ``linear`` over ``in_proj_weight`` followed by digital slices: a
    self-attention reads each token once for its query, key and value, and the parameter stays one
    tensor, so a module applied twice (or to distinct query and key inputs) programs one set of
    arrays. Heads are a reshape and permute; scores, softmax and the weighted values are digital.
    """
    embed, heads = m.embed_dim, m.num_heads
    head = embed // heads
    projected: dict[Value, Value] = {}

    def part(x: Value, index: int, role: str) -> Value:
        if x not in projected:
            projected[x] = imp.linear(node, x, m.in_proj_weight, m.in_proj_bias, _name(prefix, "in_proj"))
        return imp.add(node, Slice(dim=1, start=index * embed, stop=(index + 1) * embed), [projected[x]], _name(prefix, role))

    def split_heads(x: Value, order: tuple[int, ...], role: str) -> Value:
        tokens = imp.value_shape(x)[0]
        split = imp.add(node, Reshape(shape=(tokens, heads, head)), [x], _name(prefix, f"{role}_heads"))
        return imp.add(node, Permute(dims=order), [split], _name(prefix, f"{role}_by_head"))

    q = split_heads(part(query, 0, "q"), (1, 0, 2), "q")  # [heads, tokens, head]
    k = split_heads(part(key, 1, "k"), (1, 2, 0), "k")  # [heads, head, keys]
    v = split_heads(part(value, 2, "v"), (1, 0, 2), "v")  # [heads, keys, head]
    scores = imp.add(node, MatMul(), [q, k], _name(prefix, "scores"))
    shift = torch.zeros(()) if mask is None else mask
    scaled = imp.add(node, Affine(scale=torch.tensor(1 / math.sqrt(head)), shift=shift), [scores], _name(prefix, "scaled"))
    weights = imp.add(node, Softmax(dim=2), [scaled], _name(prefix, "softmax"))
    mixed = imp.add(node, MatMul(), [weights, v], _name(prefix, "mixed"))
    tokens = imp.value_shape(mixed)[1]
    merged = imp.add(node, Permute(dims=(1, 0, 2)), [mixed], _name(prefix, "heads_by_token"))
    merged = imp.add(node, Reshape(shape=(tokens, embed)), [merged], _name(prefix, "merged"))
    return imp.linear(node, merged, m.out_proj.weight, m.out_proj.bias, _name(prefix, "out_proj"))


def _check_attention(m: nn.MultiheadAttention, key_padding_mask: Any) -> None:
    _batch_first(m, m.batch_first)
    if m.kdim != m.embed_dim or m.vdim != m.embed_dim:
        raise Unsupported(f"kdim={m.kdim}, vdim={m.vdim} differ from embed_dim={m.embed_dim}; rramc maps attention whose "
                          "keys and values have the embedding's size")
    if m.bias_k is not None:
        raise Unsupported("add_bias_kv=True is not supported")
    if m.add_zero_attn:
        raise Unsupported("add_zero_attn=True is not supported")
    if key_padding_mask is not None:
        raise Unsupported("key_padding_mask is not supported: it differs per sample; pad with a constant attn_mask instead, "
                          "or give every sample the same length")


def _multihead_attention(imp: Importer, node: torch.fx.Node, m: nn.MultiheadAttention, query: Any, key: Any, value: Any,
                         key_padding_mask: Any = None, need_weights: bool = True, attn_mask: Any = None,
                         average_attn_weights: bool = True, is_causal: bool = False) -> Results:
    _check_attention(m, key_padding_mask)
    q, k, v = (_sequence(imp, x, name, "MultiheadAttention") for x, name in ((query, "query"), (key, "key"), (value, "value")))
    # PyTorch's own rule: is_causal replaces the mask only where it skips the attention weights
    causal = bool(is_causal) and not need_weights
    mask = _mask_shift(attn_mask, imp.value_shape(q)[0], imp.value_shape(k)[0], causal)
    result = attention(imp, node, m, q, k, v, mask, "")
    path = imp.layer_of(node)[0]
    return Results((result, f"the attention weights of layer '{path}' (need_weights) are not supported; use only its first "
                            "result, or call it with need_weights=False"), "the results of MultiheadAttention")


# --- transformer encoder -----------------------------------------------------------------------

def _layer_norm(imp: Importer, node: torch.fx.Node, norm: nn.Module, x: Value, name: str) -> Value:
    if not isinstance(norm, nn.LayerNorm):
        raise Unsupported(f"{name} is a {type(norm).__name__}; rramc maps LayerNorm")
    weight = None if norm.weight is None else _constant(imp, norm.weight)
    bias = None if norm.bias is None else _constant(imp, norm.bias)
    op = LayerNorm(normalized_shape=tuple(norm.normalized_shape), weight=weight, bias=bias, eps=float(norm.eps))
    return imp.add(node, op, [x], name)


def _feed_forward_activation(layer: nn.TransformerEncoderLayer) -> Any:
    """The IR op of the feed-forward activation (relu or gelu, as a string, function or module)."""
    function = layer.activation
    if function is F.relu or isinstance(function, nn.ReLU):
        return ReLU()
    if function is F.gelu:
        return Activation(function="gelu")
    if isinstance(function, nn.GELU):
        return Activation(function="gelu" if function.approximate == "none" else "gelu_tanh")
    name = getattr(function, "__name__", type(function).__name__)
    raise Unsupported(f"the feed-forward activation {name} is not supported (relu or gelu are)")


def _check_encoder_layer(layer: nn.TransformerEncoderLayer, key_padding_mask: Any) -> None:
    _batch_first(layer, layer.self_attn.batch_first)
    _check_attention(layer.self_attn, key_padding_mask)
    _feed_forward_activation(layer)
    for name in ("norm1", "norm2"):
        if not isinstance(getattr(layer, name), nn.LayerNorm):
            raise Unsupported(f"{name} is a {type(getattr(layer, name)).__name__}; rramc maps LayerNorm")


def encoder_layer(imp: Importer, node: torch.fx.Node, layer: nn.TransformerEncoderLayer, x: Value, mask: Tensor | None,
                  prefix: str) -> Value:
    """One encoder layer on ``x``: self-attention and the feed-forward block, each added back to its
    input, with layer norm before (``norm_first``) or after each; dropout is inference's identity."""

    def self_attention(y: Value) -> Value:
        return attention(imp, node, layer.self_attn, y, y, y, mask, _name(prefix, "self_attn"))

    def feed_forward(y: Value) -> Value:
        hidden = imp.linear(node, y, layer.linear1.weight, layer.linear1.bias, _name(prefix, "linear1"))
        hidden = imp.add(node, _feed_forward_activation(layer), [hidden], _name(prefix, "activation"))
        return imp.linear(node, hidden, layer.linear2.weight, layer.linear2.bias, _name(prefix, "linear2"))

    for block, norm, step in ((self_attention, "norm1", "attention"), (feed_forward, "norm2", "feed_forward")):
        if layer.norm_first:
            normed = _layer_norm(imp, node, getattr(layer, norm), x, _name(prefix, norm))
            x = imp.add(node, Add(), [x, block(normed)], _name(prefix, f"{step}_residual"))
        else:
            summed = imp.add(node, Add(), [x, block(x)], _name(prefix, f"{step}_residual"))
            x = _layer_norm(imp, node, getattr(layer, norm), summed, _name(prefix, norm))
    return x


def _encoder_mask(imp: Importer, x: Value, mask: Any, is_causal: bool | None) -> Tensor | None:
    # An encoder layer never asks for attention weights, so is_causal (PyTorch's hint) stands for the causal mask.
    tokens = imp.value_shape(x)[0]
    return _mask_shift(mask, tokens, tokens, bool(is_causal))


def _transformer_encoder_layer(imp: Importer, node: torch.fx.Node, m: nn.TransformerEncoderLayer, src: Any,
                               src_mask: Any = None, src_key_padding_mask: Any = None, is_causal: bool = False) -> Value:
    _check_encoder_layer(m, src_key_padding_mask)
    x = _sequence(imp, src, "input", "TransformerEncoderLayer")
    return encoder_layer(imp, node, m, x, _encoder_mask(imp, x, src_mask, is_causal), "")


def _transformer_encoder(imp: Importer, node: torch.fx.Node, m: nn.TransformerEncoder, src: Any, mask: Any = None,
                         src_key_padding_mask: Any = None, is_causal: bool | None = None) -> Value:
    layers = list(m.layers)
    for layer in layers:
        _check_encoder_layer(layer, src_key_padding_mask)
    x = _sequence(imp, src, "input", "TransformerEncoder")
    shift = _encoder_mask(imp, x, mask, is_causal)
    for i, layer in enumerate(layers):
        x = encoder_layer(imp, node, layer, x, shift, f"layers.{i}")
    return x if m.norm is None else _layer_norm(imp, node, m.norm, x, "norm")


# --- recurrent nets ----------------------------------------------------------------------------

MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
"""The recurrent nets rramc unrolls, by ``nn.RNNBase.mode``."""


@dataclass(frozen=True)
class Step:
    """What one time step of one layer and direction works with.

    ``gates_x``: the input-to-hidden term of this step, ``[1, gates·hidden]``; ``gates_h``: the
    hidden-to-hidden term (a Value; before the first step the constant bias ``b_hh`` or None);
    ``h`` and ``c``: the previous states (None: zero, before the first step); ``hidden``: the
    width of one gate block.
    """

    gates_x: Value
    gates_h: Value | Constant
    h: Value | None
    c: Value | None
    hidden: int


class _StepOps:
    """The digital arithmetic of one step, where operands may be Values, constant tensors or zero (None)."""

    def __init__(self, imp: Importer, node: torch.fx.Node, name: str) -> None:
        self.imp, self.node, self.name = imp, node, name

    def add(self, op: Any, inputs: list[Value], suffix: str) -> Value:
        return self.imp.add(self.node, op, inputs, f"{self.name}.{suffix}")

    def gate(self, term: Value, index: int, hidden: int, suffix: str) -> Value:
        """Gate block ``index`` (``hidden`` wide) of a stacked term."""
        return self.add(Slice(dim=1, start=index * hidden, stop=(index + 1) * hidden), [term], suffix)

    def hidden_gate(self, term: Value | Constant, index: int, hidden: int, suffix: str) -> Value | Constant:
        """Gate block ``index`` of the hidden-to-hidden term, which may be constant or zero."""
        if term is None or isinstance(term, Tensor):
            return None if term is None else term[index * hidden:(index + 1) * hidden]
        return self.gate(term, index, hidden, suffix)

    def plus(self, a: Value, b: Value | Constant, suffix: str) -> Value:
        if b is None:
            return a
        if isinstance(b, Tensor):
            return self.add(Affine(scale=torch.ones(()), shift=b), [a], suffix)
        return self.add(Binary(function="add"), [a, b], suffix)

    def times(self, a: Value, b: Value | Constant, suffix: str) -> Value | None:
        if b is None:
            return None
        if isinstance(b, Tensor):
            return self.add(Affine(scale=b, shift=torch.zeros(())), [a], suffix)
        return self.add(Binary(function="mul"), [a, b], suffix)

    def apply(self, function: str, x: Value, suffix: str) -> Value:
        return self.add(ReLU() if function == "relu" else Activation(function=function), [x], suffix)


def _lstm_step(ops: _StepOps, s: Step) -> tuple[Value, Value]:
    """``i, f, g, o`` gates; ``c' = f·c + i·g``, ``h' = o·tanh(c')``."""
    pre = [ops.plus(ops.gate(s.gates_x, k, s.hidden, f"x_{g}"), ops.hidden_gate(s.gates_h, k, s.hidden, f"h_{g}"), f"pre_{g}")
           for k, g in enumerate("ifgo")]
    i, f, g, o = (ops.apply("tanh" if name == "g" else "sigmoid", p, name) for name, p in zip("ifgo", pre))
    c = ops.add(Binary(function="mul"), [i, g], "input_gated")
    kept = ops.times(f, s.c, "kept")
    if kept is not None:
        c = ops.add(Binary(function="add"), [kept, c], "c")
    h = ops.add(Binary(function="mul"), [o, ops.apply("tanh", c, "c_tanh")], "h")
    return h, c


def _gru_step(ops: _StepOps, s: Step) -> Value:
    """``r, z, n`` gates: ``n = tanh(x_n + r·h_n)``, ``h' = n + z·(h - n)`` (``(1 - z)·n`` from zero)."""
    r, z = (ops.apply("sigmoid", ops.plus(ops.gate(s.gates_x, k, s.hidden, f"x_{g}"),
                                          ops.hidden_gate(s.gates_h, k, s.hidden, f"h_{g}"), f"pre_{g}"), g)
            for k, g in enumerate("rz"))
    reset = ops.times(r, ops.hidden_gate(s.gates_h, 2, s.hidden, "h_n"), "reset")
    n = ops.apply("tanh", ops.plus(ops.gate(s.gates_x, 2, s.hidden, "x_n"), reset, "pre_n"), "n")
    if s.h is None:
        keep_new = ops.add(Affine(scale=-torch.ones(()), shift=torch.ones(())), [z], "one_minus_z")
        return ops.add(Binary(function="mul"), [keep_new, n], "h")
    change = ops.add(Binary(function="sub"), [s.h, n], "h_minus_n")
    return ops.add(Binary(function="add"), [n, ops.add(Binary(function="mul"), [z, change], "z_change")], "h")


def _rnn_step(ops: _StepOps, s: Step, function: str) -> Value:
    """``h' = tanh(x + h)`` (or relu)."""
    return ops.apply(function, ops.plus(s.gates_x, s.gates_h, "pre"), "h")


def _check_recurrent(m: nn.RNNBase, hx: Any) -> None:
    _batch_first(m, m.batch_first)
    if getattr(m, "proj_size", 0):
        raise Unsupported(f"proj_size={m.proj_size} is not supported (LSTM with proj_size=0 is)")
    if hx is not None:
        raise Unsupported("initial states are not supported: rramc starts every sequence from zero states (call it "
                          "without h0/c0)")
    if m.mode not in MODES:
        raise Unsupported(f"recurrent mode {m.mode} is not supported")


def _direction(imp: Importer, node: torch.fx.Node, m: nn.RNNBase, x: Value, layer: int, reverse: bool
               ) -> tuple[Value, Value, Value | None]:
    """One layer and direction unrolled over ``x`` ([steps, features]): its output [steps, hidden] and final h, c."""
    suffix = "_reverse" if reverse else ""
    name = f"l{layer}{suffix}"
    w_ih, w_hh = getattr(m, f"weight_ih_{name}"), getattr(m, f"weight_hh_{name}")
    b_ih, b_hh = (getattr(m, f"bias_{kind}_{name}") if m.bias else None for kind in ("ih", "hh"))
    hidden = m.hidden_size
    gates_x = imp.linear(node, x, w_ih, b_ih, f"{name}.input")
    steps = imp.value_shape(gates_x)[0]
    h: Value | None = None
    c: Value | None = None
    outputs: list[Value] = []
    for t in (reversed(range(steps)) if reverse else range(steps)):
        ops = _StepOps(imp, node, f"{name}.t{t}")
        x_t = ops.add(Slice(dim=0, start=t, stop=t + 1), [gates_x], "x")
        gates_h: Value | Constant = (None if b_hh is None else _constant(imp, b_hh)) if h is None \
            else imp.linear(node, h, w_hh, b_hh, f"{name}.t{t}.hidden")
        step = Step(x_t, gates_h, h, c, hidden)
        if m.mode == "LSTM":
            h, c = _lstm_step(ops, step)
        elif m.mode == "GRU":
            h = _gru_step(ops, step)
        else:
            h = _rnn_step(ops, step, "tanh" if m.mode == "RNN_TANH" else "relu")
        outputs.append(h)
    assert h is not None
    if reverse:
        outputs.reverse()
    output = outputs[0] if len(outputs) == 1 else imp.add(node, Concat(dim=0), outputs, f"{name}.output")
    return output, h, c


def _recurrent(imp: Importer, node: torch.fx.Node, m: nn.RNNBase, input: Any, hx: Any = None) -> Results:
    """An LSTM, GRU or RNN unrolled: per layer, each direction's steps, the directions' outputs joined
    along features as the next layer's input. Returns ``(output, h_n)`` or ``(output, (h_n, c_n))``."""
    _check_recurrent(m, hx)
    kind = type(m).__name__
    x = _sequence(imp, input, "input", kind)
    finals: list[tuple[Value, Value | None]] = []
    for layer in range(m.num_layers):
        outputs = []
        for reverse in (False, True)[: 1 + int(m.bidirectional)]:
            output, h, c = _direction(imp, node, m, x, layer, reverse)
            outputs.append(output)
            finals.append((h, c))
        x = outputs[0] if len(outputs) == 1 else imp.add(node, Concat(dim=1), outputs, f"l{layer}.output")

    def stacked(states: Sequence[Value], what: str) -> Results:
        # [1, hidden] per layer and direction; PyTorch's h_n[i] is [batch, hidden]: [hidden] per sample
        return Results(tuple(imp.add(node, Reshape(shape=(m.hidden_size,)), [s], f"{what}.{i}") for i, s in enumerate(states)),
                       f"{what} of {kind}")

    h_n = stacked([h for h, _ in finals], "h_n")
    if m.mode == "LSTM":
        c_n = stacked([c for _, c in finals if c is not None], "c_n")
        return Results((x, Results((h_n, c_n), f"(h_n, c_n) of {kind}")), f"the results of {kind}")
    return Results((x, h_n), f"the results of {kind}")


# --- registration ------------------------------------------------------------------------------

fx_import.MODULE_CONVERTERS.update({
    nn.MultiheadAttention: _multihead_attention,
    nn.TransformerEncoderLayer: _transformer_encoder_layer,
    nn.TransformerEncoder: _transformer_encoder,
    nn.LSTM: _recurrent,
    nn.GRU: _recurrent,
    nn.RNN: _recurrent,
})
fx_import.SUPPORTED.append(
    "MultiheadAttention (batch_first=True; constant or causal attn_mask), TransformerEncoderLayer and TransformerEncoder "
    "(relu or gelu, norm_first either way), LSTM, GRU and RNN (batch_first=True, zero initial states; out, h_n[i], c_n[i])"
)
