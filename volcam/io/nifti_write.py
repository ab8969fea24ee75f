"""Writing NIfTI on a known grid: heat volumes on the scan's own grid with its header's geometry
copied verbatim (qform and sform with their codes, units, voxel sizes), or on the network's
grid. Every file is written atomically (:func:`volcam.io.nifti.atomic_write`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from volcam.arrays import is_meta_tensor, spatial_array
from volcam.errors import ConfigError, ImageReadError, ShapeError, ValueRangeError
from volcam.geometry import as_affine, same_grid
from volcam.io.nifti import PathLike, _check_nifti_path, _nifti_suffix, _nonfinite_counts, atomic_write

__all__ = ["save_nifti", "save_heat", "save_heat_preprocessed"]

_DESCRIP_SOURCE = "volcam heat, source grid"
_DESCRIP_PREPROCESSED = "volcam heat, preprocessed grid"


class _Geometry:
    """What a written file takes from its reference: affine, header template, codes, shape."""

    def __init__(self, affine, header=None, qform_code=None, sform_code=None, shape=None, name=None):
        self.affine = affine
        self.header = header
        self.qform_code = qform_code
        self.sform_code = sform_code
        self.shape = shape
        self.name = name


def _meta_code(meta: Mapping, name: str) -> int | None:
    value = meta.get(name) if isinstance(meta, Mapping) else None
    if value is None:
        return None
    try:
        return int(np.asarray(value).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None


def _source_file(tensor: Any) -> Path | None:
    """The NIfTI file a MetaTensor was loaded from, when it still lies on that file's grid."""
    name = tensor.meta.get("filename_or_obj") if isinstance(getattr(tensor, "meta", None), Mapping) else None
    if not isinstance(name, (str, os.PathLike)) or _nifti_suffix(Path(name)) is None or not Path(name).is_file():
        return None
    try:
        header_only: Any = nib.load(str(name))
    except Exception:
        return None
    shape = tuple(header_only.shape[:3])
    spatial = tuple(tensor.shape[1:])
    if spatial + (1,) * (len(shape) - len(spatial)) != shape[: max(len(spatial), len(shape))]:
        return None
    if not same_grid(np.asarray(header_only.affine), as_affine(tensor.affine)):
        return None
    return Path(name)


def _reference_geometry(reference: Any) -> _Geometry:
    if is_meta_tensor(reference):
        source = _source_file(reference)
        if source is not None:  # copy the file's whole header (qform and sform, codes, units)
            return _reference_geometry(source)
        meta = reference.meta
        name = meta.get("filename_or_obj") or "the reference MetaTensor"
        return _Geometry(
            as_affine(reference.affine, "reference.affine"),
            None,
            _meta_code(meta, "qform_code"),
            _meta_code(meta, "sform_code"),
            tuple(reference.shape[1:]),
            str(name),
        )
    img: Any
    if isinstance(reference, (nib.Nifti1Image, nib.Nifti2Image)):
        img, name = reference, reference.get_filename() or "the reference image"
    elif isinstance(reference, (str, os.PathLike)):
        path = Path(reference)
        _check_nifti_path(path, reading=True)
        try:
            img = nib.load(str(path))
        except Exception as err:
            raise ImageReadError(f"reference image '{path}' cannot be read as NIfTI: {err}", path=path) from err
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ImageReadError(f"reference image '{path}' must be NIfTI, not {type(img).__name__}", path=path)
        name = str(path)
    else:
        raise ConfigError(
            f"`reference` must be a NIfTI path, a nibabel NIfTI image or a MetaTensor, not {type(reference).__name__}",
            key="reference",
        )
    header = img.header.copy()
    if header.endianness != nib.volumeutils.native_code:  # write native byte order
        header = header.as_byteswapped(nib.volumeutils.native_code)
    return _Geometry(
        np.asarray(img.affine, dtype=np.float64),
        header,
        int(header["qform_code"]),
        int(header["sform_code"]),
        tuple(img.shape[:3]),
        name,
    )


