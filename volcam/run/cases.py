"""The cases of a dataset: listing them from a config's ``data`` section, and loading one.

Images are NIfTI scans (2D or 3D; a 2D scan stored as ``[H, W, 1]`` is taken as 2D by a 2D
network) or 2D raster images (PNG, JPEG, TIFF, BMP; grey or RGB) read through MONAI's
readers. A raster image has no anatomical orientation: its outputs are drawn in the image's
own pixel layout, in pixel units.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from volcam.checks import did_you_mean
from volcam.errors import ConfigError, ImageReadError, TargetError
from volcam.run.schema import IMAGE_SUFFIXES, RASTER_SUFFIXES, SECTIONS
from volcam.run.settings import safe_name

__all__ = [
    "Case",
    "Listing",
    "list_cases",
    "case_id_of",
    "is_raster",
    "label_region",
]

RECORD_NAME = "volcam-case.json"


@dataclass(frozen=True)
class Case:
    """One case of a dataset: an identifier (its output folder), an image and an optional label.

    For a DICOM case, ``image`` is the series' folder and ``series`` the
    :class:`~volcam.io.dicom.SeriesChoice` (which series, and why).
    """

    id: str
    image: Path
    label: Path | None = None
    series: Any = None


class Listing(list[Case]):
    """The cases found (a list of :class:`Case`), with what was left out and why.

    Attributes:
        left_out: ``{reason: [paths]}`` of files and folders that matched the pattern but
            are not cases (folders named like images, broken links, outputs of a run).
    """

    def __init__(self, cases: Sequence[Case] = ()):
        super().__init__(cases)
        self.left_out: dict[str, list[str]] = {}

    def note(self, reason: str, path: Path) -> None:
        self.left_out.setdefault(reason, []).append(str(path))

    def summary(self) -> str:
        """One line, e.g. ``left out: 2 folders named like images, 1 broken link``."""
        return ", ".join(f"{len(v)} {k}" for k, v in self.left_out.items())


def is_raster(path: Path | str) -> bool:
    """Whether a file is read as a 2D raster image (PNG, JPEG, TIFF, BMP)."""
    return str(path).lower().endswith(RASTER_SUFFIXES)


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in (*IMAGE_SUFFIXES, *RASTER_SUFFIXES):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def case_id_of(name: str) -> str:
    """The case id of an image file name: without its suffix and nnU-Net's ``_0000`` channel tag."""
    stem = _strip_suffix(name)
    if re.fullmatch(r".+_0000", stem):
        stem = stem[: -len("_0000")]
    return safe_name(stem)


def _label_for(image: Path, label_folder: Path) -> Path | None:
    stem = _strip_suffix(image.name)
    names = [image.name]
    if stem.endswith("_0000"):  # nnU-Net: case_0000.nii.gz -> case.nii.gz
        names.append(stem[: -len("_0000")] + image.name[len(stem) :])
    for name in names:
        if (label_folder / name).is_file():
            return label_folder / name
    return None


def _unique(cases: list[Case], key: str) -> None:
    seen: dict[str, Path] = {}
    for case in cases:
        other = seen.get(case.id.lower())
        if other is not None:
            raise ConfigError(
                f"{key} must list images with distinct names, not both '{other}' and '{case.image}'"
                f" (both would write to '{case.id}')",
                key=key,
            )
        seen[case.id.lower()] = case.image


def _entry(entry: Any, index: int, base: Path, key: str) -> tuple[Path, Path | None]:
    if isinstance(entry, (str, os.PathLike)):
        return base / Path(entry), None
    if isinstance(entry, Mapping):
        if "image" not in entry:
            raise ConfigError(
                f"{key}[{index}] must be a path or a mapping with an 'image' entry, not {dict(entry)!r}",
                key=f"{key}[{index}]",
            )
        label = entry.get("label")
        return base / Path(entry["image"]), (base / Path(label) if label else None)
    raise ConfigError(
        f"{key}[{index}] must be a path or a mapping with 'image' (and 'label'), not {type(entry).__name__}",
        key=f"{key}[{index}]",
    )


