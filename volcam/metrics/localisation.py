"""Localisation: does the heat map sit on the structure it claims to explain?

Every function takes a heat map ``heat`` ``[B, 1, *S]`` (any non-negative scale; volcam's
maps are in [0, 1]) and a mask ``[B, 1, *S]`` (bool, or numeric with nonzero = inside, e.g.
a ground-truth label or the model's prediction), with one to three spatial axes, and
returns one value per sample, ``[B]``, on the input's device. Nothing loops over the batch.

Metrics

    energy_pointing_game   fraction of the map's energy (sum of its values) inside the mask
                           (Wang et al. 2020, "Score-CAM", energy-based pointing game).
    pointing_game          whether the hottest voxel lies in the mask (Zhang et al. 2018),
                           optionally with a tolerance in voxels.
    iou, dice              overlap of two binary masks.
    binarize               the map thresholded at a level, or its ``k`` hottest voxels
                           (``k`` = the mask's own volume by default in :func:`localisation`).
    localisation           all of the above in one dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from volcam.errors import ArgumentError
from volcam.metrics._common import as_mask, check_map, check_pair, spatial_dims

__all__ = [
    "energy_pointing_game",
    "pointing_game",
    "binarize",
    "top_k_mask",
    "iou",
    "dice",
    "localisation",
]


def energy_pointing_game(heat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of the map's energy inside the mask.

    ``sum(heat * mask) / sum(heat)`` per sample, negative values counted as zero. 1 when all
    of the map is inside, the mask's volume fraction for a constant map, NaN for a map that
    is zero everywhere.

    Args:
        heat: ``[B, 1, *S]`` heat map.
        mask: ``[B, 1, *S]`` mask of the same shape.

    Returns:
        ``[B]`` float tensor in [0, 1].
    """
    check_pair(heat, mask)
    h = heat.float().clamp_min(0)
    dims = spatial_dims(h)
    inside = (h * as_mask(mask)).sum(dim=dims).squeeze(1)
    total = h.sum(dim=dims).squeeze(1)
    return inside / total  # 0/0 -> NaN for an empty map, on purpose


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilate a bool mask ``[B, 1, *S]`` by a cube of half-width ``radius`` (Chebyshev ball)."""
    if radius <= 0:
        return mask
    pool = getattr(F, f"max_pool{mask.ndim - 2}d")
    return pool(mask.float(), kernel_size=2 * radius + 1, stride=1, padding=radius) > 0


def pointing_game(heat: torch.Tensor, mask: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Whether the hottest voxel of the map lies inside the mask.

    When several voxels share the maximum (flat tops, constant maps), the result is the
    fraction of them that lie inside, so that ties are neither rewarded nor punished
    arbitrarily: a constant map scores the mask's volume fraction.

    Args:
        heat: ``[B, 1, *S]`` heat map.
        mask: ``[B, 1, *S]`` mask.
        tolerance: a hit also counts within this many voxels of the mask (Chebyshev
            distance; the original pointing game used 15 pixels on natural images).

    Returns:
        ``[B]`` float tensor in [0, 1] (1 = hit, 0 = miss).
    """
    check_pair(heat, mask)
    if not isinstance(tolerance, int) or isinstance(tolerance, bool) or tolerance < 0:
        raise ArgumentError(f"`tolerance` must be a non-negative int (voxels), not {tolerance!r}")
    dims = spatial_dims(heat)
    top = heat == heat.amax(dim=dims, keepdim=True)
    inside = _dilate(as_mask(mask), tolerance)
    hits = (top & inside).sum(dim=dims).squeeze(1)
    return hits.float() / top.sum(dim=dims).squeeze(1).float()


def top_k_mask(heat: torch.Tensor, k) -> torch.Tensor:
    """The ``k`` hottest voxels of each sample, exactly ``k`` of them.

    Ties at the cut are broken by voxel order (stable sort), so the selected volume is
    always exactly ``k``.

    Args:
        heat: ``[B, 1, *S]`` heat map.
        k: an int or a ``[B]`` integer tensor (one count per sample).

    Returns:
        ``[B, 1, *S]`` bool tensor.
    """
    check_map(heat)
    b = heat.shape[0]
    flat = heat.reshape(b, -1)
    k = torch.as_tensor(k, device=heat.device).reshape(-1).expand(b)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=heat.device).expand(b, -1))
    return (rank < k[:, None]).reshape(heat.shape)


def binarize(heat: torch.Tensor, level: float | None = None, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Turn a heat map into a binary region.

    Args:
        heat: ``[B, 1, *S]`` heat map.
        level: keep voxels with ``heat >= level``. ``None``: keep the ``k`` hottest voxels,
            ``k`` being the volume of ``mask`` in each sample (the map is then compared
            with the mask at equal volume, which needs no threshold to be chosen).
        mask: ``[B, 1, *S]`` reference mask, needed when ``level`` is None.

    Returns:
        ``[B, 1, *S]`` bool tensor.
    """
    check_map(heat)
    if level is not None:
        return heat >= level
    if mask is None:
        raise ArgumentError("`mask` must be given when `level` is None (the region takes the mask's volume), not None")
    check_pair(heat, mask)
    volume = as_mask(mask).reshape(heat.shape[0], -1).sum(dim=1)
    return top_k_mask(heat, volume)


def _overlap(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_pair(a, b, ("a", "b"))
    a, b = as_mask(a), as_mask(b)
    dims = spatial_dims(a)
    inter = (a & b).sum(dim=dims).squeeze(1).float()
    size_a = a.sum(dim=dims).squeeze(1).float()
    size_b = b.sum(dim=dims).squeeze(1).float()
    return inter, size_a, size_b


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of two masks ``[B, 1, *S]``, per sample ``[B]``.

    NaN where both masks are empty (nothing to compare), as MONAI's metrics do with
    ``ignore_empty=True``.
    """
    inter, size_a, size_b = _overlap(a, b)
    return inter / (size_a + size_b - inter)


def dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dice coefficient ``2|A∩B| / (|A| + |B|)`` of two masks ``[B, 1, *S]``, per sample ``[B]``.

    NaN where both masks are empty.
    """
    inter, size_a, size_b = _overlap(a, b)
    return 2 * inter / (size_a + size_b)


def localisation(
    heat: torch.Tensor, mask: torch.Tensor, *, level: float | None = None, tolerance: int = 0
) -> dict[str, torch.Tensor]:
    """All localisation metrics of a map against a mask.

    Args:
        heat: ``[B, 1, *S]`` heat map.
        mask: ``[B, 1, *S]`` mask (ground truth or prediction).
        level: threshold for IoU and Dice; ``None`` (default) compares the mask with the
            map's hottest voxels at the mask's own volume.
        tolerance: pointing-game tolerance in voxels.

    Returns:
        dict of ``[B]`` tensors: ``"energy"`` (energy pointing game), ``"pointing"``
        (hottest voxel inside), ``"iou"``, ``"dice"``.
    """
    check_pair(heat, mask)
    region = binarize(heat, level, mask=mask)
    return {
        "energy": energy_pointing_game(heat, mask),
        "pointing": pointing_game(heat, mask, tolerance),
        "iou": iou(region, mask),
        "dice": dice(region, mask),
    }
