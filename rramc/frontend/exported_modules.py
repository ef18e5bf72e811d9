"""torch.export graphs: the ATen ops of a sequence module lifted back into one call of it.

torch.export traces ``nn.MultiheadAttention``, ``nn.TransformerEncoder(Layer)``, ``nn.LSTM``,
``nn.GRU`` and ``nn.RNN`` into ATen ops that move the batch dimension around (attention works
time-first inside; its projections see ``[tokens · batch, features]``), which no per-sample op
can follow. :mod:`rramc.frontend.sequence_modules` converts these modules whole; this module gives
it whole modules on the export path too.

Every node of an exported graph records the modules it ran in (``nn_module_stack``). The nodes of
one call of one of these modules (the outermost, when they nest) are replaced by one
``call_module`` node of a module rebuilt from the parameters the graph reads. What the graph
does not record as such (the number of heads, ``norm_first``, the activation, ``batch_first``,
which inputs are query, key and mask) is found by trying the few configurations the parameter
shapes allow: the rebuilt module is kept only if it reproduces the graph's own results on a
random input, to float rounding. A call no configuration reproduces is left as it was, and its
ATen ops are refused under the module's name.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from torch import Tensor
from torch.fx.passes.shape_prop import ShapeProp

aten = torch.ops.aten

Call = Callable[[list[Any], list[Tensor]], tuple[tuple[Any, ...], dict[str, Any]]]
"""Builds a module call's ``(args, kwargs)`` from the call's activation inputs (values, or graph
nodes when rewriting) and its constant inputs (tensors)."""


@dataclass
class Region:
    """The nodes of one call of a liftable module in an exported graph."""

    path: str
    """The module's path in the network (``encoder.layers.0``)."""
    kind: type[nn.Module]
    """The module's class."""
    nodes: list[torch.fx.Node] = field(default_factory=list)
    activations: list[torch.fx.Node] = field(default_factory=list)
    """Inputs computed from the network's input, in order of first use."""
    constants: list[torch.fx.Node] = field(default_factory=list)
    """Tensor inputs not computed from the network's input (a mask built from sizes, another module's buffer)."""
    activation_ranks: list[int] = field(default_factory=list)
    """The rank (batch included) of each activation input: 3 for a sequence, 2 for a per-sample mask."""
    outputs: list[torch.fx.Node] = field(default_factory=list)
    """Nodes whose values are used outside the call."""
    parameters: dict[str, Tensor] = field(default_factory=dict)
    """The module's parameters by their names in the module."""
    norm_eps: dict[str, float] = field(default_factory=dict)
    """The ``eps`` each LayerNorm inside the module ran with, by its path in the module."""


@dataclass
class Lift:
    """A rebuilt module that reproduces a region, how to call it, and where each output is in its results."""

    module: nn.Module
    call: Call
    paths: dict[torch.fx.Node, tuple[int, ...]]


def _type_name(kind: Any) -> str:
    return kind if isinstance(kind, str) else f"{kind.__module__}.{kind.__qualname__}"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# --- candidate configurations, per module ------------------------------------------------------

def _mask_roles(region: Region, names: tuple[str, str]) -> Iterator[dict[str, tuple[str, int]]]:
    """Ways to pass a call's mask-like inputs (constants, activations that are not [batch, tokens,
    features]) as the masks ``names``: each maps a name to ("a", activation index) or ("c", constant index)."""
    masks = [("a", i) for i, rank in enumerate(region.activation_ranks) if rank != 3]
    masks += [("c", i) for i in range(len(region.constants))]
    if len(masks) <= len(names):
        for chosen in itertools.permutations(names, len(masks)):
            yield dict(zip(chosen, masks))


def _sequences(region: Region) -> list[int]:
    """The activation inputs that are sequences ([batch, tokens, features]), in order of first use."""
    return [i for i, rank in enumerate(region.activation_ranks) if rank == 3]


def _pick(a: list[Any], c: list[Tensor], source: tuple[str, int]) -> Any:
    return a[source[1]] if source[0] == "a" else c[source[1]]


