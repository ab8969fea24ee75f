"""Arrays at the edges: numpy views of tensors and MetaTensors, spatial volumes out of
channel-first data. Used by the I/O and figure modules; the engine never imports it."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from volcam.errors import ShapeError

__all__ = ["is_meta_tensor", "to_numpy", "spatial_array"]


def is_meta_tensor(x: Any) -> bool:
    """True for a MONAI MetaTensor, without importing MONAI when it is not loaded."""
    mod = sys.modules.get("monai.data.meta_tensor")
    return mod is not None and isinstance(x, mod.MetaTensor)


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view or copy of an array, tensor or MetaTensor (on the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if is_meta_tensor(x):
            x = x.as_tensor()
        return x.cpu().numpy()
    return np.asarray(x)


def spatial_array(volume: Any, shape: tuple | None, *, what: str, where: str) -> np.ndarray:
    """``volume`` as a numpy array of spatial shape ``shape`` (None: any 2D or 3D shape).

    A MetaTensor is channel-first and must have one channel; leading singleton axes of plain
    arrays (the engine's ``[1, 1, *S]``) are dropped.

    Raises:
        ShapeError: the volume does not have (or cannot be brought to) that shape; the
            message says ``what`` it is and ``where`` the shape comes from.
    """
    arr = to_numpy(volume)
    given = tuple(arr.shape)
    if is_meta_tensor(volume):
        if arr.ndim < 2 or arr.shape[0] != 1:
            raise ShapeError(
                f"{what} must have one channel ([1, *S]), not shape {given}; select one, e.g. x[:1]",
                expected="[1, *S]",
                actual_shape=given,
            )
        arr = arr[0]
    if shape is not None:
        target = tuple(shape)
        while arr.ndim > len(target) and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim < len(target) and target[arr.ndim :] == (1,) * (len(target) - arr.ndim):
            arr = arr.reshape(target)
        if tuple(arr.shape) != target:
            raise ShapeError(
                f"{what} must have the spatial shape of {where}, {target}, not {given}",
                expected=str(target),
                actual_shape=given,
            )
    else:
        while arr.ndim > 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim not in (2, 3):
            raise ShapeError(
                f"{what} must be a 2D or 3D volume ([*S], [1, *S] or [1, 1, *S]), not shape {given}",
                expected="[*S] with 2 or 3 spatial axes",
                actual_shape=given,
            )
    return arr
