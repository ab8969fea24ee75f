"""``volcam run CONFIG``: heat volumes, slice PNGs, figures and a summary for every case."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  volcam run configs/demo.yaml
  volcam run my_unet.yaml --override cam.method=hirescam targets.classes=[1,2] --output cams/
  volcam run my_unet.yaml --override sliding_window.roi_size=[96,96,96] device=cuda --quiet

Overrides use dotted keys and YAML values. Cases whose outputs are complete are skipped;
--overwrite redoes them. Exit status: 0 every case done, 1 some case failed (see the
summary), 2 the config or command line is wrong.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("config", metavar="CONFIG", help="run configuration (.yaml or .json)")
    parser.add_argument(
        "--override",
        "-o",
        metavar="KEY=VALUE",
        action="extend",
        nargs="+",
        default=[],
        help="set a config value (dotted key, YAML value); may be repeated",
    )
    parser.add_argument("--output", metavar="DIR", help="output folder (overrides outputs.dir)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose outputs are complete")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or per-case lines")


def main(args: argparse.Namespace) -> int:
    from volcam.pipeline import run

    return run(args.config, overrides=args.override, output=args.output, overwrite=args.overwrite, quiet=args.quiet)
