"""``volcam run`` over several processes: ``torchrun`` on one node, ``srun`` + ``torchrun`` on a cluster.

The same command runs unchanged under the launcher::

    torchrun --nproc_per_node=4 -m volcam run config.yaml

``volcam run`` sees torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; :func:`detect`) and hands over to
:func:`run`, which

- joins the process group (``nccl`` when the config's device is CUDA, each process on GPU
  ``LOCAL_RANK``; ``gloo`` on the CPU) with a timeout (:data:`ENV_TIMEOUT`);
- lets rank 0 list the cases and find those already complete (resume works whichever rank
  wrote them), and broadcasts that list;
- shares the cases still to do among the ranks with torch's ``DistributedSampler``
  (:func:`shard`), without its padding, so every case is processed by exactly one rank;
- runs :func:`volcam.run.loop.run_cases` on each rank's share: a case that fails is
  recorded and the rank goes on, as in a single-process run; each case record names the
  rank and host that wrote it;
- shows one progress bar and one log line per case, on rank 0 only: ranks report their
  cases, and a heartbeat, through the process group's key-value store;
- has rank 0 merge the ranks' summary rows into one ``summary.csv`` once every rank is done.

The ranks' summary rows travel through the store too, so rank 0 never depends on another
node's files appearing in time. No collective waits for the end of the work: rank 0 polls
the store, so an uneven split of long cases cannot run into the collective timeout.

A rank that dies makes the launcher end the others (torchrun does so at once; they print
why and exit). Should a rank disappear without the launcher noticing (a lost node), rank 0
stops waiting for it after :data:`ENV_TIMEOUT` seconds without a heartbeat and fails with a
:class:`~volcam.errors.DistributedError` naming it. Completed cases are kept either way:
rerunning the same command does the rest.

All ranks must see the same output folder (a shared file system across nodes).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch

from volcam.errors import DistributedError, VolcamError
from volcam.run.store import DEFAULT_TIMEOUT, ENV_TIMEOUT, Reporter, Watcher, stop_on_sigterm, wait_for_siblings

if TYPE_CHECKING:
    from volcam.run.summary import RunResult

log = logging.getLogger(__name__)

__all__ = [
    "ENV_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "DistEnv",
    "detect",
    "timeout_seconds",
    "shard",
    "rank_device",
    "process_group",
    "Watcher",
    "run",
]


_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_STORE_PREFIX = "volcam"


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a distributed run, as the launcher described it."""

    rank: int
    world_size: int
    local_rank: int


def _env_int(env: Mapping[str, str], name: str) -> int:
    text = env[name]
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"{name} must be a whole number (torchrun sets it), not {text!r}") from None


