"""The executable file: one safetensors file whose header carries a versioned JSON manifest.

Layout (format ``rramx``, version :data:`FORMAT_VERSION`): the safetensors header's metadata
holds ``rramx.manifest`` (target spec, graph nodes with their non-tensor attributes, user
metadata, how the reference weights are kept, the sha256 of every tensor, and where each
tensor's bytes lie) and ``rramx.manifest_sha256``; the tensors are the ops' tensor attributes,
keyed ``<node>.<attribute>``. Three kinds are stored compactly (:mod:`rramc.runtime.compact`):
an op's conductance pair as ``<node>.conductances.codes`` into ``<node>.conductances.codebook``
where that is smaller (exact), a program layer's weight (the chip's float reference; the network
as given keeps its own) as ``<node>.weight.fixed12`` and ``<node>.weight.exponents`` unless the
executable keeps exact weights, and a tensor that several ops hold (the same object) once,
under the key of its first holder. Nothing is pickled. A file that is truncated, altered, not
an rramc executable or from a newer format is refused with a message saying so.

What the checksums pin: the manifest (its sha256), and through it every entry of the safetensors
header: the set of tensor names (exactly the manifest's), each tensor's dtype, shape and bytes
(its sha256) and its ``data_offsets`` (``tensor_offsets``; files written before it was added
do not have it and need not: with every tensor's bytes pinned, offsets can only be permuted
among byte-identical tensors). The tensors cover the data section without gaps (safetensors
checks it), so every byte of it is pinned too. What is not pinned is the header's JSON text
itself: a header re-spaced, re-ordered or re-escaped that parses to the same value loads, as it
must (it means the same; a tool that rewrites the manifest rewrites the header JSON).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import struct
import tempfile
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Union

import safetensors.torch
import torch

from rramc.errors import ExecutableFormatError, RramcError
from rramc.hardware.target import Target
from rramc.ir import ATTRIBUTES, OPS, Attribute, Graph
from rramc.ir.cells import CellPairs, CodedPairs, decode_pairs
from rramc.runtime.compact import FIXED_ERROR, fix, unfix

FORMAT = "rramx"
FORMAT_VERSION = 3
"""3: conductance pairs coded into a codebook of their distinct pairs, layer weights in 12-bit fixed point
(unless exact), a tensor shared by several ops stored once; ``reference_weights`` says how weights are kept.
2: typed op attributes (input_range, trained_for, encodings); checksums cover dtype and shape.
1: input_scale/input_signed fields and the reconstruction record in meta (read and migrated)."""

REFERENCE_WEIGHTS = {
    "fixed12": f"12-bit fixed point per output (error {FIXED_ERROR})",
    "exact": "exact (as compiled)",
}
"""How an executable keeps the float weights its chip is compared with (``reference_weights``), described.
Files before format 3 keep them exactly."""

_FLOAT_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _sha256_tensor(t: torch.Tensor, version: int = FORMAT_VERSION) -> str:
    digest = hashlib.sha256()
    if version >= 2:  # a tensor re-typed or re-shaped with the same bytes must not pass
        digest.update(f"{t.dtype}{list(t.shape)}".encode())
    digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # the bytes, without a copy
    return digest.hexdigest()


class _TensorWriter:
    """The tensors of a file being written, and what the manifest records in place of each."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._written: dict[tuple[str, int, int], tuple[Any, Any]] = {}  # (how, ids) → (held objects, manifest entry)
        self._storages: set[int] = set()

    def _add(self, key: str, value: torch.Tensor) -> None:
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in self._storages:  # safetensors refuses two tensors on one storage (views of one tensor)
            tensor = tensor.clone()
        self._storages.add(tensor.untyped_storage().data_ptr())
        self.tensors[key] = tensor

    def _once(self, how: str, values: tuple[torch.Tensor, ...], write: Callable[[], Any]) -> Any:
        """``write()``'s manifest entry, or the one the same tensors (by identity) were written with already."""
        memo = (how, id(values[0]), id(values[-1]))
        if memo not in self._written:
            self._written[memo] = (values, write())  # holding the objects keeps their ids from being reused
        return self._written[memo][1]

    def tensor(self, value: torch.Tensor, key: str) -> dict[str, Any]:
        def write() -> dict[str, Any]:
            self._add(key, value)
            return {"tensor": key}
        return self._once("tensor", (value,), write)

    def pair(self, cells: CellPairs, prefix: str) -> tuple[Any, Any]:
        """The entries of ``g_pos`` and ``g_neg``: codes into a codebook of the distinct pairs, or the two tensors."""
        def write() -> tuple[Any, Any]:
            coded = cells if isinstance(cells, CodedPairs) else CodedPairs.encode(*cells.dense())
            if coded is None:
                g_pos, g_neg = cells.dense()
                return self.tensor(g_pos, f"{prefix}.g_pos"), self.tensor(g_neg, f"{prefix}.g_neg")
            key = f"{prefix}.conductances"
            self._add(f"{key}.codes", coded.codes.reshape(-1))
            self._add(f"{key}.codebook", coded.codebook)
            return ({"pair": key, "side": 0, "shape": list(cells.shape)}, {"pair": key, "side": 1, "shape": list(cells.shape)})
        return self._once("pair", (cells,), write)

    def fixed_weight(self, value: torch.Tensor, key: str) -> dict[str, Any]:
        """A layer's float weight in 12-bit fixed point (as it is where it cannot be: non-finite values)."""
        def write() -> dict[str, Any]:
            fixed = fix(value)
            if fixed is None:
                return self.tensor(value, key)
            packed, exponents = fixed
            self._add(f"{key}.fixed12", packed)
            self._add(f"{key}.exponents", exponents)
            return {"fixed12": key, "shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
        return self._once("weight", (value,), write)


class _TensorReader:
    """The tensors of a file being read, decoded once each: tensors held by several ops come back as one object."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self._decoded: dict[str, Any] = {}

    def get(self, entry: dict[str, Any]) -> torch.Tensor | None:
        """The tensor a manifest entry stands for; None if the entry is not a tensor's.

        Raises ``KeyError``/``ValueError`` (turned into "corrupt" by the caller) for a malformed entry.
        """
        if "tensor" in entry:
            return self.tensors[entry["tensor"]]
        if "pair" in entry:
            return self.pairs(entry).side([0, 1].index(entry["side"]))
        if "fixed12" in entry:
            key = entry["fixed12"]
            if key not in self._decoded:
                self._decoded[key] = unfix(self.tensors[f"{key}.fixed12"], self.tensors[f"{key}.exponents"], _shape(entry["shape"]),
                                           _FLOAT_DTYPES[entry["dtype"]])
            return self._decoded[key]
        return None

    def pairs(self, entry: dict[str, Any]) -> CodedPairs:
        """The coded conductance pairs a ``pair`` entry stands for (one object for every op that holds them)."""
        key = entry["pair"]
        if key not in self._decoded:
            self._decoded[key] = decode_pairs(self.tensors[f"{key}.codes"], self.tensors[f"{key}.codebook"], _shape(entry["shape"]))
        return self._decoded[key]


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise ValueError(f"a tensor shape is {str(value)[:40]}, expected a list of sizes")
    return tuple(value)


def _encode(value: Any, key: str, tensors: _TensorWriter) -> Any:
    if isinstance(value, torch.Tensor):
        return tensors.tensor(value, key)
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, Attribute):
        return {"attribute": value.kind, "fields": {k: _encode(v, f"{key}.{k}", tensors) for k, v in value.fields().items()}}
    if isinstance(value, dict):  # as pairs: the manifest's JSON sorts object keys, a dict keeps its order
        return {"dict": [[str(k), _encode(v, f"{key}.{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, list):
        return {"list": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store attribute {key} of type {type(value).__name__}")


def _decode(value: Any, tensors: _TensorReader) -> Any:
    if isinstance(value, dict) and ("tensor" in value or "pair" in value or "fixed12" in value):
        return tensors.get(value)
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_decode(v, tensors) for v in value["tuple"])
    if isinstance(value, dict) and "list" in value:
        return [_decode(v, tensors) for v in value["list"]]
    if isinstance(value, dict) and "dict" in value:
        pairs = value["dict"]
        return {k: _decode(v, tensors) for k, v in (pairs.items() if isinstance(pairs, dict) else pairs)}
    if isinstance(value, dict) and "attribute" in value:
        cls = ATTRIBUTES.get(value["attribute"])
        if cls is None:
            raise KeyError(f"unknown attribute kind {value['attribute']!r}")
        fields = {k: _decode(v, tensors) for k, v in value["fields"].items()}
        _check_types(cls, fields, f"#{cls.kind}")
        return cls(**fields)
    return value


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a decoded value has the type a field declares (the kinds op and attribute fields use)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, a) for a in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args))
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if hint is float:
        return isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**1023)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a kind of annotation this check does not know: left to the op's verify


def _type_name(hint: Any) -> str:
    return str(hint).replace("torch.Tensor", "tensor").replace("rramc.ir.attributes.", "").replace("<class '", "").replace("'>", "")


def _check_types(cls: type, fields: dict[str, Any], what: str) -> None:
    """Raise ``TypeError`` naming the field if a decoded value is not of its declared type."""
    hints = typing.get_type_hints(cls)
    for name, value in fields.items():
        if name in hints and not _conforms(value, hints[name]):
            shown = f"a {type(value).__name__}" if isinstance(value, (dict, list, tuple, torch.Tensor)) else repr(value)[:60]
            raise TypeError(f"{what} attribute '{name}' is {shown}, expected {_type_name(hints[name])}")


def _migrate_v1(entry: dict[str, Any], target: dict[str, Any]) -> None:
    """Format 1 → 2: ``input_scale``/``input_signed`` and meta's reconstruction record become typed attributes."""
    attrs, meta = entry["attrs"], entry["meta"]
    scale, signed = attrs.pop("input_scale", None), attrs.pop("input_signed", None)
    if scale is not None:
        attrs["input_range"] = {"attribute": "input_range", "fields": {
            "scale": float(scale), "signed": bool(signed), "origin": meta.pop("input_range", "calibrated")}}
    record = meta.pop("reconstructed", None)
    if record is not None:
        attrs["trained_for"] = {"attribute": "device_training", "fields": {
            "target": {"dict": list(target.items())}, "granularity": "column", "epochs": int(record.get("epochs", 0)),
            "init": record.get("init", "finetune"), "seed": int(record.get("seed", 0)),
            "in_loop": {"tuple": list(record.get("in_loop", []))}, "train_accuracy": record.get("train_accuracy")}}
    meta.pop("input_scale", None)
    meta.pop("input_signed", None)


ORIGINAL_PREFIX = "original/"
"""Tensor keys of the original network (``original_nodes``), apart from the program's ``<node>.<attribute>``."""


def serialize(graph: Graph, target: Target, metadata: dict[str, Any], original: Graph | None = None, *,
              reference_weights: str = "fixed12") -> bytes:
    """The bytes of an executable file; ``original`` is the float network as given, when compiling changed it.

    ``reference_weights`` (a key of :data:`REFERENCE_WEIGHTS`) says how layer weights are kept.
    """
    from rramc._version import __version__

    if reference_weights not in REFERENCE_WEIGHTS:
        raise ValueError(f"reference_weights {reference_weights!r}: expected one of {', '.join(REFERENCE_WEIGHTS)}")
    tensors = _TensorWriter()
    nodes = _encode_graph(graph, "", tensors, fixed_weights=reference_weights == "fixed12")
    # The network as given keeps its weights: its accuracy is reported as PyTorch's.
    original_nodes = None if original is None else _encode_graph(original, ORIGINAL_PREFIX, tensors, fixed_weights=False)
    # Where safetensors puts each tensor's bytes does not depend on the metadata: lay them out
    # once without it, record the offsets in the manifest, and put the manifest in that header.
    laid_out = safetensors.torch.save(tensors.tensors)
    header, start = _parse_header(laid_out)
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rramc_version": __version__,
        "target": target.to_mapping(),
        "nodes": nodes,
        "metadata": metadata,
        "reference_weights": reference_weights,
        "tensor_sha256": {k: _sha256_tensor(t) for k, t in tensors.tensors.items()},
        "tensor_offsets": {k: v["data_offsets"] for k, v in entries.items()},
    }
    if original_nodes is not None:
        manifest["original_nodes"] = original_nodes
    text = json.dumps(manifest, sort_keys=True)
    # One order for the header's entries (by where their bytes lie), so that the same executable is the same bytes.
    header = {"__metadata__": {"rramx.manifest": text, "rramx.manifest_sha256": hashlib.sha256(text.encode()).hexdigest()},
              **dict(sorted(entries.items(), key=lambda item: item[1]["data_offsets"]))}
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors' alignment of the data that follows
    return b"".join([struct.pack("<Q", len(raw)), raw, memoryview(laid_out)[start:]])


