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
voxels, where a softmax saturates to one channel, so the raw increases are used.

No gradients: the B*K masked inputs run under ``torch.no_grad()`` in batches of
``batch_size``.
"""

from __future__ import annotations

import torch

from volcam.errors import VolcamError
from volcam.methods.base import BaseCAM, LayerContext
from volcam.postprocess import normalize, upsample


class ScoreCAM(BaseCAM):
    """Score-CAM: channels weighted by the score of the input masked with them.

    Args:
        batch_size: masked inputs per forward pass.
        (others as :class:`~volcam.methods.base.BaseCAM`)
    """

    name = "scorecam"
    needs_gradients = False

    def __init__(self, model, target_layers, *, batch_size: int = 16, **kwargs):
        super().__init__(model, target_layers, **kwargs)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise VolcamError(f"`batch_size` must be a positive int, not {batch_size!r}")
        self.batch_size = batch_size

    def combine(self, activations: torch.Tensor, grads: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        x = ctx.x
        b, k = activations.shape[:2]
        flat = activations.reshape(b * k, 1, *activations.shape[2:])
        rows = torch.arange(b, device=x.device).repeat_interleave(k)
        baseline = ctx.scorer(ctx.forward(torch.zeros_like(x)))  # [B]
        scores = torch.empty(b * k, device=x.device, dtype=torch.float32)
        for start in range(0, b * k, self.batch_size):
            stop = min(start + self.batch_size, b * k)
            masks = normalize(upsample(flat[start:stop], x.shape[2:])).to(x.dtype)
            out = ctx.forward(x[rows[start:stop]] * masks)
            scores[start:stop] = ctx.scorer(out, rows[start:stop])
        w = (scores - baseline[rows]).view(b, k, *([1] * (activations.ndim - 2)))
        return (w * activations).sum(1, keepdim=True)
