"""How the ranks of a distributed run report to rank 0, and how they end: through the process group's key-value
store, so that rank 0 never depends on another node's files appearing in time.

Each rank publishes one line per case, a heartbeat and, at its end, its summary rows
(:class:`Reporter`); rank 0 relays the lines and collects the rows (:class:`Watcher`), and
declares a rank lost when its heartbeat stops for longer than the timeout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from volcam.errors import DistributedError

__all__ = ["Reporter", "Watcher", "ENV_TIMEOUT", "DEFAULT_TIMEOUT", "stop_on_sigterm", "wait_for_siblings"]

#: environment variable: seconds a collective may wait, and a rank may stay silent, before
#: the run fails (default :data:`DEFAULT_TIMEOUT`)
ENV_TIMEOUT = "VOLCAM_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0


class Reporter:
    """A rank's side of the store: its case lines, a heartbeat, its summary rows."""

    def __init__(self, store, rank: int, interval: float):
        self.store = store
        self.rank = rank
        self.sent = 0
        self._stop = threading.Event()
        self._beat = threading.Thread(
            target=self._beat_loop, args=(interval,), daemon=True, name=f"volcam-heartbeat-{rank}"
        )

    def announce(self) -> None:
        """Create this rank's keys (before the first collective, so rank 0 finds them)."""
        self.store.set(f"count/{self.rank}", "0")
        self.store.set(f"host/{self.rank}", socket.gethostname())
        self.store.set(f"pid/{self.rank}", str(os.getpid()))
        self.store.add(f"beat/{self.rank}", 1)
        self._beat.start()

    def _beat_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.store.add(f"beat/{self.rank}", 1)
            except Exception:  # the store is gone; the main thread finds out on its next call
                return

    def publish(self, text: str) -> None:
        try:
            self.store.set(f"line/{self.rank}/{self.sent}", text)
            self.store.set(f"count/{self.rank}", str(self.sent + 1))
        except Exception as err:
            raise _lost_coordinator(err) from err
        self.sent += 1

    def finish(self, rows: list[dict]) -> None:
        try:
            self.store.set(f"rows/{self.rank}", json.dumps(rows, default=str))
            self.store.set(f"finished/{self.rank}", "1")
        except Exception as err:
            raise _lost_coordinator(err) from err

    def stop(self) -> None:
        self._stop.set()


def _lost_coordinator(err: BaseException) -> DistributedError:
    return DistributedError(
        "rank 0 must stay reachable until every rank is done, not gone "
        f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}); "
        "completed cases are kept: rerun the same command to do the rest"
    )


class Watcher(threading.Thread):
    """Rank 0's view of every rank: relays their case lines, watches their heartbeats.

    Runs in a thread while rank 0 works on its own cases and ends when every rank has
    finished (its rows are then in :attr:`rows`), or with :attr:`error` set when a rank
    stayed silent (no heartbeat) for ``timeout`` seconds.

    Args:
        store: the store every rank reports to.
        world_size, rank: the run's size and the watching rank (never considered silent).
        timeout: seconds of silence after which a rank is declared lost.
        on_line: called with ``(rank, text)`` for each case line, in arrival order.
        poll: seconds between two looks at the store.
        clock: monotonic clock (seconds).
    """

    def __init__(
        self,
        store,
        world_size: int,
        *,
        rank: int = 0,
        timeout: float = DEFAULT_TIMEOUT,
        on_line: Callable[[int, str], None] | None = None,
        poll: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(daemon=True, name="volcam-watcher")
        self.store = store
        self.world_size = world_size
        self.rank = rank
        self.timeout = timeout
        self.on_line = on_line or (lambda r, text: None)
        self.poll_interval = poll
        self.clock = clock
        self.error: BaseException | None = None
        self.rows: dict[int, list[dict]] = {}
        self.processes: dict[int, tuple[str, int]] = {}  # rank -> (host, pid), for the finished ranks
        self._seen = [0] * world_size
        self._beats = [-1] * world_size
        self._heard = [clock()] * world_size
        self._finished = [False] * world_size
        self._halt = threading.Event()

    def poll(self) -> bool:
        """Look at the store once; True when every rank has finished and all lines are relayed."""
        now = self.clock()
        for r in range(self.world_size):
            if self._finished[r]:
                continue
            finished = self.store.check([f"finished/{r}"])  # checked first: its count is then final
            count = int(self.store.get(f"count/{r}"))
            while self._seen[r] < count:
                self.on_line(r, self.store.get(f"line/{r}/{self._seen[r]}").decode())
                self._seen[r] += 1
            if finished:
                self.rows[r] = json.loads(self.store.get(f"rows/{r}").decode())
                self.processes[r] = (self.store.get(f"host/{r}").decode(), int(self.store.get(f"pid/{r}")))
                self._finished[r] = True
                continue
            beat = int(self.store.add(f"beat/{r}", 0))
            if beat != self._beats[r]:
                self._beats[r], self._heard[r] = beat, now
            elif r != self.rank and now - self._heard[r] > self.timeout:
                host = self.store.get(f"host/{r}").decode()
                raise DistributedError(
                    f"rank {r} (on {host}) must keep running until its cases are done, not stay silent for "
                    f"{now - self._heard[r]:.0f} s ({ENV_TIMEOUT}={self.timeout:g}): its process died or its "
                    "node is unreachable; completed cases are kept: rerun the same command to do the rest"
                )
        return all(self._finished)

    def run(self) -> None:
        try:
            while not self.poll():
                if self._halt.wait(self.poll_interval):
                    return
        except BaseException as err:  # handed to the main thread
            self.error = err

    def stop(self) -> None:
        self._halt.set()


@contextmanager
def stop_on_sigterm(rank: int) -> Iterator[None]:
    """Turn a SIGTERM (torchrun's, when another rank failed; or a scheduler's) into a clear exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        print(
            f"volcam run: rank {rank} stopped by {signal.Signals(signum).name} (torchrun sends it to every "
            "process when one fails: see its report). Completed cases are kept: rerun the same command "
            "to do the rest.",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # ended but not yet collected by its parent (the launcher)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def wait_for_siblings(processes: Mapping[int, tuple[str, int]], rank: int, limit: float = 30.0) -> None:
    """Wait (up to ``limit`` s) until the other ranks on this host have exited.

    torchrun ends every process of a node as soon as one exits with a non-zero status; rank 0
    reporting failed cases waits for the others to end first, so none is killed on its way out.
    """
    host = socket.gethostname()
    pids = [pid for r, (h, pid) in processes.items() if r != rank and h == host]
    deadline = time.monotonic() + limit
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if not _process_gone(pid)]
        if pids:
            time.sleep(0.05)
