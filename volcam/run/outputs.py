"""The ``outputs`` section: what a run writes for every case and class."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from volcam.checks import did_you_mean
from volcam.errors import ConfigError
from volcam.run.schema import AXES, CONVENTIONS, DICOM_OUTPUTS, FIGURES, OUTLINES
from volcam.run.settings import _choice, _first_bad, _flag, _number, _show

__all__ = ["OutputSettings"]


@dataclass(frozen=True)
class OutputSettings:
    """``outputs``: what a run writes for every case and class.

    ``outline`` draws the outline of the case's label (``label``, when the case has one) or
    of the predicted region (``prediction``) on the slice PNGs and figures.
    ``square_pixels`` resamples slice PNGs for display so that a voxel of 0.7 x 5 mm is not
    drawn as a square; ``min_png_size`` is the smallest side of a PNG in pixels (nearest
    neighbour upscaling). ``colorbar`` and ``letters`` add a colour bar and anatomical
    orientation letters to each PNG.
    """

    dir: str = "volcam-output"
    heat_nifti: bool = True
    raw_heat: bool = False
    pngs: bool = True
    axes: tuple[str, ...] = ("axial",)
    figure: str | None = "orthogonal"
    cmap: str = "jet"
    alpha: float = 0.5
    window: tuple[float, float] | None = None
    convention: str = "radiological"
    outline: str = "label"
    square_pixels: bool = True
    min_png_size: int = 256
    colorbar: bool = False
    letters: bool = False
    viewer: bool = True
    index: bool = True
    dicom: tuple[str, ...] = ()
    dicom_threshold: float = 0.5

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> OutputSettings:
        s = dict(raw)
        axes = s["axes"]
        if isinstance(axes, str):
            axes = [axes]
        bad = _first_bad(axes, AXES)
        if bad is not None:
            raise ConfigError(
                f"outputs.axes must list some of {', '.join(AXES)}, not {_show(bad)}{did_you_mean(bad, AXES)}",
                key="outputs.axes",
            )
        figure = s["figure"]
        if figure in (None, False, "none"):
            figure = None
        elif figure is True:
            figure = "orthogonal"
        else:
            figure = _choice(figure, FIGURES, "outputs.figure")
        window = s["window"]
        if window is not None:
            ok = (
                isinstance(window, (list, tuple))
                and len(window) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)
                and window[0] < window[1]
            )
            if not ok:
                raise ConfigError(
                    f"outputs.window must be [low, high] with low < high, or null, not {_show(window)}",
                    key="outputs.window",
                )
            window = (float(window[0]), float(window[1]))
        if not isinstance(s["dir"], (str, os.PathLike)) or not str(s["dir"]):
            raise ConfigError(f"outputs.dir must be a folder path, not {_show(s['dir'])}", key="outputs.dir")
        for flag in ("heat_nifti", "raw_heat", "pngs", "square_pixels", "colorbar", "letters", "viewer", "index"):
            _flag(s[flag], f"outputs.{flag}")
        alpha = _number(s["alpha"], "outputs.alpha", 0.0, 1.0)
        size = s["min_png_size"]
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 4096:
            raise ConfigError(
                f"outputs.min_png_size must be an integer in [0, 4096] (pixels), not {_show(size)}",
                key="outputs.min_png_size",
            )
        cmap = s["cmap"]
        try:
            import matplotlib

            matplotlib.colormaps[cmap]
        except (KeyError, TypeError):
            raise ConfigError(
                f"outputs.cmap must be a matplotlib colour map name (jet, hot, inferno, ...), not {_show(cmap)}"
                f"{did_you_mean(cmap, _colormap_names())}",
                key="outputs.cmap",
            ) from None
        dicom = s["dicom"] or []
        if isinstance(dicom, str):
            dicom = [dicom]
        bad = _first_bad(dicom, DICOM_OUTPUTS)
        if bad is not None:
            raise ConfigError(
                f"outputs.dicom must list some of {', '.join(DICOM_OUTPUTS)} (Parametric Map, SEG), not {_show(bad)}"
                f"{did_you_mean(bad, DICOM_OUTPUTS) if isinstance(bad, str) else ''}",
                key="outputs.dicom",
            )
        threshold = _number(s["dicom_threshold"], "outputs.dicom_threshold", 0.0, 1.0)
        if threshold == 0.0:
            raise ConfigError("outputs.dicom_threshold must be in (0, 1], not 0", key="outputs.dicom_threshold")
        return cls(
            dir=str(s["dir"]),
            heat_nifti=s["heat_nifti"],
            raw_heat=s["raw_heat"],
            pngs=s["pngs"],
            axes=tuple(dict.fromkeys(axes)),
            figure=figure,
            cmap=str(cmap),
            alpha=alpha,
            window=window,
            convention=_choice(s["convention"], CONVENTIONS, "outputs.convention"),
            outline=_choice(s["outline"], OUTLINES, "outputs.outline"),
            square_pixels=s["square_pixels"],
            min_png_size=size,
            colorbar=s["colorbar"],
            letters=s["letters"],
            viewer=s["viewer"],
            index=s["index"],
            dicom=tuple(dict.fromkeys(dicom)),
            dicom_threshold=threshold,
        )

    def declared(self) -> dict[str, Any]:
        """The files a case must have; part of a case's record."""
        return {
            "heat_nifti": self.heat_nifti,
            "raw_heat": self.raw_heat,
            "axes": list(self.axes) if self.pngs else [],
            "figure": self.figure,
            "viewer": self.viewer,
            "dicom": list(self.dicom),
            "dicom_threshold": self.dicom_threshold if self.dicom else None,
            "style": {
                "cmap": self.cmap,
                "alpha": self.alpha,
                "window": None if self.window is None else list(self.window),
                "convention": self.convention,
                "outline": self.outline,
                "square_pixels": self.square_pixels,
                "min_png_size": self.min_png_size,
                "colorbar": self.colorbar,
                "letters": self.letters,
            },
        }


def _colormap_names() -> list[str]:
    import matplotlib

    return list(matplotlib.colormaps)
