"""What the handler reads from an engine (the batch's images, the output's labels) and the
overlay it logs to TensorBoard."""

from __future__ import annotations

from typing import Any

import torch
from monai.utils import CommonKeys

__all__ = ["default_batch_transform", "default_output_transform", "overlay", "unwrap"]


def default_batch_transform(batch: Any) -> Any:
    """The images of ``engine.state.batch``: ``batch["image"]`` of a collated dict, the
    ``"image"`` of each dict of a decollated list, or the first tensor of an
    ``(image, label)`` pair."""
    key = CommonKeys.IMAGE
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        return batch[key]
    if isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
        if isinstance(first, dict):
            return [b[key] for b in batch]
        if isinstance(first, (list, tuple)):  # decollated (image, label) pairs
            return [b[0] for b in batch]
        if isinstance(first, torch.Tensor):
            return first  # an (image [B, C, *S], label) pair, as MONAI's default_prepare_batch reads it
    return batch


def default_output_transform(output: Any) -> Any:
    """The labels of ``engine.state.output`` (``"label"`` of a dict or of each dict of a
    decollated list), or None where there are none."""
    key = CommonKeys.LABEL
    if isinstance(output, dict):
        return output.get(key)
    if isinstance(output, (list, tuple)) and output and all(isinstance(o, dict) for o in output):
        labels = [o.get(key) for o in output]
        return None if any(label is None for label in labels) else labels
    return None


def unwrap(data: Any) -> Any:
    # from_engine(keys) returns a 1-tuple for a collated dict and the bare list for a decollated one
    if isinstance(data, tuple) and len(data) == 1:
        return data[0]
    return data


def _jet(h: torch.Tensor) -> torch.Tensor:
    """The 'jet' colour map of values in [0, 1]: ``[*S] -> [3, *S]``."""
    four = 4.0 * h
    return torch.stack([(1.5 - (four - c).abs()).clamp(0, 1) for c in (3.0, 2.0, 1.0)])


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """An RGB overlay ``[3, H, W]`` of ``heat`` (jet, in [0, 1]) on ``image`` (grey, min-max
    scaled); for 3D ``[*S]`` the slice through the hottest voxel along the last axis."""
    if image.ndim == 3:
        k = int(heat.flatten().argmax()) % heat.shape[-1]
        image, heat = image[..., k], heat[..., k]
    lo, hi = image.amin(), image.amax()
    grey = (image - lo) / (hi - lo) if hi > lo else torch.zeros_like(image)
    return ((1 - alpha) * grey.expand(3, *grey.shape) + alpha * _jet(heat.clamp(0, 1))).clamp(0, 1)
