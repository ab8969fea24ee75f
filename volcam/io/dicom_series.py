"""DICOM series in a folder: finding them, choosing one, naming the case after it.

A folder from a hospital export holds one or more series (the scan, its localisers, other
reconstructions) and often objects without pixels (reports, key-object notes, DICOMDIR).
:func:`find_series` walks the folder, reads only the headers and groups the image files by
SeriesInstanceUID; everything else is skipped and counted. :func:`select_series` picks the
series to explain and says why, so that the choice can go into the case record::

    from volcam.io import dicom

    found = dicom.find_series("exports/case17")      # SeriesList of Series, .skipped counts
    choice = dicom.select_series(found, modality="CT")
    choice.series.uid, choice.reason                  # "the CT series with the most images ..."
    dicom.case_name(choice.series)                    # "P001_20240102_3"

pydicom is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volcam.errors import ArgumentError, ImageReadError

__all__ = ["Series", "SeriesList", "SeriesChoice", "find_series", "select_series", "case_name"]

logger = logging.getLogger(__name__)

# Storage SOP classes of derived objects that carry pixels but are not scans to explain.
_DERIVED = {
    "1.2.840.10008.5.1.4.1.1.66.4": "segmentation (SEG)",
    "1.2.840.10008.5.1.4.1.1.30": "parametric map",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT dose",
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
    "1.2.840.10008.5.1.4.1.1.11.1": "presentation state",
}

_SKIP_NOT_DICOM = "not DICOM"
_SKIP_NO_IMAGE = "DICOM without image pixels (report, structure set, key object, DICOMDIR, ...)"
_SKIP_DERIVED = "derived DICOM object (SEG, parametric map, secondary capture, RT dose, ...)"
_SKIP_UNREADABLE = "unreadable DICOM header"
_SKIP_NO_UID = "image without SeriesInstanceUID"

_HEADER_TAGS = [
    "SOPClassUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "PatientID",
    "StudyDate",
    "ImageType",
    "Rows",
    "Columns",
    "NumberOfFrames",
]


@dataclass(frozen=True)
class Series:
    """One DICOM image series found on disk (headers only; nothing is decoded).

    Attributes:
        uid: SeriesInstanceUID.
        folder: the folder that was searched (the series' files may lie below it).
        files: the series' image files, sorted by path (not by position: the loader orders
            the slices by their geometry).
        modality: e.g. ``"CT"``, ``"MR"``.
        description: SeriesDescription (``""`` if absent).
        number: SeriesNumber, or None.
        patient_id, study_date, study_uid, frame_of_reference_uid: as in the headers (``""`` if absent).
        image_type: ImageType values, upper case.
        frames: the number of frames over all files (one per file for single-frame images).
    """

    uid: str
    folder: Path
    files: tuple[Path, ...]
    modality: str = ""
    description: str = ""
    number: int | None = None
    patient_id: str = ""
    study_date: str = ""
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    image_type: tuple[str, ...] = ()
    frames: int = 0

    @property
    def n_images(self) -> int:
        """How many image files the series has."""
        return len(self.files)

    @property
    def directory(self) -> Path:
        """The deepest folder that holds all the series' files."""
        return Path(os.path.commonpath([str(f.parent) for f in self.files])) if self.files else self.folder

    @property
    def is_localizer(self) -> bool:
        """True for scout/localiser images (ImageType contains LOCALIZER)."""
        return "LOCALIZER" in self.image_type

    def label(self) -> str:
        """A short human description: ``"CT series 3 'AX 2.5mm' (120 images)"``."""
        number = f" {self.number}" if self.number is not None else ""
        desc = f" '{self.description}'" if self.description else ""
        kind = ", localiser" if self.is_localizer else ""
        plural = "s" if self.n_images != 1 else ""
        return f"{self.modality or 'DICOM'} series{number}{desc} ({self.n_images} image{plural}{kind})"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready identity of the series (for case records and summaries)."""
        return {
            "series_instance_uid": self.uid,
            "series_number": self.number,
            "series_description": self.description,
            "modality": self.modality,
            "images": self.n_images,
            "study_instance_uid": self.study_uid,
            "folder": str(self.folder),
        }


class SeriesList(list):
    """The series :func:`find_series` found (a plain list of :class:`Series`), with what
    it skipped.

    Attributes:
        folder: the folder that was searched.
        skipped: file counts per reason they were not taken (``{"not DICOM": 2, ...}``).
    """

    def __init__(self, series: Iterable[Series] = (), *, folder: Path, skipped: Mapping[str, int] | None = None):
        super().__init__(series)
        self.folder = Path(folder)
        self.skipped: dict[str, int] = dict(skipped or {})

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


@dataclass(frozen=True)
class SeriesChoice:
    """The series :func:`select_series` chose, and why.

    Attributes:
        series: the chosen :class:`Series`.
        rule: ``"uid"``, ``"description"``, ``"most images"`` or ``"only series"``.
        reason: one sentence for logs, case records and summaries.
        others: the series that were not chosen.
    """

    series: Series
    rule: str
    reason: str
    others: tuple[Series, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record of the choice."""
        return {
            **self.series.as_dict(),
            "rule": self.rule,
            "reason": self.reason,
            "not_chosen": [s.as_dict() for s in self.others],
        }