def _inside(path: Path, folders: Sequence[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


def _in_case_folder(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in a case folder written by volcam (a folder with a case record)."""
    for parent in path.parents:
        if parent == root or root not in parent.parents:
            return False
        if (parent / RECORD_NAME).is_file():
            return True
    return False


def _folder_cases(data: Mapping[str, Any], base: Path, exclude: Sequence[Path], listing: Listing) -> None:
    folder = base / Path(data["folder"])
    if not folder.is_dir():
        raise ConfigError(f"data.folder must be an existing folder, not '{folder}'", key="data.folder")
    pattern = data.get("glob") or "*.nii.gz"
    label_folder = data.get("label_folder")
    labels = base / Path(label_folder) if label_folder else None
    if labels is not None and not labels.is_dir():
        raise ConfigError(f"data.label_folder must be an existing folder, not '{labels}'", key="data.label_folder")
    try:
        matches = sorted(folder.glob(pattern))
    except (OSError, RuntimeError) as err:  # a symbolic link loop under a recursive pattern
        raise ConfigError(f"data.glob {pattern!r} cannot be listed in '{folder}': {err}", key="data.glob") from err
    resolved_exclude = [e.resolve() for e in exclude]
    for path in matches:
        if _inside(path.resolve(), resolved_exclude) or _in_case_folder(path, folder):
            listing.note("files in the output folder", path)
            continue
        if path.is_dir():
            listing.note("folders named like images", path)
            continue
        if not path.exists():
            listing.note("broken links", path)
            continue
        if not path.is_file():
            listing.note("entries that are not files", path)
            continue
        rel = path.relative_to(folder)
        case_id = safe_name("__".join([*rel.parts[:-1], case_id_of(rel.name)]))
        label = _label_for(path, labels) if labels is not None else None
        listing.append(Case(case_id, path, label))
    if not listing:
        extra = f" ({listing.summary()})" if listing.left_out else ""
        raise ConfigError(
            f"data.glob must match at least one file in '{folder}', not {pattern!r}{extra}", key="data.glob"
        )


def list_cases(
    data: Mapping[str, Any], *, base: str | os.PathLike[str] = ".", exclude: Sequence[str | os.PathLike[str]] = ()
) -> Listing:
    """The cases a ``data`` section describes, in a stable (sorted or listed) order.

    - ``folder`` + ``glob`` (default ``*.nii.gz``, ``**`` recurses) and an optional
      ``label_folder`` whose files have the image's name (or the nnU-Net name without ``_0000``);
    - ``files``: a list of paths or of ``{image: ..., label: ...}`` mappings;
    - ``dataset_json``: an MSD-style ``dataset.json`` and its ``section`` (``training``,
      ``test``, ...) listing paths or ``{image, label}`` mappings relative to the json file.

    Files under ``exclude`` (the run's output folder) and in folders holding a volcam case
    record are never cases; folders named like images and broken links are left out. What is
    left out is counted in :attr:`Listing.left_out`. Files are not opened here: an unreadable
    file fails its own case, not the listing.
    """
    base_path = Path(base)
    unknown = [k for k in data if k not in SECTIONS["data"]]
    if unknown:
        raise ConfigError(
            f"data must only have keys {sorted(SECTIONS['data'])}, not '{unknown[0]}'"
            f"{did_you_mean(unknown[0], SECTIONS['data'])}",
            key=f"data.{unknown[0]}",
        )
    given = [k for k in ("folder", "files", "dataset_json", "dicom") if data.get(k) is not None]
    if len(given) != 1:
        raise ConfigError(
            "data must set exactly one of 'folder', 'files', 'dataset_json' or 'dicom', "
            f"not {given if given else 'none of them'}",
            key="data",
        )
    kind = given[0]
    listing = Listing()
    exclude_paths = [Path(e) for e in exclude]
    if kind == "folder":
        _folder_cases(data, base_path, exclude_paths, listing)
    elif kind == "dicom":
        _dicom_cases(data, base_path, listing)
    elif kind == "files":
        files = data["files"]
        if isinstance(files, (str, os.PathLike)) or not isinstance(files, Sequence) or not files:
            raise ConfigError(f"data.files must be a non-empty list, not {files!r}", key="data.files")
        for i, entry in enumerate(files):
            image, label = _entry(entry, i, base_path, "data.files")
            listing.append(Case(case_id_of(image.name), image, label))
    else:
        path = base_path / Path(data["dataset_json"])
        try:
            with open(path) as f:
                content = json.load(f)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"data.dataset_json must be a readable JSON file, not '{path}' ({err})", key="data.dataset_json"
            ) from err
        section = data.get("section") or "test"
        lists = {k: v for k, v in content.items() if isinstance(v, list)} if isinstance(content, dict) else {}
        if section not in lists:
            raise ConfigError(
                f"data.section must name a list of '{path.name}' ({sorted(lists)}), not {section!r}"
                f"{did_you_mean(section, lists)}",
                key="data.section",
            )
        if not lists[section]:
            raise ConfigError(f"data.section {section!r} of '{path}' must not be empty", key="data.section")
        for i, entry in enumerate(lists[section]):
            image, label = _entry(entry, i, path.parent, f"data.section {section!r}")
            listing.append(Case(case_id_of(image.name), image, label))
    _unique(listing, f"data.{kind}")
    return listing


def _dicom_cases(data: Mapping[str, Any], base: Path, listing: Listing) -> None:
    """One case per study found under ``data.dicom``: the series ``data.series`` chooses
    (by default the one with the most images, localisers last), named by
    :func:`volcam.io.dicom.case_name`; studies whose names would be the same get a short hash of
    their SeriesInstanceUID added to each."""
    try:
        from volcam.io.dicom import case_name, find_series, select_series
    except ImportError as err:
        raise ConfigError(
            f"data.dicom needs the dicom extra (pydicom, highdicom): pip install 'volcam[dicom]' ({err})",
            key="data.dicom",
        ) from err
    folder = base / Path(data["dicom"])
    if not folder.is_dir():
        raise ConfigError(f"data.dicom must be an existing folder, not '{folder}'", key="data.dicom")
    found = find_series(folder)
    for reason, count in found.skipped.items():
        listing.left_out.setdefault(f"files skipped ({reason})", []).extend([str(folder)] * count)
    studies: dict[str, list[Any]] = {}
    for series in found:
        studies.setdefault(series.study_uid or series.uid, []).append(series)
    rules = dict(data.get("series") or {})
    chosen = []
    for group in studies.values():
        try:
            chosen.append(select_series(group, **rules))
        except ImageReadError as err:
            listing.note(f"studies without a series to explain ({err})", group[0].directory)
    names = [case_name(choice.series) for choice in chosen]
    counts = Counter(n.lower() for n in names)
    for name, choice in zip(names, chosen):
        if counts[name.lower()] > 1:  # one patient, date and series number twice: a re-scan, an export
            name = case_name(choice.series, with_uid=True)
        listing.append(Case(name, choice.series.directory, None, choice))
    if not listing:
        extra = f" ({listing.summary()})" if listing.left_out else ""
        raise ConfigError(
            f"data.dicom must hold at least one DICOM image series, not none in '{folder}'{extra}", key="data.dicom"
        )


def label_region(
    label: torch.Tensor, c: int, *, out_channels: int | None = None, values: Sequence[int] | None = None
) -> torch.Tensor:
    """The voxels of class ``c`` in a label ``[L, *S]``.

    - a multi-channel label (one channel per class or region): ``label[c] > 0``;
    - a label map with ``values`` given (``targets.label_values``): ``label[0]`` in ``values``;
    - a label map and a single-channel (sigmoid) output: the foreground ``label[0] > 0``;
    - otherwise ``label[0] == c``.
    """
    if label.shape[0] > 1:
        if c >= label.shape[0]:
            raise TargetError(f"a label with {label.shape[0]} channels has no channel for class {c}")
        return label[c] > 0
    if values:
        region = torch.zeros_like(label[0], dtype=torch.bool)
        for v in values:
            region |= label[0] == v
        return region
    if out_channels == 1:
        return label[0] > 0
    return label[0] == c