def _encode_graph(graph: Graph, prefix: str, tensors: _TensorWriter, *, fixed_weights: bool) -> list[dict[str, Any]]:
    nodes = []
    for node in graph:
        op, key = node.op, f"{prefix}{node.name}"
        attrs = {}
        for f in dataclasses.fields(op):
            value = getattr(op, f.name)
            if isinstance(value, CellPairs):  # stored as the conductances g_pos and g_neg (see CrossbarOp.attributes)
                attrs["g_pos"], attrs["g_neg"] = tensors.pair(value, key)
            elif fixed_weights and f.name == "weight" and isinstance(value, torch.Tensor):
                attrs[f.name] = tensors.fixed_weight(value, f"{key}.{f.name}")
            else:
                attrs[f.name] = _encode(value, f"{key}.{f.name}", tensors)
        nodes.append({"name": node.name, "kind": op.kind, "inputs": node.inputs, "shape": list(node.shape),
                      "meta": node.meta, "attrs": attrs})
    return nodes


def _parse_header(data: bytes) -> tuple[Any, int]:
    """The safetensors header's JSON value and where the tensor data starts.

    Raises ``ValueError`` (with the reason) if there is no header, it runs past the end of the
    data, is not JSON, or repeats a key (which JSON parsers resolve differently: safetensors'
    and Python's could then read two different files).
    """
    if len(data) < 8:
        raise ValueError("the file is empty or truncated")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ValueError("the header runs past the end of the file")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            keys = [k for k, _ in pairs]
            raise ValueError(f"the header repeats the key {next(k for k in keys if keys.count(k) > 1)!r}")
        return result

    try:
        return json.loads(data[8 : 8 + header_len].decode("utf-8"), object_pairs_hook=no_duplicates), 8 + header_len
    except UnicodeDecodeError:
        raise ValueError("the header is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"the header is not JSON ({exc.msg} at byte {8 + exc.pos})") from None
    except RecursionError:
        raise ValueError("the header is nested too deeply") from None


STALE_TEMP_SECONDS = 600
"""A temporary file of an interrupted write older than this is removed by the next write (see :func:`write_atomically`)."""
DEAD_WRITER_GRACE_SECONDS = 60
"""A temporary file whose writer is gone is removed once it is this old (see :func:`remove_stale_temp_files`)."""


def _temp_prefix(name: str) -> str:
    """The start of the temporary files of output ``name`` written by this process on this host:
    ``.<name>.<host>-<pid>.`` (``mkstemp`` adds a random part and ``.tmp``)."""
    return f".{name}.{_HOST}-{os.getpid()}."


_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so no partial file is ever left.

    A process killed mid-write (SIGKILL, power loss) cannot remove its temporary file; the next
    write of the same output removes such leftovers first (:func:`remove_stale_temp_files`).
    """
    path = Path(path)
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)  # mkstemp creates 0600; give the file the mode open() would
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(path: Path, *, now: float | None = None) -> list[Path]:
    """Remove the temporary files that interrupted writes of ``path`` left in its folder; return them.

    Only the temporary files of this very output are considered: ``.<name>.<host>-<pid>.<random>.tmp``
    (and ``.<name>.<random>.tmp``, as rramc named them before), never another output's or a user's
    file. One is stale, and removed, when

    * the process that wrote it is gone (same host: the name carries a hash of the host name; no
      process with its pid) and the file is at least :data:`DEAD_WRITER_GRACE_SECONDS` (a minute)
      old. This clears what a killed writer left at the next write a minute later, without
      waiting for the age rule. The minute guards the cases where "no such pid" is wrong: a
      writer in another PID namespace (a container sharing this folder and host name) whose
      write is in progress. On another host (a shared network folder) a pid says nothing, and on
      Windows ``os.kill`` would kill, so there only the age counts. A dead writer's pid reused by
      a new process keeps its file until the age rule applies;
    * or it is older than :data:`STALE_TEMP_SECONDS` (10 minutes) by its modification time, whoever
      wrote it. The write is one ``write`` of bytes already in memory, so a live writer's file is
      seconds old; ten minutes leaves room for slow network file systems and clock skew.

    Failures to list or remove (permissions, a concurrent writer removing the same file) are
    ignored: cleaning up must never fail the write.
    """
    path = Path(path)
    now = time.time() if now is None else now
    pattern = re.compile(re.escape(f".{path.name}.") + r"(?:([0-9a-f]{8})-([0-9]+)\.)?[a-z0-9_]{8}\.tmp")
    removed = []
    try:
        entries = list(os.scandir(path.parent if str(path.parent) else "."))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            host, pid = match.group(1), match.group(2)
            age = now - entry.stat(follow_symlinks=False).st_mtime
            dead = host == _HOST and pid is not None and age >= DEAD_WRITER_GRACE_SECONDS and not _alive(int(pid))
            if dead or age > STALE_TEMP_SECONDS:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (True when that cannot be told)."""
    if os.name == "nt" or pid <= 0:  # os.kill(pid, 0) terminates the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process, or a pid out of range: not ours to judge
    return True


class Contents(NamedTuple):
    """What an executable file holds."""

    graph: Graph
    target: Target
    metadata: dict[str, Any]
    original: Graph | None
    """The float network as given, when compiling changed it."""
    reference_weights: str
    """How the layer weights are kept: a key of :data:`REFERENCE_WEIGHTS`."""


def deserialize(data: bytes, source: str) -> Contents:
    """Parse and check an executable file's bytes: the program, its target, its metadata, the original network
    (if kept) and how its weights are kept."""
    def refuse(problem: str) -> ExecutableFormatError:
        return ExecutableFormatError(f"{source}: {problem}")

    if len(data) < 8:
        raise refuse("not an rramc executable (the file is empty or truncated)")
    try:
        header, _ = _parse_header(data)
    except ValueError as exc:
        reason = str(exc)
        if "runs past the end" in reason:
            raise refuse("truncated or not an rramc executable (the header runs past the end of the file)") from None
        raise refuse(f"not an rramc executable (no readable safetensors header: {reason})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise refuse("not an rramc executable (no readable safetensors header)" if not isinstance(header, dict) else
                     "not an rramc executable (a safetensors file without an rramc manifest)")
    text = meta.get("rramx.manifest")
    if text is None:
        raise refuse("not an rramc executable (a safetensors file without an rramc manifest)")
    if not isinstance(text, str) or hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest() != meta.get("rramx.manifest_sha256"):
        raise refuse("corrupt: the manifest does not match its checksum")
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise refuse("corrupt: the manifest is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise refuse(f"not an rramc executable (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise refuse(f"written in executable format {version} by rramc {manifest.get('rramc_version')}; this rramc reads "
                     f"format {FORMAT_VERSION} and older. Upgrade rramc, or recompile the model with this version.")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise refuse(f"corrupt: format_version {version!r} is not a version (1 to {FORMAT_VERSION})")
    unknown = sorted(set(meta) - {"rramx.manifest", "rramx.manifest_sha256"})
    if unknown:  # the header's metadata is rramc's alone: what else it holds was added after writing
        raise refuse(f"corrupt: the header metadata has entries rramc does not write ({', '.join(map(repr, unknown[:3]))})")
    missing = [key for key, kind in (("target", dict), ("nodes", list), ("tensor_sha256", dict)) if not isinstance(manifest.get(key), kind)]
    if missing:
        raise refuse(f"corrupt: the manifest lacks {', '.join(missing)}")
    metadata = manifest.get("metadata", {})
    if not isinstance(metadata, dict):
        raise refuse("corrupt: the manifest's metadata is not a mapping")
    reference_weights = manifest.get("reference_weights", "exact")
    if not isinstance(reference_weights, str) or reference_weights not in REFERENCE_WEIGHTS:
        raise refuse(f"corrupt: the manifest's reference_weights is {str(reference_weights)[:40]!r}, "
                     f"expected one of {', '.join(REFERENCE_WEIGHTS)}")
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # safetensors' own error types vary between versions
        raise refuse(f"truncated or corrupt tensor data ({exc})") from None
    digests = manifest["tensor_sha256"]
    extra = sorted(set(tensors) - set(digests))
    if extra:
        raise refuse(f"corrupt: tensor '{extra[0]}' is not in the manifest" + (f" (nor {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for key, digest in digests.items():
        if key not in tensors or _sha256_tensor(tensors[key], version) != digest:
            raise refuse(f"corrupt: tensor '{key}' does not match its checksum")
    offsets = manifest.get("tensor_offsets")  # absent from files written before it was added
    if offsets is not None:
        if not isinstance(offsets, dict) or set(offsets) != set(tensors):
            raise refuse("corrupt: the manifest's tensor_offsets do not list the file's tensors")
        for key in sorted(tensors):
            entry = header.get(key)
            written = entry.get("data_offsets") if isinstance(entry, dict) else None
            if written != offsets[key]:
                raise refuse(f"corrupt: the header's data_offsets of tensor '{key}' are not the ones written "
                             f"({written} instead of {offsets[key]})")
    try:
        target = Target.from_mapping(manifest["target"], f"{source} (embedded target)")
    except RramcError as exc:
        raise refuse(f"its target spec is invalid: {exc}") from None
    original_nodes = manifest.get("original_nodes")
    if original_nodes is not None and not isinstance(original_nodes, list):
        raise refuse("corrupt: the manifest's original_nodes is not a list")
    reader = _TensorReader(tensors)
    graph = _decode_graph(manifest["nodes"], reader, version, target, refuse, "the executable")
    original = None if original_nodes is None else _decode_graph(original_nodes, reader, version, target, refuse, "the original network")
    return Contents(graph, target, metadata, original, reference_weights)


def _decode_graph(entries: list[Any], tensors: _TensorReader, version: int, target: Target,
                  refuse: Callable[[str], ExecutableFormatError], what: str) -> Graph:
    graph = Graph()
    try:
        for entry in entries:
            _check_entry(entry)
            if version < 2:
                _migrate_v1(entry, target.to_mapping())
            cls = OPS.get(entry["kind"])
            if cls is None:
                raise refuse(f"node %{entry['name']} uses op '{entry['kind']}', which this rramc does not know "
                             "(was it compiled with a plugin that is not installed?)")
            raw = entry["attrs"]
            pair = raw.get("g_pos"), raw.get("g_neg")
            coded = (all(isinstance(side, dict) and "pair" in side for side in pair) and pair[0]["pair"] == pair[1]["pair"]  # type: ignore[index]
                     and (pair[0].get("side"), pair[1].get("side")) == (0, 1))  # type: ignore[union-attr]
            attrs = {k: _decode(v, tensors) for k, v in raw.items() if not (coded and k in ("g_pos", "g_neg"))}
            if coded:  # kept coded in memory too (CrossbarOp.from_attributes)
                attrs["cells"] = tensors.pairs(pair[0])  # type: ignore[arg-type]
            _check_types(cls, attrs, f"node %{entry['name']} ({entry['kind']}):")
            op = cls.from_attributes(attrs)
            if entry["name"] in graph:
                raise ValueError(f"two nodes are named %{entry['name']}")
            graph.add(entry["name"], op, entry["inputs"], shape=tuple(entry["shape"]), meta=entry["meta"])
        graph.verify(after_pass=f"loading {what}")
    except ExecutableFormatError:
        raise
    except RramcError as exc:
        raise refuse(str(exc)) from None
    except (KeyError, TypeError, AttributeError, ValueError, ArithmeticError) as exc:  # ArithmeticError: a number too large for a float
        raise refuse(f"corrupt: a graph node of {what} is malformed ({type(exc).__name__}: {exc})") from None
    return graph


def _check_entry(entry: Any) -> None:
    """Raise ``TypeError`` unless a manifest node entry has the fields, of the types, rramc writes."""
    if not isinstance(entry, dict):
        raise TypeError(f"a node is a {type(entry).__name__}, expected a mapping")
    kinds = {"name": str, "kind": str, "inputs": list, "shape": list, "meta": dict, "attrs": dict}
    for key, kind in kinds.items():
        if not isinstance(entry.get(key), kind):
            raise TypeError(f"node {str(entry.get('name'))[:40]!r}: '{key}' is {type(entry.get(key)).__name__}, expected {kind.__name__}")
    if not all(isinstance(i, str) for i in entry["inputs"]):
        raise TypeError(f"node %{entry['name']}: inputs must be node names")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in entry["shape"]):
        raise TypeError(f"node %{entry['name']}: shape must be a list of integers")
