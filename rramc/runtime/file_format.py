"""The executable file: one safetensors file whose header carries a versioned JSON manifest.

Layout (format ``rramx``, version :data:`FORMAT_VERSION`): the safetensors header's metadata
holds ``rramx.manifest`` (target spec, graph nodes with their non-tensor attributes, user
metadata, the sha256 of every tensor) and ``rramx.manifest_sha256``; the tensors are the ops'
tensor attributes, keyed ``<node>.<attribute>``. Nothing is pickled. A file that is truncated,
altered, not an rramc executable or from a newer format is refused with a message saying so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from rramc.errors import ExecutableFormatError, RramcError
from rramc.hardware.target import Target
from rramc.ir import ATTRIBUTES, OPS, Attribute, Graph

FORMAT = "rramx"
FORMAT_VERSION = 2
"""2: typed op attributes (input_range, trained_for, encodings); checksums cover dtype and shape.
1: input_scale/input_signed fields and the reconstruction record in meta (read and migrated)."""


def _sha256_tensor(t: torch.Tensor, version: int = FORMAT_VERSION) -> str:
    digest = hashlib.sha256()
    if version >= 2:  # a tensor re-typed or re-shaped with the same bytes must not pass
        digest.update(f"{t.dtype}{list(t.shape)}".encode())
    digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"tensor": key}
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


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict) and "tensor" in value:
        return tensors[value["tensor"]]
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
        return cls(**{k: _decode(v, tensors) for k, v in value["fields"].items()})
    return value


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


def serialize(graph: Graph, target: Target, metadata: dict[str, Any]) -> bytes:
    """The bytes of an executable file."""
    from rramc._version import __version__

    tensors: dict[str, torch.Tensor] = {}
    nodes = []
    for node in graph:
        attrs = {f.name: _encode(getattr(node.op, f.name), f"{node.name}.{f.name}", tensors) for f in dataclasses.fields(node.op)}
        nodes.append({"name": node.name, "kind": node.op.kind, "inputs": node.inputs, "shape": list(node.shape),
                      "meta": node.meta, "attrs": attrs})
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rramc_version": __version__,
        "target": target.to_mapping(),
        "nodes": nodes,
        "metadata": metadata,
        "tensor_sha256": {k: _sha256_tensor(t) for k, t in tensors.items()},
    }
    text = json.dumps(manifest, sort_keys=True)
    header = {"rramx.manifest": text, "rramx.manifest_sha256": hashlib.sha256(text.encode()).hexdigest()}
    return safetensors.torch.save(tensors, metadata=header)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so no partial file is ever left."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def deserialize(data: bytes, source: str) -> tuple[Graph, Target, dict[str, Any]]:
    """Parse and check an executable file's bytes."""
    def refuse(problem: str) -> ExecutableFormatError:
        return ExecutableFormatError(f"{source}: {problem}")

    if len(data) < 8:
        raise refuse("not an rramc executable (the file is empty or truncated)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise refuse("truncated or not an rramc executable (the header runs past the end of the file)")
    try:
        header = json.loads(data[8 : 8 + header_len])
        meta = header.get("__metadata__") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise refuse("not an rramc executable (no readable safetensors header)") from None
    text = meta.get("rramx.manifest")
    if text is None:
        raise refuse("not an rramc executable (a safetensors file without an rramc manifest)")
    if hashlib.sha256(text.encode()).hexdigest() != meta.get("rramx.manifest_sha256"):
        raise refuse("corrupt: the manifest does not match its checksum")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError:
        raise refuse("corrupt: the manifest is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise refuse(f"not an rramc executable (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise refuse(f"written in executable format {version} by rramc {manifest.get('rramc_version')}; this rramc reads "
                     f"format {FORMAT_VERSION} and older. Upgrade rramc, or recompile the model with this version.")
    missing = [key for key, kind in (("target", dict), ("nodes", list), ("tensor_sha256", dict)) if not isinstance(manifest.get(key), kind)]
    if missing:
        raise refuse(f"corrupt: the manifest lacks {', '.join(missing)}")
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:
        raise refuse(f"truncated or corrupt tensor data ({exc})") from None
    for key, digest in manifest["tensor_sha256"].items():
        if key not in tensors or _sha256_tensor(tensors[key], version) != digest:
            raise refuse(f"corrupt: tensor '{key}' does not match its checksum")
    try:
        target = Target.from_mapping(manifest["target"], f"{source} (embedded target)")
    except RramcError as exc:
        raise refuse(f"its target spec is invalid: {exc}") from None
    graph = Graph()
    try:
        for entry in manifest["nodes"]:
            if version < 2:
                _migrate_v1(entry, target.to_mapping())
            cls = OPS.get(entry["kind"])
            if cls is None:
                raise refuse(f"node %{entry['name']} uses op '{entry['kind']}', which this rramc does not know "
                             "(was it compiled with a plugin that is not installed?)")
            op = cls(**{k: _decode(v, tensors) for k, v in entry["attrs"].items()})
            graph.add(entry["name"], op, entry["inputs"], shape=tuple(entry["shape"]), meta=entry["meta"])
        graph.verify(after_pass="loading the executable")
    except ExecutableFormatError:
        raise
    except RramcError as exc:
        raise refuse(str(exc)) from None
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise refuse(f"corrupt: a graph node is malformed ({type(exc).__name__}: {exc})") from None
    return graph, target, manifest.get("metadata", {})
