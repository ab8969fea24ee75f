"""The output folder of a run: a lock, staging, atomic case replacement, and nothing of a
user's ever deleted.

Layout::

    <dir>/summary.csv              the run's table
    <dir>/<case>/volcam-case.json  a case folder, marked by its record
    <dir>/.volcam/lock             held while a run writes here (pid, host, start time)
    <dir>/.volcam/staging/         cases being written; replaced case folders on their way out
    <dir>/.volcam/failed.json      cases a killed worker could not finish (not retried by default)

A case folder is replaced in three renames: the old folder is moved aside into the staging
folder, the new one is moved in, the old one is deleted. :meth:`OutputFolder.recover` finishes
or undoes a replacement that a kill interrupted, so every case folder is complete (old or new).
volcam deletes only folders that carry its record; files a user put into a case folder are
moved into its replacement.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from volcam.errors import VolcamError

__all__ = ["OutputFolder", "RunFolderError", "LockError", "RECORD_NAME", "RUN_ENTRIES", "LOCK_TOKEN_ENV"]

log = logging.getLogger(__name__)

RECORD_NAME = "volcam-case.json"
STATE = ".volcam"
#: names at the top of an output folder that belong to the run, not to a case
RUN_ENTRIES = ("summary.csv", "index.html", STATE, "evaluation", "compare")
#: environment variable through which a supervising process hands its lock to the run it starts
LOCK_TOKEN_ENV = "VOLCAM_LOCK_TOKEN"


class RunFolderError(VolcamError, OSError):
    """The output folder cannot be used: it is locked by another run, holds folders volcam did
    not write where cases go, or cannot be written."""


class LockError(RunFolderError):
    """Another run holds the output folder's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # ended but not yet reaped
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


