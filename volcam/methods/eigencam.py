"""EigenCAM and EigenGradCAM.

Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components",
IJCNN 2020.

Activations ``[B, K, *S]`` are seen per sample as N = prod(S) points in K dimensions,
centred over the points; the map is their projection on the first principal component
(first right singular vector). EigenCAM uses no gradients and is class-agnostic;
EigenGradCAM takes the component of ``A * dy/dA``, which makes it class-specific.

The sign of a singular vector is arbitrary; here it is chosen so the map correlates
positively with the channel mean of the input features, so the same features give the
same map from run to run and device to device.
"""

from __future__ import annotations

import torch

from volcam.methods.base import BaseCAM, LayerContext


def first_principal_component(features: torch.Tensor) -> torch.Tensor:
    """Projection of ``[B, K, *S]`` on its first principal component, ``[B, 1, *S]``.

    Batched SVD on the device; float32 in, float32 out.
    """
    b, k = features.shape[:2]
    spatial = features.shape[2:]
    points = features.reshape(b, k, -1).transpose(1, 2)  # [B, N, K]
    centred = points - points.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = (centred @ vh[:, 0, :].unsqueeze(-1)).squeeze(-1)  # [B, N]
    reference = points.mean(2)
    reference = reference - reference.mean(1, keepdim=True)
    sign = torch.where((projection * reference).sum(1, keepdim=True) < 0, -1.0, 1.0)
    return (projection * sign).reshape(b, 1, *spatial)


class EigenCAM(BaseCAM):
    """EigenCAM: first principal component of the activations (no gradients, no class)."""

    name = "eigencam"
    needs_gradients = False

    def combine(self, activations: torch.Tensor, grads: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        return first_principal_component(activations)


class EigenGradCAM(BaseCAM):
    """EigenGradCAM: first principal component of activations times gradients."""

    name = "eigengradcam"

    def combine(self, activations: torch.Tensor, grads: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        return first_principal_component(activations * grads)