def _resolve_geometry(volume: Any, reference: Any, affine: Any) -> _Geometry:
    if reference is not None and affine is not None:
        raise ConfigError("pass either `reference` or `affine`, not both", key="affine")
    if reference is not None:
        geo = _reference_geometry(reference)
        if is_meta_tensor(volume):
            own = as_affine(volume.affine, "volume.affine")
            if not same_grid(own, geo.affine):
                raise ShapeError(
                    f"the volume lies on a different grid than '{geo.name}' (its affine is\n{own}\n"
                    f"not\n{geo.affine}); take it back with volcam.io.invert_to_source first, or "
                    "write it on its own grid with save_heat_preprocessed",
                    expected="the reference's affine",
                    actual_shape=tuple(volume.shape),
                )
        return geo
    if affine is not None:
        return _Geometry(as_affine(affine))
    if is_meta_tensor(volume):
        source = _source_file(volume)
        if source is not None:
            return _reference_geometry(source)
        meta = volume.meta
        return _Geometry(
            as_affine(volume.affine, "volume.affine"),
            None,
            _meta_code(meta, "qform_code"),
            _meta_code(meta, "sform_code"),
            None,
            str(meta.get("filename_or_obj") or "") or None,
        )
    raise ConfigError(
        "the volume's geometry is unknown: pass `reference` (the source image) or `affine`, or "
        "a MetaTensor; an identity affine would not overlay the scan",
        key="reference",
    )


def save_nifti(
    volume: Any,
    path: PathLike,
    *,
    reference: Any = None,
    affine: Any = None,
    dtype: Any = "float32",
    description: str | None = None,
    cal_range: tuple | None = None,
) -> Path:
    """Write a 2D or 3D volume as NIfTI, atomically, on a known grid.

    The geometry comes from, in this order: ``reference`` (a NIfTI path, a nibabel image
    or a MetaTensor: its affine, and for files its whole header, qform/sform codes
    included), ``affine`` (3x3 or 4x4), or the volume's own affine if it is a MetaTensor.
    A plain array without any of them is refused (no identity affines).

    Args:
        volume: ``[*S]``, ``[1, *S]``, ``[1, 1, *S]`` array/tensor or ``MetaTensor [1, *S]``.
        path: destination ending in ``.nii.gz`` (compressed) or ``.nii``.
        reference: the image whose grid the volume lies on; its spatial shape must match.
        affine: the voxel-to-world (RAS mm) matrix, when there is no reference.
        dtype: on-disk data type (``"float32"``, ``"uint8"``, ``"int16"`` ...); floats
            written as integers are rounded.
        description: header ``descrip`` text (at most 79 characters are kept).
        cal_range: header ``cal_min``/``cal_max`` (the display range viewers start with).

    Returns:
        The written ``Path``.

    Raises:
        ShapeError: the volume does not match the reference's spatial shape or grid
            (the message names the reference file).
        ConfigError: the path is not ``.nii``/``.nii.gz``, or the geometry is unknown.
    """
    path = Path(path)
    _check_nifti_path(path, reading=False)
    geo = _resolve_geometry(volume, reference, affine)
    data = spatial_array(
        volume,
        geo.shape,
        what="the volume",
        where=f"'{geo.name}'" if geo.name else "the reference",
    )
    np_dtype = np.dtype(dtype)
    if np.issubdtype(np_dtype, np.integer) and np.issubdtype(data.dtype, np.floating):
        data = np.rint(data)
    data = np.ascontiguousarray(data.astype(np_dtype, copy=False))

    header = geo.header if geo.header is not None else nib.Nifti1Header()
    image: Any
    if isinstance(header, nib.Nifti2Header):
        image = nib.Nifti2Image(data, geo.affine, header=header)
    else:
        image = nib.Nifti1Image(data, geo.affine, header=header)
    hdr = image.header
    hdr.set_data_dtype(np_dtype)
    hdr.set_slope_inter(None, None)
    hdr.set_intent("none")
    if geo.header is None:  # no file header to copy: write the affine with the known codes
        qcode = geo.qform_code if geo.qform_code is not None else 2
        scode = geo.sform_code if geo.sform_code is not None else 2
        image.set_qform(geo.affine, code=int(qcode))
        image.set_sform(geo.affine, code=int(scode))
    # else: the reference header's qform and sform fields (and codes) are kept verbatim;
    # nibabel leaves them alone because the affine is the one they encode.
    if description is not None:
        hdr["descrip"] = description.encode("ascii", "replace")[:79]
    if cal_range is not None:
        hdr["cal_min"], hdr["cal_max"] = float(cal_range[0]), float(cal_range[1])
    else:
        hdr["cal_min"], hdr["cal_max"] = 0.0, 0.0
    return atomic_write(path, lambda tmp: nib.save(image, str(tmp)))


