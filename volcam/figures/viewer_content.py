"""What a viewer page shows besides its volumes: window presets, colour maps, and per layer
its peak, colour range and the figures of the summary table."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from volcam.figures.render import WINDOWS, _colormap, window_for
from volcam.figures.viewer_data import Summary
from volcam.geometry import Canonical

__all__ = ["CMAPS", "PRESETS", "guess_modality", "presets", "lut", "format_stats", "peak", "heat_range"]

#: colour maps offered in the page (the one asked for is added when it is not among them)
CMAPS = ("jet", "turbo", "hot", "inferno", "magma", "viridis", "gray")

#: window presets of the page, (name, low, high) in HU, for CT images
PRESETS = (
    ("CT soft tissue", *WINDOWS["soft_tissue"]),
    ("CT lung", *WINDOWS["lung"]),
    ("CT bone", *WINDOWS["bone"]),
    ("CT brain", *WINDOWS["brain"]),
)
_PERCENTILES = ((0.5, 99.5), (1.0, 99.0), (2.0, 98.0), (5.0, 95.0), (0.0, 100.0))

# summary fields shown in the page, with their labels and formats; other fields are shown as given
_STAT_FIELDS = {
    "predicted_voxels": ("predicted voxels", "{:.0f}"),
    "predicted_volume_ml": ("predicted volume", "{:.2f} ml"),
    "energy_in_prediction": ("energy in prediction", "percent"),
    "energy_in_label": ("energy in label", "percent"),
    "note": ("note", None),
}
_STAT_HIDDEN = {
    "case",
    "class",
    "class_name",
    "status",
    "error",
    "seconds",
    "image",
    "label",
    "peak_x",
    "peak_y",
    "peak_z",
    "peak_voxel",
    "heat_nifti",
    "pngs",
    "figure",
}


def guess_modality(image: np.ndarray) -> str | None:
    """``"CT"`` when the image looks like CT in HU (air near -1000 among its darkest voxels), else None."""
    lo, hi = window_for(image, (1.0, 99.0))
    return "CT" if lo <= -500.0 and -1100.0 <= lo and hi >= 0.0 else None


def presets(image: np.ndarray, modality: str | None) -> list:
    """``[[name, low, high], ...]``: the CT windows for CT, then percentile windows of ``image``."""
    out = [[name, lo, hi] for name, lo, hi in PRESETS] if modality == "CT" else []
    for p in _PERCENTILES:
        lo, hi = window_for(image, p)
        name = "full range" if p == (0.0, 100.0) else f"{p[0]:g}-{p[1]:g} percentiles"
        out.append([name, lo, hi])
    return out


def lut(cmap: Any) -> list:
    """The colours of a matplotlib colour map as a flat list ``[r0, g0, b0, r1, ...]`` in [0, 1] (as the PNGs use)."""
    cm = _colormap(cmap)
    values = cm(np.linspace(0.0, 1.0, cm.N))[:, :3].astype(np.float32)
    return [round(float(v), 7) for v in values.reshape(-1)]


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def format_stats(fields: Mapping) -> list:
    """``[[label, text], ...]`` of one layer's figures, in the order given."""
    out = []
    for key, value in fields.items():
        if key in _STAT_HIDDEN or value is None or value == "":
            continue
        label, fmt = _STAT_FIELDS.get(key, (str(key).replace("_", " "), "{:.4g}"))
        number = _number(value)
        if fmt == "percent" and number is not None:
            text = f"{100.0 * number:.1f} %"
        elif fmt is not None and number is not None:
            text = fmt.format(number)
        elif isinstance(value, float) and not math.isfinite(value):
            continue
        else:
            text = str(value)[:300]
        out.append([label, text])
    return out


def peak(summary: Summary, canonical: Canonical) -> dict | None:
    """The hottest voxel (first of ties) of a heat volume, from its summary on the source grid."""
    if summary.argmax is None or not summary.high > summary.low:
        return None  # a flat map has no peak
    source = np.asarray(summary.argmax + (0,) * (3 - len(summary.argmax)), dtype=np.float64)
    aff = canonical.source_affine
    world = aff[:3, :3] @ source + aff[:3, 3]
    voxel = np.rint(np.linalg.solve(canonical.affine[:3, :3], world - canonical.affine[:3, 3])).astype(int)
    return {
        "canonical": [int(v) for v in voxel],
        "world": [round(float(w), 4) for w in world],
        "source_voxel": [int(v) for v in summary.argmax],
        "value": summary.high,
    }


def heat_range(summary: Summary) -> list:
    """Heat values mapped to the ends of the colour map: [0, 1] for heat within it, else its own range."""
    lo, hi = summary.low, summary.high
    if lo >= 0.0 and hi <= 1.0:
        return [0.0, 1.0]
    return [lo, hi if hi > lo else lo + 1.0]
