"""Command-line overrides of a config (``--override key=value``) and the device setting."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from volcam.checks import did_you_mean
from volcam.errors import ConfigError
from volcam.run.schema import SECTIONS, TOP_LEVEL

__all__ = ["parse_override", "apply_overrides", "resolve_device", "id_to_key"]


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"key=value"`` into a MONAI config id (``a::b``) and a YAML-parsed value.

    ``cam.method=hirescam`` -> ``("cam::method", "hirescam")``;
    ``targets.classes=[1, 2]`` -> ``("targets::classes", [1, 2])``; ``checkpoint=null`` -> ``None``.
    """
    import yaml

    if "=" not in text:
        raise ConfigError(f"an override must be key=value, not {text!r}", key=None)
    key, _, value_text = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"an override must be key=value with a key, not {text!r}", key=None)
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text
    config_id = key.replace("::", ".").replace("#", ".").replace(".", "::")
    return config_id, value


def id_to_key(config_id: str) -> str:
    """``a::b`` -> ``a.b``."""
    return config_id.replace("::", ".")


def apply_overrides(parser: Any, overrides: Sequence[str] | Mapping[str, Any]) -> None:
    pairs = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for config_id, value in pairs:
        config_id = str(config_id).replace(".", "::") if "::" not in str(config_id) else str(config_id)
        parts = config_id.split("::")
        key = id_to_key(config_id)
        if parts[0] not in TOP_LEVEL:
            raise ConfigError(
                f"--override {key}: {parts[0]} is not a key of a run config (keys: {', '.join(TOP_LEVEL)})"
                f"{did_you_mean(parts[0], TOP_LEVEL)}",
                key=key,
            )
        if parts[0] in SECTIONS and len(parts) > 1 and parts[1] not in SECTIONS[parts[0]]:
            raise ConfigError(
                f"--override {key}: {parts[1]} is not a setting of {parts[0]}"
                f"{did_you_mean(parts[1], SECTIONS[parts[0]])}",
                key=key,
            )
        try:
            parser.set(value, config_id, recursive=True)
        except (KeyError, IndexError, ValueError, TypeError) as err:
            raise ConfigError(f"--override {key} must name an entry of the config, not ({err})", key=key) from err


def resolve_device(device: Any) -> Any:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; other strings go to :class:`torch.device`."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {device!r}", key="device") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device must be available on this machine, not {device!r} (no CUDA device)", key="device")
    return dev


# --------------------------------------------------------------------------- the config
