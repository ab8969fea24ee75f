"""Slice overlays: one slice as RGB, and one PNG per slice of a volume."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from volcam.errors import ArgumentError
from volcam.figures.render import _AXIS_NAMES, WindowLike, _Case, _make_case
from volcam.io.nifti import atomic_write


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
    square_pixels: bool = False,
    min_size: int = 0,
    colorbar: bool = False,
    letters: bool = False,
) -> list[Path]:
    """Write one PNG per slice: the windowed grey slice with the heat blended over it.

    The colour mapping is a colormap lookup table indexed with numpy (no per-pixel
    calls); slices are rendered, encoded (Pillow) and written atomically in a thread
    pool. Files are named ``{prefix}{axis}_{k:03d}.png``, ``k`` in RAS+ order; one
    pixel per voxel unless ``square_pixels`` or ``min_size`` ask otherwise. All arguments
    are checked before anything is written.

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
        square_pixels: resample each slice for display so that its pixels are square in mm
            (a 0.7 x 5 mm voxel becomes 1 x 7 pixels); False keeps one pixel per voxel.
        min_size: upscale (nearest neighbour, whole factors) until the shorter side has at
            least this many pixels.
        colorbar: append a colour bar of the heat scale on the right.
        letters: write the orientation letters (R/L, A/P, S/I) at the edges.

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
    return write_slice_pngs(
        case,
        out_dir,
        axis=axis,
        slices=slices,
        prefix=prefix,
        workers=workers,
        compress_level=compress_level,
        square_pixels=square_pixels,
        min_size=min_size,
        colorbar=colorbar,
        letters=letters,
    )


def write_slice_pngs(
    case: _Case,
    out_dir: str | os.PathLike[str],
    *,
    axis: str | None = None,
    slices: Sequence[int] | None = None,
    prefix: str = "",
    workers: int | None = None,
    compress_level: int = 1,
    square_pixels: bool = False,
    min_size: int = 0,
    colorbar: bool = False,
    letters: bool = False,
) -> list[Path]:
    """:func:`save_slice_pngs` for a prepared case (a :class:`~volcam.figures.render.Scene`
    with its heat): the image is reoriented and windowed once for every class and axis."""
    a = case.axis_index(axis)
    indices = list(range(case.shape[a])) if slices is None else [case.check_index(a, k) for k in slices]
    if not 0 <= int(compress_level) <= 9:
        raise ArgumentError(f"`compress_level` must be in 0..9, not {compress_level}", name="compress_level")
    finish = _Display(case, a, square_pixels=square_pixels, min_size=int(min_size), colorbar=colorbar, letters=letters)
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
            rgb = finish(case.blend(*sec))
            written.append(_write_png(path, rgb, int(compress_level)))
        return written

    if workers <= 1 or len(jobs) <= 1:
        return [p for items in jobs for p in job(items)]
    with ThreadPoolExecutor(max_workers=int(workers)) as pool:
        return [p for written in pool.map(job, jobs) for p in written]


class _Display:
    """Turns a slice's RGB into the PNG's pixels: square pixels, a minimum size, a colour bar
    and orientation letters, as asked."""

    def __init__(self, case: _Case, a: int, *, square_pixels: bool, min_size: int, colorbar: bool, letters: bool):
        r, c = case.in_plane_axes(a)
        zr, zc = (float(case.zooms[r]), float(case.zooms[c])) if square_pixels else (1.0, 1.0)
        px = min(zr, zc)
        h = max(1, int(round(case.shape[r] * zr / px)))
        w = max(1, int(round(case.shape[c] * zc / px)))
        factor = max(1, math.ceil(min_size / max(1, min(h, w)))) if min_size else 1
        self.rows = _nearest_index(case.shape[r], h * factor)
        self.cols = _nearest_index(case.shape[c], w * factor)
        self.letters = case.edge_letters(a) if letters else None
        self.bar = _colour_bar(case, h * factor) if colorbar else None

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        out = rgb[self.rows][:, self.cols]
        if self.letters or self.bar is not None:
            out = _decorate(out, self.letters, self.bar)
        return out


def _nearest_index(n: int, size: int) -> np.ndarray:
    """Indices of ``size`` pixel centres sampled from ``n`` (nearest neighbour)."""
    return np.minimum(((np.arange(size) + 0.5) * n / size).astype(np.intp), n - 1)


def _colour_bar(case: _Case, height: int) -> np.ndarray:
    """uint8 [height, 14, 3]: the heat colour map, top = top of the heat range."""
    n = len(case.lut)
    index = np.linspace(n - 1, 0, height).astype(np.intp)
    strip = np.rint(case.lut[index] * 255).astype(np.uint8)[:, None, :]
    bar = np.zeros((height, 14, 3), np.uint8)
    bar[:, 4:, :] = strip
    return bar


def _decorate(rgb: np.ndarray, letters: dict[str, str] | None, bar: np.ndarray | None) -> np.ndarray:
    from PIL import Image, ImageDraw

    picture = Image.fromarray(np.ascontiguousarray(rgb))
    if letters:
        draw = ImageDraw.Draw(picture)
        h, w = rgb.shape[:2]
        spots = {
            "top": (w / 2, 2, "mt"),
            "bottom": (w / 2, h - 2, "mb"),
            "left": (2, h / 2, "lm"),
            "right": (w - 2, h / 2, "rm"),
        }
        for edge, (x, y, anchor) in spots.items():
            draw.text((x, y), letters[edge], fill=(255, 255, 255), anchor=anchor, stroke_width=1, stroke_fill=(0, 0, 0))
    out = np.asarray(picture)
    if bar is not None:
        out = np.concatenate([out, bar[: out.shape[0]]], axis=1)
    return out
