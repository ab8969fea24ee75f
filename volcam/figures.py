"""Heat overlays on the scan: slice PNGs, mosaics, orthogonal views, an interactive browser.

Every view is drawn from the same recipe: the image slice windowed to grey
(``window``), the heat mapped through a matplotlib colormap (``cmap``, scaled by
``heat_range``, default [0, 1]) and blended over it wherever the heat exceeds
``threshold`` (elsewhere the plain grey image shows), with an opacity that grows with
the heat up to ``alpha`` (``blend="scaled"``) or is ``alpha`` throughout
(``blend="constant"``), optionally with the outline of a mask drawn on top. The window
is computed once from the whole volume (:func:`window_for`), never per slice, so all
slices and all figures of one case share their grey levels and colours (pass the same
``window``, ``cmap`` and ``heat_range`` to every call for one case).

Orientation. Axes are named anatomically from the affine (nibabel's ``io_orientation``),
not by array index: ``"axial"`` slices are perpendicular to the inferior-superior axis,
``"coronal"`` to the posterior-anterior axis, ``"sagittal"`` to the left-right axis,
whatever the voxel order on disk (LAS, RAS, LPS, oblique: the closest axis is used; no
resampling). Slices are shown with

- axial: anterior at the top; coronal and sagittal: superior at the top;
- sagittal: anterior on the viewer's left;
- ``convention="radiological"`` (default): the patient's right on the viewer's left
  (as if facing the patient, feet first, the way radiologists read CT/MR);
  ``convention="neurological"``: the patient's right on the viewer's right (as if
  looking from behind / above the head).

Slice index ``k`` of an axis counts in RAS+ voxel order: from the patient's left
(sagittal), posterior (coronal) or inferior (axial) end. Figures letter the edges of
their panels (R/L, A/P, S/I). Slice PNGs have one pixel per voxel; figures correct the
aspect ratio for anisotropic voxels.

Inputs: ``image``, ``heat`` and ``mask`` are numpy arrays, torch tensors or MONAI
``MetaTensor`` s. A ``MetaTensor`` is channel-first ``[1, *S]`` (as loaded by
:func:`volcam.io.load_image`) and brings its own affine; plain arrays are spatial
``[*S]`` (leading singleton axes of 4D/5D arrays, e.g. the engine's ``[1, 1, *S]``, are
dropped), with the affine passed as ``affine=``. 2D images ``[X, Y]`` are handled as one
slice.

Only ``browse`` uses pyplot (it must appear on screen); the other figures are plain
``matplotlib.figure.Figure`` objects (no global state, safe in scripts and batch jobs),
which notebooks display when returned; to show one on a desktop pass your own ``fig=``
(``fig = plt.figure(); mosaic(..., fig=fig); plt.show()``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.colors as mcolors
import matplotlib.figure
import nibabel as nib
import numpy as np

from volcam.errors import ConfigError, ValueRangeError
from volcam.io import _affine_numpy, _is_meta_tensor, _spatial_numpy, _to_numpy, atomic_write

__all__ = [
    "AXES",
    "WINDOWS",
    "window_for",
    "slice_axis",
    "overlay_slice",
    "save_slice_pngs",
    "mosaic",
    "orthogonal_views",
    "add_colorbar",
    "SliceBrowser",
    "browse",
    "save_figure",
]

#: Anatomical slice names -> the RAS+ world axis they are perpendicular to.
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
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
        raise ConfigError(f"`{key}` must be one of {list(choices)}, not {value!r}", key=key)
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
        raise ConfigError(
            f"`percentiles` must be increasing within [0, 100], not {tuple(percentiles)}", key="percentiles"
        )
    arr = _to_numpy(image)
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
            raise ConfigError(f"`window` must be (low, high) or one of {sorted(WINDOWS)}, not {window!r}", key="window")
        return WINDOWS[window]
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"`window` must be (low, high), a preset name or None, not {window!r}", key="window") from err
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ConfigError(f"`window` must be (low, high) with low < high, not {window!r}", key="window")
    return (lo, hi)


def _resolve_range(heat_range: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in heat_range)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"`heat_range` must be (low, high), not {heat_range!r}", key="heat_range") from err
    if not hi > lo:
        raise ConfigError(f"`heat_range` must be (low, high) with low < high, not {heat_range!r}", key="heat_range")
    return (lo, hi)


def _colormap(cmap: Any):
    if isinstance(cmap, mcolors.Colormap):
        return cmap
    try:
        return matplotlib.colormaps[cmap]
    except (KeyError, TypeError) as err:
        raise ConfigError(
            f"`cmap` must be a matplotlib colormap or its name (e.g. 'jet', 'hot', 'inferno'), not {cmap!r}", key="cmap"
        ) from err


def slice_axis(affine: Any, axis: str) -> int:
    """The array axis that an anatomical axis name cuts across, for an image with ``affine``.

    ``slice_axis(affine, "axial")`` is the voxel axis closest to the inferior-superior
    world axis (nibabel ``io_orientation``); e.g. 2 for RAS/LAS/LPS volumes, 1 for a
    volume stored as (x, z, y).
    """
    _check_choice(axis, tuple(AXES), "axis")
    ornt = nib.orientations.io_orientation(_affine_numpy(affine))
    return int(np.flatnonzero(ornt[:, 0] == AXES[axis])[0])


class _Case:
    """Image, heat and mask of one case reoriented (flips/transposes, no resampling) to RAS+
    voxel order, with the display settings; renders any slice to RGB."""

    def __init__(
        self, image, heat, mask, affine, *, window, cmap, alpha, threshold, blend, heat_range, outline_color, convention
    ):
        img = _spatial_numpy(image, None, what="image", where="")
        shape = img.shape
        hm = _spatial_numpy(heat, shape, what="heat", where="the image")
        mk = None if mask is None else _spatial_numpy(mask, shape, what="mask", where="the image")
        if affine is None:
            for x in (image, heat, mask):
                if _is_meta_tensor(x):
                    affine = x.affine
                    break
        if affine is None:
            raise ConfigError(
                "`affine` is needed to name slice axes anatomically; pass affine= or MetaTensor inputs",
                key="affine",
            )
        aff = _affine_numpy(affine)
        self.is_2d = img.ndim == 2
        if self.is_2d:
            img, hm = img[..., None], hm[..., None]
            mk = None if mk is None else mk[..., None]
        ornt = nib.orientations.io_orientation(aff)
        self.source_shape = img.shape
        self.source_affine = aff
        self.ornt = ornt
        self.image = nib.orientations.apply_orientation(img, ornt)
        self.heat = nib.orientations.apply_orientation(hm, ornt)
        self.mask = None if mk is None else nib.orientations.apply_orientation(mk, ornt)
        self.affine = aff @ nib.orientations.inv_ornt_aff(ornt, img.shape)
        self.zooms = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        self.shape = self.image.shape
        self.default_axis = _AXIS_NAMES[int(ornt[2, 0])] if self.is_2d else "axial"

        self.window = _resolve_window(window, img)
        self.heat_range = _resolve_range(heat_range)
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"`alpha` must lie in [0, 1], not {alpha}", key="alpha")
        self.alpha = alpha
        self.threshold = float(threshold)
        self.blend_mode = _check_choice(blend, ("scaled", "constant"), "blend")
        self.cmap = _colormap(cmap)
        self.lut = self.cmap(np.linspace(0.0, 1.0, self.cmap.N))[:, :3].astype(np.float32)
        self.outline_rgb = np.rint(np.asarray(mcolors.to_rgb(outline_color)) * 255.0).astype(np.uint8)
        self._tables: dict = {}
        self.convention = _check_choice(convention, _CONVENTIONS, "convention")

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
        row = self.shape[r] - 1 - voxel[r]
        flip = a == 0 or self.convention == "radiological"
        col = self.shape[c] - 1 - voxel[c] if flip else voxel[c]
        return row, col

    def edge_letters(self, a: int) -> dict:
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
        return f"{_AXIS_NAMES[a]} {k}  ({_WORLD[a]} = {self.slice_world(a, k):+.1f} mm)"

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
            raise ConfigError(f"`n` must be a positive number of slices, not {n}", key="n")
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


def _make_case(image, heat, mask, affine, **display) -> _Case:
    return _Case(image, heat, mask, affine, **display)


def overlay_slice(
    image: Any,
    heat: Any,
    index: int,
    *,
    affine: Any = None,
    axis: str | None = None,
    window: WindowLike = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float = 0.0,
    blend: str = "scaled",
    heat_range: Sequence[float] = (0.0, 1.0),
    mask: Any = None,
    outline_color: Any = "white",
    convention: str = "radiological",
) -> np.ndarray:
    """One slice of the overlay as an RGB array, exactly as :func:`save_slice_pngs` writes it.

    Args:
        image, heat, mask: volumes of the same spatial shape (see the module doc).
        index: slice index along ``axis`` in RAS+ order (see the module doc).
        axis: ``"axial"`` (default for 3D), ``"coronal"`` or ``"sagittal"``; for a 2D
            image the default is its own plane.
        window: grey window ``(low, high)`` in image units, a :data:`WINDOWS` preset name
            (CT), or None for the 0.5-99.5 percentiles of the whole volume.
        cmap: matplotlib colormap (name or object) for the heat.
        alpha: heat opacity in [0, 1] (with ``blend="scaled"``: at the top of ``heat_range``).
        threshold: heat at or below it is not drawn (the grey image shows).
        blend: ``"scaled"`` (default): the opacity grows linearly with the heat, from 0 at
            the bottom of ``heat_range`` to ``alpha`` at its top, so cold regions leave the
            anatomy untinted; ``"constant"``: opacity ``alpha`` wherever ``heat > threshold``.
        heat_range: heat values mapped to the first and last colour of ``cmap``.
        mask: optional label volume; the outline of ``mask > 0`` is drawn per slice.
        outline_color: matplotlib colour of the outline.
        convention: ``"radiological"`` or ``"neurological"``.

    Returns:
        uint8 array ``[H, W, 3]`` (rows top to bottom as displayed).
    """
    case = _make_case(
        image,
        heat,
        mask,
        affine,
        window=window,
        cmap=cmap,
        alpha=alpha,
        threshold=threshold,
        blend=blend,
        heat_range=heat_range,
        outline_color=outline_color,
        convention=convention,
    )
    a = case.axis_index(axis)
    return case.rgb(a, case.check_index(a, index))


# --------------------------------------------------------------------------- slice PNGs


def _write_png(path: Path, rgb: np.ndarray, compress_level: int) -> Path:
    from PIL import Image

    picture = Image.fromarray(rgb)
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG", compress_level=compress_level))


def save_slice_pngs(
    image: Any,
    heat: Any,
    out_dir: str | os.PathLike[str],
    *,
    affine: Any = None,
    axis: str | None = None,
    slices: Sequence[int] | None = None,
    window: WindowLike = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float = 0.0,
    blend: str = "scaled",
    heat_range: Sequence[float] = (0.0, 1.0),
    mask: Any = None,
    outline_color: Any = "white",
    convention: str = "radiological",
    prefix: str = "",
    workers: int | None = None,
    compress_level: int = 1,
) -> list[Path]:
    """Write one PNG per slice: the windowed grey slice with the heat blended over it.

    The colour mapping is a colormap lookup table indexed with numpy (no per-pixel
    calls); slices are rendered, encoded (Pillow) and written atomically in a thread
    pool. Files are named ``{prefix}{axis}_{k:03d}.png``, ``k`` in RAS+ order; one
    pixel per voxel. All arguments are checked before anything is written.

    Args:
        image, heat: volumes of the same spatial shape (see the module doc).
        out_dir: folder (created if needed).
        affine: voxel-to-world matrix, unless a MetaTensor input carries it.
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"`` (None: axial for 3D, the
            image's own plane for 2D).
        slices: slice indices to write (default: all).
        window, cmap, alpha, threshold, blend, heat_range, mask, outline_color, convention:
            as in :func:`overlay_slice`.
        prefix: file name prefix, e.g. ``"case01_"``.
        workers: threads (default: up to 8, at most the CPU count).
        compress_level: zlib level 0-9 of the PNGs (1: fast, 6: smaller files).

    Returns:
        The written paths, in slice order.
    """
    case = _make_case(
        image,
        heat,
        mask,
        affine,
        window=window,
        cmap=cmap,
        alpha=alpha,
        threshold=threshold,
        blend=blend,
        heat_range=heat_range,
        outline_color=outline_color,
        convention=convention,
    )
    a = case.axis_index(axis)
    indices = list(range(case.shape[a])) if slices is None else [case.check_index(a, k) for k in slices]
    if not 0 <= int(compress_level) <= 9:
        raise ConfigError(f"`compress_level` must be in 0..9, not {compress_level}", key="compress_level")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(case.shape[a] - 1)))
    name = _AXIS_NAMES[a]
    paths = [out_dir / f"{prefix}{name}_{k:0{width}d}.png" for k in indices]
    if workers is None:
        workers = min(8, os.cpu_count() or 1)

    # jobs of up to 16 neighbouring slices: each copies its slab once (see _Case.slab)
    jobs, run = [], []
    for k, path in zip(indices, paths):
        if run and (k != run[-1][0] + 1 or len(run) == 16):
            jobs.append(run)
            run = []
        run.append((k, path))
    if run:
        jobs.append(run)

    def job(items):
        k0, k1 = items[0][0], items[-1][0] + 1
        img, hm, mk = (case.slab(v, a, k0, k1) for v in (case.image, case.heat, case.mask))
        written = []
        for k, path in items:
            sec = [None if v is None else case.section(v[k - k0], a) for v in (img, hm, mk)]
            written.append(_write_png(path, case.blend(*sec), int(compress_level)))
        return written

    if workers <= 1 or len(jobs) <= 1:
        return [p for items in jobs for p in job(items)]
    with ThreadPoolExecutor(max_workers=int(workers)) as pool:
        return [p for written in pool.map(job, jobs) for p in written]


# --------------------------------------------------------------------------- figures


def _letters(ax, letters: dict, colour: str = "white", size: float = 8) -> None:
    from matplotlib import patheffects

    halo = [patheffects.withStroke(linewidth=2.0, foreground="black")]
    style = dict(color=colour, fontsize=size, fontweight="bold", transform=ax.transAxes, path_effects=halo)
    ax.text(0.5, 0.985, letters["top"], ha="center", va="top", **style)
    ax.text(0.5, 0.015, letters["bottom"], ha="center", va="bottom", **style)
    ax.text(0.015, 0.5, letters["left"], ha="left", va="center", **style)
    ax.text(0.985, 0.5, letters["right"], ha="right", va="center", **style)


def _show(ax, case: _Case, a: int, k: int, interpolation: str):
    artist = ax.imshow(case.rgb(a, k), aspect=case.aspect(a), interpolation=interpolation)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return artist


def add_colorbar(
    fig, axes, *, cmap: Any = "jet", heat_range: Sequence[float] = (0.0, 1.0), label: str = "CAM", **kwargs
):
    """Add a colourbar of the heat scale (``cmap`` over ``heat_range``) next to ``axes``.

    Returns the matplotlib ``Colorbar``. Use the same ``cmap``/``heat_range`` as the
    overlays so the colours match.
    """
    from matplotlib.cm import ScalarMappable

    lo, hi = _resolve_range(heat_range)
    mappable = ScalarMappable(norm=mcolors.Normalize(lo, hi), cmap=_colormap(cmap))
    kwargs.setdefault("fraction", 0.04)
    kwargs.setdefault("pad", 0.02)
    bar = fig.colorbar(mappable, ax=axes, **kwargs)
    bar.set_label(label)
    return bar


def _new_figure(fig, figsize):
    if fig is None:
        return matplotlib.figure.Figure(figsize=figsize, facecolor="black", layout="constrained")
    fig.clear()
    fig.set_layout_engine("constrained")
    fig.set_facecolor("black")
    if figsize is not None:
        fig.set_size_inches(*figsize)
    return fig


def _style_colorbar(bar) -> None:
    bar.ax.yaxis.set_tick_params(color="white", labelcolor="white")
    bar.ax.yaxis.label.set_color("white")
    bar.outline.set_edgecolor("white")


def mosaic(
    image: Any,
    heat: Any,
    *,
    affine: Any = None,
    axis: str | None = None,
    n: int = 9,
    select: str | Sequence[int] = "even",
    ncols: int | None = None,
    window: WindowLike = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float = 0.0,
    blend: str = "scaled",
    heat_range: Sequence[float] = (0.0, 1.0),
    mask: Any = None,
    outline_color: Any = "white",
    convention: str = "radiological",
    colorbar: bool = True,
    title: str | None = None,
    panel_size: float = 2.4,
    interpolation: str = "nearest",
    fig: Any = None,
) -> matplotlib.figure.Figure:
    """A grid of ``n`` slices along ``axis`` with the heat blended over them.

    Args:
        image, heat, affine, window, cmap, alpha, threshold, blend, heat_range, mask,
            outline_color, convention: as in :func:`overlay_slice`.
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"`` (None: axial for 3D, the
            image's own plane for 2D).
        n: number of slices.
        select: ``"even"`` (evenly spaced, ends excluded, over the slices where the
            image rises above the bottom of the window, i.e. not the air around the
            body), ``"hottest"`` (the ``n``
            slices with the largest summed heat, shown in anatomical order) or an
            explicit list of slice indices.
        ncols: columns of the grid (default about square).
        colorbar: add the heat colourbar.
        title: figure title.
        panel_size: inches per panel.
        interpolation: matplotlib ``imshow`` interpolation of the panels.
        fig: draw into this figure (cleared) instead of a new ``Figure``.

    Returns:
        The ``Figure``; each panel's title gives the slice index and world position.
    """
    case = _make_case(
        image,
        heat,
        mask,
        affine,
        window=window,
        cmap=cmap,
        alpha=alpha,
        threshold=threshold,
        blend=blend,
        heat_range=heat_range,
        outline_color=outline_color,
        convention=convention,
    )
    a = case.axis_index(axis)
    chosen = case.choose_slices(a, n, select)
    if not chosen:
        raise ConfigError("`select` must name at least one slice, not an empty list", key="select")
    count = len(chosen)
    ncols = int(ncols) if ncols else int(math.ceil(math.sqrt(count)))
    nrows = int(math.ceil(count / ncols))
    r, c = case.in_plane_axes(a)
    height_mm, width_mm = case.shape[r] * case.zooms[r], case.shape[c] * case.zooms[c]
    panel_w = panel_size * min(1.0, width_mm / height_mm) if height_mm else panel_size
    panel_h = panel_size * min(1.0, height_mm / width_mm) if width_mm else panel_size
    figsize = (ncols * panel_w + (0.9 if colorbar else 0.2), nrows * (panel_h + 0.3) + (0.4 if title else 0.1))
    fig = _new_figure(fig, figsize)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= count:
            ax.set_visible(False)
            continue
        k = chosen[i]
        _show(ax, case, a, k, interpolation)
        ax.set_title(case.label(a, k), color="white", fontsize=8, pad=3)
        if i == 0:
            _letters(ax, case.edge_letters(a))
    if colorbar:
        _style_colorbar(add_colorbar(fig, axes.ravel().tolist(), cmap=case.cmap, heat_range=case.heat_range))
    if title:
        fig.suptitle(title, color="white")
    return fig


def _voxel_of_point(case: _Case, point: Sequence[float]) -> tuple[int, int, int]:
    p = np.asarray(point, dtype=np.float64).reshape(-1)
    if p.size == 2:
        p = np.r_[p, case.affine[2, 3]]
    if p.size != 3 or not np.all(np.isfinite(p)):
        raise ConfigError(f"`point` must be a finite world position (x, y, z) in mm, not {point!r}", key="point")
    voxel = np.linalg.solve(case.affine[:3, :3], p - case.affine[:3, 3])
    rounded = np.rint(voxel).astype(int)
    if case.is_2d:
        rounded[AXES[case.default_axis]] = 0
    if np.any(rounded < 0) or np.any(rounded >= np.asarray(case.shape)):
        raise ValueRangeError(
            f"`point` must lie inside the image, not {tuple(np.round(p, 2))} mm (voxel "
            f"{tuple(int(v) for v in rounded)} of a {case.shape} volume)"
        )
    return tuple(int(v) for v in rounded)


def orthogonal_views(
    image: Any,
    heat: Any,
    *,
    affine: Any = None,
    point: Sequence[float] | None = None,
    window: WindowLike = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float = 0.0,
    blend: str = "scaled",
    heat_range: Sequence[float] = (0.0, 1.0),
    mask: Any = None,
    outline_color: Any = "white",
    convention: str = "radiological",
    crosshair: bool = True,
    colorbar: bool = True,
    title: str | None = None,
    panel_size: float = 3.0,
    interpolation: str = "nearest",
    fig: Any = None,
) -> matplotlib.figure.Figure:
    """Axial, coronal and sagittal slices through one point, with the heat blended over them.

    Args:
        point: world position ``(x, y, z)`` in mm (RAS+, the affine's space); default:
            the hottest voxel of ``heat`` (first one on ties).
        crosshair: draw thin lines through the point.
        Others: as in :func:`mosaic`.

    Returns:
        The ``Figure``; its title gives the point in world mm and source voxel indices.
        The three axes are ``fig.axes[:3]`` (axial, coronal, sagittal); a 2D image gets
        one panel, its own plane.
    """
    case = _make_case(
        image,
        heat,
        mask,
        affine,
        window=window,
        cmap=cmap,
        alpha=alpha,
        threshold=threshold,
        blend=blend,
        heat_range=heat_range,
        outline_color=outline_color,
        convention=convention,
    )
    voxel = case.hottest_voxel() if point is None else _voxel_of_point(case, point)
    world = case.affine[:3, :3] @ np.asarray(voxel, dtype=np.float64) + case.affine[:3, 3]
    src_voxel = np.linalg.solve(case.source_affine[:3, :3], world - case.source_affine[:3, 3])
    src_voxel = tuple(int(v) for v in np.rint(src_voxel)[: 2 if case.is_2d else 3])

    views = [AXES[case.default_axis]] if case.is_2d else [2, 1, 0]  # 2D: its own plane only
    widths = [case.shape[case.in_plane_axes(a)[1]] * case.zooms[case.in_plane_axes(a)[1]] for a in views]
    heights = [case.shape[case.in_plane_axes(a)[0]] * case.zooms[case.in_plane_axes(a)[0]] for a in views]
    scale = panel_size / max(heights)
    figsize = (sum(widths) * scale + (1.0 if colorbar else 0.3), panel_size + 0.8)
    fig = _new_figure(fig, figsize)
    axes = fig.subplots(1, len(views), gridspec_kw={"width_ratios": widths}, squeeze=False)[0]
    for ax, a in zip(axes, views):
        _show(ax, case, a, voxel[a], interpolation)
        ax.set_title(case.label(a, voxel[a]), color="white", fontsize=8, pad=3)
        _letters(ax, case.edge_letters(a))
        if crosshair:
            row, col = case.display_position(a, voxel)
            line = dict(color="white", linewidth=0.6, alpha=0.6)
            ax.axhline(row, **line)
            ax.axvline(col, **line)
    if colorbar:
        _style_colorbar(add_colorbar(fig, list(axes), cmap=case.cmap, heat_range=case.heat_range))
    where = "hottest voxel" if point is None else "point"
    heading = (
        f"{where} at ({world[0]:+.1f}, {world[1]:+.1f}, {world[2]:+.1f}) mm, voxel {src_voxel}, "
        f"heat {float(case.heat[voxel]):.2f}"
    )
    fig.suptitle(title or heading, color="white", fontsize=9)
    return fig


# --------------------------------------------------------------------------- browser


class SliceBrowser:
    """An interactive slice browser: a figure with a slice slider and an opacity slider.

    Keep a reference to it (the sliders stop responding once it is garbage-collected).
    Attributes: ``fig``, ``ax``, ``artist`` (the ``AxesImage``), ``slider`` (slice index),
    ``alpha_slider`` (heat opacity), ``axis`` (the anatomical axis name). Up/down (or
    left/right) arrow keys step through slices on a desktop window.
    """

    def __init__(self, case: _Case, a: int, start: int, interpolation: str, figsize):
        import matplotlib.pyplot as plt
        from matplotlib.widgets import Slider

        self._case = case
        self._a = a
        self.axis = _AXIS_NAMES[a]
        self.fig = plt.figure(figsize=figsize, facecolor="black")
        self.ax = self.fig.add_axes([0.05, 0.2, 0.8, 0.72])
        self.artist = _show(self.ax, case, a, start, interpolation)
        self._title = self.ax.set_title(case.label(a, start), color="white", fontsize=9)
        _letters(self.ax, case.edge_letters(a))
        cax = self.fig.add_axes([0.87, 0.2, 0.03, 0.72])
        _style_colorbar(
            self.fig.colorbar(
                matplotlib.cm.ScalarMappable(norm=mcolors.Normalize(*case.heat_range), cmap=case.cmap),
                cax=cax,
                label="CAM",
            )
        )
        s_ax = self.fig.add_axes([0.15, 0.09, 0.65, 0.04], facecolor="0.2")
        a_ax = self.fig.add_axes([0.15, 0.03, 0.65, 0.04], facecolor="0.2")
        n = case.shape[a]
        self.slider = Slider(s_ax, "slice", 0, max(n - 1, 1), valinit=start, valstep=1, valfmt="%d", color="0.6")
        if n == 1:  # a 2D image: nothing to browse, only the opacity
            self.slider.set_active(False)
            s_ax.set_visible(False)
        self.alpha_slider = Slider(a_ax, "opacity", 0.0, 1.0, valinit=case.alpha, color="0.6")
        for s in (self.slider, self.alpha_slider):
            s.label.set_color("white")
            s.valtext.set_color("white")
        self.slider.on_changed(self._update)
        self.alpha_slider.on_changed(self._update)
        self._keys = self.fig.canvas.mpl_connect("key_press_event", self._on_key)

    @property
    def index(self) -> int:
        """The slice shown now."""
        return min(int(self.slider.val), self._case.shape[self._a] - 1)

    def set_slice(self, index: int) -> None:
        """Show slice ``index`` (moves the slider)."""
        self.slider.set_val(self._case.check_index(self._a, index))

    def _update(self, _value=None) -> None:
        k = self.index
        self.artist.set_data(self._case.rgb(self._a, k, alpha=self.alpha_slider.val))
        self._title.set_text(self._case.label(self._a, k))
        self.fig.canvas.draw_idle()

    def _on_key(self, event) -> None:
        step = {"up": 1, "right": 1, "down": -1, "left": -1}.get(event.key)
        if step:
            k = min(max(self.index + step, 0), self._case.shape[self._a] - 1)
            self.slider.set_val(k)


def browse(
    image: Any,
    heat: Any,
    *,
    affine: Any = None,
    axis: str | None = None,
    start: int | None = None,
    window: WindowLike = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float = 0.0,
    blend: str = "scaled",
    heat_range: Sequence[float] = (0.0, 1.0),
    mask: Any = None,
    outline_color: Any = "white",
    convention: str = "radiological",
    interpolation: str = "nearest",
    figsize: Sequence[float] = (6.0, 6.5),
) -> SliceBrowser:
    """Browse the slices of a case interactively (slider over slices, opacity slider).

    Works on desktop backends and in notebooks with ipympl (``%matplotlib widget``);
    under a non-interactive backend (Agg) it still builds and responds to
    ``browser.set_slice(k)``. The figure is made with pyplot so it appears on screen.

    Args:
        start: first slice shown (default: the slice holding the hottest voxel).
        Others: as in :func:`mosaic`.

    Returns:
        A :class:`SliceBrowser`; keep a reference to it.
    """
    case = _make_case(
        image,
        heat,
        mask,
        affine,
        window=window,
        cmap=cmap,
        alpha=alpha,
        threshold=threshold,
        blend=blend,
        heat_range=heat_range,
        outline_color=outline_color,
        convention=convention,
    )
    a = case.axis_index(axis)
    k = case.hottest_voxel()[a] if start is None else case.check_index(a, start)
    return SliceBrowser(case, a, k, interpolation, figsize)


# --------------------------------------------------------------------------- saving


def save_figure(fig, path: str | os.PathLike[str], *, dpi: float = 150, **savefig_kwargs) -> Path:
    """Save a figure atomically (temporary file, then rename); the format follows the suffix.

    Args:
        fig: a matplotlib ``Figure`` (or a :class:`SliceBrowser`).
        path: destination, e.g. ``.png``, ``.pdf``, ``.svg``.
        dpi: resolution for raster formats.
        savefig_kwargs: passed to ``Figure.savefig`` (default ``bbox_inches="tight"`` and
            the figure's own face colour).

    Returns:
        The written ``Path``.
    """
    if isinstance(fig, SliceBrowser):
        fig = fig.fig
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ConfigError(
            f"figure path must end in one of {sorted('.' + f for f in supported)}, not '{path}'", key="path"
        )
    savefig_kwargs.setdefault("bbox_inches", "tight")
    savefig_kwargs.setdefault("facecolor", fig.get_facecolor())
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, **savefig_kwargs))
