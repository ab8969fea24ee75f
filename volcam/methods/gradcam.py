"""Grad-CAM.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017.

    w[b, k]  = mean over S of dy/dA[b, k, ...]
    map[b]   = relu(sum_k w[b, k] * A[b, k, ...])

The mean runs over every spatial axis, so one formula serves 2D and 3D layers.
"""

from __future__ import annotations

import torch

from volcam.methods.base import BaseCAM, channel_mean


class GradCAM(BaseCAM):
    """Grad-CAM: channels weighted by their spatially averaged gradient."""

    name = "gradcam"
    global_weights = True

    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return channel_mean(grads)