def _attention_calls(region: Region, tokens_first: bool) -> Iterator[Call]:
    """Calls of ``MultiheadAttention``: the sequences are query[, key[, value]] in order of first use;
    masks as :func:`_mask_roles` places them; ``is_causal`` without a mask gets the causal one."""
    sequences = _sequences(region)
    roles = {1: (0, 0, 0), 2: (0, 1, 1), 3: (0, 1, 2)}.get(len(sequences))
    if roles is None:
        return
    q, k, v = (sequences[r] for r in roles)
    weights = len(region.outputs) > 1
    for masks, causal, average in itertools.product(_mask_roles(region, ("attn_mask", "key_padding_mask")), (False, True),
                                                    (True, False) if weights else (True,)):
        def call(a: list[Any], c: list[Tensor], masks: dict[str, tuple[str, int]] = masks, causal: bool = causal,
                 average: bool = average) -> tuple[tuple[Any, ...], dict[str, Any]]:
            kwargs: dict[str, Any] = {"need_weights": weights, "average_attn_weights": average, "is_causal": causal}
            kwargs.update({name: _pick(a, c, source) for name, source in masks.items()})
            if causal and "attn_mask" not in kwargs:
                kwargs["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(_tokens(a[q], tokens_first))
            return (a[q], a[k], a[v]), kwargs

        yield call


def _tokens(x: Any, tokens_first: bool) -> int:
    """The sequence length of an attention input (a value, or a node with its shape propagated)."""
    shape = x.shape if isinstance(x, Tensor) else x.meta["tensor_meta"].shape
    return int(shape[0 if tokens_first else 1])


def _multihead_attention(region: Region) -> Iterator[tuple[nn.Module, Call]]:
    p = region.parameters
    embed = p["out_proj.weight"].shape[0]
    kdim, vdim = (p[f"{x}_proj_weight"].shape[1] if f"{x}_proj_weight" in p else embed for x in "kv")
    for batch_first, heads, zero_attn in itertools.product((True, False), _divisors(embed), (False, True)):
        module = nn.MultiheadAttention(embed, heads, bias="in_proj_bias" in p, add_bias_kv="bias_k" in p,
                                       add_zero_attn=zero_attn, kdim=kdim, vdim=vdim, batch_first=batch_first, device="meta")
        for call in _attention_calls(region, not batch_first):
            yield module, call


def _encoder_calls(region: Region, mask_name: str, tokens_first: bool) -> Iterator[Call]:
    """Calls of an encoder (layer): one sequence, masks as :func:`_mask_roles` places them; ``is_causal``
    without a mask gets the causal one (the mask then never reaches the graph: PyTorch drops it)."""
    sequences = _sequences(region)
    if len(sequences) != 1:
        return
    for masks, causal in itertools.product(_mask_roles(region, (mask_name, "src_key_padding_mask")), (False, True)):
        def call(a: list[Any], c: list[Tensor], masks: dict[str, tuple[str, int]] = masks, causal: bool = causal
                 ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            x = a[sequences[0]]
            kwargs: dict[str, Any] = {"is_causal": causal, **{name: _pick(a, c, source) for name, source in masks.items()}}
            if causal and mask_name not in kwargs:
                kwargs[mask_name] = nn.Transformer.generate_square_subsequent_mask(_tokens(x, tokens_first))
            return (x,), kwargs

        yield call


def _encoder_layers(p: dict[str, Tensor], prefix: str) -> Iterator[nn.TransformerEncoderLayer]:
    """Encoder layers that fit the parameters under ``prefix``: heads, norm placement, activation, batch order."""
    model, feed_forward = p[f"{prefix}linear1.weight"].shape[1], p[f"{prefix}linear1.weight"].shape[0]
    activations: list[Any] = ["relu", "gelu", nn.GELU(approximate="tanh")]
    for batch_first, heads, norm_first, activation in itertools.product((True, False), _divisors(model), (False, True), activations):
        yield nn.TransformerEncoderLayer(model, heads, feed_forward, dropout=0.0, activation=activation, batch_first=batch_first,
                                         norm_first=norm_first, bias=f"{prefix}linear1.bias" in p, device="meta")


def _transformer_encoder_layer(region: Region) -> Iterator[tuple[nn.Module, Call]]:
    for layer in _encoder_layers(region.parameters, ""):
        for call in _encoder_calls(region, "src_mask", not layer.self_attn.batch_first):
            yield layer, call


def _transformer_encoder(region: Region) -> Iterator[tuple[nn.Module, Call]]:
    p = region.parameters
    layers = 1 + max(int(name.split(".")[1]) for name in p if name.startswith("layers."))
    model = p["layers.0.linear1.weight"].shape[1]
    for layer in _encoder_layers(p, "layers.0."):
        norm = nn.LayerNorm(model, elementwise_affine="norm.weight" in p, bias="norm.bias" in p, device="meta") \
            if "norm" in region.norm_eps else None
        encoder = nn.TransformerEncoder(layer, layers, norm=norm, enable_nested_tensor=False)
        for call in _encoder_calls(region, "mask", not layer.self_attn.batch_first):
            yield encoder, call


def _recurrent(region: Region) -> Iterator[tuple[nn.Module, Call]]:
    p, kind = region.parameters, region.kind
    layers = 1 + max(int(name.rsplit("_l", 1)[1].split("_")[0]) for name in p)
    proj = p["weight_hr_l0"].shape[0] if "weight_hr_l0" in p else 0
    hidden = p["weight_hr_l0"].shape[1] if proj else p["weight_hh_l0"].shape[1]
    options: dict[str, Any] = {"bias": "bias_ih_l0" in p, "bidirectional": any(n.endswith("_reverse") for n in p),
                               "device": "meta"}
    if proj:
        options["proj_size"] = proj
    for batch_first, nonlinearity in itertools.product((True, False), ("tanh", "relu") if kind is nn.RNN else (None,)):
        if nonlinearity:
            options["nonlinearity"] = nonlinearity
        module = kind(p["weight_ih_l0"].shape[1], hidden, layers, batch_first=batch_first, **options)

        def call(a: list[Any], c: list[Tensor]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            states = None if len(a) == 1 else a[1] if len(a) == 2 else tuple(a[1:])  # (x), (x, h0), (x, (h0, c0))
            return ((a[0],) if states is None else (a[0], states)), {}

        if not region.constants and len(region.activations) <= 3:
            yield module, call


LIFTABLE: dict[str, tuple[type[nn.Module], Callable[[Region], Iterator[tuple[nn.Module, Call]]]]] = {
    _type_name(kind): (kind, candidates) for kind, candidates in (
        (nn.MultiheadAttention, _multihead_attention),
        (nn.TransformerEncoderLayer, _transformer_encoder_layer),
        (nn.TransformerEncoder, _transformer_encoder),
        (nn.LSTM, _recurrent), (nn.GRU, _recurrent), (nn.RNN, _recurrent),
    )
}
"""The modules lifted back, by their type's qualified name, with the candidate configurations of a call."""

_ENCODER = "batch_first=True, relu or gelu feed-forward, LayerNorm, a constant or causal mask"
REQUIREMENTS: dict[type[nn.Module], str] = {
    nn.MultiheadAttention: "batch_first=True, a constant or causal attn_mask",
    nn.TransformerEncoderLayer: _ENCODER, nn.TransformerEncoder: _ENCODER,
    nn.LSTM: "batch_first=True, zero initial states", nn.GRU: "batch_first=True, zero initial states",
    nn.RNN: "batch_first=True, zero initial states",
}
"""What rramc maps of each liftable module, in words, for the message about a call it cannot lift."""


# --- finding and identifying calls --------------------------------------------------------------

def _regions(gm: torch.fx.GraphModule) -> list[Region]:
    """One region per call of a liftable module (the outermost, where they nest), in graph order."""
    regions: dict[str, Region] = {}
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        for key, (path, kind) in (node.meta.get("nn_module_stack") or {}).items():
            if _type_name(kind) in LIFTABLE:
                regions.setdefault(key, Region(str(path), LIFTABLE[_type_name(kind)][0])).nodes.append(node)
                break
    return list(regions.values())


def _holds_tensors(value: Any) -> bool:
    return isinstance(value, Tensor) or (isinstance(value, (tuple, list)) and any(isinstance(v, Tensor) for v in value))


def _describe_inputs(gm: torch.fx.GraphModule, region: Region, values: dict[torch.fx.Node, Any],
                     computed: set[torch.fx.Node]) -> bool:
    """Sort a region's inputs into parameters, activations and constants, and find its outputs.

    Sizes computed in the call (a dynamic batch's) stay in the graph, for the code around it may use
    them; False if one is computed from the call's own tensors (then the call cannot be lifted).
    """
    sizes = [node for node in region.nodes if not _holds_tensors(values.get(node))]
    region.nodes = [node for node in region.nodes if _holds_tensors(values.get(node))]
    members = set(region.nodes)
    if any(operand in members for size in sizes for operand in size.all_input_nodes):
        return False
    for node in region.nodes:
        for operand in node.all_input_nodes:
            if operand in members or operand in region.activations or operand in region.constants:
                continue
            if operand.op == "get_attr" and str(operand.target).startswith(f"{region.path}."):
                continue  # the module's own parameter
            if isinstance(values.get(operand), Tensor) and operand in computed:
                region.activations.append(operand)
                region.activation_ranks.append(values[operand].dim())
            elif isinstance(values.get(operand), Tensor):
                region.constants.append(operand)
        if any(user not in members for user in node.users):
            region.outputs.append(node)
        if node.target in (aten.layer_norm.default, aten.native_layer_norm.default):
            inner = str(list(node.meta["nn_module_stack"].values())[-1][0])
            eps = node.args[4] if len(node.args) > 4 else node.kwargs.get("eps", 1e-5)
            region.norm_eps[inner[len(region.path) + 1:]] = float(eps)
    region.parameters = dict(gm.get_submodule(region.path).named_parameters(remove_duplicate=False))
    return True


def _computed_from_inputs(gm: torch.fx.GraphModule, values: dict[torch.fx.Node, Any]) -> set[torch.fx.Node]:
    """Nodes whose tensor values depend on the network's input (sizes alone do not count)."""
    computed: set[torch.fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder" or (isinstance(values.get(node), Tensor) and computed & set(node.all_input_nodes)):
            computed.add(node)
    return computed


def _with_parameters(module: nn.Module, parameters: dict[str, Tensor]) -> nn.Module | None:
    """``module`` (built on the meta device) holding exactly ``parameters``; None if their names differ."""
    if set(dict(module.named_parameters())) != set(parameters):
        return None
    for name, tensor in parameters.items():
        owner, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(owner), leaf,
                tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor, requires_grad=False))
    return module


def _leaves(result: Any, path: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], Tensor]]:
    if isinstance(result, Tensor):
        yield path, result
    elif isinstance(result, (tuple, list)):
        for i, item in enumerate(result):
            yield from _leaves(item, (*path, i))


