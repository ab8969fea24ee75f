"""Helpers shared by the handler and the transform: per-case tensors, names, label targets."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

import torch

from volcam.errors import ConfigError, ShapeError
from volcam.targets import SegmentationTarget

__all__ = ["split_cases", "case_name", "label_targets", "plain"]

_EXTENSIONS = (
    ".nii.gz",
    ".nii",
    ".mha",
    ".mhd",
    ".nrrd",
    ".nhdr",
    ".dcm",
    ".png",
    ".jpg",
    ".tif",
    ".tiff",
    ".npy",
    ".npz",
)


def plain(t: torch.Tensor) -> torch.Tensor:
    """The tensor without MONAI metadata (``MetaTensor.as_tensor()``), a view, no copy."""
    as_tensor = getattr(t, "as_tensor", None)
    return as_tensor() if callable(as_tensor) else t


def split_cases(data: Any, what: str) -> list[torch.Tensor]:
    """Per-case tensors ``[C, *S]`` from a collated batch ``[B, C, *S]`` (a ``MetaTensor``
    batch is decollated with MONAI, so each case keeps its own affine and file name) or from
    a decollated list of ``[C, *S]`` tensors."""
    if isinstance(data, torch.Tensor):
        if data.ndim < 3:
            raise ShapeError(
                f"the batch {what} must be [B, C, *S], not shape {list(data.shape)}",
                expected="[B, C, *S]",
                actual_shape=tuple(data.shape),
            )
        if getattr(data, "is_batch", False):
            from monai.data import decollate_batch

            return list(decollate_batch(data, detach=False))
        return list(data.unbind(0))
    if isinstance(data, (list, tuple)) and all(isinstance(d, torch.Tensor) for d in data):
        return list(data)
    raise ConfigError(
        f"the batch {what} must be a tensor [B, C, *S] or a list of tensors [C, *S] "
        f"(check `batch_transform`/`output_transform`), not {type(data).__name__}",
        key=what,
    )


def case_name(image: torch.Tensor, fallback: str) -> str:
    """The file name (without extension) in the image's ``filename_or_obj`` metadata, made
    safe for a folder name; ``fallback`` when there is none."""
    meta = getattr(image, "meta", None) or {}
    source = meta.get("filename_or_obj")
    if isinstance(source, (list, tuple)):
        source = source[0] if len(source) == 1 else None
    if not isinstance(source, (str, PurePath)) or not str(source):
        return fallback
    name = PurePath(str(source)).name
    for ext in _EXTENSIONS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return name or fallback


def _label_mask(label: torch.Tensor, category: int) -> torch.Tensor:
    """``[*S]`` float mask of ``category`` in a label ``[1, *S]`` (class indices) or ``[K, *S]`` (one-hot)."""
    if label.shape[0] == 1:
        return (label[0] == category).float()
    if not 0 <= category < label.shape[0]:
        return torch.zeros(label.shape[1:], device=label.device)
    return (label[category] > 0).float()


def _largest_label_class(label: torch.Tensor) -> int:
    if label.shape[0] == 1:
        counts = torch.bincount(label.flatten().round().long().clamp(min=0))
        counts = counts[1:]
    else:
        counts = (label[1:] > 0).flatten(1).sum(1)
    if counts.numel() == 0 or int(counts.max()) == 0:
        return 1
    return int(counts.argmax()) + 1


def label_targets(targets: Any, labels: Sequence[torch.Tensor], device: torch.device) -> list[SegmentationTarget]:
    """One :class:`~volcam.SegmentationTarget` per case, masked to the case's label.

    ``targets``: an int category, a ``SegmentationTarget`` (its category is used), or None
    (per case, the foreground class with the largest labelled volume). ``labels``: per case,
    ``[1, *S]`` class indices or ``[K, *S]`` one-hot.
    """
    if isinstance(targets, SegmentationTarget):
        targets = targets.category
    if targets is not None and (isinstance(targets, bool) or not isinstance(targets, int)):
        raise ConfigError(
            f"`targets` must be an int, a SegmentationTarget or None when masked by the label, not {targets!r}",
            key="targets",
        )
    out = []
    for label in labels:
        label = plain(label).to(device)
        category = _largest_label_class(label) if targets is None else targets
        out.append(SegmentationTarget(category, mask=_label_mask(label, category)[None]))
    return out
