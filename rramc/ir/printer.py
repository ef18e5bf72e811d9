"""Text form of the IR: one line per node, readable by people and by :func:`rramc.ir.parse_graph`.

::

    graph {
      %x = input() {value_range=(0.0, 1.0)} : [N,64]
      %fc1 = linear(%x) {weight=f32[48,64], bias=f32[48]} : [N,48]  # fc1
      %output = output(%fc1) : [N,48]
    }

Values: ``none``, ``true``/``false``, numbers (floats always with a ``.``, an exponent, ``nan`` or
``inf``), JSON strings, tuples ``(a, b)``, lists ``[a, b]``, dicts ``{"k": v}``, typed attributes
``#kind<field=value, ...>`` and tensors ``f32[2,3]`` followed by their values in row-major order,
``f32[2,3](0.1, 0.2, ...)``. ``print_graph(graph)`` writes every value, so printing, parsing and
printing again gives the same text; ``max_elements`` elides larger tensors (for people; such text
does not parse back). After ``#`` come the PyTorch layer the node came from (when it differs from
the node's name) and the rest of its ``meta`` as JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import torch

from rramc.ir.attributes import Attribute
from rramc.ir.graph import Graph, Node

DTYPE_NAMES = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16",
               torch.int64: "i64", torch.int32: "i32", torch.int8: "i8", torch.uint8: "u8", torch.bool: "bool"}
"""Tensor element types as the IR text writes them."""

_PLAIN_SOURCE = re.compile(r"[A-Za-z_][\w.\-]*\Z")


def format_scalar(value: float) -> str:
    """A Python float as text that reads back to the same float."""
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return repr(float(value))


def _format_elements(t: torch.Tensor) -> str:
    flat = t.detach().cpu().reshape(-1)
    if t.dtype == torch.bool:
        return ", ".join("true" if v else "false" for v in flat.tolist())
    if not t.is_floating_point():
        return ", ".join(str(int(v)) for v in flat.tolist())
    # numpy prints the shortest decimal that reads back to the same value of the tensor's own type
    array = flat.float().numpy() if t.dtype in (torch.float16, torch.bfloat16) else flat.numpy()
    return ", ".join(_float_text(v) for v in array)


def _float_text(v: np.floating) -> str:
    text = str(v)
    if text in ("nan", "inf", "-inf"):
        return text
    return text if any(c in text for c in ".en") else text + ".0"


def format_value(value: Any, max_elements: int | None = None) -> str:
    """One attribute value as IR text (tensors with their values unless larger than ``max_elements``)."""
    if isinstance(value, torch.Tensor):
        dtype = DTYPE_NAMES.get(value.dtype)
        if dtype is None:
            raise TypeError(f"tensors of type {value.dtype} have no IR text form")
        head = f"{dtype}[{','.join(map(str, value.shape))}]"
        if max_elements is not None and value.numel() > max_elements:
            return head
        return f"{head}({_format_elements(value)})"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_scalar(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        inner = ", ".join(format_value(v, max_elements) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v, max_elements) for v in value) + "]"
    if isinstance(value, dict):
        items = list(value.items())
        if max_elements is not None and len(items) > 4:  # people see which, not all of it (a whole target spec)
            return "{" + ", ".join(f"{json.dumps(str(k))}: {format_value(v, max_elements)}" for k, v in items[:1]) + ", …}"
        return "{" + ", ".join(f"{json.dumps(str(k))}: {format_value(v, max_elements)}" for k, v in items) + "}"
    if isinstance(value, Attribute):
        fields = ", ".join(f"{k}={format_value(v, max_elements)}" for k, v in value.fields().items())
        return f"#{value.kind}<{fields}>"
    raise TypeError(f"a {type(value).__name__} has no IR text form")


def format_shape(shape: tuple[int, ...]) -> str:
    return "[N" + "".join(f",{s}" for s in shape) + "]"


def format_node(node: Node, max_elements: int | None = None) -> str:
    attrs = {k: v for k, v in node.op.attributes().items() if v is not None}
    attr_text = ""
    if attrs:
        attr_text = " {" + ", ".join(f"{k}={format_value(v, max_elements)}" for k, v in attrs.items()) + "}"
    operands = ", ".join(f"%{i}" for i in node.inputs)
    line = f"%{node.name} = {node.op.kind}({operands}){attr_text} : {format_shape(node.shape)}"
    comment = []
    source = node.meta.get("source")
    if source is not None and source != node.name:
        comment.append(source if isinstance(source, str) and _PLAIN_SOURCE.match(source) else json.dumps(source))
    # People (elided tensors) see where a node came from; complete text keeps all of meta.
    rest = {k: v for k, v in node.meta.items() if k != "source"} if max_elements is None else {}
    if rest:
        comment.append(json.dumps(rest, sort_keys=True))
    if comment:
        line += "  # " + " ".join(comment)
    return line


def print_graph(graph: Graph, max_elements: int | None = None) -> str:
    """The whole graph as text, one node per line (every tensor value unless ``max_elements``)."""
    body = [f"  {format_node(n, max_elements)}" for n in graph]
    return "\n".join(["graph {", *body, "}"])
