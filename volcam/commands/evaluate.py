"""``volcam evaluate CONFIG``: is the map right? Localisation, faithfulness and sanity checks.

The work is :func:`volcam.run.evaluate.evaluate`; this module reads the command line and
prints. See that module for what is computed and written.
"""

from __future__ import annotations

import argparse

SANITY_KINDS = ("cascading", "independent", "label")


def configure(parser) -> None:
    from volcam.commands.common import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument(
        "--output", "--out", dest="out", default=None, help="output folder (default: <outputs.dir>/evaluation)"
    )
    parser.add_argument("--cases", type=int, default=None, metavar="N", help="evaluate only the first N cases")
    parser.add_argument(
        "--against",
        choices=("auto", "label", "prediction"),
        default="auto",
        help="reference mask for localisation: the case's label, the predicted region, or "
        "auto (the label where the case has one; default)",
    )
    parser.add_argument(
        "--level",
        type=float,
        default=None,
        help="threshold the map at this level for IoU/Dice (default: its hottest voxels at the mask's own volume)",
    )
    parser.add_argument("--steps", type=int, default=20, help="deletion/insertion steps (default 20)")
    parser.add_argument(
        "--baseline", default="blur", help="what removed voxels become: blur, min, mean or a number (default blur)"
    )
    parser.add_argument("--sigma", type=float, default=5.0, help="blur baseline width in voxels (default 5)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass for the curves (default 8)")
    parser.add_argument(
        "--sanity",
        nargs="+",
        default=["cascading", "label"],
        choices=(*SANITY_KINDS, "none"),
        metavar="CHECK",
        help="sanity checks to run: cascading, independent, label, or none (default: cascading label)",
    )
    parser.add_argument(
        "--sanity-cases",
        type=int,
        default=1,
        metavar="N",
        help="run the sanity checks on the first N cases (default 1; each check computes one map per layer)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="flag a randomised map whose Spearman correlation with the original is at least this (default 0.5)",
    )
    parser.add_argument("--no-random", action="store_true", help="skip the random-map reference")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random map, tie-breaking and re-initialisation"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")


def _options(args: argparse.Namespace):
    from volcam.errors import ConfigError
    from volcam.run.evaluate import EvaluateOptions

    if "none" in args.sanity and len(args.sanity) > 1:
        raise ConfigError(f"--sanity must be 'none' alone or a list of checks, not {args.sanity}", key="--sanity")
    baseline = args.baseline
    if baseline not in ("blur", "min", "mean"):
        try:
            baseline = float(baseline)
        except ValueError:
            raise ConfigError(
                f"--baseline must be blur, min, mean or a number, not {args.baseline!r}", key="--baseline"
            ) from None
    try:
        return EvaluateOptions(
            output=args.out,
            cases=args.cases,
            against=args.against,
            level=args.level,
            steps=args.steps,
            baseline=baseline,
            sigma=args.sigma,
            batch_size=args.batch_size,
            sanity=() if "none" in args.sanity else tuple(args.sanity),
            sanity_cases=args.sanity_cases,
            threshold=args.threshold,
            random=not args.no_random,
            seed=args.seed,
        )
    except ConfigError as err:  # name the option as it is written on the command line
        key = f"--{str(err.key).replace('_', '-')}"
        raise ConfigError(str(err).replace(f"`{err.key}`", key), key=key) from err


def main(args: argparse.Namespace) -> int:
    from volcam.commands.common import say, warn
    from volcam.run.config import load_config
    from volcam.run.evaluate import evaluate

    options = _options(args)
    config = load_config(args.config, args.override, allow_eval=not args.no_eval, python_path=args.python_path)
    result = evaluate(config, options, say=(lambda line: None) if args.quiet else say, warn=warn)
    return 1 if result.failures else 0
