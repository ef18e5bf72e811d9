"""Text form of the IR, for humans and for tests that compare a pass's effect."""

from __future__ import annotations

from typing import Any

import torch

from rramc.ir.graph import Graph, Node

_DTYPE_NAMES = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.int64: "i64"}


def format_value(value: Any) -> str:
    """Tensors print as their type and shape (``f32[128,64]``), everything else as Python does."""
    if isinstance(value, torch.Tensor):
        dtype = _DTYPE_NAMES.get(value.dtype, str(value.dtype).removeprefix("torch."))
        return f"{dtype}[{','.join(map(str, value.shape))}]"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        inner = ",".join(format_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def format_shape(shape: tuple[int, ...]) -> str:
    return "[N," + ",".join(map(str, shape)) + "]"


def format_node(node: Node) -> str:
    attrs = {k: v for k, v in node.op.attributes().items() if v is not None}
    attr_text = ""
    if attrs:
        attr_text = " {" + ", ".join(f"{k}={format_value(v)}" for k, v in attrs.items()) + "}"
    operands = ", ".join(f"%{i}" for i in node.inputs)
    line = f"%{node.name} = {node.op.kind}({operands}){attr_text} : {format_shape(node.shape)}"
    if "source" in node.meta and node.meta["source"] != node.name:
        line += f"  # {node.meta['source']}"
    return line


def print_graph(graph: Graph) -> str:
    """The whole graph as text, one node per line, inputs in the header."""
    header = ", ".join(f"%{n.name}: {format_shape(n.shape)}" for n in graph.inputs)
    body = [f"  {format_node(n)}" for n in graph if n.op.kind != "input" and n.op.kind != "output"]
    return "\n".join([f"graph({header}) {{", *body, f"  return %{graph.output.inputs[0]}", "}"])
