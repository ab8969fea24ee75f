"""A case's files and nnU-Net's own preprocessing of them.

Input naming follows nnU-Net: a case ``liver_7`` with two channels is ``liver_7_0000.nii.gz`` and
``liver_7_0001.nii.gz`` (four-digit channel index, then the dataset's ``file_ending``). The
preprocessing is the configuration's preprocessor class (``DefaultPreprocessor`` unless the plans
name another): the image reader the plans name, transpose, crop to the non-zero region, intensity
normalisation per channel, resampling to the configuration's spacing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volcam.errors import ImageReadError, ShapeError

__all__ = ["PreprocessedCase", "case_files", "list_cases", "preprocess_case"]

PathLike = str | os.PathLike[str]


@dataclass
class PreprocessedCase:
    """One case after nnU-Net's preprocessing.

    Attributes:
        case: the case identifier (file name without channel index and ending).
        image_files: its channel files, in channel order.
        data: ``[C, *S]`` float32, the network's grid (``*S`` three axes, also for 2D
            configurations, which run slice by slice over the first one).
        properties: nnU-Net's properties of the case (spacing, crop box, shapes, reader geometry).
        mask: ``[*S]`` the preprocessed label map given as mask, or None.
    """

    case: str
    image_files: list[Path]
    data: torch.Tensor
    properties: dict = field(repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)


def _channel_pattern(file_ending: str) -> re.Pattern:
    return re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(file_ending) + r"$")


def list_cases(folder: PathLike, file_ending: str, num_channels: int) -> dict[str, list[Path]]:
    """The cases of a folder in nnU-Net's naming, ``{case: [channel files]}``, sorted by case.

    Raises:
        ImageReadError: the folder does not exist, holds no case, or a case lacks a channel
            (the message names the missing file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"input folder '{folder}' must exist, but it does not", path=folder)
    pattern = _channel_pattern(file_ending)
    found: dict[str, dict[int, Path]] = {}
    for p in sorted(folder.iterdir()):
        m = pattern.match(p.name)
        if m and p.is_file():
            found.setdefault(m["case"], {})[int(m["channel"])] = p
    if not found:
        raise ImageReadError(
            f"input folder '{folder}' must hold images named CASE_0000{file_ending} (nnU-Net's naming, the "
            f"dataset's file ending), but none is there",
            path=folder,
        )
    return {case: _complete(case, channels, folder, file_ending, num_channels) for case, channels in found.items()}


def _complete(case: str, channels: dict[int, Path], folder: Path, file_ending: str, num_channels: int) -> list[Path]:
    expected = list(range(num_channels))
    missing = [c for c in expected if c not in channels]
    if missing:
        path = folder / f"{case}_{missing[0]:04d}{file_ending}"
        raise ImageReadError(
            f"case '{case}' must have {num_channels} channel file(s) ({case}_0000{file_ending} ... "
            f"{case}_{num_channels - 1:04d}{file_ending}), but '{path}' is missing",
            path=path,
        )
    extra = sorted(c for c in channels if c not in expected)
    if extra:
        path = channels[extra[0]]
        raise ImageReadError(
            f"case '{case}' must have {num_channels} channel file(s) like the model's dataset.json, not a "
            f"channel {extra[0]} ('{path}')",
            path=path,
        )
    return [channels[c] for c in expected]


def case_files(image: PathLike | Sequence[PathLike], file_ending: str, num_channels: int) -> tuple[str, list[Path]]:
    """``(case id, channel files)`` of one case.

    Args:
        image: one channel file (``case_0000.nii.gz``: the other channels are found beside it),
            or the list of channel files in channel order.

    Raises:
        ImageReadError: a file does not exist, does not end with the dataset's file ending, or a
            channel is missing.
    """
    pattern = _channel_pattern(file_ending)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        _check_file(path, file_ending)
        m = pattern.match(path.name)
        if m is None:
            if num_channels != 1:
                raise ImageReadError(
                    f"image file '{path}' must be named CASE_XXXX{file_ending} (the channel index, as nnU-Net "
                    f"names inputs) so that its {num_channels} channel files can be found; or pass the list of files",
                    path=path,
                )
            return path.name[: -len(file_ending)], [path]
        siblings = {}
        for p in path.parent.glob(f"{glob_escape(m['case'])}_*{file_ending}"):
            sm = pattern.match(p.name)
            if sm and sm["case"] == m["case"]:
                siblings[int(sm["channel"])] = p
        return m["case"], _complete(m["case"], siblings, path.parent, file_ending, num_channels)
    files = [Path(p) for p in image]
    if len(files) != num_channels:
        raise ImageReadError(
            f"a case must have {num_channels} channel file(s) like the model's dataset.json, not {len(files)}: "
            f"{[str(f) for f in files]}",
            path=files[0] if files else None,
        )
    for f in files:
        _check_file(f, file_ending)
    m = pattern.match(files[0].name)
    return (m["case"] if m else files[0].name[: -len(file_ending)]), files


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _check_file(path: Path, file_ending: str) -> None:
    if not path.is_file():
        raise ImageReadError(f"image file '{path}' must exist, but it does not", path=path)
    if not path.name.endswith(file_ending):
        raise ImageReadError(
            f"image file '{path}' must end with '{file_ending}' like the model's training data "
            "(dataset.json file_ending)",
            path=path,
        )


def preprocess_case(
    case: str,
    files: list[Path],
    plans_manager: Any,
    configuration_manager: Any,
    dataset_json: dict,
    *,
    mask: PathLike | None = None,
) -> PreprocessedCase:
    """Run the configuration's preprocessor on one case (and on its mask label map, which nnU-Net
    preprocesses like a segmentation: same transpose, crop and resampling).

    Raises:
        ImageReadError: a file cannot be read, or the images of the case disagree in shape
            or spacing (nnU-Net's reader refuses them); the message names the files.
        ShapeError: the mask does not have the image's shape.
    """
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    mask_path = None
    if mask is not None:
        mask_path = Path(mask)
        if not mask_path.is_file():
            raise ImageReadError(f"mask file '{mask_path}' must exist, but it does not", path=mask_path)
    try:
        data, seg, properties = preprocessor.run_case(
            [str(f) for f in files],
            str(mask_path) if mask_path is not None else None,
            plans_manager,
            configuration_manager,
            dataset_json,
        )
    except AssertionError as err:  # nnU-Net checks image against segmentation shapes with assert
        raise ShapeError(
            f"mask file '{mask_path}' must have the shape of the case's images {[str(f) for f in files]}: {err}",
            expected="the image's shape",
        ) from err
    except (RuntimeError, OSError, ValueError) as err:
        raise ImageReadError(
            f"case '{case}' cannot be read and preprocessed by nnU-Net ({[str(f) for f in files]}): {err}",
            path=files[0],
        ) from err
    tensor = torch.from_numpy(data).to(dtype=torch.float32, memory_format=torch.contiguous_format)
    return PreprocessedCase(
        case=case,
        image_files=list(files),
        data=tensor,
        properties=properties,
        mask=np.asarray(seg[0]) if mask_path is not None else None,
    )
