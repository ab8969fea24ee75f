"""An interactive slice browser (matplotlib sliders) for notebooks and desktop windows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import matplotlib.colors as mcolors
import matplotlib.figure

from volcam.figures.render import _AXIS_NAMES, WindowLike, _Case, _make_case
from volcam.figures.views import _letters, _show, _style_colorbar

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
        if case.edge_letters(a):
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
