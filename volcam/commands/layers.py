"""``volcam layers CONFIG``: the modules of the config's network with their output shapes.

CONFIG may also be an nnU-Net v2 results folder (or a config with an ``nnunet`` section): its
decoder and encoder stages, transposed convolutions and segmentation heads are listed with their
shapes for one patch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from volcam.commands.common import add_config_arguments


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "run configuration (.yaml or .json), or an nnU-Net v2 results folder")
    parser.add_argument(
        "--input-size",
        metavar="N",
        type=int,
        nargs="+",
        help="spatial size of the dummy input (default: input_size, else sliding_window.roi_size, else 64 per axis)",
    )
    parser.add_argument(
        "--depth", type=int, default=None, help="only list modules whose dotted name has at most this many parts"
    )


def example_input(config, size=None):
    """A zero input ``[1, C, *S]`` for the config's network (see :meth:`RunConfig.example_input`)."""
    return config.example_input(size)


def main(args: argparse.Namespace) -> int:
    from volcam.config import load_config
    from volcam.layers import list_layers

    if Path(args.config).is_dir():
        return _nnunet_layers(_load_nnunet(args.config), args.depth)
    config = load_config(args.config, args.override, allow_eval=not args.no_eval, python_path=args.python_path)
    if config.nnunet is not None:
        from volcam.run.nnunet_runner import loaded_model

        return _nnunet_layers(loaded_model(config), args.depth)
    model = config.build_network(load_weights=False)
    x = example_input(config, args.input_size)
    layers = list_layers(model, x)
    if args.depth is not None:
        layers = [layer for layer in layers if layer.name == "(model)" or layer.name.count(".") < args.depth]
    width = max(len(layer.name) for layer in layers)
    type_width = max(len(layer.type_name) for layer in layers)
    print(f"{type(model).__name__} on an input of shape {list(x.shape)}; target layers are set with cam.target_layers")
    print(f"{'name':<{width}}  {'type':<{type_width}}  {'params':>9}  output")
    for layer in layers:
        print(
            f"{layer.name:<{width}}  {layer.type_name:<{type_width}}  {layer.num_parameters:>9}  {layer.output_shape}"
        )
    return 0


def _load_nnunet(folder: str) -> Any:
    """The model of a results folder, with every fold that has ``checkpoint_final.pth``."""
    from volcam.nnunet import load

    return load(folder, folds=None, device="cpu")


def _nnunet_layers(model: Any, depth: int | None) -> int:
    from volcam.commands.nnunet import print_layers

    print_layers(model, depth=depth)
    print("target layers are set with cam.target_layers (volcam run) or --layer (volcam nnunet)")
    return 0
