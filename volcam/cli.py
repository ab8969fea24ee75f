"""The ``volcam`` command: ``run``, ``layers``, ``demo`` and ``evaluate``.

Each sub-command lives in its own module and exposes ``configure(parser)`` and
``main(args) -> int``; they are imported only when their command is chosen, so
``volcam --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module, one-line help)
COMMANDS = {
    "run": ("volcam.commands.run", "explain every case of a dataset described by a config"),
    "layers": ("volcam.commands.layers", "list the modules of a config's network with their output shapes"),
    "demo": ("volcam.commands.demo", "make a small synthetic dataset, train a small 3D U-Net, explain it"),
    "evaluate": ("volcam.commands.evaluate", "localisation, faithfulness and sanity checks of CAMs"),
    "compare": ("volcam.commands.compare", "compare methods and layers on a few cases and recommend one"),
    "view": ("volcam.commands.view", "(re)build the HTML viewer of a case (or every case of a run) from its files"),
    "nnunet": ("volcam.commands.nnunet", "explain a trained nnU-Net v2 model (results folder) on a folder of scans"),
}


def build_parser() -> argparse.ArgumentParser:
    from volcam import __version__

    parser = argparse.ArgumentParser(
        prog="volcam",
        description="Class activation maps for 2D and 3D medical segmentation networks.",
    )
    parser.add_argument("--version", action="version", version=f"volcam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(p)
        p.set_defaults(_main=module.main)
    return parser


def _logging(quiet: bool) -> None:
    """volcam's log messages (a lock taken over, a replacement finished) on standard error."""
    import logging

    logger = logging.getLogger("volcam")
    if not any(getattr(h, "_volcam", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._volcam = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see ``volcam run --help``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_main", None) is None:
        parser.print_help()
        return 2
    from volcam.errors import ConfigError, VolcamError

    _logging(bool(getattr(args, "quiet", False)))
    try:
        return int(args._main(args) or 0)
    except ConfigError as err:
        print(f"volcam {args.command}: error: {err}", file=sys.stderr)
        return 2
    except VolcamError as err:  # the run itself cannot go on (3), or the input is wrong (2)
        code = 3 if type(err).__name__ in ("RunStopped", "RunFolderError", "LockError", "DistributedError") else 2
        print(f"volcam {args.command}: error: {err}", file=sys.stderr)
        return code
    except OSError as err:  # the output folder: not writable, full
        print(f"volcam {args.command}: error: {_os_error(err)}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"volcam {args.command}: interrupted", file=sys.stderr)
        return 130


def _os_error(err: OSError) -> str:
    from volcam.errors import VolcamError

    if isinstance(err, VolcamError) or err.filename is None:
        return str(err)
    return f"cannot use '{err.filename}': {err.strerror}"


if __name__ == "__main__":
    sys.exit(main())
