"""The summary table of a run (one row per case and class) and the end of a run.

:func:`finish_run` ends the local and the distributed loop alike: it writes the table, tidies
the output folder and returns a :class:`RunResult`, which the command maps to an exit code.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volcam.errors import VolcamError
from volcam.run.cases import Case

__all__ = [
    "RunStopped",
    "finish_run",
    "SUMMARY_COLUMNS",
    "CaseResult",
    "RunResult",
    "EXIT_OK",
    "EXIT_FAILED_CASES",
    "EXIT_USAGE",
    "EXIT_RUN",
    "write_summary",
    "write_report",
    "read_summary",
    "merge_summaries",
    "format_row",
    "case_line",
]

#: Exit codes: all done; some cases failed; usage or config error; the run itself could not go
#: on (disk, permissions, lock); interrupted runs exit with 128 + the signal number (130, 143, 129).
EXIT_OK, EXIT_FAILED_CASES, EXIT_USAGE, EXIT_RUN = 0, 1, 2, 3

#: columns of ``summary.csv``, one row per case and target class
SUMMARY_COLUMNS = [
    "case",  # case identifier (its output folder)
    "class",  # output channel explained
    "class_name",
    "status",  # ok | skipped (complete from an earlier run) | failed
    "error",  # why a case failed
    "note",  # e.g. an empty target, a map that is zero everywhere
    "method",  # the CAM method
    "layer",  # the target layer(s), ';'-separated
    "seconds",  # time spent on this class of this case (compute and writing)
    "image",
    "label",
    "series",  # for DICOM input: the series explained (the choice and its reason are in the case record)
    "predicted_voxels",  # voxels predicted as the class (network grid)
    "predicted_volume_ml",  # their volume, from the voxel size of the network grid
    "peak_x",  # hottest voxel, world coordinates in mm (RAS+, as in the NIfTI affine)
    "peak_y",
    "peak_z",
    "peak_voxel",  # its index "i j k" in the scan's own grid
    "energy_in_prediction",  # fraction of the map's sum inside the predicted region of the class
    "energy_in_label",  # ... inside the label of the class (when a label is given)
    "heat_nifti",  # output files, relative to the output folder
    "pngs",  # number of slice PNGs written
    "figure",
]


@dataclass
class CaseResult:
    """The outcome of one case: its status and one summary row per target class."""

    case: Case
    status: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


@dataclass
class RunResult:
    """What a run did: per-case results, the summary's path, and how it ended.

    Attributes:
        results: one :class:`CaseResult` per case, in case order.
        summary: path of ``summary.csv`` (None when it could not be written).
        interrupted: the signal number that stopped the run, if one did.
        error: why the run itself could not go on (disk, permissions), if it could not.
        output_dir: the output folder.
        processes: how many processes shared the cases (torchrun).
    """

    results: list[CaseResult]
    summary: Path | None
    output_dir: Path
    interrupted: int | None = None
    error: str = ""
    processes: int = 1

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in ("ok", "skipped", "failed")}

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def exit_code(self) -> int:
        if self.interrupted is not None:
            return 128 + self.interrupted
        if self.error:
            return EXIT_RUN
        return EXIT_FAILED_CASES if self.failed else EXIT_OK


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_summary(results: Sequence[CaseResult] | Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write the summary rows (of results, or rows) to a CSV file, atomically."""
    if results and isinstance(results[0], CaseResult):
        rows: Iterable[dict[str, Any]] = [r for res in results for r in res.rows]  # type: ignore[union-attr]
    else:
        rows = results  # type: ignore[assignment]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: _cell(r.get(k)) for k in SUMMARY_COLUMNS})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_summary(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a summary CSV, as dictionaries of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def merge_summaries(
    paths: Sequence[str | os.PathLike[str]], path: str | os.PathLike[str], order: Sequence[str] | None = None
) -> Path:
    """Merge summary CSVs (e.g. one per shard) into one, in case ``order`` if given."""
    rows = [r for p in paths for r in read_summary(p)]
    if order is not None:
        rank = {c: i for i, c in enumerate(order)}
        rows.sort(key=lambda r: (rank.get(r["case"], len(rank)), int(r["class"] or 0)))
    return write_summary(rows, path)


class RunStopped(VolcamError, RuntimeError):
    """The run cannot go on (the output folder cannot be written); the message names the path."""


def finish_run(run_dir: Path, rows: Sequence[dict[str, Any]], *, index: bool) -> Path:
    """The end of a run, local or distributed: ``summary.csv`` from ``rows`` (every case and
    class, in the order of the cases) and, with ``index``, the run's ``index.html``.

    Raises:
        RunStopped: a file cannot be written (the message names it).
    """
    path = run_dir / "summary.csv"
    try:
        summary = write_summary(rows, path)
    except OSError as err:
        raise RunStopped(f"cannot write the summary '{path}': {err.strerror or err}") from err
    if index:
        try:
            write_report(run_dir, rows)
        except OSError as err:
            raise RunStopped(f"cannot write '{run_dir / 'index.html'}': {err.strerror or err}") from err
    return summary


def write_report(run_dir: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """The run's ``index.html`` (:func:`volcam.figures.report.write_index`): the summary table,
    thumbnails and links to each case's viewer.

    Raises:
        RunStopped-like ``OSError``: the page cannot be written.
    """
    from volcam.figures.report import write_index

    return write_index(run_dir, [{k: _cell(v) for k, v in r.items()} for r in rows])


def format_row(row: dict[str, Any]) -> str:
    """One class of a case, for the per-case log line."""
    parts = [f"{row['class_name']}: {row['predicted_voxels']} vox"]
    if row.get("note"):
        parts.append(str(row["note"]).split(";")[0])  # the reason; the summary has what to try
    if row.get("peak_x") not in (None, ""):
        if row.get("units") == "px":  # a raster image: pixels, column then row
            parts.append(f"peak (x {row['peak_x']:.0f}, y {row['peak_y']:.0f}) px")
        else:
            parts.append(f"peak ({row['peak_x']:.1f}, {row['peak_y']:.1f}, {row['peak_z']:.1f}) mm")
    for key, where in (("energy_in_prediction", "prediction"), ("energy_in_label", "label")):
        e = row.get(key)
        if isinstance(e, float) and not math.isnan(e):
            parts.append(f"{100 * e:.0f}% in {where}")
    return ", ".join(parts)


def case_line(res: CaseResult) -> str:
    """The log line of one case (without its position in the run)."""
    if res.status == "failed":
        return f"{res.case.id}  FAILED  {res.error}"
    if res.status == "skipped":
        return f"{res.case.id}  skipped (outputs complete)"
    return f"{res.case.id}  ok  {res.seconds:.1f} s  " + " | ".join(format_row(r) for r in res.rows)
