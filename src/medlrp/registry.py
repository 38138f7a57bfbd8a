"""Registries by name: methods, LRP composites and architectures drive the API, the CLI and the tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from medlrp.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection; ``register`` is usable as a decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Register the decorated object under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``."""
        self.register(name)(obj)

    def get(self, name: str) -> T:
        """Look ``name`` up; an unknown name is an :class:`InputError` listing the known ones."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise InputError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """All registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


#: ``name -> callable(model, x, target, **options) -> Explanation``
METHODS: Registry[Callable[..., object]] = Registry("method")
#: ``name -> composite factory`` (see :mod:`medlrp.lrp.composites`)
COMPOSITES: Registry[Callable[..., object]] = Registry("composite")
#: ``name -> model factory(in_channels, num_classes, **kw)`` (see :mod:`medlrp.models`)
ARCHITECTURES: Registry[Callable[..., object]] = Registry("architecture")
