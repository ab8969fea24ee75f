"""What made a case's outputs, recorded with them, and what a rerun compares before it skips.

A case record (``<case>/volcam-case.json``) holds, besides its files and summary rows:

- ``volcam``: the version that wrote it;
- ``maps``: everything that decides the maps: method and its options, target layers and
  selectors, targets (classes, names, mask, activation), the checkpoint's path and content
  hash, a hash of the config entries that affect the maps (network, preprocessing, cam,
  targets, sliding window, vars), device type and dtype;
- ``outputs``: the files and drawing settings the config asks for;
- ``image`` / ``label``: path, size, modification time and content hash of each input file.

A rerun skips a case only when all of these match (:func:`differences`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from volcam.run.checkpoint import file_digest

__all__ = [
    "file_identity",
    "series_identity",
    "input_identity",
    "same_file",
    "map_provenance",
    "differences",
    "FIELD_NAMES",
]

#: readable names of the record fields a rerun compares
FIELD_NAMES = {
    "volcam": "volcam version",
    "method": "cam.method",
    "method_args": "cam.method_args",
    "target_layers": "cam.target_layers",
    "layer_output": "cam.layer_output",
    "model_output": "cam.model_output",
    "reshape": "cam.reshape",
    "targets": "targets",
    "checkpoint": "checkpoint (its content)",
    "config": "network_def, preprocessing or other settings that affect the maps",
    "device": "device",
    "dtype": "dtype",
    "outputs": "outputs",
    "image": "the image file",
    "label": "the label file",
}


def file_identity(path: str | os.PathLike[str] | None, digest: str | None = None) -> dict[str, Any] | None:
    """``{"path", "size", "mtime_ns", "blake2b"}`` of a file (None for no file)."""
    if path is None:
        return None
    st = Path(path).stat()
    return {
        "path": str(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "blake2b": digest if digest is not None else file_digest(path),
    }


def series_identity(case: Any) -> dict[str, Any]:
    """The identity of a DICOM case's series: its folder and UID, its files' total size, newest
    modification time and a content hash over every file (in path order)."""
    import hashlib

    files = sorted(case.series.series.files)
    stats = [f.stat() for f in files]
    h = hashlib.blake2b(digest_size=32)
    for f in files:
        h.update(f.name.encode())
        h.update(file_digest(f).encode())
    return {
        "path": str(case.image),
        "series_uid": case.series.series.uid,
        "files": len(files),
        "size": sum(st.st_size for st in stats),
        "mtime_ns": max((st.st_mtime_ns for st in stats), default=0),
        "blake2b": h.hexdigest(),
    }


def input_identity(case: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(image, label)`` identities of a case (see :func:`file_identity`, :func:`series_identity`)."""
    if getattr(case, "series", None) is not None:
        return series_identity(case), None
    return file_identity(case.image), file_identity(case.label)


def _same_series(recorded: Mapping[str, Any] | None, case: Any) -> bool:
    if recorded is None or recorded.get("series_uid") != case.series.series.uid:
        return False
    files = case.series.series.files
    try:
        stats = [f.stat() for f in files]
    except OSError:
        return False
    same_listing = recorded.get("files") == len(files) and recorded.get("size") == sum(st.st_size for st in stats)
    if same_listing and recorded.get("mtime_ns") == max((st.st_mtime_ns for st in stats), default=0):
        return True
    return same_listing and series_identity(case)["blake2b"] == recorded.get("blake2b")


def same_file(recorded: Mapping[str, Any] | None, path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` is the file ``recorded`` describes: same path and size, and the same
    modification time or (when only the time changed) the same content."""
    if recorded is None or path is None:
        return recorded is None and path is None
    if recorded.get("path") != str(path):
        return False
    try:
        st = Path(path).stat()
    except OSError:
        return False
    if st.st_size != recorded.get("size"):
        return False
    if st.st_mtime_ns == recorded.get("mtime_ns"):
        return True
    return file_digest(path) == recorded.get("blake2b")


def map_provenance(
    config: Any, *, device: Any, dtype: str = "float32", checkpoint: dict[str, Any] | None
) -> dict[str, Any]:
    """The ``maps`` entry of a case record for a run of ``config`` (see the module docstring)."""
    from volcam import __version__

    cam = config.cam.describe()
    return {
        "volcam": __version__,
        **cam,
        "targets": config.targets.describe(),
        "checkpoint": checkpoint,
        "config": config.map_hash(),
        "device": getattr(device, "type", str(device)),
        "dtype": dtype,
    }


def _checkpoint_same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(a.get("blake2b") == b.get("blake2b"))


def differences(
    record: Mapping[str, Any], maps: Mapping[str, Any], outputs: Mapping[str, Any], case: Any
) -> list[tuple[str, Any, Any]]:
    """The fields in which an earlier case record differs from this run: ``[(field, then, now)]``."""
    image, label = case.image, case.label
    out: list[tuple[str, Any, Any]] = []
    then = record.get("maps") or {}
    for key, now in maps.items():
        old = then.get(key)
        if key == "checkpoint":
            if not _checkpoint_same(old, now):
                out.append((key, old, now))
        elif old != now:
            out.append((key, old, now))
    if record.get("outputs") != dict(outputs):
        out.append(("outputs", record.get("outputs"), dict(outputs)))
    same_image = (
        _same_series(record.get("image"), case)
        if getattr(case, "series", None) is not None
        else same_file(record.get("image"), image)
    )
    if not same_image:
        out.append(("image", (record.get("image") or {}).get("path"), None if image is None else str(image)))
    if not same_file(record.get("label"), label):
        out.append(("label", (record.get("label") or {}).get("path"), None if label is None else str(label)))
    return out
