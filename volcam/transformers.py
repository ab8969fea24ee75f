"""Transformer encoders: ``reshape`` helpers and target layers for MONAI ``ViT`` / ``UNETR``
and ``SwinUNETR`` (2D and 3D).

A CAM needs activations ``[B, K, *S]``. Transformer layers give other layouts; each
helper here is a callable for the ``reshape`` argument of every method, and only
rearranges elements (so the engine can apply it to the gradients too):

==========================  ===================================  ====================================
layer output                example (MONAI)                      helper
==========================  ===================================  ====================================
tokens ``[B, N, K]``        ``vit.blocks.11``, ``vit.norm``      :class:`TokenGrid`
tokens + class token        ``ViT(classification=True)``         ``TokenGrid(..., class_token=True)``
channels last ``[B,*S,C]``  ``swinViT.layers2.0.blocks.1``       :class:`ChannelsLast`
windows ``[B*nW, w, C]``    ``swinViT.layers4.0.blocks.1.attn``  :class:`SwinWindows`
``[B, C, *S]``              ``swinViT.layers3.0``, ``encoder2``  none needed
==========================  ===================================  ====================================

:func:`suggested_layers` lists the usual target layers of a ``UNETR``/``ViT`` or a
``SwinUNETR`` with the ``reshape`` each needs::

    layers = volcam.transformers.suggested_layers(net, image_size=(96, 96, 96))
    cam = volcam.GradCAM(net, "vit.norm", reshape=layers["vit.norm"])

Everything is plain torch (no MONAI import): models are recognised by the attributes
MONAI gives them (``vit``, ``feat_size``, ``patch_embedding``, ``swinViT``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from volcam.errors import ArgumentError, ShapeError

__all__ = [
    "TokenGrid",
    "ChannelsLast",
    "SwinWindows",
    "patch_size",
    "vit_reshape",
    "swin_reshape",
    "suggested_layers",
]


def _sizes(name: str, value: int | Sequence[int], ndim: int | None = None) -> tuple[int, ...]:
    sizes = (value,) * (ndim or 1) if isinstance(value, int) else tuple(value)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ArgumentError(f"`{name}` must be positive ints, one per spatial axis, not {value!r}")
    return sizes


class TokenGrid:
    """Tokens ``[B, N, K]`` on a patch grid -> ``[B, K, *grid_size]``.

    Tokens are in row-major (C) order of the grid, as MONAI's patch embeddings make
    them (``conv`` and ``perceptron``); with ``class_token`` the first token is dropped.

    Args:
        grid_size: the patch grid, e.g. ``(6, 6, 6)`` for a 96^3 input and 16^3 patches.
        class_token: whether the sequence starts with a class token.
    """

    def __init__(self, grid_size: Sequence[int], class_token: bool = False):
        self.grid_size = _sizes("grid_size", grid_size)
        self.class_token = bool(class_token)

    def __repr__(self) -> str:
        return f"TokenGrid(grid_size={self.grid_size}, class_token={self.class_token})"

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        n = math.prod(self.grid_size)
        expected = n + int(self.class_token)
        if tokens.ndim != 3 or tokens.shape[1] != expected:
            extra = " plus a class token" if self.class_token else ""
            raise ShapeError(
                f"tokens must be [B, N, K] with N = {expected} ({'x'.join(map(str, self.grid_size))} patches{extra}), "
                f"not {list(tokens.shape)}",
                expected=f"[B, {expected}, K]",
                actual_shape=tuple(tokens.shape),
            )
        if self.class_token:
            tokens = tokens[:, 1:]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid_size)


class ChannelsLast:
    """``[B, *S, C] -> [B, C, *S]`` (Swin transformer blocks work channels-last)."""

    def __repr__(self) -> str:
        return "ChannelsLast()"

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if t.ndim < 3:
            raise ShapeError(
                f"a channels-last tensor must be [B, *S, C], not {list(t.shape)}",
                expected="[B, *S, C]",
                actual_shape=tuple(t.shape),
            )
        return t.movedim(-1, 1)


class SwinWindows:
    """Window-partitioned tokens ``[B * nW, prod(window), C]`` -> ``[B, C, *grid_size]``.

    The inverse of the shifted-window partition of a Swin block's attention: windows
    are put back in place on the padded grid, the cyclic shift is undone and the
    padding cropped. As in MONAI, an axis no longer than the window uses the whole axis
    as window and no shift.

    Args:
        grid_size: the stage's token grid (before padding), e.g. ``(24, 24, 24)``.
        window_size: the window (int or one per axis).
        shift_size: the block's cyclic shift (0 for even blocks, ``window // 2`` for odd
            ones in MONAI).
    """

    def __init__(self, grid_size: Sequence[int], window_size: int | Sequence[int], shift_size: int | Sequence[int] = 0):
        self.grid_size = _sizes("grid_size", grid_size)
        n = len(self.grid_size)
        window = _sizes("window_size", window_size, n)
        shift = (shift_size,) * n if isinstance(shift_size, int) else tuple(shift_size)
        if len(window) != n or len(shift) != n:
            raise ArgumentError(
                f"`window_size` and `shift_size` must have one value per axis of grid_size {self.grid_size}, "
                f"not {window_size!r} and {shift_size!r}"
            )
        self.window_size = tuple(g if g <= w else w for g, w in zip(self.grid_size, window))
        self.shift_size = tuple(0 if g <= w else s for g, w, s in zip(self.grid_size, window, shift))
        self.padded = tuple(math.ceil(g / w) * w for g, w in zip(self.grid_size, self.window_size))

    def __repr__(self) -> str:
        return f"SwinWindows(grid_size={self.grid_size}, window_size={self.window_size}, shift_size={self.shift_size})"

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        n = len(self.grid_size)
        counts = [p // w for p, w in zip(self.padded, self.window_size)]
        per_sample = math.prod(counts)
        size = math.prod(self.window_size)
        if windows.ndim != 3 or windows.shape[1] != size or windows.shape[0] % per_sample:
            raise ShapeError(
                f"windows must be [B * {per_sample}, {size}, C] for grid {list(self.grid_size)} and window "
                f"{list(self.window_size)}, not {list(windows.shape)}",
                expected=f"[B * {per_sample}, {size}, C]",
                actual_shape=tuple(windows.shape),
            )
        b, c = windows.shape[0] // per_sample, windows.shape[2]
        x = windows.reshape(b, *counts, *self.window_size, c)
        # (b, n_1..n_k, w_1..w_k, c) -> (b, n_1, w_1, ..., n_k, w_k, c)
        order = [0] + [i for a in range(n) for i in (1 + a, 1 + n + a)] + [1 + 2 * n]
        x = x.permute(order).reshape(b, *self.padded, c)
        if any(self.shift_size):
            x = torch.roll(x, shifts=self.shift_size, dims=tuple(range(1, n + 1)))
        x = x[(slice(None), *(slice(0, g) for g in self.grid_size))]
        return x.movedim(-1, 1)


# ---------------------------------------------------------------------------------- MONAI models
def _patch_embedding(model: nn.Module) -> nn.Module | None:
    for m in model.modules():
        if hasattr(m, "patch_embeddings") and hasattr(m, "position_embeddings"):
            return m
    return None


def patch_size(model: nn.Module) -> tuple[int, ...]:
    """The patch size of the (first) MONAI ``PatchEmbeddingBlock`` inside ``model``.

    Raises:
        ArgumentError: no patch embedding, or one whose patch size cannot be read.
    """
    block = _patch_embedding(model)
    if block is None:
        raise ArgumentError(
            f"a ViT-style model must contain a MONAI PatchEmbeddingBlock, not none in {type(model).__name__}; "
            "pass `grid_size` yourself"
        )
    emb = block.patch_embeddings
    if isinstance(emb, nn.modules.conv._ConvNd):
        return tuple(emb.kernel_size)
    for m in emb.modules() if isinstance(emb, nn.Module) else ():
        lengths = getattr(m, "axes_lengths", None)
        if lengths:
            sizes = dict(lengths)
            return tuple(sizes[f"p{i + 1}"] for i in range(len(sizes)))
    raise ArgumentError(f"the patch size of {type(emb).__name__} cannot be read; pass `grid_size` yourself")


def _has_class_token(model: nn.Module) -> bool:
    return any(hasattr(m, "cls_token") for m in model.modules())


def vit_reshape(model: nn.Module, image_size: Sequence[int] | None = None) -> TokenGrid:
    """The :class:`TokenGrid` of a MONAI ``ViT`` or ``UNETR`` for inputs of ``image_size``.

    ``UNETR`` knows its grid (``feat_size``); for a ``ViT`` pass ``image_size``. A class
    token (``ViT(classification=True)``) is detected and dropped.
    """
    feat = getattr(model, "feat_size", None)
    if feat is not None and image_size is None:
        grid = tuple(int(f) for f in feat)
    else:
        if image_size is None:
            raise ArgumentError("`image_size` must be given for a ViT (the token grid depends on it), not None")
        patch = patch_size(model)
        image = _sizes("image_size", image_size, len(patch))
        if len(image) != len(patch) or any(i % p for i, p in zip(image, patch)):
            raise ArgumentError(f"`image_size` must be a multiple of the patch size {patch} per axis, not {image}")
        grid = tuple(i // p for i, p in zip(image, patch))
    return TokenGrid(grid, class_token=_has_class_token(model))


def _swin_stage(model: nn.Module, name: str) -> tuple[nn.Module, int, str]:
    """The SwinTransformer, the stage index (0-based) and the rest of the name after the stage."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.startswith("layers") and p[6:].isdigit() and i + 1 < len(parts):
            owner = model.get_submodule(".".join(parts[:i])) if i else model
            if hasattr(owner, "patch_embed"):
                return owner, int(p[6:]) - 1, ".".join(parts[i + 2 :])
    raise ArgumentError(
        f"layer {name!r} must be inside a stage of a MONAI SwinTransformer ('swinViT.layersK.0...'), not elsewhere"
    )


