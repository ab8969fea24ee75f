"""Every figure of one case from one prepared image: :class:`CaseFigures`.

The image is reoriented to RAS+ voxel order and its grey window computed once; each heat
volume (one per class, say) is then drawn over it as slice PNGs, a mosaic or orthogonal views::

    figs = CaseFigures(scan, window="soft_tissue", convention="radiological")
    for name, heat in heats.items():
        figs.slice_pngs(heat, out / name / "axial", axis="axial", mask=label)
        save_figure(figs.orthogonal_views(heat, title=f"case 7, {name}"), out / name / "figure.png")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.figure

from volcam.figures.render import Scene, WindowLike
from volcam.figures.slices import write_slice_pngs
from volcam.figures.views import draw_mosaic, draw_orthogonal

__all__ = ["CaseFigures"]


class CaseFigures:
    """The figures of one case (see the module docstring).

    Args:
        image: the scan: a MetaTensor ``[1, *S]`` (it carries its affine) or an array ``[*S]``.
        affine: voxel-to-world matrix of a plain array.
        raster: a 2D raster image (PNG, ...): drawn in its own pixel layout, no orientation.
        window, cmap, alpha, threshold, blend, heat_range, outline_color, convention: as in
            :func:`volcam.figures.overlay_slice`.
    """

    def __init__(
        self,
        image: Any,
        *,
        affine: Any = None,
        raster: bool = False,
        window: WindowLike = None,
        cmap: Any = "jet",
        alpha: float = 0.5,
        threshold: float = 0.0,
        blend: str = "scaled",
        heat_range: Sequence[float] = (0.0, 1.0),
        outline_color: Any = "white",
        convention: str = "radiological",
    ):
        self.scene = Scene(
            image,
            affine,
            window=window,
            cmap=cmap,
            alpha=alpha,
            threshold=threshold,
            blend=blend,
            heat_range=heat_range,
            outline_color=outline_color,
            convention=convention,
            raster=raster,
        )

    @property
    def window(self) -> tuple[float, float]:
        """The grey window used for every figure of the case."""
        return self.scene.window

    def slice_pngs(
        self,
        heat: Any,
        out_dir: str | os.PathLike[str],
        *,
        axis: str | None = None,
        mask: Any = None,
        slices: Sequence[int] | None = None,
        prefix: str = "",
        square_pixels: bool = False,
        min_size: int = 0,
        colorbar: bool = False,
        letters: bool = False,
        workers: int | None = None,
        compress_level: int = 1,
    ) -> list[Path]:
        """One PNG per slice of ``heat`` over the image; see :func:`volcam.figures.save_slice_pngs`."""
        return write_slice_pngs(
            self.scene.with_heat(heat, mask),
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

    def mosaic(self, heat: Any, *, mask: Any = None, **kwargs: Any) -> matplotlib.figure.Figure:
        """A grid of slices; keyword arguments as in :func:`volcam.figures.mosaic`."""
        return draw_mosaic(self.scene.with_heat(heat, mask), **kwargs)

    def orthogonal_views(self, heat: Any, *, mask: Any = None, **kwargs: Any) -> matplotlib.figure.Figure:
        """Three views through a point; keyword arguments as in :func:`volcam.figures.orthogonal_views`."""
        return draw_orthogonal(self.scene.with_heat(heat, mask), **kwargs)
