"""Checkpoints: find the state dict in the usual layouts, load it safely, and hash the file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from volcam.checks import did_you_mean
from volcam.errors import ConfigError
from volcam.run.schema import NO_CHECKPOINT

__all__ = ["extract_state_dict", "load_checkpoint", "file_digest", "checkpoint_path"]

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "network", "net", "module")


def file_digest(path: str | os.PathLike[str], *, chunk: int = 1 << 22) -> str:
    """BLAKE2b digest (hex, 32 bytes) of a file's content."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_state_dict(obj: Any) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def extract_state_dict(obj: Any, model_keys: Iterable[str], key: str | None = None) -> dict[str, Any]:
    """Find the model's state dict inside a loaded checkpoint.

    Accepts a bare state dict, the usual wrappers (``{"state_dict": ...}``, ``{"model": ...}``,
    ``{"model_state_dict": ...}``), a MONAI ``CheckpointSaver`` file (a dict keyed by the saved
    objects' names, e.g. ``{"net": ..., "opt": ...}``) and ``module.`` prefixes of
    ``DataParallel``/``DistributedDataParallel``. ``key`` names the entry explicitly
    (``"a::b"`` or ``"a.b"`` for nested wrappers). The candidate whose keys match the model's
    best is returned.
    """
    keys = set(model_keys)
    if key is not None:
        node = obj
        for part in str(key).replace("::", ".").split("."):
            if not isinstance(node, Mapping) or part not in node:
                options = list(node) if isinstance(node, Mapping) else []
                raise ConfigError(
                    f"checkpoint_key must name an entry of the checkpoint, not {key!r}"
                    f" (entries: {options}){did_you_mean(part, options)}",
                    key="checkpoint_key",
                )
            node = node[part]
        candidates = [node]
    else:
        candidates = [obj]
        if isinstance(obj, Mapping):
            candidates += [obj[k] for k in _WRAPPER_KEYS if k in obj]
            candidates += [v for v in obj.values() if isinstance(v, Mapping)]
    best: dict[str, Any] | None = None
    best_score = -1.0
    for cand in candidates:
        if not _is_state_dict(cand):
            continue
        for prefix in ("", "module.", "model.", "_orig_mod."):
            state = _strip_prefix(cand, prefix) if prefix else dict(cand)
            score = len(keys & set(state)) / max(len(keys | set(state)), 1)
            if score > best_score:
                best, best_score = state, score
    if best is None:
        entries = list(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise ConfigError(
            f"checkpoint must hold a state dict (bare, or under 'state_dict', 'model' or a "
            f"CheckpointSaver name), not {entries}; set checkpoint_key to the entry that holds it",
            key="checkpoint",
        )
    return best


def load_checkpoint(model: Any, path: str | Path, *, key: str | None = None, strict: bool = True) -> None:
    """Load weights into ``model`` from ``path`` with ``torch.load(weights_only=True)``.

    See :func:`extract_state_dict` for the layouts understood. Raises :class:`ConfigError`
    (key ``checkpoint``) when the file cannot be read or its weights do not fit the network.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint must be an existing file, not '{path}'", key="checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files, objects refused by weights_only
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else type(err).__name__)
        detail = detail.replace("WeightsUnpickler error: ", "").split(" was not an allowed global")[0]
        raise ConfigError(
            f"checkpoint must be a file torch.load(weights_only=True) can read, not '{path}' ({detail}); "
            "save the model's state_dict() rather than the model object",
            key="checkpoint",
        ) from err
    state = extract_state_dict(obj, model.state_dict().keys(), key=key)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        raise ConfigError(
            f"checkpoint must hold weights for network_def, not those in '{path}': {err}",
            key="checkpoint",
        ) from err


def checkpoint_path(value: Any, given: bool) -> str | None:
    """The ``checkpoint`` entry: a path, or None for ``none`` (the initial weights); leaving it out
    is an error, so that a typo never explains random weights."""
    if not given:
        raise ConfigError(
            "checkpoint is required: the path of the trained weights, or `checkpoint: none` to explain the "
            "network's initial (untrained) weights",
            key="checkpoint",
        )
    if value is None or (isinstance(value, str) and value.strip().lower() == NO_CHECKPOINT):
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ConfigError(f"checkpoint must be a path or none, not {value!r}", key="checkpoint")
    return str(value)
