"""Input checks shared by the metrics (torch only)."""

from __future__ import annotations

import torch

from volcam.errors import ArgumentError, ShapeError

__all__ = ["check_map", "check_pair", "as_mask", "spatial_dims"]


def spatial_dims(t: torch.Tensor) -> tuple[int, ...]:
    """The spatial axes of a ``[B, C, *S]`` tensor: ``(2, ..., t.ndim - 1)``."""
    return tuple(range(2, t.ndim))


def check_map(t, name: str = "heat") -> torch.Tensor:
    """Check that ``t`` is a tensor ``[B, 1, *S]`` with one to three spatial axes."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor [B, 1, *S], not {type(t).__name__}")
    if t.ndim not in (3, 4, 5) or t.shape[1] != 1:
        raise ShapeError(
            f"`{name}` must have shape [B, 1, *S] with 1 to 3 spatial axes, not {tuple(t.shape)}",
            expected="[B, 1, *S]",
            actual_shape=tuple(t.shape),
        )
    return t


def check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str] = ("heat", "mask")) -> None:
    """Check two maps ``[B, 1, *S]`` of the same shape on the same device."""
    check_map(a, names[0])
    check_map(b, names[1])
    if a.shape != b.shape:
        raise ShapeError(
            f"`{names[1]}` must have the shape of `{names[0]}` {tuple(a.shape)}, not {tuple(b.shape)}",
            expected=str(tuple(a.shape)),
            actual_shape=tuple(b.shape),
        )
    if a.device != b.device:
        raise ArgumentError(f"`{names[1]}` must be on the device of `{names[0]}` ({a.device}), not {b.device}")


def as_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean view of a mask: nonzero voxels are inside."""
    return mask if mask.dtype == torch.bool else mask != 0
