"""Name → object registries that merge built-ins with plugins from Python entry points."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import import_module, metadata
from typing import Any, Generic, TypeVar

from rramc.errors import PassError

T = TypeVar("T")


@dataclass
class Registry(Generic[T]):
    """Built-in entries (``"module:attribute"`` strings, imported lazily) plus an entry-point group.

    A name defined twice is an error that says where each definition came from. With an
    ``interface``, every entry must be a concrete subclass of it whose ``name`` (``model`` for
    device models: ``name_attribute``) is the name it is registered under; an entry that is not
    is refused when it is loaded, with a message naming where it came from.
    """

    what: str
    group: str
    builtins: dict[str, str]
    error: Callable[[str], Exception] = PassError
    interface: type | None = None
    name_attribute: str = "name"
    _origins: dict[str, str] | None = field(default=None, init=False, repr=False)
    _loaded: dict[str, T] = field(default_factory=dict, init=False, repr=False)
    _extra: dict[str, T] = field(default_factory=dict, init=False, repr=False)

    def origins(self) -> dict[str, str]:
        """Every name with where it is defined (``module:attr`` and the distribution for plugins)."""
        if self._origins is None:
            origins = {name: f"{ref} (built in)" for name, ref in self.builtins.items()}
            for ep in metadata.entry_points(group=self.group):
                dist = ep.dist.name if ep.dist else "unknown distribution"
                origin = f"{ep.value} (entry point '{ep.name}' of {dist})"
                if ep.name in origins and origins[ep.name] != origin:
                    raise self.error(
                        f"{self.what} '{ep.name}' is defined twice: {origins[ep.name]} and {origin}; "
                        "uninstall or rename one of them"
                    )
                origins[ep.name] = origin
            self._origins = origins
        return {**self._origins, **{n: "registered at run time" for n in self._extra}}

    def names(self) -> list[str]:
        return sorted(self.origins())

    def register(self, name: str, obj: T) -> None:
        """Add an entry from Python code (tests, notebooks)."""
        if name in self.origins() and self.get(name) is not obj:
            raise self.error(f"{self.what} '{name}' is already defined: {self.origins()[name]}")
        self._check(name, obj, f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))} (registered at run time)")
        self._extra[name] = obj

    def _check(self, name: str, obj: Any, origin: str) -> None:
        if self.interface is None:
            return
        interface = self.interface.__name__
        if not (isinstance(obj, type) and issubclass(obj, self.interface)):
            raise self.error(f"{self.what} '{name}' from {origin} is not a subclass of rramc's {interface}")
        if inspect.isabstract(obj):
            missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
            raise self.error(f"{self.what} '{name}' from {origin} does not implement {interface}: missing {missing}")
        declared = getattr(obj, self.name_attribute, None)
        if declared != name:
            raise self.error(f"{self.what} '{name}' from {origin} declares {self.name_attribute} = {declared!r}; "
                             f"it must be registered under that name")

    def unregister(self, name: str) -> None:
        """Remove an entry added with :meth:`register`."""
        del self._extra[name]

    def get(self, name: str) -> T:
        if name in self._extra:
            return self._extra[name]
        if name not in self._loaded:
            origins = self.origins()
            if name not in origins:
                raise self.error(f"unknown {self.what} '{name}'; known: {', '.join(self.names())}")
            ref = self.builtins.get(name) or origins[name].split(" ", 1)[0]
            module, _, attr = ref.partition(":")
            try:
                loaded = getattr(import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise self.error(f"{self.what} '{name}' from {origins[name]} cannot be loaded: {exc}") from None
            self._check(name, loaded, origins[name])
            self._loaded[name] = loaded
        return self._loaded[name]

    def __iter__(self) -> Iterator[tuple[str, T]]:
        return ((name, self.get(name)) for name in self.names())