# --------------------------------------------------------------------------- discovery


def _text(ds: Any, name: str) -> str:
    value = ds.get(name, "")
    return "" if value is None else str(value).strip()


def _classify(path: Path) -> tuple[str | None, Any]:
    """(skip reason or None, header dataset) of one file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except InvalidDicomError:
        return _SKIP_NOT_DICOM, None
    except Exception as err:  # truncated or corrupt files: counted, and said in the log
        logger.debug("cannot read the DICOM header of %s: %s", path, err)
        return _SKIP_UNREADABLE, None
    if _text(ds, "SOPClassUID") in _DERIVED:
        return _SKIP_DERIVED, ds
    if "Rows" not in ds or "Columns" not in ds:
        return _SKIP_NO_IMAGE, ds
    if not _text(ds, "SeriesInstanceUID"):
        return _SKIP_NO_UID, ds
    return None, ds


def find_series(folder: str | os.PathLike[str]) -> SeriesList:
    """Find the DICOM image series under ``folder`` (walked recursively, headers only).

    Files are grouped by SeriesInstanceUID. Files that are not DICOM, DICOM objects without
    image pixels (structured reports, RT structure sets, key objects, DICOMDIR) and derived
    objects (SEG, parametric maps such as volcam writes, secondary captures) are skipped and
    counted in :attr:`SeriesList.skipped`.

    Args:
        folder: the folder to search.

    Returns:
        :class:`SeriesList` of :class:`Series`, ordered by (StudyInstanceUID, SeriesNumber,
        SeriesInstanceUID); empty if the folder has no image series.

    Raises:
        ImageReadError: ``folder`` is not an existing folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ImageReadError(f"DICOM folder '{root}' must be an existing folder, but it is not", path=root)
    groups: dict[str, list[tuple[Path, Any]]] = {}
    skipped: Counter[str] = Counter()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or not path.is_file():  # hidden files, staging files, broken links
                continue
            reason, ds = _classify(path)
            if reason is not None:
                skipped[reason] += 1
                continue
            groups.setdefault(_text(ds, "SeriesInstanceUID"), []).append((path, ds))
    found = [_series(uid, root, members) for uid, members in groups.items()]
    found.sort(key=lambda s: (s.study_uid, s.number if s.number is not None else 1 << 30, s.uid))
    logger.info(
        "%s: %d DICOM image series, %d files skipped%s",
        root,
        len(found),
        sum(skipped.values()),
        "".join(f"; {n} {why}" for why, n in skipped.items()),
    )
    return SeriesList(found, folder=root, skipped=skipped)


def _series(uid: str, root: Path, members: list[tuple[Path, Any]]) -> Series:
    members.sort(key=lambda m: str(m[0]))
    first = members[0][1]
    number = first.get("SeriesNumber")
    try:
        number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    image_type = first.get("ImageType") or ()
    image_type = (image_type,) if isinstance(image_type, str) else tuple(image_type)
    frames = 0
    for _, ds in members:
        try:
            frames += int(ds.get("NumberOfFrames") or 1)
        except (TypeError, ValueError):
            frames += 1
    return Series(
        uid=uid,
        folder=root,
        files=tuple(m[0] for m in members),
        modality=_text(first, "Modality").upper(),
        description=_text(first, "SeriesDescription"),
        number=number,
        patient_id=_text(first, "PatientID"),
        study_date=_text(first, "StudyDate"),
        study_uid=_text(first, "StudyInstanceUID"),
        frame_of_reference_uid=_text(first, "FrameOfReferenceUID"),
        image_type=tuple(str(t).strip().upper() for t in image_type),
        frames=frames,
    )


# --------------------------------------------------------------------------- selection


def _listing(series: Iterable[Series]) -> str:
    return "; ".join(f"{s.label()} uid {s.uid}" for s in series) or "none"