def _matches(got: Tensor, expected: Tensor) -> bool:
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return got.shape == expected.shape and got.dtype == expected.dtype and \
        bool(torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0)))


def _identify(region: Region, values: dict[torch.fx.Node, Any]) -> Lift | None:
    """The first candidate configuration whose call reproduces every output of the region."""
    _, candidates = LIFTABLE[_type_name(region.kind)]
    prepared: nn.Module | None = None
    for module, call in candidates(region):
        if module is not prepared:  # a new configuration: its LayerNorms' eps and the region's parameters
            prepared = module
            for name, sub in module.named_modules():
                if isinstance(sub, nn.LayerNorm) and name in region.norm_eps:
                    sub.eps = region.norm_eps[name]
            if _with_parameters(module, region.parameters) is None:
                return None  # every candidate has the same parameters: this region is not a call of this module
        args, kwargs = call([values[a] for a in region.activations], [values[c] for c in region.constants])
        try:
            with torch.no_grad():
                leaves = list(_leaves(module.eval()(*args, **kwargs)))
        except Exception:  # this configuration does not accept these inputs; try the next
            continue
        paths: dict[torch.fx.Node, tuple[int, ...]] = {}
        for output in region.outputs:
            found = next((path for path, leaf in leaves if _matches(leaf, values[output])), None)
            if found is None:
                break
            paths[output] = found
        else:
            return Lift(module, call, paths)
    return None


