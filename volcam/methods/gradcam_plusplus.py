"""Grad-CAM++.

Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations for
Deep Convolutional Networks", WACV 2018, eq. 19 with the exponential score, whose higher
derivatives are powers of the first (g = dy/dA):

    alpha[b, k, s] = g^2 / (2 g^2 + max(sum over S of A[b, k], 0) * g^3)   (0 where g = 0)
    w[b, k]        = sum over S of alpha * relu(g)

The paper's constant factor exp(y) is left out: it scales a sample's map by a positive
number, which the per-sample normalisation removes (raw maps differ from the paper's by
that factor).

Where it differs: the paper assumes non-negative activations (ReLU networks), so that
``alpha = 1 / (2 + sum(A) g)`` lies in (0, 1/2] wherever ``g > 0`` (the only voxels that
count). After normalisation layers or PReLU a channel's sum can be negative; then the
denominator crosses zero, alpha explodes or changes sign, and tiny input changes move the
map (correlation 0.71 under 1e-3 input noise on a MONAI UNet encoder, where Grad-CAM's
stays at 0.999). The channel sum is therefore clamped at zero in the denominator: alpha
stays in (0, 1/2] and varies smoothly with the input, and nothing changes for
non-negative activations.
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
        total = activations.sum(dim=dims, keepdim=True).clamp_min(0)
        denom = 2 * g2 + total * grads.pow(3)
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0.0)
        return (alpha * F.relu(grads)).sum(dim=dims)
