"""Test-time augmentation of CAMs (``aug_smooth``), for any number of spatial axes.

    cam = volcam.GradCAM(model, "model.2.0.conv")
    heat = cam(x, targets=1, aug_smooth=True)                      # default views
    heat = cam(x, targets=1, aug_smooth=AugSmooth(flips="all", scales=(1.0, 0.9, 1.1)))

Each *view* of the input ``x`` ``[B, C, *S]`` is a flip along some spatial axes and a
zoom about the centre on the same grid (``scale > 1`` magnifies: the view shows the
central ``1/scale`` of the field of view; ``scale < 1`` shrinks it and pads the rim).
All views go through **one** batched :meth:`~volcam.methods.base.BaseCAM.explain` call
(``V * B`` rows; ``batch_size`` splits it into whole views), so the cost is about ``V``
forward (and partial backward) passes. Every map is taken back through the inverse
transform (flip back, inverse zoom with a coverage weight) and the maps are averaged
voxel by voxel over the views that see the voxel:

    map(p) = sum_v T_v^-1[map_v](p) / sum_v T_v^-1[1](p)

The target is bound once, on the un-augmented view (which is always the first view):
its class and its mask (the predicted region by default, or the user's mask) are
carried into every view with the view's own transform, so all views explain the same
class over the same voxels. A callable target that is not a
:class:`~volcam.SegmentationTarget` / :class:`~volcam.ClassifierTarget` cannot be
transformed and is applied to each view's output as it is.

The averaging acts on the raw maps of each target layer, at the layer's resolution
(``res.layer_maps``, ReLU applied, not normalised); the averaged layer maps then go
through the method's usual upsampling, normalisation and layer aggregation
(:meth:`~volcam.methods.base.BaseCAM.combine_layers`), once. ``res.output`` and
``res.scores`` are those of the un-augmented input.

Flips are exact permutations of voxels; zooms resample with N-linear interpolation
(``align_corners=False``), so a network equivariant to flips gives the same map with
flip-only smoothing as without.

``eigen_smooth`` is not here: it is a per-layer option of the engine
(:meth:`volcam.methods.base.BaseCAM.reduce_channels`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from volcam.errors import ConfigError
from volcam.targets import BoundTarget, SegmentationTarget, _PerSample, resolve_targets, warn_empty

__all__ = ["AugSmooth", "View", "explain_augmented", "apply_view", "invert_view"]


@dataclass(frozen=True)
class View:
    """One augmentation: ``flips`` (0-based spatial axes to flip) and a zoom ``scale``."""

    flips: tuple[int, ...] = ()
    scale: float = 1.0

    @property
    def is_identity(self) -> bool:
        return not self.flips and self.scale == 1.0


class AugSmooth:
    """Which views ``aug_smooth`` averages over.

    Args:
        flips: ``"single"`` (no flip, then each spatial axis alone: 3 views in 2D, 4 in
            3D), ``"all"`` (every combination of axes: 4 in 2D, 8 in 3D), ``"none"``, or a
            sequence of tuples of 0-based spatial axes (``[(), (2,), (0, 2)]``).
        scales: zoom factors about the centre; 1.0 is always included. Small values
            (0.9-1.1) keep the anatomy in view.
        batch_size: rows per explain call, in whole views (None: all ``V * B`` rows at
            once). Lower it to bound memory on large volumes.
        max_views: the largest number of views (flips x scales) accepted.
        padding_mode: how zoomed-out views fill the rim (``grid_sample``'s
            ``"border"``, ``"zeros"`` or ``"reflection"``).
    """

    def __init__(
        self,
        flips: str | Sequence[Sequence[int]] = "single",
        scales: Sequence[float] = (1.0, 1.1),
        *,
        batch_size: int | None = None,
        max_views: int = 32,
        padding_mode: str = "border",
    ):
        if isinstance(flips, str) and flips not in ("single", "all", "none"):
            raise ConfigError(
                f"`flips` must be 'single', 'all', 'none' or a list of axis tuples, not {flips!r}", key="flips"
            )
        if not isinstance(flips, str):
            try:
                flips = [tuple(int(a) for a in f) for f in flips]
            except TypeError as err:
                raise ConfigError(
                    f"`flips` must be a list of tuples of spatial axes, not {flips!r}", key="flips"
                ) from err
        try:
            scales = [float(s) for s in scales]
        except (TypeError, ValueError) as err:
            raise ConfigError(f"`scales` must be a sequence of positive numbers, not {scales!r}", key="scales") from err
        if any(not s > 0 for s in scales):
            raise ConfigError(f"`scales` must be positive numbers, not {scales!r}", key="scales")
        bad_batch = isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        if batch_size is not None and bad_batch:
            raise ConfigError(f"`batch_size` must be a positive int or None, not {batch_size!r}", key="batch_size")
        if padding_mode not in ("border", "zeros", "reflection"):
            raise ConfigError(
                f"`padding_mode` must be 'border', 'zeros' or 'reflection', not {padding_mode!r}", key="padding_mode"
            )
        self.flips = flips
        self.scales = [1.0] + [s for s in dict.fromkeys(scales) if s != 1.0]
        self.batch_size = batch_size
        self.max_views = max_views
        self.padding_mode = padding_mode

    def __repr__(self) -> str:
        return f"AugSmooth(flips={self.flips!r}, scales={self.scales})"

    def views(self, spatial_ndim: int) -> list[View]:
        """The views for inputs with ``spatial_ndim`` spatial axes; the identity first."""
        axes = range(spatial_ndim)
        if self.flips == "none":
            sets = [()]
        elif self.flips == "single":
            sets = [()] + [(a,) for a in axes]
        elif self.flips == "all":
            sets = [c for r in range(spatial_ndim + 1) for c in itertools.combinations(axes, r)]
        else:
            sets = [()]
            for f in self.flips:
                bad = [a for a in f if not -spatial_ndim <= a < spatial_ndim]
                if bad:
                    raise ConfigError(
                        f"`flips` must name spatial axes in [0, {spatial_ndim - 1}] for an input with "
                        f"{spatial_ndim} spatial axes, not {f!r}",
                        key="flips",
                    )
                norm = tuple(sorted({a % spatial_ndim for a in f}))
                if norm not in sets:
                    sets.append(norm)
        views = [View(f, s) for s in self.scales for f in sets]
        if len(views) > self.max_views:
            raise ConfigError(
                f"aug_smooth must use at most `max_views` = {self.max_views} views, not {len(views)} "
                f"({len(sets)} flips x {len(self.scales)} scales); use fewer flips or scales, or raise max_views",
                key="max_views",
            )
        return views


# ---------------------------------------------------------------------------------- transforms
def _zoom(t: torch.Tensor, scale: float, mode: str, padding_mode: str) -> torch.Tensor:
    """Magnify ``[B, C, *S]`` by ``scale`` about the centre, on the same grid:
    ``out(u) = t(u / scale)`` in normalised coordinates (``align_corners=False``)."""
    if scale == 1.0:
        return t
    squeeze = t.ndim == 3  # one spatial axis: sample it as a [1, L] image
    if squeeze:
        t = t.unsqueeze(2)
    n = t.ndim - 2
    dtype = t.dtype if t.is_floating_point() else torch.float32
    theta = torch.zeros(t.shape[0], n, n + 1, device=t.device, dtype=dtype)
    theta[:, range(n), range(n)] = 1.0 / scale
    grid = F.affine_grid(theta, list(t.shape), align_corners=False)
    out = F.grid_sample(t.to(dtype), grid, mode=mode, padding_mode=padding_mode, align_corners=False)
    return out.squeeze(2) if squeeze else out


def _flip(t: torch.Tensor, flips: tuple[int, ...]) -> torch.Tensor:
    return t.flip([2 + a for a in flips]) if flips else t


def apply_view(t: torch.Tensor, view: View, *, mode: str = "bilinear", padding_mode: str = "border") -> torch.Tensor:
    """The view of ``[B, C, *S]``: flipped along ``view.flips`` and zoomed by ``view.scale``."""
    return _zoom(_flip(t, view.flips), view.scale, mode, padding_mode)


def invert_view(maps: torch.Tensor, view: View) -> tuple[torch.Tensor, torch.Tensor]:
    """Take maps ``[B, 1, *S]`` of a view back to the original grid.

    Returns ``(maps, coverage)``: the maps resampled on the original grid (zero where the
    view does not see the voxel) and the fraction ``[B, 1, *S]`` in [0, 1] of each voxel
    the view covers; ``sum(maps) / sum(coverage)`` over views is the average.
    """
    ones = torch.ones_like(maps)
    if view.scale != 1.0:
        both = _zoom(torch.cat([maps, ones], 1), 1.0 / view.scale, "bilinear", "zeros")
        maps, ones = both[:, :-1], both[:, -1:]
    return _flip(maps, view.flips), _flip(ones, view.flips)


# ---------------------------------------------------------------------------------- targets
class _Binder:
    """Binds the user's targets once, on the un-augmented rows, and carries them into views."""

    def __init__(self, targets: Any, batch: int):
        self.targets = targets
        self.batch = batch
        self.bound: Any = None

    def bind(self, output: torch.Tensor, views: list[View]) -> Any:
        if self.bound is None:  # the first chunk starts with the identity view
            self.bound = resolve_targets(self.targets, output[: self.batch])
        b = self.bound
        if isinstance(b, BoundTarget):
            cats = b.categories.repeat(len(views))
            if b.masks is None:
                return BoundTarget(cats, None)
            m = b.masks.unsqueeze(1)
            masks = torch.cat([apply_view(m, v, mode="nearest", padding_mode="zeros") for v in views])[:, 0]
            return BoundTarget(cats, masks)
        if isinstance(b, _PerSample):
            return _PerSample(list(b.fns) * len(views))
        return b  # _Callable: applied to every view's output as it is


