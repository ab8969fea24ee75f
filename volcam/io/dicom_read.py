"""Loading a DICOM series as a channel-first MONAI ``MetaTensor`` with an exact affine.

:class:`DicomSeriesReader` is a MONAI ``ImageReader``: it finds the series in a folder
(:func:`~volcam.io.dicom_series.find_series`, :func:`~volcam.io.dicom_series.select_series`),
checks it (:func:`~volcam.io.dicom_geometry.series_geometry`) and decodes it with highdicom
(``get_volume_from_series``: modality rescale to HU for CT, MONOCHROME1 inverted). It fits
MONAI's loaders and dictionary pipelines as they are, so the preprocessing and
:func:`volcam.io.invert_to_source` work on DICOM input like on NIfTI::

    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd
    from volcam.io.dicom import DicomSeriesReader

    preprocess = Compose([
        LoadImaged("image", reader=DicomSeriesReader(modality="CT")),
        EnsureChannelFirstd("image"),
        Orientationd("image", "RAS"),
        Spacingd("image", (1.5, 1.5, 2.0)),
    ])
    data = preprocess({"image": "exports/case17"})       # a folder of DICOM files

:func:`load_series` does the same for one series, like :func:`volcam.io.load_image` does for
a NIfTI file. The voxels are ``[1, columns, rows, slices]`` float32 (ITK's order), and the
``.meta`` carries ``affine``/``original_affine`` (RAS+), ``spatial_shape``,
``filename_or_obj`` (the folder) and the series' identity under ``dicom_*`` keys
(:data:`META_KEYS`; ``dicom_folder`` is the folder holding the series' files, and
``dicom_series_number`` is -1 when the series has none), from which
:mod:`volcam.io.dicom_write` finds the series again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from volcam.errors import ImageReadError, VolcamError
from volcam.io.dicom_geometry import LPS_TO_RAS, SeriesGeometry, series_geometry
from volcam.io.dicom_series import Series, SeriesChoice, case_name, find_series, select_series

__all__ = ["DicomSeriesReader", "load_series", "META_KEYS"]

#: ``.meta`` keys a loaded series carries besides MONAI's own.
META_KEYS = (
    "dicom_series_uid",
    "dicom_study_uid",
    "dicom_folder",
    "dicom_modality",
    "dicom_series_number",
    "dicom_series_description",
    "dicom_case_name",
    "dicom_selection",
)


def _image_reader_base() -> type:
    from monai.data import ImageReader

    return ImageReader


class _Pending:
    """What :meth:`DicomSeriesReader.read` found: the choice, or the error to raise in ``get_data``."""

    def __init__(self, choice: SeriesChoice | None = None, error: BaseException | None = None):
        self.choice = choice
        self.error = error


class DicomSeriesReader(_image_reader_base()):  # type: ignore[misc]
    """MONAI ``ImageReader`` for one DICOM series in a folder.

    ``read`` accepts a folder (searched recursively; the series is chosen with
    ``uid``/``description``/``modality`` as :func:`~volcam.io.dicom_series.select_series`
    does), a :class:`~volcam.io.dicom_series.Series` or a
    :class:`~volcam.io.dicom_series.SeriesChoice`. ``get_data`` returns the volume
    ``(columns, rows, slices)`` float32 and its metadata (RAS+ affine).

    A series that cannot be used raises :class:`~volcam.errors.ImageReadError` from
    ``get_data`` (not from ``read``), so that MONAI's ``LoadImage`` does not fall back to
    another reader that would read the folder differently.

    Args:
        uid: SeriesInstanceUID to load.
        description: regular expression searched in SeriesDescription.
        modality: e.g. ``"CT"``; by default any modality.
        series: a series found before (skips the folder search).
    """

    def __init__(
        self,
        uid: str | None = None,
        description: str | None = None,
        modality: str | None = None,
        series: Series | SeriesChoice | None = None,
    ):
        super().__init__()
        self.uid = uid
        self.description = description
        self.modality = modality
        self.series = series

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        """True for one folder (or a preset series)."""
        names = filename if isinstance(filename, (list, tuple)) else [filename]
        return self.series is not None or (len(names) == 1 and Path(str(names[0])).is_dir())

    def _choose(self, data: Any) -> SeriesChoice:
        if self.series is not None or isinstance(data, (Series, SeriesChoice)):
            given = self.series if self.series is not None else data
            if isinstance(given, SeriesChoice):
                return given
            return SeriesChoice(given, "given", f"{given.label()}, given", ())
        names = list(data) if isinstance(data, (list, tuple)) else [data]
        if len(names) != 1:
            raise ImageReadError(
                f"a DICOM series must be given as one folder, not {len(names)} paths ({names[:3]}...); "
                "put each series' files in a folder of their own",
                path=names[0] if names else None,
            )
        found = find_series(str(names[0]))
        return select_series(found, uid=self.uid, description=self.description, modality=self.modality)

    def read(self, data: Any, **kwargs: Any) -> _Pending:
        """Find and choose the series (headers only); errors are kept for :meth:`get_data`."""
        try:
            return _Pending(choice=self._choose(data))
        except VolcamError as err:
            return _Pending(error=err)

    def get_data(self, img: _Pending) -> tuple[np.ndarray, dict]:
        """Check and decode the chosen series: ``(array [columns, rows, slices], meta)``.

        Raises:
            ImageReadError: the folder has no suitable series, or the series is not a
                regular volume, or its pixels cannot be decoded.
        """
        if img.error is not None or img.choice is None:
            raise img.error or ImageReadError("no DICOM series was read")
        geometry = series_geometry(img.choice.series)
        array = _decode(geometry)
        return array, _meta(geometry, img.choice)


def _decode(geometry: SeriesGeometry) -> np.ndarray:
    """Pixels of the series in volcam's voxel order (column, row, slice), float32."""
    import pydicom
    from highdicom import get_volume_from_series

    series = geometry.series
    datasets = [pydicom.dcmread(path) for path in series.files]
    try:
        volume = get_volume_from_series(
            datasets,
            dtype=np.float32,
            atol=geometry.spacing_atol,
            perpendicular_tol=geometry.perpendicular_tol,
            orientation_tol=1e-4,
        )
    except Exception as err:
        raise ImageReadError(
            f"DICOM {series.label()} uid {series.uid} in '{series.folder}' cannot be decoded: {err}",
            path=series.folder,
        ) from err
    volume = volume.permute_spatial_axes([2, 1, 0])
    affine = LPS_TO_RAS @ np.asarray(volume.affine, dtype=np.float64)
    if not np.allclose(affine[:3, :3], geometry.affine[:3, :3], atol=1e-4):  # slices the other way round
        volume = volume.flip_spatial(2)
        affine = LPS_TO_RAS @ np.asarray(volume.affine, dtype=np.float64)
    if not np.allclose(affine, geometry.affine, atol=1e-3) or tuple(volume.spatial_shape) != geometry.shape:
        raise ImageReadError(
            f"DICOM {series.label()} uid {series.uid} in '{series.folder}' decodes to a grid that differs from "
            f"its headers' (affine\n{affine}\nnot\n{geometry.affine})",
            path=series.folder,
        )
    return np.ascontiguousarray(volume.array, dtype=np.float32)


