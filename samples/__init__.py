"""Sample networks, their training script and the shipped trained digits MLP.

Installed as ``rramc.samples``; ``digits_mlp.pt2`` is what ``rramc demo`` compiles.
"""

from importlib import resources
from pathlib import Path


def sample_path(name: str) -> Path:
    """Path of a file shipped in this package (e.g. ``digits_mlp.pt2``)."""
    return Path(str(resources.files(__name__) / name))
