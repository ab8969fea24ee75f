"""Rendering state of one case: the image, heat and mask in RAS+ voxel order with the
display settings (window, colour map, opacity, convention); slices to RGB."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import matplotlib.colors as mcolors
import matplotlib.figure
import numpy as np

from volcam.arrays import is_meta_tensor, spatial_array, to_numpy
from volcam.errors import ArgumentError, ValueRangeError
from volcam.geometry import AXES, Canonical, as_affine

_AXIS_NAMES = {v: k for k, v in AXES.items()}
_WORLD = "xyz"

#: CT windows in Hounsfield units, (low, high) = level -/+ width / 2.
WINDOWS = {
    "brain": (0.0, 80.0),  # level 40, width 80
    "soft_tissue": (-160.0, 240.0),  # level 40, width 400
    "lung": (-1350.0, 150.0),  # level -600, width 1500
    "bone": (-500.0, 1300.0),  # level 400, width 1800
}

_CONVENTIONS = ("radiological", "neurological")
_MAX_WINDOW_SAMPLES = 1_000_000

WindowLike = None | str | Sequence[float]


# --------------------------------------------------------------------------- input handling


def _check_choice(value: Any, choices: Sequence[str], key: str) -> str:
    if value not in choices:
        raise ArgumentError(f"`{key}` must be one of {list(choices)}, not {value!r}", name=key)
    return value


def window_for(image: Any, percentiles: Sequence[float] = (0.5, 99.5)) -> tuple[float, float]:
    """Grey-level window ``(low, high)`` of a whole volume from two percentiles.

    Computed on at most a million evenly strided voxels (NaN/inf ignored), so it takes
    milliseconds on a 512x512x300 CT and gives every figure of a case the same window.

    Args:
        image: the volume (array, tensor, MetaTensor; any shape).
        percentiles: lower and upper percentile in [0, 100].

    Returns:
        ``(low, high)`` with ``high > low`` (a constant image gets ``(v, v + 1)``).
    """
    p_lo, p_hi = float(percentiles[0]), float(percentiles[1])
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise ArgumentError(
            f"`percentiles` must be increasing within [0, 100], not {tuple(percentiles)}", name="percentiles"
        )
    arr = to_numpy(image)
    flat = arr.reshape(-1)
    step = max(1, flat.size // _MAX_WINDOW_SAMPLES)
    sample = flat[::step]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(sample, [p_lo, p_hi])
    lo, hi = float(lo), float(hi)
    if hi <= lo:
        hi = lo + 1.0
    return (lo, hi)


def _resolve_window(window: WindowLike, image: np.ndarray) -> tuple[float, float]:
    if window is None:
        return window_for(image)
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ArgumentError(
                f"`window` must be (low, high) or one of {sorted(WINDOWS)}, not {window!r}", name="window"
            )
        return WINDOWS[window]
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError) as err:
        raise ArgumentError(
            f"`window` must be (low, high), a preset name or None, not {window!r}", name="window"
        ) from err
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ArgumentError(f"`window` must be (low, high) with low < high, not {window!r}", name="window")
    return (lo, hi)


def _resolve_range(heat_range: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in heat_range)
    except (TypeError, ValueError) as err:
        raise ArgumentError(f"`heat_range` must be (low, high), not {heat_range!r}", name="heat_range") from err
    if not hi > lo:
        raise ArgumentError(f"`heat_range` must be (low, high) with low < high, not {heat_range!r}", name="heat_range")
    return (lo, hi)


def _colormap(cmap: Any):
    if isinstance(cmap, mcolors.Colormap):
        return cmap
    try:
        return matplotlib.colormaps[cmap]
    except (KeyError, TypeError) as err:
        raise ArgumentError(
            f"`cmap` must be a matplotlib colormap or its name (e.g. 'jet', 'hot', 'inferno'), not {cmap!r}",
            name="cmap",
        ) from err


class Scene:
    """The image of one case reoriented (flips/transposes, no resampling) to RAS+ voxel order,
    with the display settings; built once per case and shared by every heat volume drawn
    over it (:meth:`with_heat`).

    ``raster=True`` is for 2D raster images (PNG, JPEG, ...), which carry no anatomical
    orientation: slices are drawn in the image's own pixel layout (rows down, columns right,
    for MONAI's ``[W, H]`` arrays), without orientation letters, in pixel units.
    """

    def __init__(
        self,
        image: Any,
        affine: Any = None,
        *,
        window: WindowLike = None,
        cmap: Any = "jet",
        alpha: float = 0.5,
        threshold: float = 0.0,
        blend: str = "scaled",
        heat_range: Sequence[float] = (0.0, 1.0),
        outline_color: Any = "white",
        convention: str = "radiological",
        raster: bool = False,
        others: Sequence[Any] = (),
    ):
        img = spatial_array(image, None, what="image", where="")
        if affine is None:
            for x in (image, *others):
                if is_meta_tensor(x):
                    affine = x.affine
                    break
        self.raster = bool(raster)
        if affine is None and self.raster:
            affine = np.eye(4)
        if affine is None:
            raise ArgumentError(
                "`affine` is needed to name slice axes anatomically; pass affine= or MetaTensor inputs", name="affine"
            )
        aff = as_affine(affine)
        self.is_2d = img.ndim == 2
        if self.raster and not self.is_2d:
            raise ArgumentError(f"a raster image must be 2D, not shape {img.shape}", name="image")
        if self.raster:
            aff = np.eye(4)
        if self.is_2d:
            img = img[..., None]
        canon = Canonical.of(aff, img.shape)
        self.canonical = canon
        self.source_shape = img.shape
        self.source_affine = aff
        self.ornt = canon.ornt
        self.image = canon.apply(img)
        self.affine = canon.affine
        self.zooms = canon.zooms
        self.shape = self.image.shape
        self.default_axis = _AXIS_NAMES[int(canon.ornt[2, 0])] if self.is_2d else "axial"

        self.window = _resolve_window(window, img)
        self.heat_range = _resolve_range(heat_range)
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ArgumentError(f"`alpha` must lie in [0, 1], not {alpha}", name="alpha")
        self.alpha = alpha
        self.threshold = float(threshold)
        self.blend_mode = _check_choice(blend, ("scaled", "constant"), "blend")
        self.cmap = _colormap(cmap)
        self.lut = self.cmap(np.linspace(0.0, 1.0, self.cmap.N))[:, :3].astype(np.float32)
        self.outline_rgb = np.rint(np.asarray(mcolors.to_rgb(outline_color)) * 255.0).astype(np.uint8)
        self._tables: dict[float, np.ndarray] = {}
        self.convention = _check_choice(convention, _CONVENTIONS, "convention")

    def reorient(self, volume: Any, what: str) -> np.ndarray:
        """A volume on the image's grid, in the scene's RAS+ voxel order."""
        arr = spatial_array(
            volume, self.source_shape[:2] if self.is_2d else self.source_shape, what=what, where="the image"
        )
        return self.canonical.apply(arr)

    def with_heat(self, heat: Any, mask: Any = None) -> _Case:
        """The scene with a heat volume (and an optional mask outline) drawn over it."""
        return _Case(self, self.reorient(heat, "heat"), None if mask is None else self.reorient(mask, "mask"))


class _Case:
    """A :class:`Scene` with one heat volume and an optional mask; renders any slice to RGB.

    Image-level attributes (``image``, ``shape``, ``window``, ...) are the scene's."""

    def __init__(self, scene: Scene, heat: np.ndarray, mask: np.ndarray | None):
        self.scene = scene
        self.heat = heat
        self.mask = mask

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scene, name)

    # geometry -------------------------------------------------------------------------
    def axis_index(self, axis: str | None) -> int:
        return AXES[_check_choice(axis if axis is not None else self.default_axis, tuple(AXES), "axis")]

    def check_index(self, a: int, index: int) -> int:
        n = self.shape[a]
        index = int(index)
        if not 0 <= index < n:
            raise ValueRangeError(f"{_AXIS_NAMES[a]} slice index must lie in [0, {n - 1}], not {index}")
        return index

    def plane(self, vol: np.ndarray, a: int, k: int) -> np.ndarray:
        """2D display array of slice k across world axis a (see the module doc)."""
        return self.section(np.moveaxis(vol, a, 0)[k], a)

    def section(self, s: np.ndarray, a: int) -> np.ndarray:
        """A slice across world axis a (the other two canonical axes, in order) -> display."""
        if self.raster:  # the image's own layout: array [W, H] -> rows down, columns right
            return s.T
        d = s.T[::-1]
        if a == 0 or self.convention == "radiological":
            d = d[:, ::-1]
        return d

    def slab(self, vol: np.ndarray | None, a: int, k0: int, k1: int) -> np.ndarray | None:
        """Slices k0..k1-1 across axis a as one contiguous copy, slice-major. Copying a few
        neighbouring slices at once reads memory in whole cache lines, where one slice of
        a (X, Y, Z) array across Z would touch a cache line per voxel."""
        if vol is None:
            return None
        return np.ascontiguousarray(np.moveaxis(vol, a, 0)[k0:k1])

    def in_plane_axes(self, a: int) -> tuple[int, int]:
        """(row axis, column axis) of the display, as canonical world axes."""
        return {2: (1, 0), 1: (2, 0), 0: (2, 1)}[a]

    def aspect(self, a: int) -> float:
        r, c = self.in_plane_axes(a)
        return float(self.zooms[r] / self.zooms[c])

    def display_position(self, a: int, voxel: Sequence[float]) -> tuple[float, float]:
        """(row, col) on slice display of axis a of a canonical voxel position."""
        r, c = self.in_plane_axes(a)
        if self.raster:
            return voxel[r], voxel[c]
        row = self.shape[r] - 1 - voxel[r]
        flip = a == 0 or self.convention == "radiological"
        col = self.shape[c] - 1 - voxel[c] if flip else voxel[c]
        return row, col

    def edge_letters(self, a: int) -> dict[str, str] | None:
        """Orientation letters of the display edges (None for raster images)."""
        if self.raster:
            return None
        right_left = ("R", "L") if self.convention == "radiological" else ("L", "R")
        if a == 2:
            return {"top": "A", "bottom": "P", "left": right_left[0], "right": right_left[1]}
        if a == 1:
            return {"top": "S", "bottom": "I", "left": right_left[0], "right": right_left[1]}
        return {"top": "S", "bottom": "I", "left": "A", "right": "P"}

    def slice_world(self, a: int, k: int) -> float:
        centre = (np.asarray(self.shape, dtype=np.float64) - 1) / 2
        centre[a] = k
        return float((self.affine[:3, :3] @ centre + self.affine[:3, 3])[a])

    def label(self, a: int, k: int) -> str:
        if self.raster:
            return "pixels"
        return f"{_AXIS_NAMES[a]} {k}  ({_WORLD[a]} = {self.slice_world(a, k):+.1f} mm)"

    def source_index(self, voxel: Sequence[int]) -> tuple[int, ...]:
        """The index in the source array (as stored) of a RAS+ voxel of the scene."""
        idx = np.rint(self.canonical.to_source_index(voxel)).astype(int)
        return tuple(int(v) for v in idx[: 2 if self.is_2d else 3])

    # rendering ------------------------------------------------------------------------
    def blend_table(self, alpha: float) -> np.ndarray:
        """uint8 [(N + 1) * 256, 3]: the blended colour of every (heat colour index, grey
        level) pair; row N (no heat drawn) is the plain grey. Built once per alpha."""
        key = float(alpha)
        table = self._tables.get(key)
        if table is None:
            n = len(self.lut)
            grey = np.linspace(0.0, 1.0, 256, dtype=np.float64)[None, :, None]
            if self.blend_mode == "scaled":  # opacity grows with the heat: alpha at the top of heat_range
                weight = key * np.arange(n, dtype=np.float64) / max(n - 1, 1)
            else:
                weight = np.full(n, key)
            weight = np.r_[weight, 0.0][:, None, None]
            colour = np.r_[self.lut.astype(np.float64), np.zeros((1, 3))][:, None, :]
            table = grey * (1.0 - weight) + colour * weight
            table = np.rint(table * 255.0).astype(np.uint8).reshape(-1, 3)
            self._tables[key] = table
        return table

    def rgb(self, a: int, k: int, alpha: float | None = None) -> np.ndarray:
        """uint8 [H, W, 3] overlay of slice k across world axis a."""
        mask = None if self.mask is None else self.plane(self.mask, a, k)
        return self.blend(self.plane(self.image, a, k), self.plane(self.heat, a, k), mask, alpha)

    def blend(
        self, image2d: np.ndarray, heat2d: np.ndarray, mask2d: np.ndarray | None, alpha: float | None = None
    ) -> np.ndarray:
        """uint8 [H, W, 3] overlay of display-oriented 2D slices.

        The grey level (256 steps of the window) and the heat colour index (the
        colormap's N entries, or "not drawn") are computed per pixel; one gather from
        :meth:`blend_table` then gives the blended RGB: no per-pixel colormap calls.
        """
        from scipy import ndimage

        alpha = self.alpha if alpha is None else float(alpha)
        n = len(self.lut)
        lo, hi = self.window
        grey = image2d.astype(np.float32)
        grey -= np.float32(lo)
        grey *= np.float32(255.0 / (hi - lo))
        np.clip(grey, 0.0, 255.0, out=grey)
        grey[np.isnan(grey)] = 0.0
        grey += 0.5
        code = grey.astype(np.intp)

        h = heat2d.astype(np.float32)
        h_lo, h_hi = self.heat_range
        scaled = (h - np.float32(h_lo)) * np.float32((n - 1) / (h_hi - h_lo))
        np.clip(scaled, 0.0, n - 1, out=scaled)
        scaled += 0.5
        colour_index = scaled.astype(np.intp)
        colour_index[~(h > self.threshold)] = n  # includes NaN heat: not drawn
        code += colour_index * 256
        out = np.take(self.blend_table(alpha), code, axis=0)  # [H, W, 3] uint8
        if mask2d is not None:
            m = mask2d > 0
            if m.any():
                edge = m & ~ndimage.binary_erosion(m, border_value=0)
                out[edge] = self.outline_rgb
        return out

    def hottest_voxel(self) -> tuple[int, int, int]:
        h = np.nan_to_num(self.heat, nan=-np.inf)
        return tuple(int(i) for i in np.unravel_index(int(np.argmax(h)), self.shape))

    def slice_scores(self, a: int) -> np.ndarray:
        axes = tuple(i for i in range(3) if i != a)
        return np.nansum(self.heat, axis=axes, dtype=np.float64)

    def choose_slices(self, a: int, n: int, select: Any) -> list[int]:
        size = self.shape[a]
        if not isinstance(select, str):
            return [self.check_index(a, k) for k in select]
        _check_choice(select, ("even", "hottest"), "select")
        n = int(n)
        if n < 1:
            raise ArgumentError(f"`n` must be a positive number of slices, not {n}", name="n")
        if n >= size:
            return list(range(size))
        if select == "hottest":
            order = np.argsort(-self.slice_scores(a), kind="stable")[:n]
            return sorted(int(k) for k in order)
        first, last = self.content_range(a)
        if n >= last - first + 1:
            return list(range(first, last + 1))
        return [int(round(v)) for v in np.linspace(first, last, n + 2)[1:-1]]

    def content_range(self, a: int) -> tuple[int, int]:
        """First and last slice where the image rises above the bottom of the window
        (the body, not the air around it); all slices if there is none."""
        axes = tuple(i for i in range(3) if i != a)
        with np.errstate(invalid="ignore"):
            above = np.any(self.image > self.window[0], axis=axes)
        hits = np.flatnonzero(above)
        if hits.size == 0:
            return 0, self.shape[a] - 1
        return int(hits[0]), int(hits[-1])


def _make_case(image: Any, heat: Any, mask: Any, affine: Any, **display: Any) -> _Case:
    return Scene(image, affine, others=(heat, mask), **display).with_heat(heat, mask)
