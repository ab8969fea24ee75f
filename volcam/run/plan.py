"""Before any work: which cases a run does, skips or refuses.

:func:`plan_cases` compares each case folder's record with what this run would make
(:mod:`volcam.run.provenance`). A case is skipped only when everything matches and its files
exist; a case made with other settings stops the run before anything is done (unless
``overwrite``), naming the settings that differ and how many cases each affects; a folder that
volcam did not write where a case goes stops it too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from volcam.errors import ConfigError
from volcam.run.cases import Case
from volcam.run.outdir import RUN_ENTRIES, OutputFolder, RunFolderError
from volcam.run.provenance import FIELD_NAMES, differences
from volcam.run.summary import CaseResult

__all__ = ["plan_run", "RunPlan", "ResumeMismatchError", "plan_cases", "check_names", "failed_rows"]

log = logging.getLogger(__name__)


class ResumeMismatchError(ConfigError):
    """Cases in the output folder were made with other settings (or from other files)."""


@dataclass
class RunPlan:
    """The cases to do (indices into the case list) and those already decided."""

    todo: list[int] = field(default_factory=list)
    decided: dict[int, CaseResult] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)


def check_names(cases: Sequence[Case]) -> None:
    """Case folders must not take the names of the run's own files (``summary.csv``, ...)."""
    reserved = {n.lower() for n in RUN_ENTRIES}
    for case in cases:
        if case.id.lower() in reserved or case.id.startswith("."):
            raise ConfigError(
                f"case '{case.id}' (from '{case.image}') must not be named like a file of the run itself "
                f"({', '.join(RUN_ENTRIES)}); rename the image",
                key="data",
            )


def failed_rows(
    case: Case, classes: Sequence[int], names: dict[int, str], error: str, **extra: Any
) -> list[dict[str, Any]]:
    """The summary rows of a case that failed as a whole."""
    return [
        {
            "case": case.id,
            "class": c,
            "class_name": names[c],
            "status": "failed",
            "error": error,
            "image": str(case.image),
            "label": str(case.label) if case.label else "",
            **extra,
        }
        for c in classes
    ]


def _describe(value: Any) -> str:
    if isinstance(value, dict) and "path" in value:
        return str(value["path"])
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def plan_cases(
    folder: OutputFolder,
    cases: Sequence[Case],
    *,
    maps: dict[str, Any],
    declared: dict[str, Any],
    classes: Sequence[int],
    names: dict[int, str],
    overwrite: bool = False,
    retry_failed: bool = False,
    since: float | None = None,
) -> RunPlan:
    """Decide every case (see the module docstring). Call it while holding the folder's lock.

    ``since``: the start time of the run this process continues (a supervised run restarted
    after a kill): cases finished since then count as done in this run, not skipped.
    """
    plan = RunPlan()
    foreign: list[str] = []
    mismatched: dict[str, list[str]] = {}
    examples: dict[str, tuple[Any, Any]] = {}
    killed = folder.killed()
    config_id = maps.get("config")
    for i, case in enumerate(cases):
        status = folder.status(case.id)
        if status == "foreign":
            foreign.append(str(folder.case_dir(case.id)))
            continue
        entry = killed.get(case.id)
        # a case killed in this very run (a supervisor restarted the process) is never retried by
        # the restart, whatever the flags; one killed in an earlier run only when asked
        killed_now = entry is not None and since is not None and entry.get("when", 0.0) >= since
        asked = retry_failed or overwrite
        if entry is not None and entry.get("config") == config_id and (killed_now or not asked):
            rows = failed_rows(case, classes, names, entry.get("error", "killed"))
            plan.decided[i] = CaseResult(case, "failed", rows, error=entry.get("error", "killed"))
            continue
        record = (folder.read_record(case.id) or {}) if status == "case" else {}
        redone = since is not None and record.get("finished_at", 0.0) >= since
        if status == "absent" or (overwrite and not redone):
            plan.todo.append(i)
            continue
        plan.records[case.id] = record
        diffs = differences(record, maps, declared, case)
        if diffs and all(name == "outputs" for name, _, _ in diffs):
            plan.todo.append(i)  # same maps, other files asked for: redo the case's files
            continue
        if diffs:
            for name, then, now in diffs:
                mismatched.setdefault(name, []).append(case.id)
                examples.setdefault(name, (then, now))
            continue
        root = folder.case_dir(case.id)
        if all((root / f).is_file() for f in record.get("files", [])):
            # done earlier in this same run (by a process a supervisor restarted): ok, not skipped
            status = "ok" if since is not None and record.get("finished_at", 0.0) >= since else "skipped"
            rows = [{**r, "status": status} for r in record.get("rows", [])]
            plan.decided[i] = CaseResult(case, status, rows)
        else:
            plan.todo.append(i)  # a file was removed: redo the case
    if foreign:
        shown = ", ".join(f"'{f}'" for f in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RunFolderError(
            f"the output folder holds {len(foreign)} folder(s) or file(s) where cases go that volcam did not write "
            f"(no volcam-case.json): {shown}; volcam does not touch them. Move them away or "
            "choose another output folder (--output)"
        )
    if mismatched:
        affected = sorted({c for ids in mismatched.values() for c in ids})
        parts = []
        for name, ids in mismatched.items():
            then, now = examples[name]
            what = FIELD_NAMES.get(name, name)
            if name in ("method", "target_layers", "image", "label", "device", "dtype", "volcam"):
                what += f" ({_describe(then)}, now {_describe(now)})"
            parts.append(f"{what} in {len(ids)} case(s)")
        raise ResumeMismatchError(
            f"{len(affected)} of {len(cases)} case(s) in '{folder.root}' were made differently: "
            + "; ".join(parts)
            + f" (e.g. {', '.join(affected[:3])}). Their outputs would not match this run's; rerun with --overwrite "
            "to redo them, or choose another output folder (--output)",
            key=None,
        )
    if retry_failed and killed:
        folder.forget_killed({c.id for c in cases})
    return plan


def plan_run(
    folder: OutputFolder,
    cases: Sequence[Case],
    config: Any,
    runner: Any,
    maps: dict[str, Any],
    *,
    overwrite: bool = False,
    retry_failed: bool = False,
    since: float | None = None,
) -> RunPlan:
    """The start of a run, local or distributed, once the folder's lock is held: what an
    interrupted run left is recovered (:meth:`OutputFolder.recover`, logged), then every case
    is decided (:func:`plan_cases`) for ``runner``'s classes and ``config``'s outputs."""
    for line in folder.recover():
        log.info("volcam run: %s", line)
    return plan_cases(
        folder,
        cases,
        maps=maps,
        declared=config.outputs.declared(),
        classes=runner.classes,
        names=runner.names,
        overwrite=overwrite,
        retry_failed=retry_failed,
        since=since,
    )
