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

from volcam.arrays import is_meta_tensor, to_numpy
from volcam.errors import ConfigError, ImageReadError, ShapeError
from volcam.geometry import same_grid

__all__ = [
    "NIFTI_SUFFIXES",
    "load_image",
    "invert_to_source",
    "atomic_write",
]

PathLike = Union[str, "os.PathLike[str]"]

#: File name endings read and written as NIfTI.
NIFTI_SUFFIXES = (".nii.gz", ".nii")


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
    x: Any = heat.detach() if isinstance(heat, torch.Tensor) else torch.as_tensor(np.asarray(heat))
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
