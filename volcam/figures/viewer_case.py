"""A case's viewer rebuilt from the files ``volcam run`` wrote for it.

A case folder ``<out>/<case>/`` holds ``volcam-case.json`` (the scan's path under
``"image"``, the label's under ``"label"``, one summary row per class under ``"rows"``,
each naming its heat NIfTI relative to ``<out>``) and ``<class_name>/heat.nii.gz`` on the
scan's grid. :func:`write_case_viewer` reads them back and writes ``<case>/viewer.html``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from volcam.errors import ArgumentError, ImageReadError

__all__ = ["RECORD_NAME", "write_case_viewer"]

logger = logging.getLogger(__name__)

#: the record a case folder holds
RECORD_NAME = "volcam-case.json"


def _recorded(record: dict, key: str) -> str | None:
    """A file's path in a case record: a plain path, or the ``path`` of its recorded identity."""
    value = record.get(key)
    if isinstance(value, dict):
        value = value.get("path")
    return None if value in (None, "") else str(value)


def _locate(recorded: str | os.PathLike[str], case_dir: Path, what: str, folder: bool = False) -> Path:
    """A recorded path as given (absolute, or relative to the working folder), else relative
    to the run folder or its parent (where a run is usually started); ``folder``: a folder
    (a DICOM series' folder) is accepted too."""
    path = Path(recorded)
    candidates = [path] if path.is_absolute() else [path, case_dir.parent / path, case_dir.parent.parent / path]
    for candidate in candidates:
        if candidate.is_file() or (folder and candidate.is_dir()):
            return candidate
    option = "--image" if what == "scan" else "--label"
    raise ImageReadError(
        f"the {what} '{recorded}' recorded in {case_dir / RECORD_NAME} must exist, but it does not (looked in "
        f"{', '.join(str(c) for c in candidates)}); pass its path ({option} on the command line)",
        path=path,
    )


def write_case_viewer(
    case_dir: str | os.PathLike[str],
    path: str | os.PathLike[str] | None = None,
    *,
    image: str | os.PathLike[str] | None = None,
    label: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Path:
    """Write the viewer of one case of a run from its written files.

    Every class with a heat NIfTI becomes a layer (named by its class name) with its
    summary figures; the label, when there is one, is outlined per class as
    ``"reference: <class name>"``.

    Args:
        case_dir: the case's output folder (holding ``volcam-case.json``).
        path: destination (default ``<case_dir>/viewer.html``).
        image: the scan, when it is no longer where the record says.
        label: the label map, likewise (an empty string: no outlines).
        options: passed to :func:`volcam.figures.viewer.write_viewer` (``convention``,
            ``coordinates``, ``window``, ``max_bytes``, ...).

    Returns:
        The written ``Path``.

    Raises:
        ArgumentError: ``case_dir`` is not a case folder, or holds no heat NIfTI.
        ImageReadError: the scan, label or a heat file cannot be found or read.
    """
    import numpy as np

    from volcam.figures.viewer import write_viewer
    from volcam.io import load_image

    case_dir = Path(case_dir)
    record_path = case_dir / RECORD_NAME
    if not record_path.is_file():
        raise ArgumentError(
            f"`case_dir` must be a case folder of a volcam run (with {RECORD_NAME}), not '{case_dir}'",
            name="case_dir",
        )
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ArgumentError(f"{record_path} must be a JSON record, but it cannot be read: {err}") from err
    out_dir = case_dir.parent
    heats, stats, classes = {}, {}, {}
    for row in record.get("rows", []):
        name = str(row.get("class_name") or row.get("class"))
        rel = row.get("heat_nifti") or ""
        heat_path = out_dir / rel if rel else case_dir / name / "heat.nii.gz"
        if not heat_path.is_file():
            logger.info("%s: no heat NIfTI for class %s", case_dir, name)
            continue
        heats[name] = load_image(heat_path)
        stats[name] = row
        classes[name] = row.get("class")
    if not heats:
        raise ArgumentError(
            f"`case_dir` must hold at least one heat NIfTI, not '{case_dir}' without any (run with "
            "outputs.heat_nifti: true)",
            name="case_dir",
        )
    scan = _load_scan(image, record, case_dir)
    masks = {}
    label_path = label if label is not None else _recorded(record, "label")
    if label_path:
        label_map = load_image(_locate(label_path, case_dir, "label"))[0].numpy()
        for name, c in classes.items():
            if c not in (None, ""):
                masks[f"reference: {name}"] = label_map == np.float32(c)
    options.setdefault(
        "title", f"{record.get('case', case_dir.name)}: {Path(str(scan.meta.get('filename_or_obj', ''))).name}"
    )
    series = record.get("series")
    if isinstance(series, dict):  # a DICOM case: LPS read-out and the series' modality, unless asked otherwise
        from volcam.figures.viewer import dicom_style

        for key, value in dicom_style(series.get("modality")).items():
            options.setdefault(key, value)
    return write_viewer(
        scan, heats, path if path is not None else case_dir / "viewer.html", masks=masks, stats=stats, **options
    )


def _load_scan(image: str | os.PathLike[str] | None, record: dict, case_dir: Path) -> Any:
    """The case's scan: a NIfTI or raster file, or the DICOM series the record names (found again
    by its SeriesInstanceUID in the recorded folder, or in ``image`` when that is a folder)."""
    from volcam.io import load_image

    series = record.get("series") if isinstance(record.get("series"), dict) else None
    recorded = image if image is not None else _recorded(record, "image") or ""
    path = _locate(recorded, case_dir, "scan", folder=series is not None)
    if series is None or path.is_file():
        return load_image(path)
    from volcam.io.dicom import find_series, load_series

    uid = series.get("series_instance_uid")
    for found in find_series(path):
        if found.uid == uid:
            return load_series(found)
    raise ImageReadError(
        f"the DICOM series {uid} recorded in {case_dir / RECORD_NAME} must be in '{path}', but it is not; "
        "pass its folder (--image on the command line)",
        path=path,
    )
