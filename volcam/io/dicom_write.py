"""Writing a heat volume as DICOM objects on the source series: Parametric Map and SEG.

Both objects are made by highdicom from the source images' headers, so they share the
series' frame of reference, reference each of its instances, carry one frame per source
slice at that slice's position and orientation, and copy the patient and study attributes
(and nothing else) from the source. Each object gets new Series and SOP Instance UIDs.

- :func:`save_parametric_map`: the heat as float32, with a real-world value mapping
  "class activation" (DCM 130402), no unit, window 0..1. A Frame Anatomy functional group
  carries the frame laterality that the General Series module's Laterality (type 2C) asks for.
- :func:`save_seg`: a binary SEG with the heat thresholded at ``threshold`` as segment 1
  and, optionally, each class of a predicted label map as further segments, for viewers that
  do not show parametric maps.

The heat must lie on the series' grid, as :func:`volcam.io.dicom.load_series` returned it
(``[1, columns, rows, slices]``, the same affine), e.g. after
:func:`volcam.io.invert_to_source`::

    heat_src = io.invert_to_source(heat, x, preprocess)            # MetaTensor [1, *S] on the series
    save_parametric_map(heat_src, x_source, "out/case_heat_pmap.dcm")
    save_seg(heat_src, x_source, "out/case_heat_seg.dcm", threshold=0.5)

Files are written atomically (:func:`volcam.io.atomic_write`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from volcam.arrays import is_meta_tensor, spatial_array, to_numpy
from volcam.checks import in_range
from volcam.errors import ArgumentError, ShapeError, ValueRangeError
from volcam.geometry import same_grid
from volcam.io.dicom_geometry import SeriesGeometry, series_geometry
from volcam.io.dicom_series import Series, SeriesChoice, find_series, select_series
from volcam.io.nifti import atomic_write

__all__ = ["save_parametric_map", "save_seg", "source_geometry"]

logger = logging.getLogger(__name__)

_MANUFACTURER = "volcam"
_PM_SERIES_OFFSET = 1000  # default series number: the source's plus this
_SEG_SERIES_OFFSET = 2000


def source_geometry(source: Any) -> SeriesGeometry:
    """The checked grid of the series a heat volume is to be written on.

    Args:
        source: a :class:`~volcam.io.dicom_series.Series`, a
            :class:`~volcam.io.dicom_series.SeriesChoice`, a :class:`SeriesGeometry`, or a
            ``MetaTensor`` loaded by :func:`~volcam.io.dicom_read.load_series` (its
            ``.meta`` names the folder and the SeriesInstanceUID).

    Raises:
        ArgumentError: ``source`` identifies no series.
        ImageReadError: the series is no longer in its folder, or is not a regular volume.
    """
    if isinstance(source, SeriesGeometry):
        return source
    if isinstance(source, SeriesChoice):
        return series_geometry(source.series)
    if isinstance(source, Series):
        return series_geometry(source)
    meta = getattr(source, "meta", None)
    if is_meta_tensor(source) and isinstance(meta, Mapping) and meta.get("dicom_series_uid"):
        folder, uid = str(meta["dicom_folder"]), str(meta["dicom_series_uid"])
        return series_geometry(select_series(find_series(folder), uid=uid).series)
    raise ArgumentError(
        "`source` must be the DICOM series the heat lies on: a Series, a SeriesChoice or the MetaTensor that "
        f"volcam.io.dicom.load_series returned, not {type(source).__name__}",
        name="source",
    )


def _frames(volume: Any, geometry: SeriesGeometry, what: str) -> np.ndarray:
    """``[1, columns, rows, slices]`` on the series grid -> ``(slices, rows, columns)``."""
    series = geometry.series
    if is_meta_tensor(volume):
        own = to_numpy(volume.affine).astype(np.float64)
        if own.shape == (4, 4) and not same_grid(own, geometry.affine):
            raise ShapeError(
                f"{what} must lie on the grid of {series.label()} (affine\n{geometry.affine}), not on\n{own}\n"
                "take it back with volcam.io.invert_to_source first",
                expected="the series' affine",
                actual_shape=tuple(volume.shape),
            )
    arr = spatial_array(volume, geometry.shape, what=what, where=series.label())
    return np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))


def _heat_frames(heat: Any, geometry: SeriesGeometry, raw: bool) -> np.ndarray:
    frames = _frames(heat, geometry, "heat").astype(np.float32)
    finite = np.isfinite(frames)
    if not finite.all():
        raise ValueRangeError(f"heat must be finite, not hold {int((~finite).sum())} NaN or infinite values")
    if raw or frames.size == 0:
        return frames
    lo, hi = float(frames.min()), float(frames.max())
    if lo < -0.05 or hi > 1.05:
        raise ValueRangeError(
            f"heat values must lie in [0, 1], not [{lo:.4g}, {hi:.4g}]; normalise the map or pass raw=True",
            value_range=(lo, hi),
        )
    return np.clip(frames, 0.0, 1.0)


def _series_number(given: int | None, geometry: SeriesGeometry, offset: int) -> int:
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or not 0 <= given < 2**31:
            raise ArgumentError(f"`series_number` must be an int >= 0, not {given!r}", name="series_number")
        return given
    return (geometry.series.number or 0) + offset


def _software_version() -> str:
    from volcam import __version__

    return str(__version__)


def _identity(geometry: SeriesGeometry, series_number: int | None, offset: int, description: str) -> dict:
    """The arguments every new object takes alike: source images, new UIDs, the software."""
    import highdicom as hd

    return {
        "source_images": list(geometry.headers),
        "series_instance_uid": hd.UID(),
        "series_number": _series_number(series_number, geometry, offset),
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "manufacturer": _MANUFACTURER,
        "manufacturer_model_name": _MANUFACTURER,
        "software_versions": _software_version(),
        "device_serial_number": "1",
        "series_description": description,
    }


def _anatomy(geometry: SeriesGeometry, region: Any = None):
    """Frame Anatomy item: the source's anatomic region (or BodyPartExamined's CID 4031
    code, or 'Entire body') and its laterality ('U', unpaired, when the source gives none)."""
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    first = geometry.headers[0]
    item = Dataset()
    if region is not None:
        code = region
    elif first.get("AnatomicRegionSequence"):
        code = first.AnatomicRegionSequence[0]
    else:
        part = str(first.get("BodyPartExamined") or "").replace(" ", "").replace("_", "").lower()
        names = {n.lower(): n for n in dir(codes.cid4031) if not n.startswith("_")}
        code = getattr(codes.cid4031, names[part]) if part in names else codes.SCT.EntireBody
    region_item = Dataset()
    region_item.CodeValue = code.CodeValue if hasattr(code, "CodeValue") else code.value
    region_item.CodingSchemeDesignator = (
        code.CodingSchemeDesignator if hasattr(code, "CodingSchemeDesignator") else code.scheme_designator
    )
    region_item.CodeMeaning = code.CodeMeaning if hasattr(code, "CodeMeaning") else code.meaning
    item.AnatomicRegionSequence = [region_item]
    laterality = str(first.get("ImageLaterality") or first.get("Laterality") or "U").upper()
    item.FrameLaterality = laterality if laterality in {"R", "L", "B", "U"} else "U"
    return item


def _write(dataset: Any, path: str | os.PathLike[str]) -> Path:
    return atomic_write(path, lambda tmp: dataset.save_as(tmp, enforce_file_format=True))


def save_parametric_map(
    heat: Any,
    source: Any,
    path: str | os.PathLike[str],
    *,
    series_number: int | None = None,
    series_description: str = "volcam class activation",
    raw: bool = False,
    quantity: Any = None,
    anatomic_region: Any = None,
) -> Path:
    """Write a heat volume as a DICOM Parametric Map on its source series, atomically.

    Args:
        heat: ``MetaTensor [1, *S]`` (or array ``[*S]``, ``[1, *S]``, ``[1, 1, *S]``) on the
            series' grid, ``S = (columns, rows, slices)`` as the loader returns it; a
            MetaTensor's affine must be the series'.
        source: the series (see :func:`source_geometry`), e.g. the loaded MetaTensor.
        path: destination file (``.dcm``).
        series_number: SeriesNumber of the new series; default: the source's plus 1000.
        series_description: SeriesDescription of the new series.
        raw: False (default): values must lie in [0, 1] (overshoot up to 0.05 is clipped)
            and the window is 0..1; True writes them as they are (window over their range).
        quantity: the coded quantity of the real-world value mapping; default DCM 130402
            "Class activation".
        anatomic_region: a coded anatomic region for the Frame Anatomy; by default the
            source's (AnatomicRegionSequence, or BodyPartExamined), else "Entire body".

    Returns:
        The written ``Path``.

    Raises:
        ShapeError: ``heat`` is not on the series' grid.
        ValueRangeError: NaN/inf in ``heat``, or values outside [0, 1] without ``raw``.
        ImageReadError: the source series cannot be found or is not a regular volume.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    geometry = source_geometry(source)
    frames = _heat_frames(heat, geometry, raw)
    lo, hi = (0.0, 1.0) if not raw else (float(frames.min()), float(frames.max()))
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="CAM",
        lut_explanation="class activation",
        unit=codes.UCUM.NoUnits,
        value_range=(lo, hi),
        intercept=0.0,
        slope=1.0,
        quantity_definition=quantity if quantity is not None else codes.DCM.ClassActivation,
    )
    width = max(hi - lo, 1e-6)
    pmap = hd.pm.ParametricMap(
        pixel_array=frames,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=lo + width / 2, window_width=width)],
        content_label="CAM",
        content_description="class activation map",
        **_identity(geometry, series_number, _PM_SERIES_OFFSET, series_description),
    )
    pmap.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [_anatomy(geometry, anatomic_region)]
    logger.info("writing parametric map of %s to %s", geometry.series.label(), path)
    return _write(pmap, path)


