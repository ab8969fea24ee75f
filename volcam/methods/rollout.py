"""Attention rollout for ViT encoders (MONAI ``ViT``, ``UNETR``), in 2D and 3D.

Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020. Gradient
weighting after Chefer, Gur & Wolf, "Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021.

For every self-attention block l, with attention ``A_l`` ``[B, H, N, N]`` (after the
softmax) and, optionally, its gradient ``G_l = dy/dA_l``:

    F_l = fuse_h(A_l)                      fuse = mean, max or min over the heads
    F_l = fuse_h(relu(G_l * A_l))          with gradient weighting (class-specific)
    F_l[smallest discard_ratio entries] = 0
    Â_l = (F_l + I) / 2, rows rescaled to sum to 1   (the residual path)
    R   = Â_L ... Â_2 Â_1

``R[i, j]`` is how much output token i draws from input token j. The map over the
input patches is the class token's row ``R[0, 1:]`` when the sequence has a class
token, else the mean of the rows (UNETR: every token feeds the decoder). It is put on
the patch grid ``[B, 1, *grid]`` (``res.layer_maps``) and upsampled to the input like
every other map. With identity attention R = I and the map is uniform; with mean fusion
and no gradients, Â_l is exactly the paper's ``0.5 W_att + 0.5 I``.

How the attention is read: MONAI's ``SABlock`` applies ``drop_weights`` (a dropout) to
the softmax attention, so a capture hook on that module gets the attention *with* its
autograd graph (``save_attn`` only keeps a detached copy, which cannot give gradients,
so it is not used and never switched). Blocks built with ``use_flash_attention=True``
never form the matrix; their flag is switched off for the call and restored in
``finally``. In training mode the captured attention includes dropout.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import nn

from volcam.checks import in_range, one_of
from volcam.errors import LayerNotFoundError, ShapeError
from volcam.layers import LayerSpec, resolve_layers
from volcam.methods.base import BaseCAM, LayerContext
from volcam.selectors import Selector
from volcam.transformers import patch_size

_FUSIONS = ("mean", "max", "min")


def is_attention_block(module: nn.Module) -> bool:
    """A MONAI ``SABlock`` (or a module built like one: ``num_heads`` and a ``drop_weights``
    module applied to the softmax attention)."""
    return hasattr(module, "num_heads") and isinstance(getattr(module, "drop_weights", None), nn.Module)


def _drop_weights(block: nn.Module) -> nn.Module:
    module: object = block.drop_weights
    if not isinstance(module, nn.Module):
        raise LayerNotFoundError(f"an attention block must have a `drop_weights` module, not {module!r}")
    return module


class AttentionRollout(BaseCAM):
    """Attention rollout over the self-attention blocks of a ViT encoder.

    Args:
        model: the network (a MONAI ``UNETR``, ``ViT``, or any model containing
            ``SABlock`` modules).
        target_layers: None (every attention block of the model), or modules (names)
            whose attention blocks are rolled out, e.g. ``"vit"``, or
            ``["vit.blocks.0", ..., "vit.blocks.5"]`` to stop half way.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over the heads.
        discard_ratio: fraction in [0, 1) of the smallest fused attention entries of
            each block set to zero before the rollout.
        gradients: weight the attention by its positive gradient of the target score
            (class-specific); without, the rollout does not depend on the target.
        grid_size: the patch grid; None: the input's size divided by the patch size of
            the model's patch embedding.
        class_token: whether the token sequence starts with a class token; None: when
            it has one token more than the grid.
        model_output: selector for the model's output.
        normalize, upsample, aug_smooth: as :class:`~volcam.methods.base.BaseCAM`.
    """

    name = "rollout"
    aliases = ("attentionrollout",)
    attention = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        gradients: bool = False,
        grid_size: Sequence[int] | None = None,
        class_token: bool | None = None,
        model_output: Selector = None,
        normalize: bool = True,
        upsample: bool = True,
        aug_smooth: Any = False,
        class_chunk: int | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, not {type(model).__name__}")
        one_of(head_fusion, _FUSIONS, "head_fusion")
        discard_ratio = in_range(discard_ratio, "discard_ratio", 0.0, 1.0, high_open=True)
        roots = [model] if target_layers is None else [m for _, m in resolve_layers(model, target_layers)]
        inside = {id(m) for r in roots for m in r.modules()}
        blocks = [m for m in model.modules() if id(m) in inside and is_attention_block(m)]
        if not blocks:
            where = "the model" if target_layers is None else f"target_layers {target_layers!r}"
            raise LayerNotFoundError(
                f"attention rollout needs self-attention blocks (MONAI SABlock) in {where}, not none; "
                "use it with ViT encoders (ViT, UNETR), or use a CAM method on a layer"
            )
        super().__init__(
            model,
            [_drop_weights(b) for b in blocks],
            model_output=model_output,
            normalize=normalize,
            upsample=upsample,
            aug_smooth=aug_smooth,
            class_chunk=class_chunk,
        )
        self.blocks = blocks
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)
        self.gradients = bool(gradients)
        self.needs_gradients = self.gradients
        self.class_agnostic = not self.gradients
        self.grid_size = None if grid_size is None else tuple(int(g) for g in grid_size)
        self.class_token = class_token

    def __repr__(self) -> str:
        return (
            f"AttentionRollout(blocks={len(self.blocks)}, head_fusion={self.head_fusion!r}, "
            f"discard_ratio={self.discard_ratio}, gradients={self.gradients})"
        )

    def extra_hooks(self, record: dict[str, Any]) -> AbstractContextManager[None]:
        """Switch off flash attention (which never forms the matrix) for the forward pass."""
        return self._attention_materialised()

    def describe_missing(self, missing: list[str]) -> str:
        blocks = [m.rsplit(".", 1)[0] for m in missing]
        return f"the attention of block(s) {blocks} was not computed by the forward pass; choose blocks the model runs"

    @contextmanager
    def _attention_materialised(self) -> Iterator[None]:
        blocks: list[Any] = list(self.blocks)
        flags = [(b, b.use_flash_attention) for b in blocks if getattr(b, "use_flash_attention", False)]
        try:
            for b, _ in flags:
                b.use_flash_attention = False
            yield
        finally:
            for b, flag in flags:
                b.use_flash_attention = flag

    # ------------------------------------------------------------------ the rollout
    def fuse(self, attention: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        """One block: ``[B, H, N, N]`` (and its gradient) -> fused ``[B, N, N]``."""
        if grads is not None:
            attention = torch.relu(grads * attention)
        if self.head_fusion == "mean":
            fused = attention.mean(1)
        elif self.head_fusion == "max":
            fused = attention.amax(1)
        else:
            fused = attention.amin(1)
        count = int(self.discard_ratio * fused.shape[-1] * fused.shape[-2])
        if count:
            flat = fused.flatten(1)
            smallest = flat.topk(count, dim=1, largest=False).indices
            fused = flat.scatter(1, smallest, 0.0).view_as(fused)
        return fused

    @staticmethod
    def roll(fused: list[torch.Tensor]) -> torch.Tensor:
        """``R = Â_L ... Â_1`` from the fused attentions ``[B, N, N]`` in forward order."""
        n = fused[0].shape[-1]
        eye = torch.eye(n, device=fused[0].device, dtype=torch.float64)
        rollout = eye.expand(fused[0].shape[0], n, n)
        for f in fused:
            a = (f.double() + eye) / 2
            a = a / a.sum(-1, keepdim=True)
            rollout = a @ rollout
        return rollout.float()

    def _grid(self, x: torch.Tensor, tokens: int) -> tuple[tuple[int, ...], bool]:
        grid = self.grid_size
        if grid is None:
            patch = patch_size(self.model)
            if len(patch) != x.ndim - 2:
                raise ShapeError(
                    f"the patch size {patch} must have one entry per spatial axis of the input {list(x.shape)}",
                    expected=f"{x.ndim - 2} spatial axes",
                    actual_shape=tuple(x.shape),
                )
            grid = tuple(s // p for s, p in zip(x.shape[2:], patch))
        n = math.prod(grid)
        class_token = self.class_token if self.class_token is not None else tokens == n + 1
        if tokens != n + int(class_token):
            raise ShapeError(
                f"the attention covers {tokens} tokens; the patch grid {list(grid)} must give as many "
                f"({n}{' + class token' if class_token else ''}); pass `grid_size` / `class_token`",
                expected=f"{n + int(class_token)} tokens",
                actual_shape=(tokens, tokens),
            )
        return grid, class_token

    def layer_maps(
        self, activations: list[torch.Tensor | None], grads: list[torch.Tensor | None], ctx: LayerContext
    ) -> list[tuple[str, torch.Tensor]]:
        """One map on the patch grid ``[N, 1, *grid]``: the rollout over every block, in call order."""
        if ctx.eigen_smooth:
            warnings.warn("attention rollout has no weighted channels; `eigen_smooth` is ignored", stacklevel=5)
        by_name = {n: (a, g) for (n, _), a, g in zip(self.layers, activations, grads)}
        order = [n for n in ctx.extra["call_order"] if n in by_name]
        attention = [by_name[n][0] for n in order]
        shapes = {tuple(a.shape) for a in attention if a is not None}
        first = attention[0]
        if first is None or len(shapes) != 1 or first.ndim != 4 or first.shape[-1] != first.shape[-2]:
            raise ShapeError(
                f"attention rollout needs square self-attention [B, H, N, N] of one size in every block, "
                f"not {sorted(shapes)}",
                expected="[B, H, N, N]",
                actual_shape=tuple(first.shape) if first is not None else None,
            )
        fused = []
        for n in order:
            a, g = by_name[n]
            if a is None:
                continue
            fused.append(self.fuse(ctx.to_rows(a.float()), g.float() if g is not None else None))
        rollout = self.roll(fused)
        x = ctx.x
        grid, class_token = self._grid(x, rollout.shape[-1])
        relevance = rollout[:, 0, 1:] if class_token else rollout.mean(1)
        patch_map = relevance.reshape(rollout.shape[0], 1, *grid)
        return [(f"{order[0].rsplit('.', 1)[0]}..{order[-1].rsplit('.', 1)[0]}", patch_map)]
