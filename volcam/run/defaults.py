"""The method and layer ``volcam run`` uses when the config names none.

Chosen by measurement (``scripts/choose_default.py``, results in ``scripts/results`` and on the
docs page "Choosing a method and layer"). On UNet, SegResNet, DynUNet and BasicUNet networks
trained on the demo's data, the last decoder stage was the best layer rule for every method
(most heat inside the predicted structure, peak inside it in 86% of the maps for HiResCAM,
LayerCAM and EigenGradCAM); the bottleneck is too coarse for small structures. At that stage
Grad-CAM's channel-averaged weights gave all-zero maps in 29% of the cases. Among the three,
LayerCAM's worst map was the least bad (0.4 times a random map's energy; the others' 0), and
on the less-trained networks of the tests it was the only one with its peak inside every
prediction, except where its map was all zero (no positive gradient met a positive activation):
there HiResCAM's was not, and pointed right. Hence LayerCAM, with HiResCAM as
``cam.fallback`` for a class whose LayerCAM map is all zero.

The last decoder stage is found by :func:`volcam.layers.candidate_layers` on a zero input:
the last module of the finest decoder stage that still has more channels than the network
has output classes (the output block itself is never chosen).
"""

from __future__ import annotations

from typing import Any

from volcam.errors import ConfigError

__all__ = ["DEFAULT_METHOD", "DEFAULT_FALLBACK", "ChosenLayer", "choose_layer"]

#: ``cam.method`` when the config leaves it out
DEFAULT_METHOD = "layercam"
#: ``cam.fallback`` then: the method computed for a class whose LayerCAM map is all zero
DEFAULT_FALLBACK = "hirescam"


class ChosenLayer:
    """The layer chosen for a network: its dotted ``name`` and the ``reason`` in a few words."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason

    def __repr__(self) -> str:
        return f"ChosenLayer({self.name!r}, {self.reason!r})"


def choose_layer(model: Any, example_input: Any, out_channels: int | None = None) -> ChosenLayer:
    """The default target layer of ``model``: its last decoder stage (see the module docstring).

    Args:
        model: the network (left as it was).
        example_input: ``[1, C, *S]`` the network accepts.
        out_channels: the number of output classes, when known (stages with no more channels
            than that are passed over); by default read from one forward pass.

    Raises:
        ConfigError: the network has no decoder stage volcam can find (``cam.target_layers``
            must then be given).
    """
    import torch

    from volcam.layers import candidate_layers

    with torch.no_grad():
        found = candidate_layers(model, example_input)
    if out_channels is None:
        with torch.no_grad():
            out = model(example_input)
        out_channels = int(out.shape[1]) if isinstance(out, torch.Tensor) and out.ndim >= 2 else 0
    decoders = [c for c in found if c.role == "decoder" and len(c.output_shape) > 1 and c.output_shape[1] > 1]
    wide = [c for c in decoders if c.output_shape[1] > out_channels]
    if wide:
        c, what = wide[-1], "the last decoder stage"
        if c is not decoders[-1]:
            what = f"the last decoder stage with more channels than the {out_channels} classes"
    elif decoders:
        c, what = decoders[-1], "the last decoder stage"
    else:
        names = ", ".join(f"{c.name} ({c.role})" for c in found) or "none"
        raise ConfigError(
            "cam.target_layers is required for this network: volcam finds no decoder stage to choose "
            f"(candidates: {names}); `volcam layers CONFIG` lists its modules",
            key="cam.target_layers",
        )
    scale = "x".join(f"{s:g}" for s in dict.fromkeys(c.scale)) if c.scale else "?"
    return ChosenLayer(c.name, f"{what}, {c.output_shape[1]} channels at {scale} of the input's resolution")
