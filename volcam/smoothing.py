"""Test-time augmentation of CAMs (``aug_smooth``), for any number of spatial axes.

    cam = volcam.GradCAM(model, "model.2.0.conv")
    heat = cam(x, targets=1, aug_smooth=True)                      # default views
    heat = cam(x, targets=1, aug_smooth=AugSmooth(flips="all", scales=(1.0, 0.9, 1.1)))

Each *view* of the input ``x`` ``[B, C, *S]`` is a flip along some spatial axes and a
zoom about the centre on the same grid (``scale > 1`` magnifies: the view shows the
central ``1/scale`` of the field of view; ``scale < 1`` shrinks it and pads the rim).
All views go through **one** batched computation of the engine (``V * B`` rows;
``batch_size`` splits it into whole views), so the cost is about ``V`` forward (and
partial backward) passes. Several targets (:meth:`~volcam.BaseCAM.explain_classes`) share
those passes. Every map is taken back through the inverse
transform (flip back, inverse zoom with a coverage weight) and the maps are averaged
voxel by voxel over the views that see the voxel:

    map(p) = sum_v T_v^-1[map_v](p) / sum_v T_v^-1[1](p)

The target is bound once, on the un-augmented view (which is always the first view):
its class and its mask (the predicted region by default, or the user's mask) are
carried into every view with the view's own transform, so all views explain the same
class over the same voxels. A target that does not bind to a category and a mask (a
plain callable) cannot be transformed and is applied to each view's output as it is.

The averaging acts on the raw maps of each target layer, at the layer's resolution
(``res.layer_maps``, ReLU applied, not normalised); the averaged layer maps then go
through the method's usual upsampling, normalisation and layer aggregation
(:meth:`~volcam.methods.base.BaseCAM.combine_layers`), once.

This module sits below the engine: the engine hands it the function that computes one
batch of views, and it returns the averaged result with the evidence the engine checks. ``res.output`` and
``res.scores`` are those of the un-augmented input.

Flips are exact permutations of voxels; zooms resample with N-linear interpolation
(``align_corners=False``), so a network equivariant to flips gives the same map with
flip-only smoothing as without.

``eigen_smooth`` is not here: it is a per-layer option of the engine
(:meth:`volcam.methods.base.BaseCAM.reduce_channels`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from volcam.checks import one_of, positive_int
from volcam.diagnostics import Evidence, merge_views
from volcam.errors import ArgumentError, ConfigError
from volcam.result import CAMResult
from volcam.targets import BoundTarget, Scorer, TargetSpec, _PerSample, empty_rows, resolve_targets

__all__ = ["AugSmooth", "View", "as_settings", "explain_augmented", "apply_view", "invert_view"]


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

    Raises:
        ArgumentError: for a bad argument (naming it).
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
        parsed: str | list[tuple[int, ...]]
        if isinstance(flips, str):
            parsed = one_of(flips, ("single", "all", "none"), "flips")
        else:
            try:
                parsed = [tuple(int(a) for a in f) for f in flips]
            except (TypeError, ValueError) as err:
                raise ArgumentError(
                    f"`flips` must be 'single', 'all', 'none' or a list of tuples of spatial axes, not {flips!r}",
                    name="flips",
                ) from err
        try:
            values = [float(s) for s in scales]
        except (TypeError, ValueError) as err:
            raise ArgumentError(
                f"`scales` must be a sequence of positive numbers, not {scales!r}", name="scales"
            ) from err
        if any(not s > 0 for s in values):
            raise ArgumentError(f"`scales` must be positive numbers, not {scales!r}", name="scales")
        self.flips = parsed
        self.scales = [1.0] + [s for s in dict.fromkeys(values) if s != 1.0]
        self.batch_size = positive_int(batch_size, "batch_size", allow_none=True)
        self.max_views = positive_int(max_views, "max_views")
        self.padding_mode = one_of(padding_mode, ("border", "zeros", "reflection"), "padding_mode")

    def __repr__(self) -> str:
        return f"AugSmooth(flips={self.flips!r}, scales={self.scales})"

    def views(self, spatial_ndim: int) -> list[View]:
        """The views for inputs with ``spatial_ndim`` spatial axes; the identity first."""
        axes = range(spatial_ndim)
        sets: list[tuple[int, ...]]
        if self.flips == "none":
            sets = [()]
        elif self.flips == "single":
            sets = [()] + [(a,) for a in axes]
        elif self.flips == "all":
            sets = [c for r in range(spatial_ndim + 1) for c in itertools.combinations(axes, r)]
        elif not isinstance(self.flips, str):
            sets = [()]
            for f in self.flips:
                bad = [a for a in f if not -spatial_ndim <= a < spatial_ndim]
                if bad:
                    raise ArgumentError(
                        f"`flips` must name spatial axes in [0, {spatial_ndim - 1}] for an input with "
                        f"{spatial_ndim} spatial axes, not {f!r}",
                        name="flips",
                    )
                norm = tuple(sorted({a % spatial_ndim for a in f}))
                if norm not in sets:
                    sets.append(norm)
        views = [View(f, s) for s in self.scales for f in sets]
        if len(views) > self.max_views:
            raise ArgumentError(
                f"aug_smooth must use at most `max_views` = {self.max_views} views, not {len(views)} "
                f"({len(sets)} flips x {len(self.scales)} scales); use fewer flips or scales, or raise max_views",
                name="max_views",
            )
        return views


def as_settings(aug_smooth: Any) -> AugSmooth:
    """``aug_smooth`` as an :class:`AugSmooth`: True (the defaults), an :class:`AugSmooth`,
    or a dict of its arguments (from a configuration file: bad values raise
    :class:`~volcam.errors.ConfigError` naming ``aug_smooth.<argument>``)."""
    if aug_smooth is True:
        return AugSmooth()
    if isinstance(aug_smooth, AugSmooth):
        return aug_smooth
    if isinstance(aug_smooth, Mapping):
        try:
            return AugSmooth(**aug_smooth)
        except TypeError as err:
            raise ConfigError(
                f"`aug_smooth` settings must be AugSmooth arguments, not {dict(aug_smooth)!r}", key="aug_smooth"
            ) from err
        except ArgumentError as err:
            raise ConfigError(str(err), key=f"aug_smooth.{err.name}") from err
    raise ArgumentError(
        "`aug_smooth` must be True, False, a volcam.smoothing.AugSmooth or a dict of its arguments, "
        f"not {aug_smooth!r}",
        name="aug_smooth",
    )


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
    """Take maps ``[B, T, *S]`` of a view back to the original grid.

    Returns ``(maps, coverage)``: the maps resampled on the original grid (zero where the
    view does not see the voxel) and the fraction ``[B, 1, *S]`` in [0, 1] of each voxel
    the view covers; ``sum(maps) / sum(coverage)`` over views is the average.
    """
    ones = torch.ones_like(maps[:, :1])
    if view.scale != 1.0:
        both = _zoom(torch.cat([maps, ones], 1), 1.0 / view.scale, "bilinear", "zeros")
        maps, ones = both[:, :-1], both[:, -1:]
    return _flip(maps, view.flips), _flip(ones, view.flips)


# ---------------------------------------------------------------------------------- targets
class _Binder:
    """Binds one of the user's targets once, on the un-augmented rows, and carries it into views."""

    def __init__(self, target: TargetSpec, batch: int):
        self.target = target
        self.batch = batch
        self.bound: Scorer | None = None

    def bind(self, output: torch.Tensor, views: list[View]) -> Scorer:
        if self.bound is None:  # the first chunk starts with the identity view
            self.bound = resolve_targets(self.target, output[: self.batch])
        b = self.bound
        if isinstance(b, BoundTarget):
            cats = b.categories.repeat(len(views))
            if b.masks is None:
                return BoundTarget(cats, None)
            m = b.masks.unsqueeze(1).float()
            masks = torch.cat([apply_view(m, v, mode="nearest", padding_mode="zeros") for v in views])[:, 0]
            return BoundTarget(cats, masks)
        if isinstance(b, _PerSample):
            return _PerSample(list(b.fns) * len(views))
        return b  # a user callable: applied to every view's output as it is