def detect(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """This process's place in a run started by ``torchrun``, or None outside a launcher.

    A world of one process (``torchrun --nproc_per_node=1``) is None too: it runs like a
    plain ``volcam run``.

    Raises:
        DistributedError: ``WORLD_SIZE`` or ``RANK`` is set but the rest of torchrun's
            environment is missing or malformed.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return None
    missing = [name for name in _LAUNCHER_VARS if not env.get(name)]
    if missing:
        raise DistributedError(
            f"a run over several processes needs {', '.join(_LAUNCHER_VARS)} in the environment "
            f"(start it with torchrun), not {', '.join(missing)} missing"
        )
    rank, world, local = (_env_int(env, n) for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    _env_int(env, "MASTER_PORT")
    if world < 1:
        raise DistributedError(f"WORLD_SIZE must be at least 1, not {world}")
    if not 0 <= rank < world:
        raise DistributedError(f"RANK must be in [0, WORLD_SIZE={world}), not {rank}")
    if local < 0:
        raise DistributedError(f"LOCAL_RANK must be at least 0, not {local}")
    if world == 1:
        return None
    return DistEnv(rank=rank, world_size=world, local_rank=local)


def timeout_seconds(environ: Mapping[str, str] | None = None) -> float:
    """Seconds from :data:`ENV_TIMEOUT` (default :data:`DEFAULT_TIMEOUT`)."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_TIMEOUT, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise DistributedError(f"{ENV_TIMEOUT} must be a positive number of seconds, not {text!r}")
    return value


def shard(n: int, rank: int, world_size: int) -> list[int]:
    """The indices of ``range(n)`` that ``rank`` processes: ``rank, rank + world_size, ...``.

    They come from :class:`torch.utils.data.distributed.DistributedSampler` (no shuffling).
    That sampler gives every rank the same number of indices by repeating the first ones at
    the end of the short shares; those repeats are dropped here, so every index belongs to
    exactly one rank (and ranks beyond ``n`` get none).
    """
    from torch.utils.data.distributed import DistributedSampler

    if n <= 0:
        return []
    sampler: DistributedSampler[int] = DistributedSampler(
        range(n),  # type: ignore[arg-type]  # any sized sequence works
        num_replicas=world_size,
        rank=rank,
        shuffle=False,
        drop_last=False,
    )
    own = len(range(rank, n, world_size))  # the padded repeats are the last entries of a share
    return list(sampler)[:own]


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """The device of the process with ``local_rank``: GPU ``local_rank`` when ``device`` is CUDA.

    Raises:
        DistributedError: there are fewer visible GPUs than processes on this node.
    """
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DistributedError(
            f"LOCAL_RANK must be below the number of GPUs this process sees ({count}), not {local_rank}: "
            f"start at most {count} process(es) per node (torchrun --nproc_per_node={count}) "
            "and let each see all of the node's GPUs, or set device: cpu"
        )
    return torch.device("cuda", local_rank)


@contextmanager
def process_group(device: torch.device, timeout: float):
    """Join the process group described by torchrun's environment; leave it on exit.

    The backend is ``nccl`` on CUDA (after selecting ``device``), ``gloo`` otherwise;
    collectives give up after ``timeout`` seconds. Yields the group's key-value store
    (prefixed, so volcam's keys cannot clash with torch's).
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedError("torch must be built with torch.distributed to run under torchrun, not without it")
    if dist.is_initialized():
        raise DistributedError(
            "volcam run under torchrun must start its own process group, not find one already initialised: "
            "call volcam.pipeline.run before torch.distributed.init_process_group, or in a separate command"
        )
    cuda = device.type == "cuda"
    backend = "nccl" if cuda else "gloo"
    limit = timedelta(seconds=timeout)
    if cuda:
        torch.cuda.set_device(device)
    # the rendezvous store of torchrun's environment, kept to share progress and results
    store, rank, world = next(dist.rendezvous("env://", timeout=limit))
    dist.init_process_group(
        backend, store=store, rank=rank, world_size=world, timeout=limit, device_id=device if cuda else None
    )
    try:
        yield dist.PrefixStore(_STORE_PREFIX, store)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- the run


def run(
    config: Any,
    *,
    overrides: Sequence[str] = (),
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    retry_failed: bool = False,
    quiet: bool = False,
    allow_eval: bool = True,
    python_path: Sequence[str] = (),
    env: DistEnv | None = None,
    on_line: Callable[[str], None] | None = None,
) -> RunResult | None:
    """:func:`volcam.run.loop.run` for one rank of a run started by torchrun.

    Rank 0 holds the output folder's lock, plans the run (resume, refusals) and writes the
    summary; it returns the run's :class:`~volcam.run.summary.RunResult`. The other ranks
    return None once their share is done.
    """
    import torch.distributed as dist

    from volcam.run.config import RunConfig, load_config
    from volcam.run.loop import CaseWriter, chosen_note, method_note, run_cases
    from volcam.run.outdir import OutputFolder
    from volcam.run.plan import check_names, plan_run
    from volcam.run.provenance import map_provenance
    from volcam.run.runner import make_runner
    from volcam.run.summary import CaseResult, RunResult, case_line, finish_run

    say = on_line or (lambda text: log.info("%s", text))
    env = env or detect()
    if env is None:
        raise DistributedError("volcam.run.distributed.run must be started by torchrun, not without its environment")
    rank, world = env.rank, env.world_size
    lead = rank == 0
    # errors before the group is joined are reported by every rank that meets them
    timeout = timeout_seconds()
    if not isinstance(config, RunConfig):
        config = load_config(config, overrides, allow_eval=allow_eval, python_path=python_path)
    if output is not None:
        config = config.with_output_dir(output)
    asked = config.device
    device = rank_device(asked, env.local_rank)
    if lead and asked.type == "cuda" and asked.index not in (None, 0):
        warnings.warn(
            f"device {str(asked)!r} is replaced by cuda:LOCAL_RANK (one GPU per process) under torchrun", stacklevel=2
        )
    config = config.with_device(device)
    folder = OutputFolder(config.outputs.dir)

    with stop_on_sigterm(rank), process_group(device, timeout) as store:
        reporter = Reporter(store, rank, interval=max(0.05, min(5.0, timeout / 10)))
        watcher = bar = None
        locked = False
        try:
            reporter.announce()
            runner = make_runner(config)  # every rank, in parallel
            maps = map_provenance(runner.config, device=runner.device, checkpoint=runner.checkpoint_record())
            # rank 0 lists the cases and plans the run: one answer for every rank
            plan: list[Any] = [None]
            if lead:
                try:
                    cases = config.list_cases()
                    check_names(cases)
                    folder.acquire()
                    locked = True
                    decided = plan_run(
                        folder, cases, config, runner, maps, overwrite=overwrite, retry_failed=retry_failed
                    )
                    known = {i: (r.status, r.rows, r.error) for i, r in decided.decided.items()}
                    plan = [(list(cases), decided.todo, known)]
                except VolcamError as err:
                    failure = err  # raised below, once the other ranks know there is nothing to do
            dist.broadcast_object_list(plan, src=0)
            if plan[0] is None:
                if lead:
                    raise failure
                return None
            cases, todo, known = plan[0]
            mine = [todo[j] for j in shard(len(todo), rank, world)]
            if lead:
                if not quiet:
                    s = config.sliding
                    how = f"sliding windows {list(s.roi_size)}" if s.roi_size else "whole volumes"
                    say(
                        f"volcam run: {len(cases)} case(s) over {world} processes "
                        f"({'nccl, one GPU each' if device.type == 'cuda' else 'gloo, cpu'}), "
                        f"{method_note(runner)} on {runner.layer_names}{chosen_note(runner)}, "
                        f"classes {runner.classes}, {how}, outputs in {folder.root}"
                    )
                from tqdm.auto import tqdm

                bar = tqdm(total=len(cases), unit="case", disable=quiet, file=sys.stderr, dynamic_ncols=True)
                width = len(str(len(cases)))

                def relay(r: int, text: str) -> None:
                    bar.update(1)
                    if not quiet:
                        say(f"[{bar.n:>{width}}/{len(cases)}] {text}  (rank {r})")

                watcher = Watcher(store, world, rank=rank, timeout=timeout, on_line=relay)
                watcher.start()
                for i, (status, rows, error) in sorted(known.items()):  # decided cases are reported by rank 0
                    reporter.publish(case_line(CaseResult(cases[i], status, rows, error=error)))

            writer = CaseWriter(runner, folder, maps, {"rank": rank, "world_size": world, "host": socket.gethostname()})
            results = run_cases(
                writer,
                cases,
                mine,
                num_workers=config.data.num_workers,
                on_result=lambda i, res: reporter.publish(case_line(res)),
            )
            own = [row for i in sorted(results) for row in results[i].rows]
            if lead:
                own += [row for _, (_, rows, _) in sorted(known.items()) for row in rows]
            reporter.finish(own)
            if not lead or watcher is None:
                return None

            while watcher.is_alive():
                watcher.join(0.5)  # short joins keep the process responsive to signals
            if watcher.error is not None:
                raise watcher.error
        finally:
            reporter.stop()
            if watcher is not None:
                watcher.stop()
            if bar is not None:
                bar.close()
            if locked:
                folder.release()
                folder.tidy()

    # rank 0: one summary, in the order of the cases
    order = {c.id: i for i, c in enumerate(cases)}
    collected = watcher.rows if watcher is not None else {}
    rows = sorted(
        (row for r in range(world) for row in collected.get(r, [])),
        key=lambda row: (order.get(row["case"], len(order)), int(row["class"])),
    )
    summary = finish_run(folder.root, rows, index=config.outputs.index)
    by_case: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row)
    outcome = []
    for c in cases:
        case_rows = by_case.get(c.id, [])
        statuses = {r["status"] for r in case_rows}
        status = "failed" if "failed" in statuses or not case_rows else case_rows[0]["status"]
        error = next((r.get("error", "") for r in case_rows if r["status"] == "failed"), "")
        outcome.append(CaseResult(c, status, case_rows, error=error))
    result = RunResult(outcome, summary, folder.root, processes=world)
    if result.failed:
        wait_for_siblings(watcher.processes if watcher is not None else {}, rank)
    return result
