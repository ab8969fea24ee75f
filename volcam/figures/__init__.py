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

from volcam.figures.browser import SliceBrowser, browse
from volcam.figures.case import CaseFigures
from volcam.figures.render import WINDOWS, window_for
from volcam.figures.report import write_index, write_thumbnail
from volcam.figures.slices import overlay_slice, save_slice_pngs
from volcam.figures.viewer import write_viewer
from volcam.figures.views import add_colorbar, mosaic, orthogonal_views, save_figure
from volcam.geometry import AXES, slice_axis

__all__ = [
    "AXES",
    "CaseFigures",
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
    "write_viewer",
    "write_index",
    "write_thumbnail",
]
