"""One self-contained HTML page per case: a three-plane slice viewer of the scan with its heat maps.

The page opens offline in any current browser (Chromium, Firefox): its script, style and
data are inside the file; it makes no network request and loads no font. It shows the
axial, coronal and sagittal planes with the conventions of the slice PNGs (see
:mod:`volcam.figures`: anterior or superior at the top, the patient's right on the
viewer's left in the radiological convention), lettered edges and the voxel aspect of
the scan, and offers:

- a crosshair that links the planes (click or drag), slice scrolling (wheel, arrow keys,
  Page Up/Down, the sliders), and a read-out of the world position (mm, RAS or LPS), the
  source voxel index, the image value and the heat value under the pointer;
- one heat layer per explained class (and method), with opacity, threshold, colour map
  and blending; "hottest voxel" jumps to the layer's peak;
- image window/level (number fields, right- or shift-drag) with presets (CT soft tissue,
  lung, bone, brain; percentiles for MR and any other image);
- mask outlines (prediction, reference) that can be toggled, a table of per-layer figures
  (volume, peak, energy inside the prediction/label) and a snapshot button that saves the
  three planes as one PNG.

The volumes are stored as described in :mod:`volcam.figures.viewer_data`: quantised to 8
or 16 bits with their scale recorded, deflated, in base64. A page is kept under
``max_bytes`` (25 MB by default); a volume too large for it is shown reduced in-plane by
block means, and the page says so. The hottest voxel and the window percentiles are
always computed at full resolution.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

import volcam.figures.viewer_content as content
from volcam.arrays import is_meta_tensor, spatial_array
from volcam.checks import did_you_mean, fraction, in_range, one_of
from volcam.errors import ArgumentError, ShapeError, ValueRangeError
from volcam.figures.render import _MAX_WINDOW_SAMPLES, _resolve_window
from volcam.figures.viewer_data import FORMAT_VERSION, Summary, encode_case
from volcam.geometry import Canonical, as_affine, axis_codes, same_grid
from volcam.io.nifti import atomic_write

__all__ = ["write_viewer"]

logger = logging.getLogger(__name__)

_MASK_COLOURS = ("#00e5ff", "#ffd400", "#ff4dd2", "#7cfc00", "#ff8c00", "#b388ff", "#ffffff", "#ff5252")
_PLANES = {"axial": 2, "coronal": 1, "sagittal": 0}
_DATA_MARGIN = 64 << 10  # bytes kept for the chunk list of the manifest


# --------------------------------------------------------------------------- inputs


def _as_mapping(value: Any, what: str, default_name: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        out = {}
        for name, v in value.items():
            if not isinstance(name, str) or not name.strip():
                raise ArgumentError(f"`{what}` names must be non-empty strings, not {name!r}", name=what)
            out[name.strip()] = v
        return out
    return {default_name: value}


def _find_affine(affine: Any, volumes: list) -> Any:
    if affine is not None:
        return as_affine(affine)
    for v in volumes:
        if is_meta_tensor(v):
            return as_affine(v.affine)
    return None


def _check_grids(affine: np.ndarray, named: dict) -> None:
    for name, v in named.items():
        if is_meta_tensor(v) and not same_grid(as_affine(v.affine), affine):
            raise ShapeError(
                f"{name} must lie on the image's grid (same affine), not on\n{as_affine(v.affine)}\n"
                "take it back to the scan's grid first (volcam.io.invert_to_source)",
                expected="the image's affine",
                actual_shape=tuple(v.shape),
            )


def _template() -> str:
    folder = resources.files("volcam.figures") / "html"
    page = (folder / "viewer.html").read_text(encoding="utf-8")
    page = page.replace("/*VOLCAM:CSS*/", (folder / "viewer.css").read_text(encoding="utf-8"))
    return page.replace("/*VOLCAM:JS*/", (folder / "viewer.js").read_text(encoding="utf-8"))


def _json_for_script(obj: Any) -> str:
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


# --------------------------------------------------------------------------- the page


def write_viewer(
    image: Any,
    heats: Any,
    path: str | os.PathLike[str],
    *,
    affine: Any = None,
    masks: Mapping[str, Any] | None = None,
    stats: Mapping[str, Mapping[str, Any]] | None = None,
    title: str | None = None,
    convention: str = "radiological",
    coordinates: str = "RAS",
    modality: str | None = None,
    window: Any = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    threshold: float = 0.0,
    blend: str = "scaled",
    max_bytes: int = 25_000_000,
) -> Path:
    """Write a self-contained HTML viewer of a scan and its heat maps, atomically.

    All volumes lie on the scan's own grid. Inputs are as for the other figure functions:
    a MONAI ``MetaTensor [1, *S]`` carries its affine; numpy arrays or tensors are spatial
    ``[*S]`` (or ``[1, *S]``, ``[1, 1, *S]``) with the affine passed as ``affine=``. A 2D
    image shows one plane; without any affine it is shown in pixel units, ``x`` to the
    right and ``y`` downwards.

    Args:
        image: the scan ``[*S]`` in its own units (HU for CT).
        heats: one heat volume ``[*S]``, or a mapping ``{layer name: heat}`` with one layer
            per explained class (and method), e.g. ``{"liver / gradcam": h1, ...}``. Heat in
            [0, 1] is drawn over [0, 1]; other values over their own range.
        path: destination ``.html`` file.
        affine: voxel-to-world (RAS mm) matrix, unless a MetaTensor input carries one.
        masks: ``{name: mask [*S]}`` drawn as outlines of ``mask > 0`` that can be toggled,
            e.g. ``{"prediction: liver": pred, "reference: liver": label == 1}``.
        stats: per layer, the figures shown in the page: ``{layer name: {field: value}}``;
            a ``summary.csv`` row fits as is (``predicted_volume_ml``,
            ``energy_in_prediction``, ``energy_in_label``, ``note``, other fields shown by
            name; file names and peak columns are left out: the page computes the peak).
        title: page title (default: the file name).
        convention: ``"radiological"`` (patient's right on the viewer's left) or
            ``"neurological"``.
        coordinates: ``"RAS"`` (NIfTI) or ``"LPS"`` (DICOM) for the world read-out.
        modality: ``"CT"`` (HU read-out, CT window presets), ``"MR"``, or None to guess
            CT from the values (air near -1000).
        window: first grey window: ``(low, high)``, a :data:`~volcam.figures.WINDOWS`
            name, or None for the 0.5-99.5 percentiles (as the slice PNGs).
        cmap: first heat colour map (a matplotlib name or colormap).
        alpha: first heat opacity in [0, 1].
        threshold: first heat threshold (heat at or below it is not drawn).
        blend: ``"scaled"`` (opacity grows with the heat, as the PNGs) or ``"constant"``.
        max_bytes: size budget of the file; volumes that do not fit are reduced in-plane.

    Returns:
        The written ``Path``.

    Raises:
        ArgumentError: a bad argument (path, names, options, missing affine of a 3D image).
        ShapeError: a heat or mask is not on the image's grid.
        ValueRangeError: the volumes do not fit in ``max_bytes`` even reduced 16-fold.
    """
    start = time.perf_counter()
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ArgumentError(f"`path` must end in .html, not '{path}'", name="path")
    one_of(convention, ("radiological", "neurological"), "convention")
    one_of(coordinates, ("RAS", "LPS"), "coordinates")
    one_of(modality, ("CT", "MR", None), "modality")
    one_of(blend, ("scaled", "constant"), "blend")
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1_000_000:
        raise ArgumentError(f"`max_bytes` must be an int of at least 1000000, not {max_bytes!r}", name="max_bytes")
    alpha = fraction(alpha, "alpha")
    threshold = in_range(threshold, "threshold", -math.inf, math.inf, low_open=True, high_open=True)

    heat_inputs = _as_mapping(heats, "heats", "heat")
    if not heat_inputs:
        raise ArgumentError("`heats` must hold at least one heat volume, not an empty mapping", name="heats")
    mask_inputs = _as_mapping(masks, "masks", "mask")
    stats = dict(stats or {})
    for name in stats:
        if name not in heat_inputs:
            raise ArgumentError(
                f"`stats` keys must be layer names of `heats` {list(heat_inputs)}, not {name!r}"
                f"{did_you_mean(name, heat_inputs)}",
                name="stats",
            )

    img = spatial_array(image, None, what="image", where="")
    shape = img.shape
    heat_arrays = {n: spatial_array(h, shape, what=f"heat '{n}'", where="the image") for n, h in heat_inputs.items()}
    mask_arrays = {n: spatial_array(m, shape, what=f"mask '{n}'", where="the image") for n, m in mask_inputs.items()}
    aff = _find_affine(affine, [image, *heat_inputs.values(), *mask_inputs.values()])
    anatomical = aff is not None
    if aff is None:
        if img.ndim == 3:
            raise ArgumentError(
                "`affine` is needed to show a 3D image in its anatomical planes; pass affine= or MetaTensor "
                "inputs (volcam.io.load_image)",
                name="affine",
            )
        aff = np.diag([1.0, -1.0, 1.0, 1.0])  # x to the right, y downwards
        convention = "neurological"
    _check_grids(aff, {f"heat '{n}'": h for n, h in heat_inputs.items()})
    _check_grids(aff, {f"mask '{n}'": m for n, m in mask_inputs.items()})

    canonical = Canonical.of(aff, shape)
    image_summary = Summary.of(img)
    heat_summaries = [Summary.of(h, integral=False, argmax=True) for h in heat_arrays.values()]
    # window_for samples at most a million voxels with a fixed stride: take that sample once
    flat = np.asarray(img).reshape(-1)
    sample = flat[:: max(1, flat.size // _MAX_WINDOW_SAMPLES)]
    if modality is None and anatomical:
        modality = content.guess_modality(sample)
    lo, hi = _resolve_window(window, sample)
    presets = content.presets(sample, modality)
    cmaps = {name: content.lut(name) for name in content.CMAPS}
    cmap_name = cmap if isinstance(cmap, str) else getattr(cmap, "name", "custom")
    if cmap_name not in cmaps:
        cmaps[cmap_name] = content.lut(cmap)

    layers = [
        {
            "name": name,
            "volume": f"heat{i}",
            "range": content.heat_range(summary),
            "peak": content.peak(summary, canonical),
            "stats": content.format_stats(stats.get(name, {})),
        }
        for i, (name, summary) in enumerate(zip(heat_arrays, heat_summaries))
    ]
    mask_meta = [
        {"name": n, "volume": f"mask{i // 8}", "bit": i % 8, "color": _MASK_COLOURS[i % len(_MASK_COLOURS)]}
        for i, n in enumerate(mask_arrays)
    ]
    planes = [_PLANES[p] for p in ("axial", "coronal", "sagittal")]
    if img.ndim == 2:
        planes = [int(np.flatnonzero(np.asarray(canonical.shape) == 1)[-1])]

    from volcam import __version__

    meta = {
        "format": FORMAT_VERSION,
        "generator": f"volcam {__version__}",
        "title": title or path.stem,
        "full_shape": list(canonical.shape),
        "source": {
            "shape": [int(s) for s in shape],
            "affine": canonical.source_affine.round(6).tolist(),
            "axcodes": axis_codes(canonical.source_affine) if anatomical else "",
        },
        "convention": convention,
        "coordinates": coordinates,
        "anatomical": anatomical,
        "planes": planes,
        "modality": modality,
        "units": "HU" if modality == "CT" else "",
        "window": [lo, hi],
        "presets": presets,
        "layers": layers,
        "masks": mask_meta,
        "cmaps": cmaps,
        "display": {"cmap": cmap_name, "alpha": float(alpha), "threshold": float(threshold), "blend": blend},
    }
    page = _template().replace("{{TITLE}}", html.escape(str(meta["title"])))
    fixed = len(page.encode("utf-8")) + len(_json_for_script(meta).encode("utf-8"))
    encoded = encode_case(
        canonical,
        img,
        list(heat_arrays.values()),
        list(mask_arrays.values()),
        image_summary=image_summary,
        heat_summaries=heat_summaries,
        budget=max_bytes - fixed - _DATA_MARGIN,
    )
    for layer in layers:
        peak = layer["peak"]
        if peak is not None:
            peak["voxel"] = [c // f for c, f in zip(peak["canonical"], encoded.factors)]
    notice = ""
    if encoded.factors != (1, 1, 1):
        notice = (
            f"Shown at {' x '.join(map(str, encoded.shape))} voxels, reduced "
            f"{' x '.join(map(str, encoded.factors))} by block means from "
            f"{' x '.join(map(str, canonical.shape))} to keep this page under {max_bytes / 1e6:g} MB. "
            "Values under the pointer are block means; the hottest voxel was found at full resolution."
        )
    meta.update(
        shape=list(encoded.shape),
        affine=encoded.affine.round(6).tolist(),
        factors=list(encoded.factors),
        notice=notice,
        volumes=encoded.volumes,
    )
    data = "".join(
        f'<script type="application/octet-stream" id="{cid}">{text}</script>\n' for cid, text in encoded.chunks.items()
    )
    before, after = page.split("<!--VOLCAM:DATA-->")
    meta_tag = f'<script type="application/json" id="volcam-meta">{_json_for_script(meta)}</script>\n'
    parts = [before, meta_tag, data, after]
    size = sum(len(p.encode("utf-8")) for p in parts)
    if size > max_bytes:
        raise ValueRangeError(f"`max_bytes` must hold the page, not {max_bytes} bytes: it takes {size}; raise it")

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for p in parts:
                f.write(p)

    out = atomic_write(path, write)
    logger.debug(
        "viewer %s: %.1f MB, grid %s (factors %s), %.2f s",
        out,
        size / 1e6,
        encoded.shape,
        encoded.factors,
        time.perf_counter() - start,
    )
    return out


def dicom_style(modality: Any) -> dict[str, Any]:
    """The viewer's settings for a case read from a DICOM series: the world read-out in DICOM's
    patient coordinates (LPS), and the series' modality when the viewer knows it (CT: HU and
    CT window presets)."""
    style: dict[str, Any] = {"coordinates": "LPS"}
    if str(modality).upper() in ("CT", "MR"):
        style["modality"] = str(modality).upper()
    return style
