"""Figures: mosaics of slices and orthogonal views through a point, with colour bars."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.colors as mcolors
import matplotlib.figure
import numpy as np

from volcam.errors import ArgumentError, ValueRangeError
from volcam.figures.render import _AXIS_NAMES, AXES, WindowLike, _Case, _colormap, _make_case, _resolve_range
from volcam.io.nifti import atomic_write

# --------------------------------------------------------------------------- figures


def _letters(ax: Any, letters: dict[str, str] | None, colour: str = "white", size: float = 8) -> None:
    if not letters:
        return
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
        image, heat, affine, window, cmap, alpha, threshold, blend, heat_range, mask, outline_color, convention:
            as in :func:`overlay_slice`.
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
    return draw_mosaic(
        case,
        axis=axis,
        n=n,
        select=select,
        ncols=ncols,
        colorbar=colorbar,
        title=title,
        panel_size=panel_size,
        interpolation=interpolation,
        fig=fig,
    )


def draw_mosaic(
    case: _Case,
    *,
    axis: str | None = None,
    n: int = 9,
    select: str | Sequence[int] = "even",
    ncols: int | None = None,
    colorbar: bool = True,
    title: str | None = None,
    panel_size: float = 2.4,
    interpolation: str = "nearest",
    fig: Any = None,
) -> matplotlib.figure.Figure:
    """:func:`mosaic` of a prepared case (a :class:`~volcam.figures.render.Scene` with its heat)."""
    a = case.axis_index(axis)
    chosen = case.choose_slices(a, n, select)
    if not chosen:
        raise ArgumentError("`select` must name at least one slice, not an empty list", name="select")
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
        if i == 0 and case.edge_letters(a):
            _letters(ax, case.edge_letters(a))
    if colorbar:
        _style_colorbar(add_colorbar(fig, axes.ravel().tolist(), cmap=case.cmap, heat_range=case.heat_range))
    if title:
        fig.suptitle(title, color="white")
    return fig


def _voxel_of_point(case: _Case, point: Sequence[float]) -> tuple[int, ...]:
    p = np.asarray(point, dtype=np.float64).reshape(-1)
    if p.size == 2:
        p = np.r_[p, case.affine[2, 3]]
    if p.size != 3 or not np.all(np.isfinite(p)):
        raise ArgumentError(f"`point` must be a finite world position (x, y, z) in mm, not {point!r}", name="point")
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
    return draw_orthogonal(
        case,
        point=point,
        crosshair=crosshair,
        colorbar=colorbar,
        title=title,
        panel_size=panel_size,
        interpolation=interpolation,
        fig=fig,
    )


def draw_orthogonal(
    case: _Case,
    *,
    point: Sequence[float] | None = None,
    crosshair: bool = True,
    colorbar: bool = True,
    title: str | None = None,
    panel_size: float = 3.0,
    interpolation: str = "nearest",
    fig: Any = None,
) -> matplotlib.figure.Figure:
    """:func:`orthogonal_views` of a prepared case (a :class:`~volcam.figures.render.Scene`
    with its heat). ``title`` is put above the heading that names the point."""
    flat = point is None and not bool(np.nanmax(case.heat) > np.nanmin(case.heat))
    if flat:  # no hottest voxel: show the middle of the volume, and say why
        voxel = tuple(int(v) // 2 for v in case.shape)
    else:
        voxel = case.hottest_voxel() if point is None else _voxel_of_point(case, point)
    world = case.affine[:3, :3] @ np.asarray(voxel, dtype=np.float64) + case.affine[:3, 3]
    src_voxel = case.source_index(voxel)

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
        if case.edge_letters(a):
            _letters(ax, case.edge_letters(a))
        if crosshair:
            row, col = case.display_position(a, voxel)
            line = dict(color="white", linewidth=0.6, alpha=0.6)
            ax.axhline(row, **line)
            ax.axvline(col, **line)
    if colorbar:
        _style_colorbar(add_colorbar(fig, list(axes), cmap=case.cmap, heat_range=case.heat_range))
    if flat:
        heading = "the map is zero everywhere (no voxel is hot): middle slices shown"
    elif case.raster:
        heading = f"hottest pixel at column {voxel[0]}, row {voxel[1]}, heat {float(case.heat[voxel]):.2f}"
    else:
        where = "hottest voxel" if point is None else "point"
        slices = ", ".join(f"{_AXIS_NAMES[a]} {voxel[a]}" for a in views)
        heading = (
            f"{where} at ({world[0]:+.1f}, {world[1]:+.1f}, {world[2]:+.1f}) mm: {slices} "
            f"(scan voxel {' '.join(str(v) for v in src_voxel)}), heat {float(case.heat[voxel]):.2f}"
        )
    fig.suptitle(f"{title}\n{heading}" if title else heading, color="white", fontsize=9)
    return fig


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
    if not isinstance(fig, matplotlib.figure.Figure):  # a SliceBrowser
        fig = fig.fig
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ArgumentError(
            f"figure path must end in one of {sorted('.' + f for f in supported)}, not '{path}'", name="path"
        )
    savefig_kwargs.setdefault("bbox_inches", "tight")
    savefig_kwargs.setdefault("facecolor", fig.get_facecolor())
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, **savefig_kwargs))
