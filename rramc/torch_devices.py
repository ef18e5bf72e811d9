"""Checking the torch device a user names (``--device``, ``reconstruct{device=...}``) before any work."""

from __future__ import annotations

from rramc.errors import RramcError


def check_torch_device(name: str, what: str = "--device", error: type[RramcError] = RramcError, *, here: bool = True) -> str:
    """``name`` if torch can compute on it here, else ``error`` saying what is allowed.

    ``here=False`` checks the name only: the device is another machine's (a Ray cluster's worker).

    Imports torch only when called, so that commands which never simulate stay fast to start.
    """
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise error(f"{what} {name!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and here:
        if not torch.cuda.is_available():
            raise error(f"{what} {name}: no CUDA device is available here (torch.cuda.is_available() is false); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise error(f"{what} {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"numbered from 0")
    elif device.type not in ("cpu", "cuda"):
        raise error(f"{what} {name}: rramc computes on cpu or cuda devices")
    return name
