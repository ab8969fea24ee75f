"""Pick a tensor out of a (possibly nested) tuple, list or dict output, and put a
replacement back in its place.

A *selector* is one of:

- ``None``: the output must itself be a tensor;
- an ``int`` (index into a tuple or list) or a ``str`` (key of a dict);
- a tuple of ints and strs: a path, applied left to right (``("skips", 2)``);
- a callable ``output -> Tensor``. To put a replacement back, the tensor it returns
  must be one of the tensors inside ``output`` (found by identity).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from volcam.errors import SelectorError

Selector = None | int | str | tuple[int | str, ...] | Callable[[Any], torch.Tensor]

__all__ = ["Selector", "select", "replace", "describe"]


def describe(obj: Any) -> str:
    """A short readable summary of a nested output, e.g. ``tuple(Tensor[2, 8, 4, 4], list(...))``."""
    if isinstance(obj, torch.Tensor):
        return f"Tensor{list(obj.shape)}"
    if isinstance(obj, Mapping):
        return "dict(" + ", ".join(f"{k!r}: {describe(v)}" for k, v in obj.items()) + ")"
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__}(" + ", ".join(describe(v) for v in obj) + ")"
    return type(obj).__name__


def _path(selector: Selector) -> tuple[int | str, ...]:
    if selector is None:
        return ()
    if isinstance(selector, (int, str)) and not isinstance(selector, bool):
        return (selector,)
    if isinstance(selector, tuple) and all(isinstance(s, (int, str)) and not isinstance(s, bool) for s in selector):
        return selector
    raise SelectorError(
        "a selector must be None, an int, a str, a tuple of them or a callable, "
        f"not {selector!r} ({type(selector).__name__})"
    )


def _step(obj: Any, key: int | str, what: str) -> Any:
    try:
        if isinstance(obj, Mapping):
            return obj[key]
        if isinstance(obj, (tuple, list)) and isinstance(key, int):
            return obj[key]
    except (KeyError, IndexError) as err:
        raise SelectorError(f"{what} selector {key!r} does not fit the output {describe(obj)}") from err
    raise SelectorError(f"{what} selector {key!r} does not fit the output {describe(obj)}")


def select(obj: Any, selector: Selector = None, *, what: str = "output") -> torch.Tensor:
    """Return the tensor that ``selector`` picks out of ``obj``.

    Raises:
        SelectorError: when the selector does not fit, or picks something that is not a tensor.
            ``what`` names the output in the message ("layer 'enc.1' output", "model output").
    """
    if callable(selector) and not isinstance(selector, (int, str, tuple)):
        try:
            picked = selector(obj)
        except Exception as err:  # the user's callable failed on this output
            raise SelectorError(f"{what} selector {selector!r} failed on {describe(obj)}: {err}") from err
    else:
        picked = obj
        for key in _path(selector):
            picked = _step(picked, key, what)
    if not isinstance(picked, torch.Tensor):
        hint = (
            " pass a selector (an index, a key, a path of them or a callable) to choose the tensor"
            if selector is None
            else ""
        )
        raise SelectorError(f"the {what} must be a tensor, not {describe(picked)};{hint}".rstrip(";"))
    return picked


def _replace_identity(obj: Any, old: torch.Tensor, new: torch.Tensor) -> tuple[Any, bool]:
    if obj is old:
        return new, True
    if isinstance(obj, Mapping):
        out, found = {}, False
        for k, v in obj.items():
            if not found:
                v, found = _replace_identity(v, old, new)
            out[k] = v
        if not found:
            return obj, False
        return (out if type(obj) is dict else _same_mapping(obj, out)), True
    if isinstance(obj, (tuple, list)):
        items, found = [], False
        for v in obj:
            if not found:
                v, found = _replace_identity(v, old, new)
            items.append(v)
        if not found:
            return obj, False
        return _rebuild(obj, items), True
    return obj, False


def _same_mapping(original: Mapping[Any, Any], items: dict[Any, Any]) -> Any:
    """``items`` in a mapping of the type of ``original`` (OrderedDict, ModuleDict outputs...)."""
    return type(original)(items)  # type: ignore[call-arg]


def _rebuild(seq: tuple[Any, ...] | list[Any], items: list[Any]) -> tuple[Any, ...] | list[Any]:
    if isinstance(seq, list):
        return items
    if hasattr(seq, "_fields"):  # namedtuple
        return type(seq)(*items)
    return type(seq)(items)


def _replace_path(obj: Any, path: tuple[int | str, ...], new: torch.Tensor) -> Any:
    if not path:
        return new
    key, rest = path[0], path[1:]
    if isinstance(obj, Mapping):
        out = dict(obj)
        out[key] = _replace_path(obj[key], rest, new)
        return out if type(obj) is dict else _same_mapping(obj, out)
    if not isinstance(key, int):
        raise SelectorError(f"selector key {key!r} must be an int for {describe(obj)}")
    items = list(obj)
    items[key] = _replace_path(obj[key], rest, new)
    return _rebuild(obj, items)


def replace(obj: Any, selector: Selector, new: torch.Tensor, *, old: torch.Tensor | None = None) -> Any:
    """Return ``obj`` with the tensor that ``selector`` picks replaced by ``new``.

    The containers on the path are rebuilt (the originals are not mutated); everything
    else is passed through unchanged. For a callable selector, ``old`` (the tensor it
    picked) is located by identity.
    """
    if callable(selector) and not isinstance(selector, (int, str, tuple)):
        if old is None:
            raise SelectorError(f"the callable selector {selector!r} needs the tensor it picked to put `new` back")
        out, found = _replace_identity(obj, old, new)
        if not found:
            raise SelectorError(
                f"the callable selector {selector!r} must return one of the tensors inside the output "
                f"{describe(obj)} (so the rest of the network can receive it), not a new tensor; "
                "use an index/key path instead"
            )
        return out
    return _replace_path(obj, _path(selector), new)
