"""``volcam compare CONFIG``: which method and layer explain this network best, measured.

The work is :func:`volcam.run.compare.compare`; this module reads the command line and prints.
"""

from __future__ import annotations

import argparse

from volcam.commands.common import add_config_arguments

EPILOG = """\
examples:
  volcam compare configs/demo.yaml
  volcam compare my_unet.yaml --cases 5 --layers model.1.submodule.2 model.2
  volcam compare my_unet.yaml --with-perturbation --output compare/

Writes compare.csv, compare.md, summary.json, plots/energy.png and plots/montage.png, and
prints the table and a recommendation (cam.method and cam.target_layers for the config).
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_config_arguments(parser)
    parser.add_argument("--output", default=None, help="output folder (default: <outputs.dir>/compare)")
    parser.add_argument("--cases", type=int, default=3, help="cases to compare on, covering every class (default 3)")
    parser.add_argument(
        "--methods", nargs="+", default=None, metavar="NAME", help="methods (default: every gradient method)"
    )
    parser.add_argument(
        "--layers", nargs="+", default=None, metavar="LAYER", help="layers (default: bottleneck and decoder stages)"
    )
    parser.add_argument("--with-perturbation", action="store_true", help="also Score-CAM and Ablation-CAM (slow)")
    parser.add_argument("--steps", type=int, default=10, help="deletion/insertion steps (default 10)")
    parser.add_argument("--no-randomisation", action="store_true", help="skip the randomisation check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the randomisation and of the curves")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")


def main(args: argparse.Namespace) -> int:
    from volcam.commands.common import say, warn
    from volcam.run.compare import CompareOptions, compare
    from volcam.run.config import load_config

    options = CompareOptions(
        output=args.output,
        cases=args.cases,
        methods=tuple(args.methods) if args.methods else None,
        layers=tuple(args.layers) if args.layers else None,
        with_perturbation=args.with_perturbation,
        steps=args.steps,
        randomisation=not args.no_randomisation,
        seed=args.seed,
    )
    config = load_config(args.config, args.override, allow_eval=not args.no_eval, python_path=args.python_path)
    result = compare(config, options, say=(lambda line: None) if args.quiet else say, warn=warn)
    return 0 if result.recommendation is not None else 1
