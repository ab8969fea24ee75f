"""NIfTI in and out, and the way back from the preprocessed grid to the scan's own grid.

A heat volume is computed on the grid the network sees: the scan after the spatial
preprocessing (reorientation, resampling, cropping or padding). To overlay the scan voxel
for voxel in a viewer, it is taken back through the *inverse* of that preprocessing with
MONAI's invertible-transform machinery (the ``applied_operations`` a ``MetaTensor``
carries), and written with the scan's own affine and qform/sform codes::

    from monai.transforms import Compose, Orientation, Spacing, ScaleIntensityRange
    from volcam import io

    preprocess = Compose([Orientation("RAS"), Spacing((1.5, 1.5, 2.0)),
                          ScaleIntensityRange(-160, 240, 0.0, 1.0, clip=True)])
    x = io.load_image("case.nii.gz", preprocess)          # MetaTensor [C, *S]
    heat = cam(x[None], targets=...)[0]                   # [1, *S] on the preprocessed grid
    heat_src = io.invert_to_source(heat, x, preprocess)   # MetaTensor [1, *S_src]
    io.save_heat(heat_src, "case_heat.nii.gz", reference="case.nii.gz")
    io.save_heat_preprocessed(heat, x, "case_heat_preprocessed.nii.gz")

Every file is written atomically: to a temporary file in the destination folder, then
renamed over the destination (``os.replace``), so an interrupted or failed write never
leaves a truncated file behind.

MONAI is imported only inside the functions that need it (it is slow to import); this
module never imports matplotlib.
"""

from __future__ import annotations

import copy
import os
import secrets
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union

import nibabel as nib
import numpy as np
import torch

from volcam.arrays import is_meta_tensor, spatial_array, to_numpy
from volcam.errors import ConfigError, ImageReadError, ShapeError, ValueRangeError
from volcam.geometry import as_affine, same_grid

__all__ = [
    "NIFTI_SUFFIXES",
    "load_image",
    "invert_to_source",
    "save_nifti",
    "save_heat",
    "save_heat_preprocessed",
    "atomic_write",
]

PathLike = Union[str, "os.PathLike[str]"]

#: File name endings read and written as NIfTI.
NIFTI_SUFFIXES = (".nii.gz", ".nii")

_DESCRIP_SOURCE = "volcam heat, source grid"
_DESCRIP_PREPROCESSED = "volcam heat, preprocessed grid"


# --------------------------------------------------------------------------- helpers


def _nifti_suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def _source_name(meta: Mapping) -> str:
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    return f"'{name}'" if name else "the source image"


