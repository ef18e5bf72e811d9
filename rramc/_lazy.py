"""Modules imported on first use, for the modules that describe a chip and also compute with it.

Loading, validating and describing a target (``rramc targets``) goes through the device models,
the column solvers (a target's ``wires``) and the encodings' registries, whose modules also hold
the torch code that simulates the chip; torch's import alone takes about a second. Those modules
bind ``torch`` (and what else they compute with) to a :func:`lazy_import` stand-in instead of
importing it::

    if TYPE_CHECKING:
        import torch
    else:
        torch = lazy_import("torch", globals())

The first attribute asked of the stand-in (``torch.sinh``, ``torch.Tensor``) imports the module
and puts the module itself in the stand-in's place, so the code reads as with a plain import and
every later use is an ordinary global lookup: nothing on the simulation's hot paths pays for
the laziness (an ``import`` statement inside each function would, on every call).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


class _LazyModule:
    """Stands for a module in a namespace until an attribute of it is first asked for."""

    __slots__ = ("__module", "__namespace", "__alias")

    def __init__(self, module: str, namespace: dict[str, Any], alias: str) -> None:
        self.__module, self.__namespace, self.__alias = module, namespace, alias

    def __getattr__(self, attribute: str) -> Any:
        module = importlib.import_module(self.__module)
        if self.__namespace.get(self.__alias) is self:
            self.__namespace[self.__alias] = module  # from now on a plain global: no stand-in in the way
        return getattr(module, attribute)

    def __repr__(self) -> str:
        return f"<module {self.__module!r}, imported on first use>"


def lazy_import(module: str, namespace: dict[str, Any], alias: str | None = None) -> Any:
    """A stand-in for ``module``, to bind to ``alias`` (default: the module's last name) in
    ``namespace`` (the importing module's ``globals()``): its first attribute imports ``module``
    and rebinds ``alias`` there to the module itself."""
    return _LazyModule(module, namespace, alias or module.rpartition(".")[2])


def lazy_package(package: str, names: dict[str, list[str]], submodules: set[str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's module-level ``__getattr__`` and ``__dir__`` (PEP 562) that import its public
    ``names`` (``{module: [name, ...]}``) and its ``submodules`` on first use; an imported name
    then becomes a plain attribute of the package (``namespace``: its ``globals()``)."""
    where = {name: module for module, listed in names.items() for name in listed}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None and name in submodules:
            return importlib.import_module(f"{package}.{name}")
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *where})

    return __getattr__, __dir__
