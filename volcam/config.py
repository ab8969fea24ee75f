"""Names of the run configuration, kept importable from their earlier home.

See :mod:`volcam.run.config` (loading, validation), :mod:`volcam.run.schema` (the keys),
:mod:`volcam.run.checkpoint` and :mod:`volcam.run.cases`.
"""

from __future__ import annotations

from volcam.run.cases import Case, list_cases
from volcam.run.checkpoint import extract_state_dict, load_checkpoint
from volcam.run.config import RunConfig, load_config, parse_override, resolve_device

__all__ = [
    "Case",
    "RunConfig",
    "load_config",
    "parse_override",
    "load_checkpoint",
    "extract_state_dict",
    "list_cases",
    "resolve_device",
]
