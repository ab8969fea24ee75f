"""Loading one case: the scan (NIfTI, a 2D raster image, or a DICOM series) and its label,
through volcam's loading transforms and the config's preprocessing, with a volcam error that
says what is wrong with the case when it cannot be loaded."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from volcam.errors import ImageReadError, ShapeError, TargetError, ValueRangeError, VolcamError
from volcam.run.cases import Case, is_raster
from volcam.run.schema import IMAGE_SUFFIXES, RASTER_SUFFIXES

__all__ = ["loading_transforms", "load_case", "describe_error", "CaseDataset"]


def loading_transforms() -> list[Any]:
    """``LoadImaged`` + ``EnsureChannelFirstd`` over keys image and label (NIfTI through
    nibabel, raster images through Pillow: MONAI's ``PILReader``, which volcam also gives the
    TIFF files Pillow reads; MONAI alone would hand those to its DICOM reader)."""
    import logging
    import warnings

    from monai.data import PILReader
    from monai.transforms import EnsureChannelFirstd, LoadImaged

    class RasterReader(PILReader):
        """MONAI's Pillow reader for every raster suffix volcam lists (TIFF included)."""

        def verify_suffix(self, filename: Any) -> bool:
            names = filename if isinstance(filename, (list, tuple)) else [filename]
            return all(str(f).lower().endswith(RASTER_SUFFIXES) for f in names)

    # LoadImage sets up every reader MONAI has; its GPU DICOM decoder says, each time, that it
    # cannot register without a GPU library. volcam reads DICOM with its own reader.
    reader: Any = RasterReader()
    plugin = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin.level
    plugin.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
            load = LoadImaged(keys=["image", "label"], reader=reader, image_only=True, allow_missing_keys=True)
    finally:
        plugin.setLevel(level)
    load.volcam_default = True  # type: ignore[attr-defined]
    return [load, EnsureChannelFirstd(keys=["image", "label"], allow_missing_keys=True)]


def _check_readable(path: Path, key: str) -> None:
    """volcam's own loading reads NIfTI and 2D raster images; say so for other files."""
    if not str(path).lower().endswith((*IMAGE_SUFFIXES, *RASTER_SUFFIXES)):
        raise ImageReadError(
            f"{key} must be a NIfTI file ({', '.join(IMAGE_SUFFIXES)}) or a 2D raster image "
            f"({', '.join(RASTER_SUFFIXES)}), not '{path}'; convert other formats (MetaImage, NRRD) to NIfTI, "
            "e.g. with SimpleITK, or start preprocessing with your own LoadImaged and reader",
            path=path,
        )


def _cause(err: BaseException) -> str:
    """The innermost useful message of an exception chain, without object addresses."""
    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in reversed(chain):
        text = " ".join(str(e).split())
        text = re.sub(r"\(applying transform .*?\)", "", text)
        text = re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>", "", text)
        text = text.strip(" .;")
        if text:
            return f"{type(e).__name__}: {text}" if not isinstance(e, VolcamError) else text
    return type(err).__name__


