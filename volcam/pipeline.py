"""Names of the ``volcam run`` machinery, kept importable from their earlier home.

The machinery lives in :mod:`volcam.run` (configuration, cases, runner, export, loop,
summary, distributed). :func:`run` here returns the exit status as an int; use
:func:`volcam.run.run` for the :class:`~volcam.run.summary.RunResult`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from volcam.run.cases import CaseDataset, label_region, load_case
from volcam.run.loop import CaseWriter, run_cases
from volcam.run.outdir import RECORD_NAME
from volcam.run.runner import Runner
from volcam.run.summary import SUMMARY_COLUMNS, CaseResult, RunResult, merge_summaries, read_summary, write_summary

__all__ = [
    "SUMMARY_COLUMNS",
    "RECORD_NAME",
    "CaseResult",
    "RunResult",
    "Runner",
    "CaseWriter",
    "CaseDataset",
    "load_case",
    "label_region",
    "run_cases",
    "write_summary",
    "merge_summaries",
    "read_summary",
    "run",
]


def run(
    config: Any, *, overrides: Sequence[str] = (), output: str | os.PathLike[str] | None = None, **kwargs: Any
) -> int:
    """:func:`volcam.run.run` in this process; returns its exit status (0 all done, 1 some case
    failed, 3 the run could not go on, 128 + signal when interrupted)."""
    from volcam.run.loop import run as run_local

    return run_local(config, overrides=overrides, output=output, **kwargs).exit_code
