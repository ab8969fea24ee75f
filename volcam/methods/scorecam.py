"""Score-CAM.

Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
Networks", CVPR Workshops 2020.

Each activation channel, upsampled to the input and min-max normalised to [0, 1], masks
the input; the weight of the channel is its increase of confidence over a zero input:

    H[b, k] = normalise(upsample(A[b, k]))
    w[b, k] = y(x[b] * H[b, k]) - y(0)
    map[b]  = relu(sum_k w[b, k] * A[b, k, ...])

y is the target score bound to the unperturbed prediction (same class, same mask). The
paper passes the weights through a softmax; segmentation scores are unbounded sums over
voxels, where a softmax saturates to one channel, so the raw increases are used. With
several targets (``explain_classes``) every target is scored on the same masked inputs.

No gradients: the B*K masked inputs run under ``torch.no_grad()``, ``batch_size`` per
forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from volcam.checks import positive_int
from volcam.layers import LayerSpec
from volcam.methods.base import BaseCAM, LayerContext
from volcam.postprocess import normalize, upsample

#: masked inputs per forward pass when ``batch_size`` is None: on the CPU one at a time
#: (the benchmark finds batches 1.1 to 1.8x slower than a loop there), elsewhere 16
DEFAULT_BATCH = {"cpu": 1}
DEFAULT_BATCH_OTHER = 16


def default_batch_size(device: torch.device) -> int:
    """The perturbation batch size used when ``batch_size`` is None."""
    return DEFAULT_BATCH.get(device.type, DEFAULT_BATCH_OTHER)


class ScoreCAM(BaseCAM):
    """Score-CAM: channels weighted by the score of the input masked with them.

    Args:
        batch_size: masked inputs per forward pass; None (default): chosen by the input's
            device, 1 on the CPU (faster than batches there), 16 on a GPU.
        **kwargs: the other arguments of :class:`~volcam.methods.base.BaseCAM`.
    """

    name = "scorecam"
    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        batch_size: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(model, target_layers, **kwargs)
        self.batch_size = positive_int(batch_size, "batch_size", allow_none=True)

    def combine(self, activations: torch.Tensor, grads: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        x = ctx.x
        b, t = ctx.batch, ctx.num_targets
        a = ctx.per_sample(activations)  # [B, K, *S]
        k = a.shape[1]
        flat = a.reshape(b * k, 1, *a.shape[2:])
        samples = torch.arange(b, device=x.device).view(b, 1).expand(b, k).reshape(-1)
        baseline = ctx.score(ctx.forward(torch.zeros_like(x)), torch.arange(b, device=x.device))  # [B, T]
        scores = torch.empty(b * k, t, device=x.device, dtype=torch.float32)
        step = self.batch_size or default_batch_size(x.device)
        for start in range(0, b * k, step):
            stop = min(start + step, b * k)
            masks = normalize(upsample(flat[start:stop], x.shape[2:])).to(x.dtype)
            out = ctx.forward(x[samples[start:stop]] * masks)
            scores[start:stop] = ctx.score(out, samples[start:stop])
        w = (scores - baseline[samples]).view(b, k, t)  # [B, K, T]
        w = ctx.by_target(w.permute(0, 2, 1))  # [T * B, K]
        ctx.weights = w
        return self.reduce_channels(w.reshape(*w.shape, *([1] * (activations.ndim - 2))) * activations, ctx)