def _split_loading(pre: Any) -> tuple[Any, Any]:
    """Split a preprocessing Compose into (loading transforms, the rest)."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    items = list(pre.transforms)
    n = 0
    while n < len(items) and isinstance(items[n], (LoadImaged, EnsureChannelFirstd)):
        n += 1
    return Compose(items[:n]), Compose(items[n:])


def _squeeze_last(t: Any) -> Any:
    """A 2D scan stored as ``[C, H, W, 1]`` -> ``[C, H, W]`` with its (4x4) affine kept."""
    out = t[..., 0]
    meta = getattr(out, "meta", None)
    if meta is not None and "spatial_shape" in meta:
        meta["spatial_shape"] = list(meta["spatial_shape"])[:-1]
    return out


def load_case(case: Case, pre: Any, spatial_dims: int, *, need_label: bool = False) -> dict[str, Any]:
    """Load and preprocess one case; raise a volcam error that says what is wrong with it.

    Returns:
        dict: ``"image"``, a MetaTensor ``[C, *S]`` on the network's grid; ``"label"`` (absent
        without a label); ``"source"``, a MetaTensor ``[C, *S_src]``: the scan as loaded, with
        its affine; ``"source_label"``, the label as loaded (if any); ``"raster"``, whether the
        image is a 2D raster (PNG, ...).
    """
    loading, rest = _split_loading(pre)
    if case.series is not None:
        return _load_series(case, rest, spatial_dims)
    data: dict[str, Any] = {"image": str(case.image)}
    if case.label is not None:
        data["label"] = str(case.label)
    elif need_label:
        raise TargetError(f"case '{case.id}' must have a label file when targets.mask is 'label', not none")
    for key, path in list(data.items()):
        if not Path(path).is_file():
            raise ImageReadError(f"{key} must be an existing file, not '{path}'", path=path)
        if getattr(pre.transforms[0], "volcam_default", False):
            _check_readable(Path(path), key)
    try:
        loaded = loading(data)
    except Exception as err:
        what = "image and label must be readable image files" if case.label else "image must be a readable image file"
        files = f"'{case.image}'" + (f" and '{case.label}'" if case.label else "")
        raise ImageReadError(f"{what}, not {files} ({_cause(err)})", path=case.image) from err
    source = loaded["image"]
    n_spatial = source.ndim - 1
    if spatial_dims == 2 and n_spatial == 3 and source.shape[-1] == 1:
        loaded["image"] = source = _squeeze_last(source)
        if "label" in loaded and loaded["label"].ndim == 4 and loaded["label"].shape[-1] == 1:
            loaded["label"] = _squeeze_last(loaded["label"])
        n_spatial = 2
    if n_spatial != spatial_dims:
        raise ShapeError(
            f"image must be {spatial_dims}D like the network (channel + {spatial_dims} spatial axes), "
            f"not {n_spatial}D with shape {list(source.shape[1:])} ('{case.image}')",
            expected=f"{spatial_dims} spatial axes",
            actual_shape=tuple(source.shape),
        )
    finite = torch.isfinite(source)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        what = "no finite voxel (all NaN or infinite)" if bad == finite.numel() else f"{bad} NaN or infinite voxels"
        raise ValueRangeError(f"image must contain only finite values, not {what} ('{case.image}')")
    if "label" in loaded and tuple(loaded["label"].shape[1:]) != tuple(source.shape[1:]):
        raise ShapeError(
            f"label must have the image's shape {list(source.shape[1:])}, not {list(loaded['label'].shape[1:])} "
            f"('{case.label}')",
            expected=str(list(source.shape[1:])),
            actual_shape=tuple(loaded["label"].shape),
        )
    keep = source.clone()  # transforms may update meta in place; keep the scan as loaded
    keep_label = loaded["label"].clone() if "label" in loaded else None
    try:
        out = rest(dict(loaded))
    except Exception as err:
        raise VolcamError(f"preprocessing failed on '{case.image}': {_cause(err)}") from err
    out["source"] = keep
    if keep_label is not None:
        out["source_label"] = keep_label
    out["raster"] = is_raster(case.image)
    return out


def _load_series(case: Case, rest: Any, spatial_dims: int) -> dict[str, Any]:
    """A DICOM case: the chosen series through volcam's reader, then the preprocessing."""
    from volcam.io.dicom import load_series

    if spatial_dims != 3:
        raise ShapeError(
            f"a DICOM series is a 3D volume; the network must be 3D, not {spatial_dims}D ('{case.image}')",
            expected="3 spatial axes",
            actual_shape=None,
        )
    source = load_series(case.series)
    keep = source.clone()
    try:
        out = rest({"image": source})
    except Exception as err:
        raise VolcamError(f"preprocessing failed on '{case.image}': {_cause(err)}") from err
    out["source"] = keep
    out["raster"] = False
    return out


def describe_error(err: BaseException) -> str:
    """A one-line reason for the summary table."""
    if isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower():
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"out of memory ({first[:200]}); set sliding_window.roi_size, a smaller sw_batch_size, or device: cpu"
    text = " ".join(str(err).split())
    if len(text) > 500:
        text = text[:497] + "..."
    return f"{type(err).__name__}: {text}" if not isinstance(err, VolcamError) else text


class CaseDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Cases loaded (in ``DataLoader`` workers): each item is ``{"index", "data" | "error"}``.

    A case that cannot be loaded becomes an item carrying its error, so one bad file does
    not stop the loader.
    """

    def __init__(self, cases: Sequence[Case], pre: Any, spatial_dims: int, need_label: bool = False):
        self.cases = list(cases)
        self.pre = pre
        self.spatial_dims = spatial_dims
        self.need_label = need_label

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            data = load_case(self.cases[index], self.pre, self.spatial_dims, need_label=self.need_label)
            return {"index": index, "data": data, "error": None, "seconds": time.perf_counter() - start}
        except Exception as err:  # reported per case, in the summary
            return {"index": index, "data": None, "error": describe_error(err), "seconds": time.perf_counter() - start}
