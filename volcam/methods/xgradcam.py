"""XGrad-CAM.

Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of
CNNs", BMVC 2020.

    w[b, k] = sum over S of (A[b, k] * dy/dA[b, k]) / (sum over S of A[b, k] + eps)
"""

from __future__ import annotations

import torch

from volcam.methods.base import BaseCAM
from volcam.postprocess import spatial_dims


class XGradCAM(BaseCAM):
    """XGrad-CAM: gradients averaged with the activations as weights."""

    name = "xgradcam"
    global_weights = True
    eps = 1e-7

    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        dims = spatial_dims(grads)
        return (grads * activations).sum(dim=dims) / (activations.sum(dim=dims) + self.eps)