def swin_reshape(model: nn.Module, layer: str, image_size: Sequence[int]) -> Callable | None:
    """The ``reshape`` for a layer of a MONAI ``SwinUNETR`` (or its ``swinViT``).

    - a stage (``swinViT.layersK.0``) gives ``[B, C, *S]``: None;
    - a block (``swinViT.layersK.0.blocks.i``) gives channels-last: :class:`ChannelsLast`;
    - a block's attention (``...blocks.i.attn``) gives windows: :class:`SwinWindows`
      with the stage's grid, the block's window and shift.

    Args:
        model: the SwinUNETR.
        layer: dotted name of the layer.
        image_size: the input's spatial size.
    """
    swin, stage, rest = _swin_stage(model, layer)
    if not rest:
        return None
    parts = rest.split(".")
    if parts[0] != "blocks" or len(parts) < 2:
        raise ArgumentError(f"layer {layer!r} must be a stage, a block or a block's attention of a Swin stage")
    block = model.get_submodule(layer[: len(layer) - len(rest)] + "blocks." + parts[1])
    if len(parts) == 2:
        return ChannelsLast()
    if parts[2:] != ["attn"]:
        raise ArgumentError(f"layer {layer!r} must be a Swin block or its 'attn'; other sub-layers are not supported")
    embed: Any = swin.patch_embed
    patch = tuple(int(p) for p in embed.patch_size)
    image = _sizes("image_size", image_size, len(patch))
    grid = [math.ceil(i / p) for i, p in zip(image, patch)]
    for _ in range(stage):
        grid = [math.ceil(g / 2) for g in grid]
    swin_block: Any = block
    return SwinWindows(grid, tuple(swin_block.window_size), tuple(swin_block.shift_size))