class OutputFolder:
    """The output folder of one run (see the module docstring).

    Args:
        root: the folder (created on :meth:`lock`).
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.state = self.root / STATE
        self.staging = self.state / "staging"
        self.token: str | None = None

    # ------------------------------------------------------------------ the lock
    @property
    def lock_path(self) -> Path:
        return self.state / "lock"

    def read_lock(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.lock_path.read_text()))
        except (OSError, ValueError):
            return None

    def acquire(self, *, token: str | None = None, command: str = "volcam run") -> str:
        """Take the lock, or join the one a supervising process holds (``token``).

        A lock left by a process that is gone (same host, pid not running) is taken over, with
        a log message. Raises :class:`LockError` when a live run holds it.
        """
        try:
            self.state.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunFolderError(f"the output folder '{self.root}' must be writable, not ({err.strerror})") from err
        if token is not None:
            held = self.read_lock()
            if held is not None and held.get("token") == token:
                self.token = token
                return token
        new = secrets.token_hex(8)
        content = json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "token": new, "command": command}
        )
        for _ in range(3):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self.read_lock()
                if held is None:  # being written right now, or unreadable: look again
                    time.sleep(0.1)
                    held = self.read_lock()
                if held is not None and held.get("host") == socket.gethostname() and not _alive(int(held["pid"])):
                    log.warning(
                        "the output folder '%s' was locked by process %s, which is gone; taking the lock over",
                        self.root,
                        held["pid"],
                    )
                    self.lock_path.unlink(missing_ok=True)
                    continue
                who = "an unreadable lock" if held is None else f"process {held.get('pid')} on {held.get('host')}"
                since = "" if held is None else time.strftime(" since %H:%M:%S", time.localtime(held.get("started", 0)))
                raise LockError(
                    f"the output folder '{self.root}' is in use by another run ({who}{since}); wait for it to end "
                    f"or choose another output folder. If no run is using it, delete '{self.lock_path}'"
                ) from None
            except OSError as err:
                raise RunFolderError(f"cannot create the lock file '{self.lock_path}': {err.strerror}") from err
            with os.fdopen(fd, "w") as f:
                f.write(content)
            self.token = new
            return new
        raise LockError(f"cannot take the lock of the output folder '{self.root}'")

    def release(self) -> None:
        """Give the lock back (only the process that took it does)."""
        held = self.read_lock()
        if held is not None and held.get("token") == self.token and held.get("pid") == os.getpid():
            self.lock_path.unlink(missing_ok=True)
        self.token = None

    @contextlib.contextmanager
    def locked(self, *, token: str | None = None) -> Iterator[OutputFolder]:
        self.acquire(token=token)
        try:
            yield self
        finally:
            self.release()
            self.tidy()

    # ------------------------------------------------------------------ case folders
    def case_dir(self, case_id: str) -> Path:
        return self.root / case_id

    def status(self, case_id: str) -> str:
        """``"absent"``, ``"case"`` (a folder with a volcam record) or ``"foreign"`` (anything else)."""
        path = self.case_dir(case_id)
        if not os.path.lexists(path):
            return "absent"
        if path.is_dir() and not path.is_symlink() and (path / RECORD_NAME).is_file():
            return "case"
        return "foreign"

    def read_record(self, case_id: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.case_dir(case_id) / RECORD_NAME).read_text()))
        except (OSError, ValueError):
            return None

    def stage(self, case_id: str) -> Path:
        """A new, empty staging folder for a case."""
        path = self.staging / f"{case_id}.{os.getpid()}.new"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def discard(self, stage: Path) -> None:
        shutil.rmtree(stage, ignore_errors=True)

    def commit(self, case_id: str, stage: Path) -> Path:
        """Put a complete staged case in place of ``<root>/<case_id>`` (see the module docstring)."""
        final = self.case_dir(case_id)
        status = self.status(case_id)
        if status == "foreign":
            raise RunFolderError(
                f"'{final}' was not written by volcam (it has no {RECORD_NAME}); volcam does not replace it. "
                "Move it away or choose another output folder"
            )
        if status == "absent":
            os.replace(stage, final)
            return final
        record = self.read_record(case_id) or {}
        ours = set(record.get("files", [])) | {RECORD_NAME}
        self._carry_user_files(final, stage, ours)
        aside = self.staging / f"{case_id}.{os.getpid()}.old"
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(final, aside)
        os.replace(stage, final)
        shutil.rmtree(aside, ignore_errors=True)
        return final

    @staticmethod
    def _carry_user_files(old: Path, new: Path, ours: set[str]) -> None:
        """Move files of ``old`` that volcam did not write (and ``new`` does not have) into ``new``."""
        for path in sorted(old.rglob("*")):
            if path.is_dir() and not path.is_symlink():
                continue
            rel = path.relative_to(old).as_posix()
            if rel in ours or (new / rel).exists() or re.match(r"\.[^/]*\.tmp", path.name):
                continue
            (new / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, new / rel)
            log.info("kept '%s' (not written by volcam) in the new case folder", old / rel)

    # ------------------------------------------------------------------ recovery and tidying
    def recover(self) -> list[str]:
        """Finish or undo case replacements that a kill interrupted, and remove staging folders
        and temporary files of runs that are gone. Call it while holding the lock.

        Returns:
            a line per action, for the log.
        """
        done: list[str] = []
        if self.staging.is_dir():
            for entry in sorted(self.staging.iterdir()):
                m = re.fullmatch(r"(.+)\.(\d+)\.(new|old)", entry.name)
                if m is None:
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                    continue
                case_id, kind = m.group(1), m.group(3)
                final = self.case_dir(case_id)
                if kind == "old":
                    if os.path.lexists(final):
                        shutil.rmtree(entry, ignore_errors=True)
                        done.append(f"finished replacing {case_id}")
                    else:
                        os.replace(entry, final)
                        done.append(f"restored the earlier outputs of {case_id} (their replacement was interrupted)")
                else:
                    shutil.rmtree(entry, ignore_errors=True)
                    done.append(f"removed the unfinished outputs of {case_id}")
        for tmp in self.root.glob(".*.tmp*") if self.root.is_dir() else ():
            m = re.match(r"\..+\.(\d+)\.tmp", tmp.name)
            if m is None or not _alive(int(m.group(1))) or int(m.group(1)) == os.getpid():
                tmp.unlink(missing_ok=True)
        return done

    def tidy(self) -> None:
        """Remove the state folder's empty parts (after a run)."""
        for path in (self.staging, self.state):
            with contextlib.suppress(OSError):
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()

    # ------------------------------------------------------------------ killed cases
    @property
    def failed_path(self) -> Path:
        return self.state / "failed.json"

    def killed(self) -> dict[str, dict[str, Any]]:
        """``{case: entry}`` of cases whose process was killed (see :meth:`record_killed`)."""
        try:
            return dict(json.loads(self.failed_path.read_text()))
        except (OSError, ValueError):
            return {}

    def record_killed(self, case_id: str, entry: dict[str, Any]) -> None:
        entries = self.killed()
        entries[case_id] = entry
        self._write_json(self.failed_path, entries)

    def forget_killed(self, case_ids: set[str]) -> None:
        entries = {k: v for k, v in self.killed().items() if k not in case_ids}
        if entries:
            self._write_json(self.failed_path, entries)
        else:
            self.failed_path.unlink(missing_ok=True)

    @property
    def progress_path(self) -> Path:
        return self.state / "progress.json"

    def set_progress(self, case_id: str | None) -> None:
        """Note the case this process works on (read by a supervising process after a kill)."""
        if case_id is None:
            self.progress_path.unlink(missing_ok=True)
        else:
            self._write_json(self.progress_path, {"case": case_id, "pid": os.getpid(), "since": time.time()})

    def read_progress(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.progress_path.read_text()))
        except (OSError, ValueError):
            return None

    @staticmethod
    def _write_json(path: Path, content: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(content, indent=1, default=str))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
