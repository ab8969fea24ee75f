"""The registry of CAM methods, filled from the method classes themselves.

Every module of :mod:`volcam.methods` (except the engine's own) is imported once, and
each :class:`~volcam.methods.base.BaseCAM` subclass it defines with its own ``name`` is
registered under that name (and its ``aliases``): in :data:`ATTENTION_METHODS` when
``attention`` is set, else in :data:`METHODS`. A new method is one file and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from volcam.checks import did_you_mean
from volcam.errors import ArgumentError, MethodNotFoundError
from volcam.methods.base import BaseCAM

__all__ = ["METHODS", "ATTENTION_METHODS", "get_method", "register_method"]

_PACKAGE = "volcam.methods"
#: the package's folders (a list, so that tests can add one)
PATHS = [str(Path(__file__).resolve().parent)]

#: modules of this package that hold no method
_NOT_METHODS = {"base", "engine", "registry", "shared"}


def _discover() -> tuple[dict[str, type[BaseCAM]], dict[str, type[BaseCAM]], dict[str, str]]:
    methods: dict[str, type[BaseCAM]] = {}
    attention: dict[str, type[BaseCAM]] = {}
    aliases: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(PATHS), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in _NOT_METHODS:
            continue
        module = importlib.import_module(f"{_PACKAGE}.{info.name}")
        for obj in vars(module).values():
            if not (isinstance(obj, type) and issubclass(obj, BaseCAM) and obj.__module__ == module.__name__):
                continue
            name = obj.__dict__.get("name")
            if not isinstance(name, str):
                continue
            registry = attention if obj.attention else methods
            if name in methods or name in attention:
                raise ArgumentError(f"method name {name!r} must be unique, not used by two classes", name="name")
            registry[name] = obj
            for alias in obj.aliases:
                aliases[alias] = name
    return methods, attention, aliases


#: name -> method class, for every method that works on any convolutional target layer.
#: Names are lower case; :func:`get_method` also accepts each class's ``aliases``.
METHODS: dict[str, type[BaseCAM]]
#: name -> method reading the attention matrices of transformer blocks instead of a layer's
#: activations. They need a model with self-attention blocks, so they are kept apart.
ATTENTION_METHODS: dict[str, type[BaseCAM]]


def _key(name: str) -> str:
    return str(name).lower().replace("-", "").replace("_", "").replace(" ", "")


def register_method(name: str, cls: type[BaseCAM]) -> None:
    """Add a method defined outside this package to the registry under ``name`` (lower case)."""
    if not (isinstance(cls, type) and issubclass(cls, BaseCAM)):
        raise TypeError(f"a registered method must be a BaseCAM subclass, not {cls!r}")
    (ATTENTION_METHODS if cls.attention else METHODS)[name.lower()] = cls


def get_method(name: str) -> type[BaseCAM]:
    """The method class registered under ``name`` (case, '-' and '_' ignored), in
    :data:`METHODS` or :data:`ATTENTION_METHODS`.

    Raises:
        MethodNotFoundError: with the closest registered names.
    """
    known = {**METHODS, **ATTENTION_METHODS}
    for key in (str(name).lower(), _key(name)):
        key = _ALIASES.get(key, key)
        if key in known:
            return known[key]
    close = did_you_mean(_key(name), list(known))
    raise MethodNotFoundError(f"`method` must be one of {sorted(known)}, not {name!r}{close}")


METHODS, ATTENTION_METHODS, _ALIASES = _discover()