def suggested_layers(model: nn.Module, image_size: Sequence[int] | None = None) -> dict[str, Callable | None]:
    """Usual target layers of a MONAI ``UNETR``/``ViT`` or ``SwinUNETR``, with their ``reshape``.

    UNETR: the ViT hidden states the decoder reads (``vit.blocks.3/6/9``) and the final
    tokens (``vit.norm``), then the convolutional skip and decoder blocks. SwinUNETR:
    the four stages, the last block of each stage, the last block's window attention,
    and the decoder. Later layers are more class-specific, earlier ones sharper.
    """
    names = dict(model.named_modules())
    out: dict[str, Callable | None] = {}
    vit = "vit" in names or (hasattr(model, "blocks") and _patch_embedding(model) is not None)
    if vit:
        prefix = "vit." if "vit" in names else ""
        if hasattr(model, "feat_size") and image_size is None:
            grid = vit_reshape(model)
        else:
            grid = vit_reshape(names["vit"] if prefix else model, image_size)
        for name in [f"{prefix}blocks.3", f"{prefix}blocks.6", f"{prefix}blocks.9", f"{prefix}norm"]:
            if name in names:
                out[name] = grid
        for name in ["encoder2", "encoder3", "encoder4", "decoder5", "decoder4", "decoder3", "decoder2"]:
            if name in names:
                out[name] = None
        return out
    if "swinViT" in names:
        if image_size is None:
            raise ArgumentError("`image_size` must be given for a SwinUNETR (the window grid depends on it), not None")
        for k in range(1, 5):
            stage = f"swinViT.layers{k}.0"
            if stage not in names:
                continue
            out[stage] = None
            last = len(names[stage].blocks) - 1
            out[f"{stage}.blocks.{last}"] = ChannelsLast()
            if k == 4:
                out[f"{stage}.blocks.{last}.attn"] = swin_reshape(model, f"{stage}.blocks.{last}.attn", image_size)
        for name in ["encoder10", "decoder5", "decoder4", "decoder3", "decoder2", "decoder1"]:
            if name in names:
                out[name] = None
        return out
    raise ArgumentError(
        f"`model` must be a MONAI UNETR, ViT or SwinUNETR (or contain one as 'vit' / 'swinViT'), "
        f"not {type(model).__name__}"
    )
