"""Grad-CAM++.

Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations for
Deep Convolutional Networks", WACV 2018, eq. 19 with the exponential score, whose higher
derivatives are powers of the first (g = dy/dA):

    alpha[b, k, s] = g^2 / (2 g^2 + (sum over S of A[b, k]) * g^3)     (0 where the denominator is 0)
    w[b, k]        = sum over S of alpha * relu(g)

The paper's constant factor exp(y) is left out: it scales a sample's map by a positive
number, which the per-sample normalisation removes (raw maps differ from the paper's by
that factor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from volcam.methods.base import BaseCAM
from volcam.postprocess import spatial_dims


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++: gradient-weighted channels, with positive gradients re-weighted per voxel."""

    name = "gradcam++"
    aliases = ("gradcampp", "gradcamplusplus")
    global_weights = True

    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        dims = spatial_dims(grads)
        g2 = grads.pow(2)
        denom = 2 * g2 + activations.sum(dim=dims, keepdim=True) * grads.pow(3)
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0.0)
        return (alpha * F.relu(grads)).sum(dim=dims)
