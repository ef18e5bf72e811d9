"""Read IR text (the form :func:`rramc.ir.print_graph` writes) back into a verified :class:`Graph`.

Lines starting with ``//`` are comments (golden test files keep their instructions there).
Errors name the line and column and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from typing import Any

import torch

from rramc.errors import VerifyError
from rramc.ir.attributes import ATTRIBUTES
from rramc.ir.graph import Graph
from rramc.ir.ops import OPS, Op
from rramc.ir.printer import DTYPE_NAMES

_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
_TOKEN = re.compile(r"""
    (?P<space>[ \t]+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>-?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|inf\b))
  | (?P<value>%[\w.\-]+)
  | (?P<attr>\#[A-Za-z_]\w*)
  | (?P<name>[A-Za-z_][\w.]*)
  | (?P<punct>[()\[\]{}<>,=:])
""", re.VERBOSE)


class IRParseError(VerifyError):
    """IR text that does not parse; the message names the line and column."""


class _Cursor:
    def __init__(self, text: str, line: int) -> None:
        self.text, self.line, self.pos = text, line, 0
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if not match:
                raise self.error(f"unexpected character {text[pos]!r}", pos)
            if match.lastgroup != "space":
                self.tokens.append((match.lastgroup or "", match.group(), pos))
            pos = match.end()
        self.index = 0
        self.last = 0  # column of the token taken last: errors about it point there

    def error(self, problem: str, column: int | None = None) -> IRParseError:
        if column is None:
            column = self.tokens[self.index][2] if self.index < len(self.tokens) else len(self.text)
        return IRParseError(f"IR text line {self.line}, column {column + 1}: {problem}\n  {self.text}\n  {' ' * column}^")

    def peek(self) -> tuple[str, str]:
        if self.index >= len(self.tokens):
            return ("end", "")
        kind, text, _ = self.tokens[self.index]
        return kind, text

    def take(self, kind: str | None = None, text: str | None = None) -> str:
        got_kind, got_text = self.peek()
        if (kind is not None and got_kind != kind) or (text is not None and got_text != text) or got_kind == "end":
            wanted = repr(text) if text is not None else (kind or "a token")
            raise self.error(f"expected {wanted}, found {got_text!r}" if got_text else f"expected {wanted}, found the end of the line")
        self.last = self.tokens[self.index][2]
        self.index += 1
        return got_text

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text:
            self.take()
            return True
        return False

    def at_last(self, problem: str) -> IRParseError:
        """An error about the token just taken."""
        return self.error(problem, self.last)

    def done(self) -> bool:
        return self.index >= len(self.tokens)


def _number(text: str) -> int | float:
    if text in ("inf", "-inf"):
        return float(text)
    return float(text) if any(c in text for c in ".eE") else int(text)


def _value(cur: _Cursor) -> Any:
    kind, text = cur.peek()
    if kind == "number":
        cur.take()
        return _number(text)
    if kind == "string":
        cur.take()
        return json.loads(text)
    if kind == "attr":
        return _attribute(cur)
    if kind == "name":
        cur.take()
        if text in ("none", "true", "false"):
            return {"none": None, "true": True, "false": False}[text]
        if text == "nan":
            return math.nan
        if text in _DTYPES:
            return _tensor(cur, _DTYPES[text])
        raise cur.at_last(f"unknown value {text!r}")
    if text == "(":
        cur.take()
        items = _sequence(cur, ")")
        return tuple(items)
    if text == "[":
        cur.take()
        return _sequence(cur, "]")
    if text == "{":
        cur.take()
        mapping: dict[str, Any] = {}
        while not cur.accept("}"):
            key = json.loads(cur.take("string"))
            cur.take(text=":")
            mapping[key] = _value(cur)
            if not cur.accept(","):
                cur.take(text="}")
                break
        return mapping
    raise cur.error(f"expected a value, found {text!r}" if text else "expected a value, found the end of the line")


def _sequence(cur: _Cursor, close: str) -> list[Any]:
    items: list[Any] = []
    while not cur.accept(close):
        items.append(_value(cur))
        if not cur.accept(","):
            cur.take(text=close)
            break
    return items


def _tensor(cur: _Cursor, dtype: torch.dtype) -> torch.Tensor:
    start = cur.last
    cur.take(text="[")
    shape = [int(s) for s in _sequence(cur, "]")]
    if cur.peek()[1] != "(":
        raise cur.error(f"the values of this tensor were elided ({DTYPE_NAMES[dtype]}{shape}); "
                        "print the graph with every value (print_graph(graph) or graph.to_text()) to parse it back")
    cur.take(text="(")
    values = _sequence(cur, ")")
    count = math.prod(shape)
    if len(values) != count:
        raise cur.error(f"a tensor of shape {shape} needs {count} values, got {len(values)}", start)
    if dtype == torch.bool:
        return torch.tensor(values, dtype=torch.bool).reshape(shape)
    if dtype.is_floating_point:
        return torch.tensor([float(v) for v in values], dtype=torch.float64).to(dtype).reshape(shape)
    return torch.tensor([int(v) for v in values], dtype=dtype).reshape(shape)


def _attribute(cur: _Cursor) -> Any:
    kind = cur.take("attr")[1:]
    start = cur.last
    cls = ATTRIBUTES.get(kind)
    if cls is None:
        raise cur.at_last(f"unknown attribute #{kind}; known: {', '.join(sorted(ATTRIBUTES))}")
    fields, columns = _keywords(cur, "<", ">")
    try:
        return cls(**_typed(cls, fields, cur, columns))
    except TypeError as exc:
        raise cur.error(f"#{kind}: {exc}", start) from None


def _keywords(cur: _Cursor, open_: str, close: str) -> tuple[dict[str, Any], dict[str, int]]:
    """``key=value`` pairs between ``open_`` and ``close``, and the column of every key."""
    cur.take(text=open_)
    values: dict[str, Any] = {}
    columns: dict[str, int] = {}
    while not cur.accept(close):
        key = cur.take("name")
        if key in values:
            raise cur.at_last(f"{key} is given twice")
        columns[key] = cur.last
        cur.take(text="=")
        values[key] = _value(cur)
        if not cur.accept(","):
            cur.take(text=close)
            break
    return values, columns


def _typed(cls: type, values: dict[str, Any], cur: _Cursor, columns: dict[str, int]) -> dict[str, Any]:
    """Field values converted to the declared types where text is ambiguous (int vs float); an op's are the
    names its text spells (:meth:`~rramc.ir.ops.Op.attribute_types`)."""
    if issubclass(cls, Op):
        hints = cls.attribute_types()
    else:
        all_hints = typing.get_type_hints(cls)
        hints = {f.name: all_hints[f.name] for f in dataclasses.fields(cls)}
    names = set(hints)
    unknown = sorted(set(values) - names, key=lambda k: columns[k])
    if unknown:
        raise cur.error(f"{getattr(cls, 'kind', cls.__name__)} has no field(s) {', '.join(unknown)}; its fields: "
                        f"{', '.join(sorted(names))}", columns[unknown[0]])
    converted = {}
    for key, value in values.items():
        args = typing.get_args(hints[key])
        floaty = hints[key] is float or float in args or any(float in typing.get_args(a) for a in args)
        if floaty and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(value, tuple) and floaty:
            value = tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
        converted[key] = value
    return converted


def parse_graph(text: str) -> Graph:
    """Build a graph from IR text and verify it."""
    lines = [(i + 1, line.strip()) for i, line in enumerate(text.splitlines())]
    lines = [(n, line) for n, line in lines if line and not line.startswith("//")]
    if not lines or lines[0][1] != "graph {":
        line_no, line = lines[0] if lines else (1, "")
        raise IRParseError(f"IR text line {line_no}: expected 'graph {{', found {line!r}")
    if lines[-1][1] != "}":
        raise IRParseError(f"IR text line {lines[-1][0]}: expected the closing '}}' of the graph")
    graph = Graph()
    raw = text.splitlines()
    for line_no, _ in lines[1:-1]:
        _parse_node(graph, raw[line_no - 1].rstrip(), line_no)  # columns count from the start of the file's line
    graph.verify(after_pass="parsing IR text")
    return graph


def _parse_node(graph: Graph, line: str, line_no: int) -> None:
    code, meta = _split_comment(line, line_no)
    cur = _Cursor(code, line_no)
    name = cur.take("value")[1:]
    name_column = cur.last
    cur.take(text="=")
    kind = cur.take("name")
    cls = OPS.get(kind)
    if cls is None:
        raise cur.at_last(f"unknown op '{kind}'; known: {', '.join(sorted(OPS))}")
    kind_column = cur.last
    cur.take(text="(")
    operands: list[tuple[str, int]] = []  # (name, column)
    while not cur.accept(")"):
        operands.append((cur.take("value")[1:], cur.last))
        if not cur.accept(","):
            cur.take(text=")")
            break
    attrs, columns = _keywords(cur, "{", "}") if cur.peek()[1] == "{" else ({}, {})
    cur.take(text=":")
    cur.take(text="[")
    if cur.take("name") != "N":
        raise cur.error("a shape starts with the batch dimension N")
    shape: list[int] = []
    while cur.accept(","):
        shape.append(int(cur.take("number")))
    cur.take(text="]")
    if not cur.done():
        raise cur.error("unexpected text after the shape")
    try:
        op = cls.from_attributes(_typed(cls, attrs, cur, columns))
    except TypeError as exc:
        raise cur.error(f"{kind}: {exc}", kind_column) from None
    if name in graph:
        raise cur.error(f"%{name} is defined twice", name_column)
    missing = [(o, column) for o, column in operands if o not in graph]
    if missing:
        raise cur.error(f"%{name} uses {', '.join('%' + m for m, _ in missing)} before it is defined", missing[0][1])
    added = graph.add(name, op, [o for o, _ in operands], shape=tuple(shape), meta=meta)
    assert added.name == name


def _split_comment(line: str, line_no: int) -> tuple[str, dict[str, Any]]:
    """The node's code and its meta from the ``# source {json}`` comment (outside strings)."""
    in_string = escaped = False
    for i, c in enumerate(line):
        if escaped:
            escaped = False
        elif in_string:
            escaped, in_string = c == "\\", c != '"'
        elif c == '"':
            in_string = True
        elif c == "#" and (i + 1 == len(line) or line[i + 1] in " \t"):
            return line[:i].rstrip(), _parse_meta(line[i + 1 :].strip(), line_no)
    return line, {}


def _parse_meta(text: str, line_no: int) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    decoder = json.JSONDecoder()
    try:
        if text and not text.startswith("{"):
            if text.startswith('"'):
                source, end = decoder.raw_decode(text)
            else:
                end = len(text.split(maxsplit=1)[0])
                source = text[:end]
            meta["source"] = source
            text = text[end:].strip()
        if text:
            rest, end = decoder.raw_decode(text)
            if not isinstance(rest, dict) or text[end:].strip():
                raise ValueError("expected one JSON object")
            meta.update(rest)
    except ValueError as exc:
        raise IRParseError(f"IR text line {line_no}: the comment after '#' must be a layer name and/or a JSON object ({exc})") from None
    return meta
