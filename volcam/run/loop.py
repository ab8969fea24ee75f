"""The dataset loop of ``volcam run`` in one process.

:func:`run` lists the cases, takes the output folder's lock, finishes or undoes what a killed
run left (:meth:`~volcam.run.outdir.OutputFolder.recover`), decides which cases to do
(:func:`~volcam.run.plan.plan_cases`), and then, case by case: loads it in ``DataLoader``
workers while the previous case is computed, explains it (:class:`~volcam.run.runner.Runner`),
writes its files into a staging folder (:class:`~volcam.run.export.CaseExporter`) with a
record of what made them, and swaps the folder into place. ``summary.csv`` is rewritten after
every case, so it always describes the case folders on disk.

A case that fails (unreadable file, wrong shape, out of memory, ...) is recorded with its
reason and the loop goes on. The run itself stops, cleanly and with a message that names the
path, when the output folder cannot be written (a full disk, a read-only or forbidden folder).
SIGTERM and SIGHUP stop it like Ctrl-C: the case in progress is discarded, the summary of
what finished is written, and the run ends with 128 + the signal's number.

The loop never imports the distributed one; ``volcam run`` chooses between them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from volcam.errors import ImageReadError, VolcamError
from volcam.run.cases import Case
from volcam.run.config import RunConfig, load_config
from volcam.run.export import CaseExporter
from volcam.run.loading import CaseDataset, describe_error
from volcam.run.outdir import RECORD_NAME, OutputFolder, RunFolderError
from volcam.run.plan import RunPlan, check_names, failed_rows, plan_run
from volcam.run.provenance import input_identity, map_provenance
from volcam.run.runner import Runner, make_runner
from volcam.run.summary import CaseResult, RunResult, RunStopped, case_line, finish_run, write_summary

__all__ = [
    "run",
    "run_cases",
    "CaseWriter",
    "Interrupted",
    "RunStopped",
    "stop_on_signals",
    "infrastructure_error",
    "method_note",
]

log = logging.getLogger(__name__)

#: errors of the output folder itself: the run cannot go on
_INFRA_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived (SIGINT raises KeyboardInterrupt as usual)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def infrastructure_error(err: BaseException) -> bool:
    """Whether ``err`` is a failure of the output folder (disk full, read-only, forbidden)."""
    return isinstance(err, OSError) and not isinstance(err, ImageReadError) and err.errno in _INFRA_ERRNOS


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Interrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class CaseWriter:
    """Explains one loaded case and puts its complete folder in place (or nothing at all).

    Args:
        runner: the run's :class:`Runner`.
        folder: the output folder.
        maps: the ``maps`` entry of the case records (:func:`map_provenance`).
        record_info: extra entries of every record (a distributed run notes the rank).
    """

    def __init__(self, runner: Runner, folder: OutputFolder, maps: dict[str, Any], record_info: dict[str, Any]):
        self.runner = runner
        self.folder = folder
        self.maps = maps
        self.declared = runner.config.outputs.declared()
        self.record_info = record_info
        self.exporter = CaseExporter(runner.config.outputs, method=runner.config.cam.method, layer=runner.layer_names)

    def process(self, case: Case, data: dict[str, Any]) -> CaseResult:
        start = time.perf_counter()
        out = self.runner.explain_case(case, data)
        stage = self.folder.stage(case.id)
        try:
            files = self.exporter.write(out, stage, label_region=self.runner.label_region)
            rows = [c.row for c in out.classes]
            image, label = input_identity(case)
            record = {
                "format": 2,
                "case": case.id,
                "maps": self.maps,
                "outputs": self.declared,
                "image": image,
                "label": label,
                "series": None if case.series is None else case.series.as_dict(),
                "files": files,
                "rows": rows,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "finished_at": time.time(),
                **self.record_info,
            }
            tmp = stage / (RECORD_NAME + ".tmp")
            tmp.write_text(json.dumps(record, indent=1, default=str))
            tmp.replace(stage / RECORD_NAME)
            self.folder.commit(case.id, stage)
        finally:
            if stage.exists():
                self.folder.discard(stage)
        return CaseResult(case, "ok", rows, seconds=time.perf_counter() - start)


def _first(batch: list[Any]) -> Any:
    return batch[0]


def run_cases(
    writer: CaseWriter,
    cases: Sequence[Case],
    todo: Sequence[int],
    *,
    num_workers: int = 0,
    on_result: Callable[[int, CaseResult], None] | None = None,
) -> dict[int, CaseResult]:
    """Process the cases ``todo`` (indices into ``cases``) in order; one result per index.

    Cases are loaded in ``num_workers`` DataLoader workers while the previous one is computed.
    A case that fails is recorded with its reason and the loop goes on; a loading process
    killed by the system fails its case and the loading restarts with the rest.

    Raises:
        RunStopped: the output folder cannot be written.
        KeyboardInterrupt, Interrupted: the run was stopped by a signal.
    """
    from monai.data import DataLoader

    runner = writer.runner
    results: dict[int, CaseResult] = {}
    remaining = list(todo)
    while remaining:
        dataset = CaseDataset(
            [cases[i] for i in remaining],
            runner.pre,
            runner.config.spatial_dims,
            need_label=runner.config.targets.mask == "label",
        )
        workers = min(num_workers, len(remaining))
        loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers, collate_fn=_first)
        done = 0
        try:
            for item in loader:
                i = remaining[item["index"]]
                results[i] = res = _one(writer, cases[i], item)
                done += 1
                if on_result is not None:
                    on_result(i, res)
        except RuntimeError as err:
            if "DataLoader worker" not in str(err) or done >= len(remaining):
                raise
            i = remaining[done]
            error = f"the process loading the case was killed ({' '.join(str(err).split())[:200]}; out of memory?)"
            results[i] = CaseResult(cases[i], "failed", _failed(runner, cases[i], error), error=error)
            if on_result is not None:
                on_result(i, results[i])
            done += 1
        remaining = remaining[done:]
    return results


def _failed(runner: Runner, case: Case, error: str, seconds: float = 0.0) -> list[dict[str, Any]]:
    return failed_rows(
        case,
        runner.classes,
        runner.names,
        error,
        seconds=round(seconds, 3),
        method=runner.config.cam.method,
        layer=runner.layer_names,
    )


def _one(writer: CaseWriter, case: Case, item: dict[str, Any]) -> CaseResult:
    runner = writer.runner
    if item["error"] is not None:
        return CaseResult(case, "failed", _failed(runner, case, item["error"], item["seconds"]), error=item["error"])
    start = time.perf_counter()
    writer.folder.set_progress(case.id)
    try:
        return writer.process(case, item["data"])
    except (KeyboardInterrupt, SystemExit, Interrupted):
        raise
    except VolcamError as err:
        if isinstance(err, RunFolderError):
            raise RunStopped(str(err)) from err
        if getattr(err, "key", None) == "targets.classes":  # a config error for every case
            raise
        error = describe_error(err)
    except Exception as err:  # recorded, the run goes on
        if infrastructure_error(err):
            path = getattr(err, "filename", None) or writer.folder.root
            raise RunStopped(f"cannot write '{path}': {getattr(err, 'strerror', err)}") from err
        if runner.device.type == "cuda":
            torch.cuda.empty_cache()
        error = describe_error(err)
        if os.environ.get("VOLCAM_DEBUG"):
            traceback.print_exc()
    finally:
        writer.folder.set_progress(None)
    return CaseResult(case, "failed", _failed(runner, case, error, time.perf_counter() - start), error=error)


class _Table:
    """The summary rows of every case, rewritten after each case (see the module docstring)."""

    def __init__(self, folder: OutputFolder, cases: Sequence[Case], plan: RunPlan):
        self.path = folder.root / "summary.csv"
        self.cases = cases
        self.rows: dict[int, list[dict[str, Any]]] = {i: r.rows for i, r in plan.decided.items()}
        for i in plan.todo:
            record = plan.records.get(cases[i].id) or folder.read_record(cases[i].id)
            if record:  # outputs of an earlier run, not redone yet
                self.rows[i] = [{**r, "status": "pending"} for r in record.get("rows", [])]

    def update(self, i: int, res: CaseResult) -> None:
        self.rows[i] = res.rows

    def all_rows(self) -> list[dict[str, Any]]:
        return [r for i in sorted(self.rows) for r in self.rows[i]]

    def write(self) -> Path:
        try:
            return write_summary(self.all_rows(), self.path)
        except OSError as err:
            raise RunStopped(f"cannot write the summary '{self.path}': {err.strerror or err}") from err


def _start_line(
    config: RunConfig, cases: Sequence[Case], runner: Runner, folder: OutputFolder, checkpoint: dict[str, Any] | None
) -> str:
    s = config.sliding
    how = f"sliding windows {list(s.roi_size)}" if s.roi_size else "whole volumes"
    if config.nnunet is not None:
        how = "nnU-Net's sliding window"
    ckpt = "none (initial weights)" if checkpoint is None else f"{checkpoint['path']} ({checkpoint['blake2b'][:12]})"
    return (
        f"volcam run: {len(cases)} case(s), {method_note(runner)} on {runner.layer_names}{chosen_note(runner)}, "
        f"classes {runner.classes}, {how}, device {runner.device}, checkpoint {ckpt}, outputs in {folder.root}"
    )


def chosen_note(runner: Any) -> str:
    """`` (chosen: ...)`` when the config names no target layer."""
    if not getattr(runner, "chosen", ""):
        return ""
    return f" (chosen: {runner.chosen}; cam.target_layers sets another)"


def method_note(runner: Any) -> str:
    """The method, and its fallback for a class whose map is all zero (``cam.fallback``)."""
    cam = runner.config.cam
    if getattr(runner, "fallback", None) is None:
        return str(cam.method)
    return f"{cam.method} ({cam.fallback} for a class whose {cam.method} map is all zero)"


def run(
    config: RunConfig | str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    retry_failed: bool = False,
    quiet: bool = False,
    allow_eval: bool = True,
    python_path: Sequence[str] = (),
    lock_token: str | None = None,
    since: float | None = None,
    on_line: Callable[[str], None] | None = None,
) -> RunResult:
    """Run a config over its dataset in this process; see the module docstring.

    Args:
        config: a :class:`RunConfig`, or the path of a config file (read with ``overrides``,
            ``allow_eval`` and ``python_path``, see :func:`~volcam.run.config.load_config`).
        output: the output folder (default ``outputs.dir``).
        overwrite: redo every case, even those made the same way; replaces the folders of
            cases made differently.
        retry_failed: retry cases whose process was killed in an earlier run.
        quiet: no progress bar and no per-case lines.
        lock_token: the lock token of a supervising process (``volcam run`` passes it).
        since: when the supervised run this process continues started (see
            :func:`~volcam.run.plan.plan_cases`).
        on_line: called with each line worth showing (default: logged at INFO).

    Returns:
        a :class:`~volcam.run.summary.RunResult`; its ``exit_code`` is the command's status.

    Raises:
        ConfigError: the config, or the cases it lists, are wrong (nothing is done).
        RunFolderError: the output folder is locked or holds folders volcam did not write.
    """
    from tqdm.auto import tqdm

    say = on_line or log.info
    if not isinstance(config, RunConfig):
        config = load_config(config, overrides, allow_eval=allow_eval, python_path=python_path)
    if output is not None:
        config = config.with_output_dir(output)
    folder = OutputFolder(config.outputs.dir)
    cases = config.list_cases()
    check_names(cases)
    if getattr(cases, "left_out", None) and not quiet:
        say(f"volcam run: left out of the dataset: {cases.summary()}")
    runner = make_runner(config)
    checkpoint = runner.checkpoint_record()
    maps = map_provenance(runner.config, device=runner.device, checkpoint=checkpoint)
    results: dict[int, CaseResult] = {}
    interrupted: int | None = None
    error = ""
    table: _Table | None = None
    with folder.locked(token=lock_token), stop_on_signals():
        plan = plan_run(
            folder, cases, config, runner, maps, overwrite=overwrite, retry_failed=retry_failed, since=since
        )
        if not quiet:
            say(_start_line(config, cases, runner, folder, checkpoint))
        results.update(plan.decided)
        table = _Table(folder, cases, plan)
        bar = tqdm(total=len(cases), unit="case", disable=quiet, file=sys.stderr, dynamic_ncols=True)
        width = len(str(len(cases)))
        skipped = [i for i, r in plan.decided.items() if r.status == "skipped"]
        killed = [i for i, r in plan.decided.items() if r.status == "failed"]
        bar.update(len(plan.decided))
        if skipped and not quiet:
            say(f"{len(skipped)} of {len(cases)} case(s) already complete, skipped (--overwrite redoes them)")
        if killed and not quiet:
            say(
                f"{len(killed)} case(s) were killed in an earlier run and are not retried "
                f"({', '.join(cases[i].id for i in killed[:5])}); --retry-failed retries them"
            )

        def report(i: int, res: CaseResult) -> None:
            bar.update(1)
            table.update(i, res)
            table.write()
            line = f"[{i + 1:>{width}}/{len(cases)}] {case_line(res)}"
            if not quiet:
                say(line)
            elif res.status == "failed":
                log.warning(line)

        writer = CaseWriter(runner, folder, maps, {})
        try:
            results.update(run_cases(writer, cases, plan.todo, num_workers=config.data.num_workers, on_result=report))
        except KeyboardInterrupt:
            interrupted = signal.SIGINT
        except Interrupted as err:
            interrupted = err.signum
        except RunStopped as err:
            error = str(err)
        finally:
            bar.close()
        try:
            summary: Path | None = finish_run(folder.root, table.all_rows(), index=config.outputs.index)
        except RunStopped as err:
            summary, error = None, error or str(err)
    ordered = [results.get(i) or CaseResult(c, "pending") for i, c in enumerate(cases)]
    return RunResult(
        [r for r in ordered if r.status != "pending"] if interrupted or error else ordered,
        summary,
        folder.root,
        interrupted=int(interrupted) if interrupted is not None else None,
        error=error,
    )