def select_series(
    series: Iterable[Series],
    *,
    uid: str | None = None,
    description: str | None = None,
    modality: str | None = None,
) -> SeriesChoice:
    """Choose the series to explain among those :func:`find_series` found.

    Rules, in this order: ``uid`` picks that SeriesInstanceUID; otherwise the series are
    narrowed to ``modality`` and to SeriesDescriptions matching ``description``, and of
    those the one with the most images wins (localisers only when nothing else is left).
    A tie is broken by the lower SeriesNumber, then the UID, and the reason says so.

    Args:
        series: the candidates (a :class:`SeriesList` or any iterable of :class:`Series`).
        uid: a SeriesInstanceUID to take, exactly.
        description: a regular expression searched (case-insensitive) in SeriesDescription.
        modality: e.g. ``"CT"`` or ``"MR"`` (case-insensitive).

    Returns:
        :class:`SeriesChoice` (the series, the rule applied and a sentence saying why).

    Raises:
        ArgumentError: ``description`` is not a valid regular expression.
        ImageReadError: no series fits; the message lists the series that are there.
    """
    candidates = list(series)
    folder = getattr(series, "folder", None) or (candidates[0].folder if candidates else None)
    where = f"'{folder}'" if folder is not None else "the given series"
    if not candidates:
        skipped = getattr(series, "skipped", {})
        extra = f" ({sum(skipped.values())} files skipped: {dict(skipped)})" if skipped else ""
        raise ImageReadError(f"{where} must hold a DICOM image series, but it holds none{extra}", path=folder)
    if uid is not None:
        hits = [s for s in candidates if s.uid == str(uid).strip()]
        if not hits:
            raise ImageReadError(
                f"series uid must be one of the series in {where}, not {uid!r}"
                f"{_uid_hint(uid, candidates)}; there are: {_listing(candidates)}",
                path=folder,
            )
        others = tuple(s for s in candidates if s is not hits[0])
        return SeriesChoice(hits[0], "uid", f"{hits[0].label()} chosen by its SeriesInstanceUID {hits[0].uid}", others)

    pool, said = candidates, []
    if modality is not None:
        pool = [s for s in pool if s.modality == str(modality).strip().upper()]
        said.append(f"modality {str(modality).upper()}")
    if description is not None:
        try:
            pattern = re.compile(description, re.IGNORECASE)
        except re.error as err:
            raise ArgumentError(
                f"`description` must be a regular expression, not {description!r} ({err})", name="description"
            ) from err
        pool = [s for s in pool if pattern.search(s.description)]
        said.append(f"description matching {description!r}")
    if not pool:
        raise ImageReadError(
            f"{where} must hold a series with {' and '.join(said)}, but none fits; there are: {_listing(candidates)}",
            path=folder,
        )
    scans = [s for s in pool if not s.is_localizer] or pool
    best = max(s.n_images for s in scans)
    top = sorted(
        (s for s in scans if s.n_images == best), key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid)
    )
    chosen = top[0]
    others = tuple(s for s in candidates if s is not chosen)
    filters = f" with {' and '.join(said)}" if said else ""
    if len(candidates) == 1:
        rule, reason = "only series", f"{chosen.label()}, the only image series in {where}"
    elif description is not None and len(pool) == 1:
        rule, reason = "description", f"{chosen.label()}, the only series{filters}"
    else:
        rule = "most images"
        reason = f"{chosen.label()}, the series{filters} with the most images of {len(candidates)} in {where}"
        if len(top) > 1:
            reason += f" (tied with {len(top) - 1} other, chosen by the lower series number)"
    if others:
        reason += f"; not chosen: {'; '.join(s.label() for s in others)}"
    logger.info("chose %s", reason)
    return SeriesChoice(chosen, rule, reason, others)


def _uid_hint(uid: Any, candidates: list[Series]) -> str:
    from volcam.checks import did_you_mean

    return did_you_mean(uid, [s.uid for s in candidates])


# --------------------------------------------------------------------------- naming

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_PART = 64


def _safe_part(value: Any) -> str:
    text = _UNSAFE.sub("-", str(value if value is not None else "")).strip("-.")
    return text[:_MAX_PART].strip("-.")


def case_name(series: Series, *, with_uid: bool = False) -> str:
    """A file-system-safe case name for a series: ``PatientID_StudyDate_SeriesNumber``.

    Each part keeps only letters, digits, ``.``, ``_`` and ``-`` (other runs become ``-``),
    loses leading and trailing dots and dashes, and is cut to 64 characters, so the name has
    no path separator and can never be ``.``, ``..`` or absolute. Missing parts are left out;
    when a part was missing or changed, or nothing is left, a short hash of the
    SeriesInstanceUID is added so that different series keep different names.

    ``with_uid`` adds the hash in any case (two series whose names would be the same).

    Examples: ``"P001_20240102_3"``; PatientID ``"../../x"`` gives ``"x_20240102_3_<hash>"``.
    """
    raw = [series.patient_id, series.study_date, "" if series.number is None else str(series.number)]
    parts = [_safe_part(p) for p in raw]
    name = "_".join(p for p in parts if p)
    if with_uid or not all(p and p == r for p, r in zip(parts, raw)):
        digest = hashlib.sha1(series.uid.encode()).hexdigest()[:8]
        name = f"{name}_{digest}" if name else f"series_{digest}"
    return name
