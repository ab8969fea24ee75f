"""A run that survives its worst case: the work happens in a child process, watched by this one.

When the kernel's out-of-memory killer ends a process, it sends SIGKILL: no exception, no
summary, and every rerun would die on the same case first. :func:`supervise` holds the output
folder's lock and starts the run itself in a child process (the same command, marked by an
environment variable). If the child is killed by a signal this process did not send, the case
it was working on (``.volcam/progress.json``) is recorded as failed (``killed``, out of memory?)
and a new child goes on with the rest; a later run does not retry that case unless asked
(``--retry-failed``). SIGINT, SIGTERM and SIGHUP are passed on to the child, which stops
cleanly; if this process itself is killed, the child receives SIGTERM.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from volcam.run.outdir import LOCK_TOKEN_ENV, OutputFolder

__all__ = ["supervise", "CHILD_ENV"]

#: set in the environment of the supervised child
CHILD_ENV = "VOLCAM_RUN_CHILD"

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def supervise(
    folder: OutputFolder,
    argv: Sequence[str],
    *,
    cases: int,
    config_id: str,
    say: Callable[[str], None],
    warn: Callable[[str], None],
) -> int:
    """Run ``python -m volcam <argv>`` as a supervised child until it ends normally.

    Args:
        folder: the run's output folder (its lock is taken here and handed to the child).
        argv: the command line of the child (``["run", CONFIG, ...]``).
        cases: the number of cases (bounds the number of restarts).
        config_id: the hash of the settings that affect the maps, recorded with a killed case.
        say, warn: where to write messages (stdout, stderr).

    Returns:
        the exit status of the run.
    """
    token = folder.acquire()
    sent: list[int] = []
    child: subprocess.Popen[Any] | None = None

    def forward(signum: int, frame: Any) -> None:
        sent.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in _SIGNALS}
    env = {**os.environ, CHILD_ENV: "1", LOCK_TOKEN_ENV: token}
    try:
        for _ in range(cases + 1):
            child = subprocess.Popen(
                [sys.executable, "-m", "volcam", *argv],
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            while True:
                try:
                    code = child.wait()
                    break
                except InterruptedError:  # pragma: no cover
                    continue
            if code >= 0:
                return code
            signum = -code
            if sent:
                return 128 + sent[-1]
            progress = folder.read_progress()
            name = signal.Signals(signum).name
            if progress is None or progress.get("pid") != child.pid:
                warn(f"volcam run: the run's process was killed by {name} outside a case; rerun the same command")
                return 3
            case = str(progress["case"])
            error = f"killed by {name} while explaining this case (out of memory?)"
            folder.record_killed(case, {"error": error, "config": config_id, "when": time.time()})
            folder.set_progress(None)
            warn(
                f"volcam run: case {case} was {error}; it is recorded as failed and the run goes on "
                "(--retry-failed retries it; a sliding window or device: cpu may fit it)"
            )
            say("volcam run: restarting with the remaining cases")
        warn("volcam run: the run's process was killed too many times; rerun the same command")
        return 3
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if child is not None and child.poll() is None:
            child.terminate()
            child.wait()
        folder.release()
        folder.tidy()
