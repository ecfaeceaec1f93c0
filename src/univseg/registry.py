"""Name -> constructor registries with helpful errors for unknown names."""
from __future__ import annotations

import contextlib
import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


def suggest(name: str, choices: list[str]) -> str:
    """Return ' Did you mean ...?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    """A name -> object table (usually constructors) for one kind of component.

    Example:
        BACKBONES = Registry("backbone")

        @BACKBONES.register("erfnet")
        def erfnet(**kw): ...

        BACKBONES.get("erfnt")  # UnknownNameError: unknown backbone 'erfnt'. Did you mean 'erfnet'? ...

    A *family* answers every name under a prefix (e.g. ``timm/<model>``) from one resolver
    (:meth:`register_family`); :meth:`names` lists the exact names only.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._families: dict[str, Callable[[str], T]] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = item
            return item

        return add(obj) if obj is not None else add

    def register_family(self, prefix: str, resolve: Callable[[str], T]) -> None:
        """Answer every name ``<prefix><rest>`` with ``resolve(rest)`` (which raises for a ``rest`` it does not know)."""
        if prefix in self._families:
            raise ValueError(f"{self.kind} family '{prefix}' is already registered")
        self._families[prefix] = resolve

    def get(self, name: str) -> T:
        """Look ``name`` up (exact names, then families); an unknown name raises with the available names."""
        if name in self._items:
            return self._items[name]
        for prefix, resolve in self._families.items():
            if name.startswith(prefix):
                return resolve(name[len(prefix):])
        names = self.names()
        families = "".join(f", {prefix}<name>" for prefix in self._families)
        raise UnknownNameError(f"unknown {self.kind} '{name}'.{suggest(name, names)} Available: {', '.join(names)}{families}")

    @contextlib.contextmanager
    def temporary(self, name: str, obj: T) -> Iterator[T]:
        """Register ``obj`` under ``name`` for the duration of a ``with`` block (tests, plugins)."""
        self.register(name, obj)
        try:
            yield obj
        finally:
            if name in self:
                self.unregister(name)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (e.g. a temporary test entry); unknown names raise like ``get``."""
        self.get(name)
        del self._items[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
