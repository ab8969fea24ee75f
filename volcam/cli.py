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
    "run": ("volcam.commands.run", "explain every case of a NIfTI dataset described by a config"),
    "layers": ("volcam.commands.layers", "list the modules of a config's network with their output shapes"),
    "demo": ("volcam.commands.demo", "make a small synthetic dataset, train a small 3D U-Net, explain it"),
    "evaluate": ("volcam.commands.evaluate", "localisation, faithfulness and sanity checks of CAMs"),
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_main", None) is None:
        parser.print_help()
        return 2
    from volcam.errors import VolcamError

    try:
        return int(args._main(args) or 0)
    except VolcamError as err:
        print(f"volcam {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"volcam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
