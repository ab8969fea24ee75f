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
from contextlib import contextmanager

import torch
from torch import nn

from volcam.capture import capture
from volcam.errors import LayerNotFoundError, LayerNotReachedError, ShapeError, VolcamError
from volcam.layers import LayerSpec, resolve_layers
from volcam.methods.base import BaseCAM, CAMResult
from volcam.selectors import Selector
from volcam.targets import TargetSpec, resolve_targets, warn_empty

_FUSIONS = ("mean", "max", "min")


def is_attention_block(module: nn.Module) -> bool:
    """A MONAI ``SABlock`` (or a module built like one: ``num_heads`` and a ``drop_weights``
    module applied to the softmax attention)."""
    return hasattr(module, "num_heads") and isinstance(getattr(module, "drop_weights", None), nn.Module)


class AttentionRollout(BaseCAM):
    """Attention rollout over the self-attention blocks of a ViT encoder.

    Args:
        model: the network (a MONAI ``UNETR``, ``ViT``, or any model containing
            ``SABlock``s).
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
        aug_smooth=False,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, not {type(model).__name__}")
        if head_fusion not in _FUSIONS:
            raise VolcamError(f"`head_fusion` must be one of {_FUSIONS}, not {head_fusion!r}")
        if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)) or not 0 <= discard_ratio < 1:
            raise VolcamError(f"`discard_ratio` must be a number in [0, 1), not {discard_ratio!r}")
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
            [b.drop_weights for b in blocks],
            model_output=model_output,
            normalize=normalize,
            upsample=upsample,
            aug_smooth=aug_smooth,
        )
        self.blocks = blocks
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)
        self.gradients = bool(gradients)
        self.grid_size = None if grid_size is None else tuple(int(g) for g in grid_size)
        self.class_token = class_token

    def __repr__(self) -> str:
        return (
            f"AttentionRollout(blocks={len(self.blocks)}, head_fusion={self.head_fusion!r}, "
            f"discard_ratio={self.discard_ratio}, gradients={self.gradients})"
        )

    @contextmanager
    def _attention_materialised(self) -> Iterator[None]:
        flags = [(b, b.use_flash_attention) for b in self.blocks if getattr(b, "use_flash_attention", False)]
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
            from volcam.transformers import patch_size

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

    def _explain(self, x: torch.Tensor, targets: TargetSpec, eigen_smooth: bool) -> CAMResult:
        if eigen_smooth:
            warnings.warn("attention rollout has no weighted channels; `eigen_smooth` is ignored", stacklevel=3)
        grad_mode = torch.enable_grad() if self.gradients else torch.no_grad()
        with (
            self._attention_materialised(),
            capture(self.model, self.layers, track_gradients=self.gradients) as state,
            grad_mode,
        ):
            output = self._forward(x)
            missing = [n for n, _ in self.layers if n not in state.activations]
            if missing:
                raise LayerNotReachedError(
                    f"the attention of block(s) {[m.rsplit('.', 1)[0] for m in missing]} was not computed by the "
                    "forward pass; choose blocks the model runs"
                )
            scorer = resolve_targets(targets, output)
            scores = scorer(output)
            order = list(state.activations)  # forward (call) order
            attention = [state.activations[n] for n in order]
            grads = self._gradients(scores, attention) if self.gradients else [None] * len(attention)
            state.active = False
        with torch.no_grad():
            shapes = {tuple(a.shape) for a in attention}
            if len(shapes) != 1 or attention[0].ndim != 4 or attention[0].shape[-1] != attention[0].shape[-2]:
                raise ShapeError(
                    f"attention rollout needs square self-attention [B, H, N, N] of one size in every block, "
                    f"not {sorted(shapes)}",
                    expected="[B, H, N, N]",
                    actual_shape=tuple(attention[0].shape),
                )
            fused = [self.fuse(a.float(), g.float() if g is not None else None) for a, g in zip(attention, grads)]
            rollout = self.roll(fused)
            grid, class_token = self._grid(x, rollout.shape[-1])
            relevance = rollout[:, 0, 1:] if class_token else rollout.mean(1)
            patch_map = relevance.reshape(x.shape[0], 1, *grid)
            heat = self.combine_layers([patch_map], x)
        warn_empty(scorer)
        return CAMResult(
            heat=heat,
            output=output.detach(),
            layer_maps=[patch_map],
            scores=scores.detach(),
            layer_names=[f"{order[0].rsplit('.', 1)[0]}..{order[-1].rsplit('.', 1)[0]}"],
        )
