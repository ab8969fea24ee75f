"""Ablation-CAM.

Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional Network
via Gradient-free Localization", WACV 2020.

Each channel k of the target layer is set to zero in turn, the rest of the network runs
on, and the weight of the channel is the relative drop of the target score:

    w[b, k] = (y[b] - y_k[b]) / |y[b]|
    map[b]  = relu(sum_k w[b, k] * A[b, k, ...])

The paper divides by ``y``; segmentation scores are sums of logits and may be negative,
so ``|y|`` is used (a positive scale per sample, which keeps "the score drops" meaning
"positive weight"). A sample whose score is zero gets zero weights.

Where the ablation happens: a forward hook on the target layer replaces the layer's
output by a copy with the chosen channel zeroed (tuple, list and dict outputs through
the same selector as the capture hook; token outputs through ``reshape``, see below).
The whole model runs for every ablated copy: networks with skip connections need the
features before the layer too, so the part before the layer is run again rather than
cached. The ``B * K`` ablated copies run under ``torch.no_grad()`` in batches of
``batch_size``.

With ``reshape`` (transformer tokens ``[B, N, K] -> [B, K, *S]``, Swin windows) the
elements of channel k are found by passing a tensor of element indices through
``reshape``; a class token dropped by ``reshape`` is never ablated.

Wide layers: ``ratio`` < 1 ablates, per sample, only the ``ceil(ratio * K)`` channels
with the largest mean absolute activation (the channels that can weigh most in the
sum); the other channels get weight 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from volcam.errors import VolcamError
from volcam.methods.base import BaseCAM, LayerContext
from volcam.postprocess import spatial_dims
from volcam.selectors import replace, select


class AblationCAM(BaseCAM):
    """Ablation-CAM: channels weighted by the relative score drop when they are zeroed.

    Args:
        batch_size: ablated copies per forward pass.
        ratio: fraction of the channels to ablate per sample (the largest by mean
            absolute activation); the others get weight 0. None or 1.0: all channels.
        (others as :class:`~volcam.methods.base.BaseCAM`)
    """

    name = "ablationcam"
    needs_gradients = False

    def __init__(self, model, target_layers, *, batch_size: int = 16, ratio: float | None = None, **kwargs):
        super().__init__(model, target_layers, **kwargs)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise VolcamError(f"`batch_size` must be a positive int, not {batch_size!r}")
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1):
            raise VolcamError(f"`ratio` must be a number in (0, 1] or None, not {ratio!r}")
        self.batch_size = batch_size
        self.ratio = ratio

    def channels(self, activations: torch.Tensor) -> torch.Tensor:
        """``[B, K']`` the channels to ablate per sample (all of them without ``ratio``)."""
        b, k = activations.shape[:2]
        if self.ratio is None or self.ratio >= 1:
            return torch.arange(k, device=activations.device).expand(b, k)
        keep = max(1, math.ceil(self.ratio * k))
        energy = activations.abs().mean(dim=spatial_dims(activations))
        return energy.topk(keep, dim=1).indices

    def combine(self, activations: torch.Tensor, grads: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        x = ctx.x
        b, k = activations.shape[:2]
        chosen = self.channels(activations)  # [B, K']
        rows = torch.arange(b, device=x.device).repeat_interleave(chosen.shape[1])
        flat = chosen.reshape(-1)
        ablated = torch.empty(flat.numel(), device=x.device, dtype=torch.float32)
        module = dict(self.layers)[ctx.name]
        plan = _Ablation()
        with self._zeroing(module, plan):
            for start in range(0, flat.numel(), self.batch_size):
                stop = min(start + self.batch_size, flat.numel())
                plan.channels = flat[start:stop]
                ablated[start:stop] = ctx.scorer(ctx.forward(x[rows[start:stop]]), rows[start:stop])
        y = ctx.scores.float()
        drop = (y[rows] - ablated) / y.abs()[rows].clamp_min(1e-12)
        drop = torch.where(y[rows] == 0, torch.zeros_like(drop), drop)
        w = torch.zeros(b, k, device=x.device, dtype=torch.float32)
        w[rows, flat] = drop
        w = w.view(b, k, *([1] * (activations.ndim - 2)))
        return self.reduce_channels(w * activations, ctx)

    @contextmanager
    def _zeroing(self, module: nn.Module, plan: _Ablation) -> Iterator[None]:
        """A forward hook on the target layer that zeroes channel ``plan.channels[i]`` of row i."""
        selector, reshape = self.layer_output, self.reshape

        def hook(_module, _inputs, output):
            tensor = select(output, selector, what="target layer output")
            zeroed = tensor.clone(memory_format=torch.contiguous_format)
            if reshape is None:  # [N, K, *S]: channel plan.channels[i] of row i
                zeroed[torch.arange(zeroed.shape[0], device=zeroed.device), plan.channels] = 0
            else:
                positions = plan.positions(tensor, reshape)  # [N, K, M] flat indices into the tensor
                rows = torch.arange(positions.shape[0], device=positions.device)
                zeroed.view(-1)[positions[rows, plan.channels].reshape(-1)] = 0
            return replace(output, selector, zeroed, old=tensor)

        handle = module.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


class _Ablation:
    """Which channel each row of the current batch ablates, and where channels lie."""

    def __init__(self) -> None:
        self.channels: torch.Tensor | None = None
        self._positions: dict[tuple, torch.Tensor] = {}

    def positions(self, tensor: torch.Tensor, reshape) -> torch.Tensor:
        """``[N, K, M]``: the flat indices into ``tensor`` of each sample's channel elements.

        Found by passing the element indices through ``reshape``, so any rearrangement
        (tokens, channels-last, Swin windows whose first axis is not the sample) works.
        """
        key = (tuple(tensor.shape), tensor.device)
        if key not in self._positions:
            index = torch.arange(tensor.numel(), device=tensor.device).view(tensor.shape)
            if reshape is not None:
                index = reshape(index)
            self._positions = {key: index.flatten(2)}
        return self._positions[key]
