"""Names of the distributed run, kept importable from their earlier home: see :mod:`volcam.run.distributed`."""

from volcam.run.distributed import (
    DEFAULT_TIMEOUT,
    ENV_TIMEOUT,
    DistEnv,
    Watcher,
    detect,
    process_group,
    rank_device,
    run,
    shard,
    timeout_seconds,
)

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
