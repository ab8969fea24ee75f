"""Slice overlays: one slice as RGB, and one PNG per slice of a volume."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from volcam.errors import ConfigError
from volcam.figures.render import _AXIS_NAMES, WindowLike, _make_case
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