# --- rewriting ---------------------------------------------------------------------------------

def _random_inputs(gm: torch.fx.GraphModule) -> list[Tensor] | None:
    """Inputs of the shapes shape propagation recorded; random, so no configuration matches by accident."""
    generator = torch.Generator().manual_seed(0)
    inputs = []
    for node in gm.graph.find_nodes(op="placeholder"):
        meta = node.meta.get("tensor_meta")
        if meta is None or not getattr(meta, "dtype", None) or not meta.dtype.is_floating_point:
            return None
        inputs.append(torch.randn(tuple(meta.shape), generator=generator, dtype=meta.dtype))
    return inputs


def _values(gm: torch.fx.GraphModule, inputs: list[Tensor]) -> dict[torch.fx.Node, Any]:
    interpreter = torch.fx.Interpreter(gm, garbage_collect_values=False)
    with torch.no_grad():
        interpreter.run(*inputs)
    return dict(interpreter.env)


def _rewrite(gm: torch.fx.GraphModule, lifts: dict[int, tuple[Region, Lift]], values: dict[torch.fx.Node, Any]) -> torch.fx.GraphModule:
    """A new GraphModule with each lifted region one ``call_module`` node; ``gm`` is left as it was."""
    pending = dict(lifts)
    members = {node: key for key, (region, _) in lifts.items() for node in region.nodes}
    needed = {a for region, _ in lifts.values() for a in region.activations}
    unused: set[torch.fx.Node] = set()  # what only fed the lifted regions (their masks' arithmetic, sizes)
    for node in reversed(gm.graph.nodes):
        if node.op in ("call_function", "get_attr") and node not in members and node not in needed and node.users \
                and all(u in members or u in unused for u in node.users):
            unused.add(node)
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    attributes: dict[str, Any] = {}
    lifted_paths = tuple(f"{region.path}." for region, _ in lifts.values())

    def constant(tensor: Tensor) -> torch.fx.Node:
        name = f"_lifted_constant_{len([k for k in attributes if k.startswith('_lifted_constant_')])}"
        attributes[name] = tensor
        return graph.get_attr(name)

    def emit(key: int) -> None:
        region, lift = pending.pop(key)
        for operand in region.activations:
            if operand in members and members[operand] in pending:  # fed by another lifted call
                emit(members[operand])
        args, kwargs = lift.call([env[a] for a in region.activations], [values[c] for c in region.constants])
        args, kwargs = torch.fx.node.map_aggregate((args, kwargs), lambda v: constant(v) if isinstance(v, Tensor) else v)
        attributes[region.path] = lift.module
        call = graph.call_module(region.path, tuple(args), dict(kwargs))
        for output, path in lift.paths.items():
            result = call
            for index in path:
                result = graph.call_function(operator.getitem, (result, index))
            result.meta.update({k: output.meta[k] for k in ("val", "tensor_meta") if k in output.meta})  # the same tensor
            env[output] = result

    for node in gm.graph.nodes:
        if node in members or node in unused:
            continue
        for operand in node.all_input_nodes:
            if operand in members and members[operand] in pending:
                emit(members[operand])
        source = node.args[0] if node.target is aten.select.int else None
        if source in members and _normalised_dim(node.args[1], values[source]) == 0:
            env[node] = graph.call_function(operator.getitem, (env[source], node.args[2]))  # select(t, 0, i) is t[i]
            env[node].meta = dict(node.meta)
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
        if node.op in ("get_attr", "call_module") and not str(node.target).startswith(lifted_paths):
            attributes[str(node.target)] = operator.attrgetter(str(node.target))(gm)
    return torch.fx.GraphModule(attributes, graph, type(gm).__name__)