def _heat_values(heat: Any, raw: bool) -> Any:
    """Checks a heat volume's values; clips interpolation overshoot when not raw."""
    x: Any = heat.detach() if isinstance(heat, torch.Tensor) else torch.as_tensor(np.asarray(heat))
    if is_meta_tensor(x):
        x = x.as_tensor()
    x = x.to(torch.float32)
    n_nan, n_inf = _nonfinite_counts(x)
    if n_nan or n_inf:
        raise ValueRangeError(f"heat must be finite, not hold {n_nan} NaN and {n_inf} infinite values")
    if raw or x.numel() == 0:
        return x
    lo, hi = float(x.min()), float(x.max())
    if lo < -0.05 or hi > 1.05:
        raise ValueRangeError(
            f"heat values must lie in [0, 1], not [{lo:.4g}, {hi:.4g}]; normalise the map "
            "(volcam.postprocess.normalize) or pass raw=True to write the values as they are",
            value_range=(lo, hi),
        )
    return x.clamp(0.0, 1.0)  # removes the small overshoot of higher-order interpolation


def save_heat(
    heat: Any,
    path: PathLike,
    *,
    reference: Any = None,
    affine: Any = None,
    raw: bool = False,
) -> Path:
    """Write a heat volume on the source scan's grid as float32 NIfTI, atomically.

    Use it for the output of :func:`invert_to_source` (which carries the source affine
    and header codes), ideally with ``reference`` set to the source file so that the whole
    header (qform/sform codes, units) is copied from it. The header gets
    ``descrip = "volcam heat, source grid"`` and ``cal_min/cal_max = 0/1``.

    Args:
        heat: ``MetaTensor [1, *S]`` or array/tensor ``[*S]``/``[1, *S]``/``[1, 1, *S]``.
        path: ``.nii.gz`` (or ``.nii``) destination.
        reference: the source image (path, nibabel image or MetaTensor); its spatial
            shape, and affine when ``heat`` is a MetaTensor, must match ``heat``'s.
        affine: voxel-to-world matrix when there is no reference and ``heat`` is a plain array.
        raw: False (default) writes values in [0, 1] (interpolation overshoot up to 0.05 is
            clipped; anything further out is an error); True writes the values unchanged.

    Returns:
        The written ``Path``.

    Raises:
        ShapeError: shape or grid differ from the reference (named in the message).
        ValueRangeError: NaN/inf in ``heat``, or values outside [0, 1] without ``raw``.
    """
    values = _heat_values(heat, raw)
    volume = _with_meta_of(heat, values)
    cal = (0.0, 1.0) if not raw else (float(values.min()), float(values.max())) if values.numel() else None
    return save_nifti(
        volume,
        path,
        reference=reference,
        affine=affine,
        dtype="float32",
        description=_DESCRIP_SOURCE,
        cal_range=cal,
    )


def save_heat_preprocessed(heat: Any, preprocessed: Any, path: PathLike, *, raw: bool = False) -> Path:
    """Write a heat volume on the *preprocessed* grid, with that grid's affine.

    This is the space the network saw (after orientation, spacing, crop...); the file
    overlays the preprocessed image, not the original scan. Name such files clearly, e.g.
    ``case_heat_preprocessed.nii.gz``; the header says ``"volcam heat, preprocessed grid"``.

    Args:
        heat: ``[*S]``, ``[1, *S]`` or ``[1, 1, *S]`` on the grid of ``preprocessed``.
        preprocessed: the preprocessed ``MetaTensor [C, *S]`` (its affine is used).
        path: ``.nii.gz`` (or ``.nii``) destination.
        raw: as in :func:`save_heat`.

    Returns:
        The written ``Path``.
    """
    if not is_meta_tensor(preprocessed):
        raise ConfigError(
            "`preprocessed` must be the preprocessed MetaTensor (it carries the grid's affine), "
            f"not {type(preprocessed).__name__}",
            key="preprocessed",
        )
    values = _heat_values(heat, raw)
    cal = (0.0, 1.0) if not raw else (float(values.min()), float(values.max())) if values.numel() else None
    return save_nifti(
        values,
        path,
        reference=preprocessed,
        dtype="float32",
        description=_DESCRIP_PREPROCESSED,
        cal_range=cal,
    )


def _with_meta_of(original: Any, values: torch.Tensor) -> Any:
    """``values`` wrapped as a MetaTensor with ``original``'s metadata, if it was one."""
    if is_meta_tensor(original):
        from monai.data import MetaTensor

        return MetaTensor(values, meta=dict(original.meta))
    return values
