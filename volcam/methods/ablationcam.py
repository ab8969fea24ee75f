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
``batch_size`` (by default 1 on the CPU, where batches are slower than a loop, 16 on a
GPU). With several targets (``explain_classes``) every target is scored on the same
ablated copies.

A target layer that runs several times in one forward pass is ablated at the call that
is explained (``layer_call``), not at every call.

With ``reshape`` (transformer tokens ``[B, N, K] -> [B, K, *S]``, Swin windows) the
elements of channel k are found by passing a tensor of element indices through
``reshape``; a class token dropped by ``reshape`` is never ablated.

Wide layers: ``ratio`` < 1 ablates, per sample, only the ``ceil(ratio * K)`` channels
with the largest mean absolute activation (the channels that can weigh most in the
sum); the other channels get weight 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from volcam.checks import in_range, positive_int
from volcam.layers import LayerSpec
from volcam.methods.base import BaseCAM, LayerContext
from volcam.methods.scorecam import default_batch_size
from volcam.postprocess import spatial_dims
from volcam.selectors import replace, select


class AblationCAM(BaseCAM):
    """Ablation-CAM: channels weighted by the relative score drop when they are zeroed.

    Args:
        batch_size: ablated copies per forward pass; None (default): 1 on the CPU, 16 on a GPU.
        ratio: fraction of the channels to ablate per sample (the largest by mean
            absolute activation); the others get weight 0. None or 1.0: all channels.
        **kwargs: the other arguments of :class:`~volcam.methods.base.BaseCAM`.
    """

    name = "ablationcam"
    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        batch_size: int | None = None,
        ratio: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(model, target_layers, **kwargs)
        self.batch_size = positive_int(batch_size, "batch_size", allow_none=True)
        self.ratio = None if ratio is None else in_range(ratio, "ratio", 0.0, 1.0, low_open=True)

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
        b, t = ctx.batch, ctx.num_targets
        a = ctx.per_sample(activations)
        k = a.shape[1]
        chosen = self.channels(a)  # [B, K']
        per = chosen.shape[1]
        samples = torch.arange(b, device=x.device).view(b, 1).expand(b, per).reshape(-1)
        flat = chosen.reshape(-1)
        ablated = torch.empty(flat.numel(), t, device=x.device, dtype=torch.float32)
        module = dict(self.layers)[ctx.name]
        plan = _Ablation(ctx.call)
        step = self.batch_size or default_batch_size(x.device)
        with self._zeroing(module, plan):
            for start in range(0, flat.numel(), step):
                stop = min(start + step, flat.numel())
                plan.channels = flat[start:stop]
                plan.seen = 0
                ablated[start:stop] = ctx.score(ctx.forward(x[samples[start:stop]]), samples[start:stop])
        y = ctx.scores.float()[samples]  # [N, T]
        drop = (y - ablated) / y.abs().clamp_min(1e-12)
        drop = torch.where(y == 0, torch.zeros_like(drop), drop)
        w = torch.zeros(b, k, t, device=x.device, dtype=torch.float32)
        w[samples, flat] = drop
        rows = ctx.by_target(w.permute(0, 2, 1))  # [T * B, K]
        ctx.weights = rows
        return self.reduce_channels(rows.reshape(*rows.shape, *([1] * (activations.ndim - 2))) * activations, ctx)

    @contextmanager
    def _zeroing(self, module: nn.Module, plan: _Ablation) -> Iterator[None]:
        """A forward hook on the target layer that zeroes channel ``plan.channels[i]`` of row i
        at call ``plan.call`` of the layer in each forward pass."""
        selector, reshape = self.layer_output, self.reshape

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            call = plan.seen
            plan.seen += 1
            if call != plan.call or plan.channels is None:
                return None
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
    """Which channel each row of the current batch ablates, at which call, and where channels lie."""

    def __init__(self, call: int) -> None:
        self.call = call
        self.seen = 0
        self.channels: torch.Tensor | None = None
        self._positions: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}

    def positions(self, tensor: torch.Tensor, reshape: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``[N, K, M]``: the flat indices into ``tensor`` of each sample's channel elements.

        Found by passing the element indices through ``reshape``, so any rearrangement
        (tokens, channels-last, Swin windows whose first axis is not the sample) works.
        """
        key = (tuple(tensor.shape), tensor.device)
        if key not in self._positions:
            index = torch.arange(tensor.numel(), device=tensor.device).view(tensor.shape)
            self._positions = {key: reshape(index).flatten(2)}
        return self._positions[key]