def save_seg(
    heat: Any,
    source: Any,
    path: str | os.PathLike[str],
    *,
    threshold: float = 0.5,
    segmentation: Any = None,
    labels: Mapping[int, str] | None = None,
    series_number: int | None = None,
    series_description: str = "volcam class activation regions",
) -> Path:
    """Write a binary DICOM SEG of the heat above ``threshold`` on its source series, atomically.

    Segment 1 is ``heat >= threshold`` ("class activation >= 0.5"); with ``segmentation``,
    each class present in that label map becomes a further segment (2, 3, ...), named by
    ``labels``. Segments may overlap. Frames that are empty in every segment are left out,
    as highdicom does by default.

    Args:
        heat: heat on the series' grid, as for :func:`save_parametric_map` (values in [0, 1]).
        source: the series (see :func:`source_geometry`).
        path: destination file (``.dcm``).
        threshold: the level in (0, 1] above which the heat is a region.
        segmentation: optional label map on the series' grid (``[1, *S]`` or ``[*S]``,
            integers; 0 is background), e.g. the network's prediction taken back with
            ``invert_to_source(..., nearest=True)``.
        labels: names of the classes in ``segmentation`` (default ``"class N"``).
        series_number: SeriesNumber of the new series; default: the source's plus 2000.
        series_description: SeriesDescription of the new series.

    Returns:
        The written ``Path``.

    Raises:
        ArgumentError: ``threshold`` out of range, or ``segmentation`` not integer labels.
        ShapeError: ``heat`` or ``segmentation`` is not on the series' grid.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    threshold = in_range(threshold, "threshold", 0.0, 1.0, low_open=True)
    geometry = source_geometry(source)
    masks = [_heat_frames(heat, geometry, raw=False) >= threshold]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="volcam", family=codes.DCM.ArtificialIntelligence, version=_software_version()
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=1,
            segment_label=f"class activation >= {threshold:g}",
            segmented_property_category=codes.SCT.SpatialAndRelationalConcept,
            segmented_property_type=codes.DCM.RegionInSpace,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
    ]
    if segmentation is not None:
        label_map = _frames(segmentation, geometry, "segmentation")
        if not np.all(np.isfinite(label_map)) or not np.array_equal(label_map, np.rint(label_map)):
            raise ArgumentError("`segmentation` must hold integer class labels, not fractional values")
        names = dict(labels or {})
        for value in sorted(int(v) for v in np.unique(label_map) if v > 0):
            masks.append(label_map == value)
            descriptions.append(
                hd.seg.SegmentDescription(
                    segment_number=len(descriptions) + 1,
                    segment_label=str(names.get(value, f"class {value}"))[:64],
                    segmented_property_category=codes.SCT.AnatomicalStructure,
                    segmented_property_type=codes.SCT.Tissue,
                    algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                    algorithm_identification=algorithm,
                )
            )
    pixel = np.stack(masks, axis=-1).astype(np.uint8)  # (slices, rows, columns, segments)
    empty = not pixel.any()
    seg = hd.seg.Segmentation(
        pixel_array=pixel,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        content_label="CAM_SEG",
        content_description="class activation regions",
        omit_empty_frames=not empty,
        **_identity(geometry, series_number, _SEG_SERIES_OFFSET, series_description),
    )
    if empty:
        logger.warning("the SEG of %s is empty: no heat reaches %g", geometry.series.label(), threshold)
    logger.info("writing SEG of %s to %s", geometry.series.label(), path)
    return _write(seg, path)
