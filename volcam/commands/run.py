"""``volcam run CONFIG``: heat volumes, slice PNGs, figures and a summary for every case."""

from __future__ import annotations

import argparse
import os
from typing import Any

from volcam.commands.common import add_config_arguments, say, warn

EPILOG = """\
examples:
  volcam run configs/demo.yaml
  volcam run my_unet.yaml --override cam.method=hirescam targets.classes=[1,2] --output cams/
  volcam run my_unet.yaml --override sliding_window.roi_size=[96,96,96] device=cuda --quiet
  volcam run config_from_a_colleague.yaml --no-eval

Cases whose outputs are complete and were made the same way are skipped; a case made with
other settings (method, layer, checkpoint, preprocessing, image file, ...) stops the run before
anything is done: --overwrite redoes such cases, or choose another --output. A config is code
($ expressions run Python): --no-eval refuses expressions in configs you did not write.

exit status: 0 every case done (or skipped), 1 some case failed (the summary says why),
2 the config or command line is wrong, 3 the run could not go on (output folder locked, not
writable, full), 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP (finished cases are kept).
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_config_arguments(parser)
    parser.add_argument("--output", metavar="DIR", help="output folder (overrides outputs.dir)")
    parser.add_argument("--overwrite", action="store_true", help="redo every case, also those already complete")
    parser.add_argument(
        "--retry-failed", action="store_true", help="retry cases whose process was killed in an earlier run"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or per-case lines")
    parser.add_argument(
        "--no-supervise",
        action="store_true",
        help="run in this process only (by default a child process does the work, so that a case "
        "killed for lack of memory is recorded and the run goes on)",
    )


def _report(result: Any, quiet: bool) -> int:
    counts = result.counts
    if result.interrupted is not None:
        import signal

        name = signal.Signals(result.interrupted).name
        warn(
            f"volcam run: stopped by {name}; {counts['ok']} case(s) finished in this run are kept "
            f"(summary: {result.summary}); rerun the same command to do the rest"
        )
        return result.exit_code
    if result.error:
        warn(f"volcam run: error: {result.error}")
        return result.exit_code
    if not quiet:
        say(
            f"volcam run: {counts['ok']} done, {counts['skipped']} skipped, {counts['failed']} failed"
            + (f" over {result.processes} processes" if result.processes > 1 else "")
            + f"; summary: {result.summary}"
        )
    failed = result.failed
    if failed:
        warn(
            f"volcam run: {len(failed)} of {len(result.results)} case(s) failed: "
            + ", ".join(r.case.id for r in failed)
            + f" (reasons in {result.summary})"
        )
    return result.exit_code


def main(args: argparse.Namespace) -> int:
    from volcam.run import distributed
    from volcam.run.config import load_config
    from volcam.run.outdir import LOCK_TOKEN_ENV, OutputFolder
    from volcam.run.supervise import CHILD_ENV, supervise

    options = dict(
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
        quiet=args.quiet,
        on_line=say,
    )
    config = load_config(args.config, args.override, allow_eval=not args.no_eval, python_path=args.python_path)
    if args.output is not None:
        config = config.with_output_dir(args.output)
    if distributed.detect() is not None:  # started by torchrun: shard the cases
        result = distributed.run(config, **options)
        return 0 if result is None else _report(result, args.quiet)
    child = os.environ.get(CHILD_ENV) == "1"
    if args.no_supervise or child:
        from volcam.run.loop import run

        token = os.environ.get(LOCK_TOKEN_ENV) if child else None
        return _report(run(config, lock_token=token, **options), args.quiet)
    cases = config.list_cases()
    return supervise(
        OutputFolder(config.outputs.dir),
        _child_argv(args),
        cases=len(cases),
        config_id=config.map_hash(),
        say=say,
        warn=warn,
    )


def _child_argv(args: argparse.Namespace) -> list[str]:
    argv = ["run", str(args.config)]
    if args.override:
        argv += ["--override", *args.override]
    if args.output is not None:
        argv += ["--output", str(args.output)]
    for flag in ("overwrite", "retry_failed", "quiet", "no_eval"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    for folder in args.python_path:
        argv += ["--python-path", str(folder)]
    return argv
