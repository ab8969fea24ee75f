"""The voxel grid of a DICOM series, and the checks that refuse series without one.

A series of single-frame images is a volume only if every image has the same size, pixel
spacing and orientation, and the slices are stacked at a regular spacing along their normal.
:func:`series_geometry` checks this from the headers alone (nothing is decoded) and says,
for a series that fails, which slices are at fault: missing slices or uneven spacing (with
their positions), mixed orientations, a gantry tilt (slices stacked off their normal; such
series are refused, not resampled), pixel data in a transfer syntax that no installed
decoder reads (with the package to install), multi-frame images.

The slice order and the grid come from highdicom (``get_series_volume_positions`` and
``VolumeGeometry``). volcam's voxel order is the one ITK and dcm2niix use: axis 0 runs
along the image rows (column index), axis 1 down the columns (row index), axis 2 along the
slice normal (row direction x column direction); the affine maps it to RAS+ millimetres,
like NIfTI's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from volcam.errors import ImageReadError
from volcam.io.dicom_series import Series

__all__ = ["SeriesGeometry", "series_geometry", "LPS_TO_RAS"]

logger = logging.getLogger(__name__)

#: Flips the first two world axes: DICOM's LPS+ <-> NIfTI's RAS+.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_ORIENTATION_TOL = 1e-4  # direction cosines that differ by less are the same orientation
_DRIFT_PIXELS = 0.05  # slices may drift sideways by this fraction of a pixel at most (no tilt)
_MAX_LISTED = 5


@dataclass(frozen=True)
class SeriesGeometry:
    """The voxel grid of a checked series.

    Attributes:
        series: the :class:`~volcam.io.dicom_series.Series`.
        headers: the images' headers (pydicom datasets without pixel data), in slice order:
            ``headers[k]`` is slice ``k`` of the volume.
        affine: 4x4 voxel-to-world matrix in RAS+ mm for voxel order (column, row, slice).
        shape: spatial shape ``(columns, rows, slices)``.
        slice_spacing: distance between slices in mm.
        spacing_atol: the tolerance (mm) the spacing was checked with.
        perpendicular_tol: the tolerance the stacking direction was checked with (as highdicom takes it).
    """

    series: Series
    headers: tuple[Any, ...]
    affine: np.ndarray
    shape: tuple[int, int, int]
    slice_spacing: float
    spacing_atol: float
    perpendicular_tol: float

    @property
    def affine_lps(self) -> np.ndarray:
        """The same affine in DICOM's LPS+ patient coordinates."""
        return LPS_TO_RAS @ self.affine

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal (row direction x column direction), LPS."""
        iop = np.asarray(self.headers[0].ImageOrientationPatient, dtype=np.float64)
        n = np.cross(iop[:3], iop[3:])
        return n / np.linalg.norm(n)


def _fail(series: Series, problem: str) -> ImageReadError:
    return ImageReadError(f"DICOM {series.label()} uid {series.uid} in '{series.folder}' {problem}", path=series.folder)


def read_headers(series: Series) -> list[Any]:
    """The headers of the series' files (pixel data not read)."""
    import pydicom

    headers = []
    for path in series.files:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as err:
            raise _fail(series, f"cannot be read: file '{path.name}' is not readable DICOM ({err})") from err
    return headers


def _check_frames(series: Series, headers: list[Any]) -> None:
    multi = [series.files[i].name for i, ds in enumerate(headers) if int(ds.get("NumberOfFrames") or 1) > 1]
    if multi:
        raise _fail(
            series,
            f"holds multi-frame (enhanced) images ({', '.join(multi[:_MAX_LISTED])}); volcam reads series of "
            "single-frame images: convert it to single-frame images first (e.g. dcmtk's or dcm2niix's tools)",
        )


