"""``volcam run``: CAMs for every case of a dataset described by a config.

- :mod:`~volcam.run.schema` and :mod:`~volcam.run.settings`: the keys of a config and their checks;
- :mod:`~volcam.run.config`: loading and validation (:func:`load_config`, :class:`RunConfig`);
- :mod:`~volcam.run.checkpoint`: weights in the usual layouts, loaded safely;
- :mod:`~volcam.run.cases`: listing and loading cases;
- :mod:`~volcam.run.runner`: one case, explained and taken back to the scan;
- :mod:`~volcam.run.export`: one case's files;
- :mod:`~volcam.run.provenance`, :mod:`~volcam.run.plan`, :mod:`~volcam.run.outdir`: what made a
  case, what a rerun skips, and an output folder that is locked, swapped atomically and never
  loses a user's files;
- :mod:`~volcam.run.loop` and :mod:`~volcam.run.distributed`: the dataset loop in one process
  and under ``torchrun``; :mod:`~volcam.run.summary`: the table and the end of a run;
- :mod:`~volcam.run.evaluate`: ``volcam evaluate`` as a library function.
"""

from volcam.run.config import RunConfig, load_config
from volcam.run.loop import run
from volcam.run.summary import RunResult

__all__ = ["run", "RunResult", "RunConfig", "load_config"]
