"""The import layering of DESIGN.md section 5, enforced with import-linter.

The contracts live in pyproject.toml ([tool.importlinter]). import-linter reads a package from
its directory, but rramc's built-in passes live in the top-level ``passes/`` folder and are
installed as ``rramc.passes``; so the check runs on a copy of the sources laid out as installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def installed_layout(tmp_path: Path) -> Path:
    """``rramc/`` with ``passes/``, ``samples/`` and ``targets/`` inside it, as pip installs them."""
    tree = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pt2", "*.png", "custom_pass")
    shutil.copytree(ROOT / "rramc", tree / "rramc", ignore=ignore)
    for folder in ("passes", "samples", "targets"):
        shutil.copytree(ROOT / folder, tree / "rramc" / folder, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("importlinter", reason="import-linter is a test dependency: pip install -e '.[test]'")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
                           "pyproject.toml", "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=300)


def test_the_layers_hold(tmp_path: Path) -> None:
    result = lint_imports(installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken" in result.stdout


def test_a_runtime_import_in_a_pass_breaks_the_contract(tmp_path: Path) -> None:
    tree = installed_layout(tmp_path)
    tile = tree / "rramc" / "passes" / "tile.py"
    tile.write_text(tile.read_text() + "\nfrom rramc.runtime.executable import Executable  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "rramc.passes is not allowed to import rramc.runtime" in result.stdout
