"""``volcam demo``: synthetic dataset, a small 3D U-Net trained on the CPU, and its CAMs."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write a small synthetic CT-like NIfTI dataset (two kinds of lesions, oblique LPS-like "
        "geometry), train a small MONAI 3D U-Net on it on the CPU (about a minute), save the "
        "checkpoint and the config, and explain the held-out cases with `volcam run`. No download."
    )
    parser.add_argument("--output", metavar="DIR", default="demo-output", help="demo folder (default: demo-output)")
    parser.add_argument("--steps", type=int, default=250, help="training steps (default: 250)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=150.0,
        help="stop training after this many seconds, whatever the steps (default: 150)",
    )
    parser.add_argument("--train-cases", type=int, default=16, help="training cases (default: 16)")
    parser.add_argument("--test-cases", type=int, default=4, help="held-out cases explained (default: 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")


def main(args: argparse.Namespace) -> int:
    from volcam.demo import run_demo
    from volcam.errors import ConfigError

    for name in ("steps", "train_cases", "test_cases"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}", key=name)
    result = run_demo(
        args.output,
        steps=args.steps,
        max_seconds=args.max_seconds,
        n_train=args.train_cases,
        n_test=args.test_cases,
        seed=args.seed,
        quiet=args.quiet,
        log=print,
    )
    return int(result["exit_status"])