class _ViewTarget(SegmentationTarget):
    """The target of one chunk of views: binding goes through the shared :class:`_Binder`."""

    def __init__(self, binder: _Binder, views: list[View]):
        super().__init__(0)
        self.binder = binder
        self.views = views

    def __repr__(self) -> str:
        return f"_ViewTarget({self.binder.targets!r}, views={len(self.views)})"

    def bind(self, output: torch.Tensor) -> Any:
        return self.binder.bind(output, self.views)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.bind(output)(output)


# ---------------------------------------------------------------------------------- engine
def explain_augmented(cam: Any, x: torch.Tensor, targets: Any, aug_smooth: Any, *, eigen_smooth: bool = False):
    """:meth:`BaseCAM.explain` with ``aug_smooth``: see the module docstring.

    Args:
        cam: the method instance.
        x: ``[B, C, *S]``.
        targets: as for ``explain``.
        aug_smooth: True (default :class:`AugSmooth`), an :class:`AugSmooth`, or a dict of
            its arguments (config files).

    Returns:
        :class:`~volcam.methods.base.CAMResult`; ``layer_maps`` are the averaged raw maps.
    """
    from volcam.methods.base import CAMResult  # base imports this module lazily

    if aug_smooth is True:
        settings = AugSmooth()
    elif isinstance(aug_smooth, AugSmooth):
        settings = aug_smooth
    elif isinstance(aug_smooth, Mapping):  # from a config file: {"flips": "all", "scales": [1.0, 1.1]}
        try:
            settings = AugSmooth(**aug_smooth)
        except TypeError as err:
            raise ConfigError(
                f"`aug_smooth` settings must be AugSmooth arguments, not {dict(aug_smooth)!r}", key="aug_smooth"
            ) from err
    else:
        raise ConfigError(
            "`aug_smooth` must be True, False, a volcam.smoothing.AugSmooth or a dict of its arguments, "
            f"not {aug_smooth!r}",
            key="aug_smooth",
        )
    views = settings.views(x.ndim - 2)
    batch = x.shape[0]
    per_call = len(views) if settings.batch_size is None else max(1, settings.batch_size // batch)
    binder = _Binder(targets, batch)
    layer_sums: list = []
    layer_covers: list = []
    first = None
    with warnings.catch_warnings():
        # empty masks are reported once below, with the samples' own indices
        warnings.filterwarnings("ignore", message="the target mask of sample", category=RuntimeWarning)
        for start in range(0, len(views), per_call):
            chunk = views[start : start + per_call]
            inputs = torch.cat([apply_view(x, v, padding_mode=settings.padding_mode).to(x.dtype) for v in chunk])
            res = cam.explain(inputs, _ViewTarget(binder, chunk), aug_smooth=False, eigen_smooth=eigen_smooth)
            if first is None:
                first = res
                layer_sums = [0.0] * len(res.layer_maps)
                layer_covers = [0.0] * len(res.layer_maps)
            for i, v in enumerate(chunk):
                rows = slice(i * batch, (i + 1) * batch)
                for j, lm in enumerate(res.layer_maps):
                    m, c = invert_view(lm[rows], v)
                    layer_sums[j] = layer_sums[j] + m
                    layer_covers[j] = layer_covers[j] + c
    with torch.no_grad():
        layer_maps = [s / c.clamp_min(1e-6) for s, c in zip(layer_sums, layer_covers)]
        heat = cam.combine_layers(layer_maps, x)
    if hasattr(binder.bound, "empty"):
        warn_empty(binder.bound)
    return CAMResult(
        heat=heat,
        output=first.output[:batch],
        layer_maps=layer_maps,
        scores=first.scores[:batch] if first.scores is not None else None,
        layer_names=first.layer_names,
    )
