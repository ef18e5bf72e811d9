"""canonicalize: bring an imported graph to the normal form the mapping passes expect."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rramc.ir import AdaptiveAvgPool2d, AvgPool2d, BatchNorm, ChannelAffine, Clamp, Conv2d, Graph, Linear, ReLU, Reshape
from rramc.pipeline import CompileContext, Pass, option


def _shares_arrays(graph: Graph, name: str) -> bool:
    """Whether layer ``name`` reads arrays another layer reads too (its weights cannot change alone)."""
    return graph.node(name).op.shares is not None or any(getattr(n.op, "shares", None) == name for n in graph)


@dataclass(frozen=True)
class Canonicalize(Pass):
    """Fold BatchNorm into the preceding layer and normalise activations, pooling and reshapes.

    Needs: any verified graph. Guarantees, without changing what the graph computes (up to float
    rounding): no ``batch_norm`` (folded into the ``linear``/``conv2d`` that feeds it alone, else
    a digital ``channel_affine``, also where the layer shares its arrays with another); ``relu`` followed by ``clamp`` becomes one clipped ReLU
    ``clamp(0, hi)``; ``adaptive_avg_pool2d`` with an exact window becomes ``avg_pool2d``;
    chains of reshapes become one, no-op reshapes and dead nodes are removed.
    """

    name = "canonicalize"
    fold_batch_norm: bool = option("fold BatchNorm into the preceding linear/conv2d", True)

    def run(self, graph: Graph, ctx: CompileContext) -> Graph:
        for node in graph.nodes_of(BatchNorm):
            self._lower_batch_norm(graph, node.name)
        for node in graph.nodes_of(Clamp):
            self._merge_relu_clamp(graph, node.name)
        for node in graph.nodes_of(AdaptiveAvgPool2d):
            self._exact_adaptive_pool(graph, node.name)
        for node in graph.nodes_of(Reshape):
            self._simplify_reshape(graph, node.name)
        graph.remove_dead()
        return graph

    def _lower_batch_norm(self, graph: Graph, name: str) -> None:
        node = graph.node(name)
        assert isinstance(node.op, BatchNorm)
        scale, shift = node.op.scale_and_shift()
        producer = graph.node(node.inputs[0])
        if self.fold_batch_norm and isinstance(producer.op, (Linear, Conv2d)) and len(graph.users(producer.name)) == 1 \
                and not _shares_arrays(graph, producer.name):
            w, b = producer.op.weight, producer.op.bias
            folded_w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
            folded_b = (b if b is not None else torch.zeros_like(shift)) * scale + shift
            producer.op = producer.op.replace(weight=folded_w, bias=folded_b)
            producer.meta["folded"] = [*producer.meta.get("folded", []), node.source]
            graph.replace_uses(name, producer.name)
            graph.remove(name)
        else:
            node.op = ChannelAffine(scale=scale, shift=shift)

    @staticmethod
    def _merge_relu_clamp(graph: Graph, name: str) -> None:
        node = graph.node(name)
        assert isinstance(node.op, Clamp)
        producer = graph.node(node.inputs[0])
        if isinstance(producer.op, ReLU) and len(graph.users(producer.name)) == 1:
            low = 0.0 if node.op.low is None else max(0.0, node.op.low)
            node.op = Clamp(low=low, high=node.op.high)
            node.inputs = list(producer.inputs)
            graph.remove(producer.name)

    @staticmethod
    def _exact_adaptive_pool(graph: Graph, name: str) -> None:
        node = graph.node(name)
        assert isinstance(node.op, AdaptiveAvgPool2d)
        _, h, w = graph.node(node.inputs[0]).shape
        oh, ow = node.op.output_size
        if h % oh == 0 and w % ow == 0:
            node.op = AvgPool2d(kernel_size=(h // oh, w // ow), stride=(h // oh, w // ow))

    @staticmethod
    def _simplify_reshape(graph: Graph, name: str) -> None:
        node = graph.node(name)
        producer = graph.node(node.inputs[0])
        if isinstance(producer.op, Reshape):
            node.inputs = list(producer.inputs)
        if graph.node(node.inputs[0]).shape == node.shape:
            graph.replace_uses(name, node.inputs[0])
