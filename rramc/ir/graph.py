"""The IR graph: named nodes in topological order, each an op applied to earlier nodes."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch

from rramc.errors import VerifyError
from rramc.ir.ops import CrossbarOp, Input, Op, Output, Shape


@dataclass(eq=False)
class Node:
    """One value of the program: ``op`` applied to the nodes named in ``inputs``.

    ``shape`` is the per-sample shape of the result (the batch dimension is implicit). ``meta``
    holds JSON-able facts that passes and reports use and that survive copies and files: the
    PyTorch layer it came from (``source``, ``module_type``), and whatever passes add.
    """

    name: str
    op: Op
    inputs: list[str]
    shape: Shape
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """The PyTorch layer this node came from, for messages."""
        return str(self.meta.get("source", self.name))


def _tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """The tensors a value holds (itself, or inside a tuple, a list or a dataclass: a typed attribute, an op, cell pairs)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors_in(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for member in dataclasses.fields(value):
            yield from _tensors_in(getattr(value, member.name))


class Graph:
    """A dataflow graph of :class:`Node` kept in topological order.

    Passes edit it in place through :meth:`add`, :meth:`replace_uses` and :meth:`remove`; the
    verifier (:meth:`verify`) checks after every pass that it is still well formed.
    """

    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}

    # --- reading -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes.values()))

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, name: str) -> bool:
        return name in self._nodes

    def node(self, name: str) -> Node:
        return self._nodes[name]

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self._nodes.values() if isinstance(n.op, Input)]

    @property
    def output(self) -> Node:
        outputs = [n for n in self._nodes.values() if isinstance(n.op, Output)]
        if len(outputs) != 1:
            raise VerifyError(f"the graph has {len(outputs)} output nodes, expected exactly one")
        return outputs[0]

    def users(self, name: str) -> list[Node]:
        return [n for n in self._nodes.values() if name in n.inputs]

    def nodes_of(self, *kinds: type[Op]) -> list[Node]:
        return [n for n in self._nodes.values() if isinstance(n.op, kinds)]

    # --- editing -------------------------------------------------------------------------------

    def unique_name(self, base: str) -> str:
        base = base.replace(".", "_") or "v"
        name, i = base, 1
        while name in self._nodes:
            name, i = f"{base}_{i}", i + 1
        return name

    def add(
        self,
        name: str,
        op: Op,
        inputs: list[str] | tuple[str, ...] = (),
        *,
        shape: Shape | None = None,
        meta: dict[str, Any] | None = None,
        after: str | None = None,
    ) -> Node:
        """Add a node (at the end, or right after ``after``); its shape is inferred if not given."""
        name = self.unique_name(name)
        missing = [i for i in inputs if i not in self._nodes]
        if missing:
            raise VerifyError(f"node %{name} uses undefined values {missing}")
        if shape is None:
            shape = tuple(op.infer_shape([self._nodes[i].shape for i in inputs]))
        node = Node(name, op, list(inputs), tuple(int(s) for s in shape), dict(meta or {}))
        if after is None:
            self._nodes[name] = node
        else:
            items = list(self._nodes.items())
            at = [k for k, _ in items].index(after) + 1
            self._nodes = dict(items[:at] + [(name, node)] + items[at:])
        return node

    def replace_uses(self, old: str, new: str) -> None:
        """Make every user of ``old`` use ``new`` instead."""
        for node in self._nodes.values():
            if node.name != new:
                node.inputs = [new if i == old else i for i in node.inputs]

    def remove(self, name: str) -> None:
        users = [u.name for u in self.users(name)]
        if users:
            raise VerifyError(f"cannot remove %{name}: still used by {users}")
        del self._nodes[name]

    def remove_dead(self) -> list[str]:
        """Remove nodes the output does not depend on; return their names."""
        live = nx.ancestors(self.to_networkx(), self.output.name) | {self.output.name}
        dead = [n for n in self._nodes if n not in live and not isinstance(self._nodes[n].op, Input)]
        for name in dead:
            del self._nodes[name]
        return dead

    def copy(self, *, share_tensors: bool = False) -> Graph:
        """A deep copy: ops and metadata are not shared with this graph; nor are tensors, unless
        ``share_tensors`` (passes replace an op's tensors, never change them in place: sharing them is
        safe for the graph and saves a copy of every weight and conductance)."""
        if not share_tensors:
            return copy.deepcopy(self)
        memo: dict[int, Any] = {}
        for node in self:
            for tensor in _tensors_in(node.op):
                memo[id(tensor)] = tensor
        return copy.deepcopy(self, memo)

    def own_copies(self, of: Iterable[torch.Tensor]) -> None:
        """Give every op its own copy of each tensor that shares storage with one of ``of`` (a model's
        parameters, which the importer reads without copying); a tensor several ops hold stays one."""
        storages = {t.untyped_storage().data_ptr() for t in of if t.numel()}
        copies: dict[int, torch.Tensor] = {}

        def owned(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                if value.numel() == 0 or value.untyped_storage().data_ptr() not in storages:
                    return value
                if id(value) not in copies:
                    copies[id(value)] = value.clone()
                return copies[id(value)]
            if isinstance(value, (tuple, list)):
                items = [owned(item) for item in value]
                return value if all(a is b for a, b in zip(items, value)) else type(value)(items)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                changes = {f.name: new for f in dataclasses.fields(value) if f.init
                           for new in [owned(getattr(value, f.name))] if new is not getattr(value, f.name)}
                return dataclasses.replace(value, **changes) if changes else value
            return value

        for node in self:
            node.op = owned(node.op)

    # --- algorithms ----------------------------------------------------------------------------

    def to_networkx(self) -> nx.DiGraph:
        """The dataflow as a networkx graph; node attribute ``node`` holds the :class:`Node`."""
        g = nx.DiGraph()
        for node in self._nodes.values():
            g.add_node(node.name, node=node)
            for i in node.inputs:
                g.add_edge(i, node.name)
        return g

    def to_dot(self) -> str:
        """Graphviz DOT text of the dataflow, one box per node with its op and shape."""
        lines = ["digraph rramc {", "  node [shape=box, fontname=monospace];"]
        for node in self._nodes.values():
            shape = "x".join(map(str, node.shape))
            lines.append(f'  "{node.name}" [label="{node.name}\\n{node.op.kind} [{shape}]"];')
            lines += [f'  "{i}" -> "{node.name}";' for i in node.inputs]
        return "\n".join(lines + ["}"])

    # --- checking ------------------------------------------------------------------------------

    def verify(self, *, after_pass: str | None = None) -> None:
        """Check every invariant of the IR; raise :class:`VerifyError` naming the node at fault."""
        where = f" after pass '{after_pass}'" if after_pass else ""
        seen: set[str] = set()
        for node in self._nodes.values():
            def fail(problem: str, node: Node = node) -> VerifyError:
                return VerifyError(
                    f"invalid IR{where}: %{node.name} = {node.op.kind} (from {node.source}): {problem}"
                )

            arity = node.op.arity
            if len(node.inputs) != arity if arity is not None else not node.inputs:
                raise fail(f"takes {arity if arity is not None else 'one or more'} operands, has {len(node.inputs)}")
            for i in node.inputs:
                if i not in seen:
                    raise fail(f"operand %{i} is {'undefined' if i not in self._nodes else 'defined after its use'}")
            if not node.shape or any(s < 1 for s in node.shape):
                raise fail(f"shape {list(node.shape)} is empty or has a non-positive dimension")
            operands = [self._nodes[i].shape for i in node.inputs]
            try:
                node.op.verify(operands)
                inferred = node.shape if isinstance(node.op, Input) else tuple(node.op.infer_shape(operands))
            except (ValueError, IndexError, TypeError) as exc:
                raise fail(str(exc)) from None
            if inferred != node.shape:
                raise fail(f"recorded shape {list(node.shape)} but the op computes {list(inferred)}")
            shares = getattr(node.op, "shares", None)
            if shares is not None:
                problem = self._sharing_problem(node, shares, seen)
                if problem:
                    raise fail(problem)
            seen.add(node.name)
        output = self.output
        if list(self._nodes)[-1] != output.name:
            raise VerifyError(f"invalid IR{where}: the output %{output.name} is not the last node")
        if not self.inputs:
            raise VerifyError(f"invalid IR{where}: the graph has no input")

    def _sharing_problem(self, node: Node, shares: str, seen: set[str]) -> str | None:
        """What is wrong with ``node`` reading the arrays of ``shares`` (None: nothing)."""
        owner = self._nodes.get(shares)
        if owner is None or shares not in seen:
            return f"shares the arrays of %{shares}, which is not an earlier node"
        op, other = node.op, owner.op
        if type(op) is not type(other) or getattr(other, "shares", None) is not None:
            return f"shares the arrays of %{shares}, which is not a {op.kind} with arrays of its own"
        if op.weight.shape != other.weight.shape or getattr(op, "groups", 1) != getattr(other, "groups", 1):
            return f"shares the arrays of %{shares} but its weight {list(op.weight.shape)} differs from {list(other.weight.shape)}"
        if isinstance(op, CrossbarOp):
            assert isinstance(other, CrossbarOp)
            layout = ("weight_encoding", "weight_slices", "slice_bits", "row_splits", "col_splits")
            if any(getattr(op, f) != getattr(other, f) for f in layout):
                return f"shares the arrays of %{shares} but lays them out differently ({', '.join(layout)})"
            if not op.cells.equal(other.cells):
                return f"shares the arrays of %{shares} but its conductances differ from theirs"
            for name in ("row_place", "col_place"):
                mine, theirs = getattr(op, name), getattr(other, name)
                if mine is not theirs and not (mine is not None and theirs is not None and torch.equal(mine, theirs)):
                    return f"shares the arrays of %{shares} but its {name} differs from theirs"
        return None

    # --- printing ------------------------------------------------------------------------------

    def __str__(self) -> str:
        """The IR text for people: tensors of more than 8 values show only their type and shape."""
        from rramc.ir.printer import print_graph

        return print_graph(self, max_elements=8)

    def to_text(self) -> str:
        """The complete IR text, every tensor value included: :meth:`parse` reads it back."""
        from rramc.ir.printer import print_graph

        return print_graph(self)

    @classmethod
    def parse(cls, text: str) -> Graph:
        """A verified graph from IR text written by :meth:`to_text` (or by hand)."""
        from rramc.ir.parser import parse_graph

        return parse_graph(text)