def _normalised_dim(dim: int, value: Any) -> int | None:
    return dim % value.dim() if isinstance(value, Tensor) and value.dim() else None


def lift_module_calls(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, dict[str, str]]:
    """``gm`` with every identified call of a sequence module as one ``call_module`` node, its shapes
    propagated (``gm`` itself when it has none: a torch.fx trace, a network without them), and why
    each call left as it was is not mapped, by module path."""
    regions = _regions(gm)
    inputs = _random_inputs(gm) if regions else None
    if not regions or inputs is None:
        return gm, {}
    try:
        values = _values(gm, inputs)
    except Exception:  # the graph does not run on random inputs (asserts on values): its ATen ops are converted as they are
        return gm, {}
    computed = _computed_from_inputs(gm, values)
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    lifts: dict[int, tuple[Region, Lift]] = {}
    unrecognised: dict[str, str] = {}
    for key, region in enumerate(regions):
        if not _describe_inputs(gm, region, values, computed) or not region.outputs:
            continue  # sizes computed from its own tensors, or no result used
        first_use = min(order[user] for output in region.outputs for user in output.users if user not in region.nodes)
        lift = None if any(order[a] > first_use for a in region.activations) else _identify(region, values)
        if lift is None:
            unrecognised[region.path] = (f"this exported call matches no {region.kind.__name__} that rramc maps "
                                         f"({REQUIREMENTS[region.kind]}); compile the nn.Module itself (rramc traces it "
                                         "with torch.fx) to learn which setting is not supported")
        else:
            lifts[key] = (region, lift)
    if not lifts:
        return gm, unrecognised
    lifted = _rewrite(gm, lifts, values)
    ShapeProp(lifted).propagate(*inputs)
    return lifted, unrecognised