class _ViewTarget:
    """The target of one chunk of views (a :class:`~volcam.targets.Target`): binding goes
    through the shared :class:`_Binder`."""

    def __init__(self, binder: _Binder, views: list[View]):
        self.binder = binder
        self.views = views

    def __repr__(self) -> str:
        return f"_ViewTarget({self.binder.target!r}, views={len(self.views)})"

    def bind(self, output: torch.Tensor) -> Scorer:
        return self.binder.bind(output, self.views)


# ---------------------------------------------------------------------------------- engine
Compute = Callable[[torch.Tensor, list[Any]], tuple[CAMResult, Evidence]]


def explain_augmented(
    compute: Compute,
    combine_layers: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    targets: Sequence[TargetSpec],
    settings: AugSmooth,
) -> tuple[CAMResult, Evidence]:
    """The engine's computation with ``aug_smooth``: see the module docstring.

    Args:
        compute: one un-augmented computation ``(inputs [V * B, C, *S], targets) -> (result, evidence)``.
        combine_layers: the method's aggregation of raw layer maps into the heat.
        x: ``[B, C, *S]``.
        targets: ``T`` target specifications.
        settings: the views.

    Returns:
        The :class:`~volcam.result.CAMResult` (``layer_maps`` are the averaged raw maps
        ``[B, T, *S_layer]``) and the evidence of all views together.
    """
    views = settings.views(x.ndim - 2)
    batch = x.shape[0]
    per_call = len(views) if settings.batch_size is None else max(1, settings.batch_size // batch)
    binders = [_Binder(t, batch) for t in targets]
    layer_sums: list[torch.Tensor] = []
    layer_covers: list[torch.Tensor] = []
    first: CAMResult | None = None
    evidence: list[Evidence] = []
    for start in range(0, len(views), per_call):
        chunk = views[start : start + per_call]
        inputs = torch.cat([apply_view(x, v, padding_mode=settings.padding_mode).to(x.dtype) for v in chunk])
        res, ev = compute(inputs, [_ViewTarget(b, chunk) for b in binders])
        evidence.append(ev)
        if first is None:
            first = res
        for i, v in enumerate(chunk):
            rows = slice(i * batch, (i + 1) * batch)
            for j, lm in enumerate(res.layer_maps):
                m, c = invert_view(lm[rows], v)
                if len(layer_sums) <= j:
                    layer_sums.append(m)
                    layer_covers.append(c)
                else:
                    layer_sums[j] = layer_sums[j] + m
                    layer_covers[j] = layer_covers[j] + c
    if first is None:
        raise ArgumentError("aug_smooth must have at least one view", name="aug_smooth")
    with torch.no_grad():
        layer_maps = [s / c.clamp_min(1e-6) for s, c in zip(layer_sums, layer_covers)]
        heat = combine_layers(layer_maps, x)
    merged = merge_views(evidence, len(views), batch)
    merged.nonfinite_input = (~torch.isfinite(x)).sum() if x.is_floating_point() else torch.zeros((), dtype=torch.long)
    merged.nonfinite_output = (~torch.isfinite(first.output[:batch])).sum()
    merged.empty_target = torch.stack(
        [
            empty_rows(b.bound, batch, x.device) if b.bound is not None else merged.empty_target[:, i]
            for i, b in enumerate(binders)
        ],
        1,
    )
    result = CAMResult(
        heat=heat,
        output=first.output[:batch],
        layer_maps=layer_maps,
        scores=first.scores[:batch] if first.scores is not None else None,
        layer_names=first.layer_names,
    )
    return result, merged