def atomic_write(path: PathLike, write: Callable[[Path], Any]) -> Path:
    """Write a file atomically: ``write(tmp)`` writes a temporary file in the destination
    folder (same file name ending, so writers that look at the suffix behave), which is then
    renamed over ``path`` with ``os.replace``. If ``write`` raises, the temporary file is
    removed and ``path`` is left as it was. Parent folders are created.

    Returns the destination ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = _nifti_suffix(path) or path.suffix
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _check_nifti_path(path: Path, *, reading: bool) -> None:
    if _nifti_suffix(path) is None:
        what = "image file" if reading else "output path"
        message = f"{what} must be a NIfTI file ending in .nii or .nii.gz, not '{path}'"
        if reading:
            raise ImageReadError(message, path=path)
        raise ConfigError(message, key="path")
    if reading and not path.is_file():
        raise ImageReadError(f"image file '{path}' must exist, but it does not", path=path)


def _nonfinite_counts(x: torch.Tensor) -> tuple[int, int]:
    if x.is_floating_point():
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        return n_nan, n_inf
    return 0, 0


# --------------------------------------------------------------------------- loading


def load_image(
    path: PathLike,
    transform: Callable | None = None,
    *,
    dtype: Any = np.float32,
    allow_nonfinite: bool = False,
):
    """Load a NIfTI image (or label map) as a channel-first MONAI ``MetaTensor``.

    The file is read with MONAI's ``LoadImage`` (nibabel reader, ``ensure_channel_first``),
    so the result carries the scan's affine and header in ``.meta`` (``original_affine``,
    ``spatial_shape``, ``qform_code``, ``sform_code``, ``filename_or_obj``). A 2D file
    ``(X, Y)`` gives ``[1, X, Y]``, a 3D file ``[1, X, Y, Z]``, a 4D file ``(X, Y, Z, T)``
    gives ``[T, X, Y, Z]``.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        transform: optional preprocessing applied to the loaded ``MetaTensor`` (an array
            transform or ``Compose`` such as ``Compose([Orientation("RAS"), Spacing(...),
            ScaleIntensityRange(...)])``). Keep the same object: :func:`invert_to_source`
            needs it to take a heat volume back. For label maps use ``mode="nearest"`` in
            the spatial transforms.
        dtype: data type of the loaded voxels (default float32).
        allow_nonfinite: by default an image with NaN or infinite voxels is refused,
            since every CAM and figure computed from it would be meaningless.

    Returns:
        ``MetaTensor [C, *S]`` (after ``transform`` if one is given).

    Raises:
        ImageReadError: the path does not exist, is not NIfTI, cannot be decoded (e.g. a
            truncated ``.nii.gz``), or holds NaN/infinite voxels; the message names the file.
    """
    path = Path(path)
    _check_nifti_path(path, reading=True)
    try:  # nibabel's own message says best why a file is not NIfTI at all
        header_only = nib.load(str(path))
    except Exception as err:
        raise ImageReadError(f"image file '{path}' cannot be read as NIfTI: {err}", path=path) from err
    if not isinstance(header_only, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageReadError(f"image file '{path}' must be NIfTI, not {type(header_only).__name__}", path=path)
    from monai.data import NibabelReader
    from monai.transforms import LoadImage

    loader = LoadImage(reader=NibabelReader(), image_only=True, ensure_channel_first=True, dtype=dtype)
    try:
        image = loader(str(path))
    except Exception as err:  # nibabel, gzip and zlib raise a variety of types
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ImageReadError(f"image file '{path}' cannot be read as NIfTI: {reason}", path=path) from err
    if not allow_nonfinite:
        n_nan, n_inf = _nonfinite_counts(image)
        if n_nan or n_inf:
            raise ImageReadError(
                f"image file '{path}' must contain only finite values, not {n_nan} NaN and {n_inf} "
                f"infinite voxels (of {image.numel()}); clean the file, or load with "
                "allow_nonfinite=True and replace them in the preprocessing",
                path=path,
            )
    if transform is not None:
        image = transform(image)
    return image


# --------------------------------------------------------------------------- inverse


def _heat_channel_first(heat: Any, spatial: tuple, *, what: str) -> torch.Tensor:
    """[*S], [C, *S] or [1, C, *S] -> float32 tensor [C, *S] (C >= 1)."""
    x = heat.detach() if isinstance(heat, torch.Tensor) else torch.as_tensor(np.asarray(heat))
    if is_meta_tensor(x):
        x = x.as_tensor()
    n = len(spatial)
    if x.ndim == n:
        x = x[None]
    elif x.ndim == n + 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != n + 1 or tuple(x.shape[1:]) != tuple(spatial):
        raise ShapeError(
            f"heat must have the spatial shape of {what}, {tuple(spatial)} (as [*S], [C, *S] or "
            f"[1, C, *S]), not {tuple(heat.shape)}",
            expected=f"[C, {', '.join(map(str, spatial))}]",
            actual_shape=tuple(heat.shape),
        )
    return x.to(torch.float32)


def invert_to_source(
    heat: Any,
    preprocessed: Any,
    transform: Any,
    *,
    key: str | None = None,
    nearest: bool = False,
):
    """Take a heat volume from the preprocessed grid back onto the source scan's grid.

    The spatial preprocessing recorded on ``preprocessed`` (its ``applied_operations``:
    orientation, spacing, crop, pad, resize, ...) is undone by MONAI itself:
    ``transform.inverse`` for array transforms, ``monai.transforms.Invertd`` for
    dictionary transforms. Intensity steps are not spatial and are skipped by MONAI.
    Voxels outside the preprocessed field of view (cropped away) come back as 0.

    Args:
        heat: ``[*S]``, ``[C, *S]`` or ``[1, C, *S]`` (tensor, MetaTensor or numpy array)
            on the preprocessed grid; ``S`` is the spatial shape of ``preprocessed``.
            The engine's ``[B, 1, *S]`` output for one case fits as is.
        preprocessed: the preprocessed image, as returned by the transform: a
            ``MetaTensor [C, *S]`` (array transforms), or the dictionary of a dictionary
            pipeline (then ``key`` names the image entry).
        transform: the very transform object that made ``preprocessed`` (``Compose`` of
            array or dictionary transforms, or a single invertible transform).
        key: for dictionary pipelines, the key of the image in ``preprocessed``.
        nearest: resample with nearest-neighbour instead of the recorded interpolation
            (use it for label maps).

    Returns:
        ``MetaTensor [C, *S_src]`` float32 on ``heat``'s device, with exactly the source's
        spatial shape and affine (``.meta`` also keeps the source header fields, so
        :func:`save_heat` can write it without a reference).

    Raises:
        ConfigError: ``preprocessed``/``key``/``transform`` cannot be used for an inverse.
        ShapeError: ``heat`` is not on the preprocessed grid, or the inverse does not land
            on the source grid (a spatial step of the chain is not invertible).
    """
    from monai.data import MetaTensor
    from monai.transforms import Invertd, InvertibleTransform
    from monai.transforms.utils import convert_applied_interp_mode

    is_dict = isinstance(preprocessed, Mapping)
    if is_dict:
        if key is None or key not in preprocessed:
            raise ConfigError(
                "`key` must name the image entry of the preprocessed dictionary, one of "
                f"{sorted(map(str, preprocessed))}, not {key!r}",
                key="key",
            )
        ref = preprocessed[key]
    else:
        ref = preprocessed
    if not is_meta_tensor(ref):
        raise ConfigError(
            "`preprocessed` must be the MetaTensor that the preprocessing returned (load with "
            f"volcam.io.load_image or MONAI LoadImage), not {type(ref).__name__}",
            key="preprocessed",
        )
    if not isinstance(transform, InvertibleTransform):
        raise ConfigError(
            "`transform` must be the invertible MONAI transform (e.g. a Compose) that made "
            f"`preprocessed`, not {type(transform).__name__}",
            key="transform",
        )
    source = _source_name(ref.meta)
    x = _heat_channel_first(heat, tuple(ref.shape[1:]), what=f"the preprocessed image of {source}")

    with warnings.catch_warnings():
        # MONAI's Orientation.inverse on a 2D image names the 3D axis codes of its 4x4
        # affine and warns that they are more than the 2 spatial axes; the inverse is right.
        warnings.filterwarnings("ignore", message=r"axcodes .* length is smaller than number of input spatial")
        if is_dict:
            heat_key = f"__volcam_heat_{key}"
            inverter = Invertd(keys=heat_key, transform=transform, orig_keys=key, nearest_interp=nearest)
            out = inverter({key: ref, heat_key: MetaTensor(x)})[heat_key]
        else:
            ops = copy.deepcopy(ref.applied_operations)
            if nearest:
                ops = convert_applied_interp_mode(ops, mode="nearest", align_corners=None)
            x = MetaTensor(x, meta=copy.deepcopy(dict(ref.meta)), applied_operations=ops)
            out = transform.inverse(x)
    if not is_meta_tensor(out):
        out = MetaTensor(out)

    src_shape = ref.meta.get("spatial_shape")
    src_affine = ref.meta.get("original_affine")
    if src_shape is not None:
        src_shape = tuple(int(s) for s in np.asarray(src_shape).reshape(-1))
        if tuple(out.shape[1:]) != src_shape:
            raise ShapeError(
                f"the inverted heat must have the shape of {source}, {src_shape}, not "
                f"{tuple(out.shape[1:])}: the preprocessing contains a spatial step that MONAI "
                "cannot invert (keep spatial steps to invertible MONAI transforms)",
                expected=str(src_shape),
                actual_shape=tuple(out.shape[1:]),
            )
    if src_affine is not None:
        src_affine = to_numpy(src_affine).astype(np.float64)
        got = to_numpy(out.affine).astype(np.float64)
        if src_affine.shape == got.shape and not same_grid(got, src_affine):
            raise ShapeError(
                f"the inverted heat must have the affine of {source}, not\n{got}\n(expected\n"
                f"{src_affine}): the preprocessing contains a spatial step that MONAI cannot invert",
                expected="the source affine",
                actual_shape=tuple(out.shape[1:]),
            )
        if src_affine.shape == got.shape:  # remove float round-off of the forward+inverse trip
            out.affine = torch.as_tensor(src_affine, dtype=torch.float64)
    out.applied_operations = []
    return out.to(torch.float32)


# --------------------------------------------------------------------------- writing


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
        header_only = nib.load(str(name))
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
    x = heat.detach() if isinstance(heat, torch.Tensor) else torch.as_tensor(np.asarray(heat))
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
