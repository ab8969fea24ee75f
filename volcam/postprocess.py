"""N-D post-processing of raw CAMs (torch only, on the maps' device): upsampling,
per-sample normalisation and multi-layer aggregation. Maps are ``[B, 1, *S]`` with one,
two or three spatial axes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from volcam.errors import ShapeError

__all__ = ["spatial_dims", "upsample", "normalize", "aggregate"]

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def spatial_dims(t: torch.Tensor) -> tuple[int, ...]:
    """The spatial axes ``(2, ..., ndim-1)`` of a ``[B, C, *S]`` tensor."""
    return tuple(range(2, t.ndim))


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``[B, C, *S]`` to ``[B, C, *size]`` with N-linear interpolation
    (``align_corners=False``); returned unchanged if already that size."""
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[2:]) == size:
        return maps
    n = maps.ndim - 2
    if n not in _MODES or len(size) != n:
        raise ShapeError(
            f"maps of shape [B, C, *S] with 1 to 3 spatial axes can be resized to a size with as many axes; "
            f"got maps {list(maps.shape)} and size {list(size)}",
            expected=f"{n} spatial sizes",
            actual_shape=tuple(maps.shape),
        )
    return F.interpolate(maps, size=size, mode=_MODES[n], align_corners=False)


def normalize(maps: torch.Tensor, rtol: float = 1e-5) -> torch.Tensor:
    """Min-max normalise each map of ``[B, C, *S]`` to [0, 1] over its spatial axes.

    A map whose spread ``max - min`` is at most ``rtol`` times its magnitude
    ``max(|min|, |max|)`` counts as constant and becomes all zero, never NaN: a constant
    map keeps a spread of a few float32 ulps after upsampling (about 1e-7 of its value),
    which must not be stretched into structure. The default ``rtol`` (1e-5) is some 80
    ulps; a map that really varies by less than that relative to its offset (only
    possible with ``relu=False``) is treated as constant too.
    """
    dims = spatial_dims(maps)
    lo = maps.amin(dim=dims, keepdim=True)
    hi = maps.amax(dim=dims, keepdim=True)
    span = hi - lo
    scale = torch.maximum(lo.abs(), hi.abs())
    flat = span <= rtol * scale
    return torch.where(flat, torch.zeros_like(maps), (maps - lo) / torch.where(flat, torch.ones_like(span), span))


def aggregate(
    maps: Sequence[torch.Tensor],
    size: Sequence[int] | None,
    *,
    normalize_maps: bool = True,
) -> torch.Tensor:
    """Combine per-layer maps ``[B, 1, *S_layer]`` into one ``[B, 1, *size]``.

    Each map is upsampled to ``size`` (None: keep; then all maps must share a shape),
    normalised (if ``normalize_maps``), and the maps are averaged. With several layers the
    average is normalised again so the result spans [0, 1].
    """
    resized = [upsample(m, size) if size is not None else m for m in maps]
    shapes = {tuple(m.shape) for m in resized}
    if len(shapes) > 1:
        raise ShapeError(
            f"maps of several layers can only be combined at one size; got {sorted(shapes)}. "
            "Keep upsampling on, or explain one layer at a time",
            expected="one shape",
            actual_shape=tuple(resized[0].shape),
        )
    if normalize_maps:
        resized = [normalize(m) for m in resized]
    out = resized[0] if len(resized) == 1 else torch.stack(resized, 0).mean(0)
    if normalize_maps and len(resized) > 1:
        out = normalize(out)
    return out