def _meta(geometry: SeriesGeometry, choice: SeriesChoice) -> dict:
    from monai.utils import MetaKeys, SpaceKeys

    series = geometry.series
    affine = geometry.affine.copy()
    return {
        MetaKeys.AFFINE: affine,
        MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(geometry.shape),
        MetaKeys.SPACE: SpaceKeys.RAS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        "spacing": np.sqrt((affine[:3, :3] ** 2).sum(axis=0)),
        "dicom_series_uid": series.uid,
        "dicom_study_uid": series.study_uid,
        "dicom_folder": str(series.directory),
        "dicom_modality": series.modality,
        "dicom_series_number": series.number if series.number is not None else -1,
        "dicom_series_description": series.description,
        "dicom_case_name": case_name(series),
        "dicom_selection": choice.reason,
    }


def load_series(
    source: str | os.PathLike[str] | Series | SeriesChoice,
    transform: Callable | None = None,
    *,
    uid: str | None = None,
    description: str | None = None,
    modality: str | None = None,
    dtype: Any = np.float32,
    allow_nonfinite: bool = False,
):
    """Load one DICOM series as a channel-first ``MetaTensor [1, columns, rows, slices]``.

    The DICOM counterpart of :func:`volcam.io.load_image`: MONAI's ``LoadImage`` with a
    :class:`DicomSeriesReader`, then the optional ``transform``. The affine is RAS+ (as
    for NIfTI), exact to the headers' precision; ``.meta`` identifies the series
    (:data:`META_KEYS`) so that the heat can be written back onto it as DICOM.

    Args:
        source: a folder (the series is chosen by ``uid``/``description``/``modality``,
            by default the one with the most images), or a Series / SeriesChoice.
        transform: optional preprocessing applied to the loaded MetaTensor; keep the object
            for :func:`volcam.io.invert_to_source`.
        uid, description, modality: series selection, see :func:`select_series`.
        dtype: data type of the voxels (CT in Hounsfield units, MR as stored).
        allow_nonfinite: by default a series with NaN or infinite voxels is refused.

    Returns:
        ``MetaTensor [1, *S]`` (after ``transform`` if one is given).

    Raises:
        ImageReadError: no suitable series, a series that is not a regular volume (missing
            slices, uneven spacing, mixed orientations, gantry tilt, multi-frame), or pixel
            data that cannot be decoded here; the message names the series and folder.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import EnsureChannelFirst

    if isinstance(source, SeriesChoice):
        preset: Series | SeriesChoice | None = source
        folder = source.series.folder
    elif isinstance(source, Series):
        preset, folder = source, source.folder
    else:
        preset, folder = None, Path(source)
    reader = DicomSeriesReader(uid=uid, description=description, modality=modality, series=preset)
    # what MONAI's LoadImage(reader=reader, ensure_channel_first=True) does, without building
    # (and importing the dependencies of) every other reader it registers
    array, meta = reader.get_data(reader.read(str(folder)))
    meta["filename_or_obj"] = str(folder)
    image: Any = EnsureChannelFirst()(MetaTensor.ensure_torch_and_prune_meta(array.astype(dtype, copy=False), meta))
    if not allow_nonfinite and image.is_floating_point():
        bad = int((~torch.isfinite(image.as_tensor())).sum())
        if bad:
            raise ImageReadError(
                f"DICOM series {image.meta['dicom_series_uid']} in '{folder}' must hold only finite values, not "
                f"{bad} NaN or infinite voxels; load with allow_nonfinite=True and replace them in the preprocessing",
                path=folder,
            )
    if transform is not None:
        image = transform(image)
    return image
