"""What kind of file a path holds, from its first bytes: so that no command overwrites a file of
another kind, and a file given to the wrong command is named for what it is.

A leaf module (standard library only): the command line checks outputs with it before it imports
torch, and the runtime uses it to explain a file that is not an executable.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

KINDS = {
    "executable": "an rramc executable",
    "report": "an rramc run report (JSON)",
    "model": "a PyTorch file (torch.save or a torch.export .pt2 archive)",
    "png": "a PNG image",
    "yaml": "a YAML or text file",
    "empty": "an empty file",
    "other": "a file of another kind",
}

_HEADER_LIMIT = 100 * 2**20  # safetensors' own limit on a header's size


def describe_kind(kind: str) -> str:
    return KINDS.get(kind, kind)


def kind_of(path: Path) -> str:
    """One of :data:`KINDS`' keys for an existing file."""
    with open(path, "rb") as file:
        head = file.read(8)
        if not head:
            return "empty"
        if head.startswith(b"PK\x03\x04") or head[:2] == b"\x80\x02":  # zip (torch.save, .pt2) or a plain pickle
            return "model"
        if head.startswith(b"\x89PNG"):
            return "png"
        if _manifest(path) is not None:
            return "executable"
        file.seek(0)
        start = file.read(4096)
    try:
        text = start.decode("utf-8")
    except UnicodeDecodeError:
        return "other"
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return "yaml"
        return "report" if isinstance(data, dict) and "chip_accuracy" in data else "yaml"
    return "yaml"


def executable_source(path: Path) -> str | None:
    """The model file an executable records it was compiled from (None when unknown)."""
    manifest = _manifest(path)
    if manifest is None:
        return None
    source = manifest.get("metadata", {}).get("source")
    return source if isinstance(source, str) else None


def _manifest(path: Path) -> dict | None:
    """The rramx manifest of a safetensors file, or None when the file is not one."""
    try:
        with open(path, "rb") as file:
            (size,) = struct.unpack("<Q", file.read(8))
            if not 2 <= size <= _HEADER_LIMIT:
                return None
            header = json.loads(file.read(size))
            manifest = json.loads(header["__metadata__"]["rramx.manifest"])
    except (OSError, struct.error, ValueError, KeyError, TypeError):
        return None
    return manifest if isinstance(manifest, dict) else None