def decoder_problem(transfer_syntax: str) -> str | None:
    """Why pydicom cannot decode pixel data of ``transfer_syntax`` here, with the packages to
    install; None when it can."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(transfer_syntax))
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"its pixel data use transfer syntax {uid.name or uid} ({uid}), which no pydicom decoder reads"
    if decoder.is_available:
        return None
    options = []
    for line in decoder.missing_dependencies:  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        needs = line.split("requires", 1)[-1].strip()
        packages = [p.strip().split(">")[0].split("=")[0] for p in needs.split(" and ")]
        packages = ["python-gdcm" if p == "gdcm" else p for p in packages]
        options.append(f"`pip install {' '.join(packages)}`")
    how = " or ".join(options) if options else "a pydicom pixel-data plugin for it"
    return (
        f"has compressed pixel data ({uid.name}, transfer syntax {uid}) that no installed decoder reads; "
        f"install one: {how}"
    )


def _check_transfer_syntax(series: Series, headers: list[Any]) -> None:
    syntaxes = {str(ds.file_meta.get("TransferSyntaxUID", "")) for ds in headers if hasattr(ds, "file_meta")}
    for uid in sorted(s for s in syntaxes if s):
        problem = decoder_problem(uid)
        if problem:
            raise _fail(series, problem)


def _check_tags(series: Series, headers: list[Any]) -> None:
    for name in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "FrameOfReferenceUID"):
        lacking = [series.files[i].name for i, ds in enumerate(headers) if not ds.get(name)]
        if lacking:
            raise _fail(
                series,
                f"is not a volume: {len(lacking)} of its images have no {name} ({', '.join(lacking[:_MAX_LISTED])})",
            )
    for name in ("Rows", "Columns", "FrameOfReferenceUID"):
        values = {str(ds.get(name)) for ds in headers}
        if len(values) > 1:
            raise _fail(series, f"mixes images of different {name}: {sorted(values)}")
    spacings = np.array([[float(v) for v in ds.PixelSpacing] for ds in headers])
    if not np.allclose(spacings, spacings[0], rtol=1e-4, atol=1e-6):
        raise _fail(series, f"mixes pixel spacings: {sorted({tuple(s) for s in spacings.tolist()})} mm")


def _check_orientation(series: Series, headers: list[Any]) -> np.ndarray:
    iops = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in headers])
    groups: list[tuple[np.ndarray, int]] = []
    for iop in iops:
        for g, (ref, count) in enumerate(groups):
            if np.allclose(iop, ref, atol=_ORIENTATION_TOL):
                groups[g] = (ref, count + 1)
                break
        else:
            groups.append((iop, 1))
    if len(groups) > 1:
        listed = "; ".join(f"{np.round(ref, 4).tolist()} ({count} images)" for ref, count in groups[:_MAX_LISTED])
        raise _fail(
            series,
            f"mixes {len(groups)} slice orientations (ImageOrientationPatient): {listed}; a volume needs one "
            "(the series may hold several stacks, e.g. a three-plane localiser)",
        )
    return iops[0]


def _check_stacking(series: Series, headers: list[Any], iop: np.ndarray) -> tuple[float, float]:
    """Spacing and tilt checks; returns (spacing tolerance in mm, perpendicular tolerance)."""
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    s, p = along[order], positions[order]
    names = [series.files[i].name for i in order]
    if len(s) < 2:
        return 0.01, 1e-3
    steps = np.diff(s)
    dup = np.flatnonzero(steps < 1e-3)
    if dup.size:
        where = ", ".join(f"{s[i]:.2f} mm ({names[i]}, {names[i + 1]})" for i in dup[:_MAX_LISTED])
        raise _fail(
            series,
            f"has {dup.size} images at the same slice position as another: {where}; it holds several volumes "
            "(phases, echoes or time points): split it, or export one of them",
        )
    ref = float(steps.min())
    tol = max(0.01 * ref, 0.01)
    multiple = np.rint(steps / ref)
    uneven = np.flatnonzero(np.abs(steps - multiple * ref) > tol)
    gaps = np.flatnonzero((np.abs(steps - multiple * ref) <= tol) & (multiple > 1))
    if uneven.size:
        where = "; ".join(
            f"{steps[i]:.3g} mm between slice positions {s[i]:.2f} and {s[i + 1]:.2f} mm ({names[i]}, {names[i + 1]})"
            for i in uneven[:_MAX_LISTED]
        )
        raise _fail(
            series,
            f"has uneven slice spacing: the closest slices are {ref:.3g} mm apart, but {where} (positions along "
            "the slice normal); volcam does not resample irregular series: export a regularly spaced reconstruction",
        )
    if gaps.size:
        missing = int((multiple[gaps] - 1).sum())
        where = "; ".join(
            f"{int(multiple[i]) - 1} between slice positions {s[i]:.2f} and {s[i + 1]:.2f} mm "
            f"({names[i]}, {names[i + 1]})"
            for i in gaps[:_MAX_LISTED]
        )
        raise _fail(
            series,
            f"has {missing} missing slice{'s' if missing > 1 else ''} (slices are {ref:.3g} mm apart): {where} "
            "(positions along the slice normal); export the series again with all its images",
        )
    offsets = p - p[0]
    sideways = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.linalg.norm(sideways, axis=1).max())
    pixel = float(min(float(v) for v in headers[0].PixelSpacing))
    extent = float(s[-1] - s[0])
    angle = float(np.degrees(np.arctan2(float(np.linalg.norm(sideways[-1])), extent)))
    if drift > _DRIFT_PIXELS * pixel:
        tag = headers[0].get("GantryDetectorTilt")
        said = f"; GantryDetectorTilt is {float(tag):g}" if tag not in (None, "") else ""
        raise _fail(
            series,
            f"is tilted: its slices are stacked {angle:.2f} degrees off their normal (they drift {drift:.2f} mm "
            f"sideways over {extent:.1f} mm{said}), so its voxels are not a rectangular grid. volcam refuses "
            "tilted (gantry-tilt) series rather than resampling them; resample it onto a rectangular grid first "
            "(e.g. dcm2niix's tilt correction, or 3D Slicer's acquisition geometry regularization) and use the "
            "result as NIfTI",
        )
    # highdicom checks the direction from the first slice to every other one: allow the
    # sub-pixel sideways jitter accepted above, which is widest seen from the nearest slice
    cos = (offsets[1:] @ normal) / np.linalg.norm(offsets[1:], axis=1)
    return tol, max(1e-3, float((1.0 - np.abs(cos)).max()) + 1e-9)


def series_geometry(series: Series) -> SeriesGeometry:
    """Check a series from its headers and return its voxel grid.

    Args:
        series: a :class:`~volcam.io.dicom_series.Series` (see :func:`find_series`).

    Returns:
        :class:`SeriesGeometry`: the headers in slice order, the RAS+ affine and the shape
        ``(columns, rows, slices)``.

    Raises:
        ImageReadError: the series is not a regular volume, or its pixel data cannot be
            decoded here; the message names the series, its folder, and what is wrong.
    """
    from highdicom import VolumeGeometry
    from highdicom.spatial import get_series_volume_positions

    headers = read_headers(series)
    _check_frames(series, headers)
    _check_transfer_syntax(series, headers)
    _check_tags(series, headers)
    iop = _check_orientation(series, headers)
    atol, perpendicular_tol = _check_stacking(series, headers, iop)
    if len(headers) > 1:
        spacing, index = get_series_volume_positions(
            headers, atol=atol, perpendicular_tol=perpendicular_tol, orientation_tol=_ORIENTATION_TOL
        )
        if spacing is None or index is None:
            raise _fail(series, "is not a regularly spaced volume (highdicom cannot stack its slices)")
        ordered = [headers[index.index(k)] for k in range(len(headers))]
    else:
        first = headers[0]
        spacing = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        ordered = headers
    first = ordered[0]
    geometry = VolumeGeometry.from_attributes(
        image_position=[float(v) for v in first.ImagePositionPatient],
        image_orientation=[float(v) for v in iop],
        rows=int(first.Rows),
        columns=int(first.Columns),
        pixel_spacing=[float(v) for v in first.PixelSpacing],
        spacing_between_slices=float(spacing),
        number_of_frames=len(ordered),
        coordinate_system="PATIENT",
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
    ).permute_spatial_axes([2, 1, 0])  # (slice, row, column) -> (column, row, slice)
    normal = np.cross(iop[:3], iop[3:])
    if float(geometry.affine[:3, 2] @ normal) < 0:  # slices along the normal, as ITK orders them
        geometry = geometry.flip_spatial(2)
        ordered = ordered[::-1]
    affine = LPS_TO_RAS @ np.asarray(geometry.affine, dtype=np.float64)
    columns, rows, slices = (int(n) for n in geometry.spatial_shape)
    shape = (columns, rows, slices)
    logger.debug("%s: grid %s, slice spacing %.4g mm", series.label(), shape, spacing)
    return SeriesGeometry(series, tuple(ordered), affine, shape, float(spacing), atol, perpendicular_tol)
