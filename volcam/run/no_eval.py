"""Configs from others: refuse what would run code before anything is evaluated.

A config is code: ``$`` expressions run Python and ``_target_`` can name any callable, as in
MONAI bundles. With ``allow_eval=False`` (``volcam run --no-eval``), :func:`check_no_eval`
refuses ``$`` expressions and ``%`` macros anywhere in the config (and in ``--override``
values), and ``_target_`` components outside :data:`SAFE_TARGET_MODULES`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from volcam.errors import ConfigError

__all__ = ["SAFE_TARGET_MODULES", "check_no_eval"]

#: Modules whose components a config may build with ``allow_eval=False``.
SAFE_TARGET_MODULES = ("monai.networks", "monai.transforms", "torch.nn", "volcam")


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted path, value)`` for every leaf and mapping of a raw config."""
    yield path, node
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def _target_module(name: str) -> str | None:
    """The module a ``_target_`` name resolves to (MONAI's short names included)."""
    if "." in name:
        return name.rsplit(".", 1)[0]
    from monai.bundle import ComponentLocator

    found = ComponentLocator().get_component_module_name(name)
    if isinstance(found, list):
        found = found[0] if found else None
    return found


def check_no_eval(raw: Mapping[str, Any]) -> None:
    """Refuse what would run code: ``$`` expressions, ``%`` macros, and ``_target_`` outside
    :data:`SAFE_TARGET_MODULES`. Raises :class:`ConfigError` naming the entry."""
    for path, value in _walk(raw, ""):
        if isinstance(value, str) and value.startswith(("$", "%")):
            what = "a $ expression (Python code)" if value.startswith("$") else "a % macro"
            raise ConfigError(
                f"{path or 'config'} must not be {what} when expressions are refused (--no-eval), not {value[:80]!r}; "
                "read the config and run it without --no-eval only if you trust it like a script",
                key=path or None,
            )
        if isinstance(value, Mapping) and "_target_" in value:
            target = value["_target_"]
            module = _target_module(target) if isinstance(target, str) else None
            if module is None or not module.startswith(SAFE_TARGET_MODULES):
                raise ConfigError(
                    f"{path}._target_ must name a component of {', '.join(SAFE_TARGET_MODULES)} when expressions "
                    f"are refused (--no-eval), not {target!r}",
                    key=f"{path}._target_",
                )
