"""Registries by name: methods, LRP composites and architectures drive the API, the CLI and the tests."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from medlrp.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection; ``register`` is usable as a decorator.

    ``loader`` names the module whose import registers the built-in entries, ``builtin`` their names; the
    module is imported on the first lookup, so ``import medlrp`` and the command line's ``--help`` (which
    lists :meth:`known_names`) need not import torch. A test checks ``builtin`` against the loaded names.
    """

    def __init__(self, kind: str, loader: str | None = None, builtin: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._traits: dict[str, dict[str, object]] = {}
        self._loader = loader
        self.builtin = builtin

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None
            try:
                importlib.import_module(loader)
            except BaseException:
                self._loader = loader  # try again next time; the caller sees the import error
                raise

    def registered(self, name: str) -> bool:
        """Whether ``name`` is registered already, without loading the built-in entries.

        For registering modules: they run while the loader imports them, where a loading lookup would
        import the loader again half-way.
        """
        return name in self._items

    def known_names(self) -> list[str]:
        """The built-in names, then any others registered so far (imports nothing)."""
        return list(dict.fromkeys([*self.builtin, *self._items]))

    def register(self, name: str, **traits: object) -> Callable[[T], T]:
        """Register the decorated object under ``name``, with ``traits`` (see :meth:`trait`)."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            self._traits[name] = traits
            return obj

        return deco

    def trait(self, name: str, key: str, default: object = None) -> object:
        """What the entry ``name`` declared about itself (e.g. a method taking ``composite=``)."""
        self._load()
        return self._traits.get(name, {}).get(key, default)

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``."""
        self.register(name)(obj)

    def get(self, name: str) -> T:
        """Look ``name`` up; an unknown name is an :class:`InputError` listing the known ones."""
        self._load()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise InputError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """All registered names, in registration order."""
        self._load()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(self._items)


#: ``name -> callable(model, x, target, **options) -> Explanation``; traits: ``composite`` (takes a
#: composite), ``conserving`` (relevance sums to the explained logit, up to biases and stabilisers),
#: ``layer`` (takes ``layer=``: the CAM family).
METHODS: Registry[Callable[..., object]] = Registry(
    "method",
    loader="medlrp.methods",
    builtin=(
        "lrp", "gradcam", "gradcam++", "hirescam", "layercam", "xgradcam", "scorecam", "gradient",
        "input-x-gradient", "integrated-gradients", "smoothgrad", "occlusion",
    ),
)  # fmt: skip
#: ``name -> composite factory`` (see :mod:`medlrp.lrp.composites`)
COMPOSITES: Registry[Callable[..., object]] = Registry(
    "composite",
    loader="medlrp.methods",
    builtin=(
        "epsilon", "epsilon-plus", "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1",
        "epsilon-alpha2-beta1-flat", "attnlrp", "cp-lrp",
    ),
)  # fmt: skip
#: ``name -> model factory(in_channels, num_classes, **kw)`` (see :mod:`medlrp.models`)
ARCHITECTURES: Registry[Callable[..., object]] = Registry(
    "architecture",
    loader="medlrp.models",
    builtin=("cnn1d", "cnn2d", "cnn3d", "vit2d", "vit3d", "lstm1d", "unet2d", "unet3d"),
)
