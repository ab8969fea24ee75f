"""What the sub-commands share: the config arguments and where their messages go."""

from __future__ import annotations

import argparse
import sys


def add_config_arguments(
    parser: argparse.ArgumentParser, config_help: str = "run configuration (.yaml or .json)"
) -> None:
    """``CONFIG``, ``--override KEY=VALUE ...`` (repeatable), ``--no-eval`` and ``--python-path``."""
    parser.add_argument("config", metavar="CONFIG", help=config_help)
    parser.add_argument(
        "--override",
        "-o",
        metavar="KEY=VALUE",
        action="extend",
        nargs="+",
        default=[],
        help="set config values (dotted keys, YAML values): one or more pairs; may be repeated",
    )
    parser.add_argument(
        "--no-eval",
        action="store_true",
        help="refuse $ expressions, %% macros and _target_ outside MONAI's networks and transforms "
        "(a config is code: use this for configs from others)",
    )
    parser.add_argument(
        "--python-path",
        metavar="DIR",
        action="append",
        default=[],
        help="folder to import custom network modules from (like the config's python_path); may be repeated",
    )


def say(line: str) -> None:
    """A line on standard output, above a progress bar if one is shown."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stdout)


def warn(line: str) -> None:
    """A line on standard error."""
    print(line, file=sys.stderr, flush=True)
