"""EigenCAM and EigenGradCAM.

Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components",
IJCNN 2020.

Activations ``[B, K, *S]`` are seen per sample as N = prod(S) points in K dimensions,
centred over the points; the map is their projection on the first principal component
(:func:`volcam.pca.first_principal_component`, computed on the device without a host
synchronisation). EigenCAM uses no gradients and is class-agnostic (one map serves
every target); EigenGradCAM takes the component of ``A * dy/dA``, which makes it
class-specific.

The sign of a principal component is arbitrary; it is chosen so the map correlates
positively with the channel mean of the features, so the same features give the same map
from run to run and device to device.
"""

from __future__ import annotations

import torch

from volcam.methods.base import BaseCAM, LayerContext
from volcam.pca import first_principal_component


class EigenCAM(BaseCAM):
    """EigenCAM: first principal component of the activations (no gradients, no class)."""

    name = "eigencam"
    needs_gradients = False
    class_agnostic = True
    global_weights = True

    def combine(self, activations: torch.Tensor, grads: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        return first_principal_component(activations)


class EigenGradCAM(BaseCAM):
    """EigenGradCAM: first principal component of activations times gradients."""

    name = "eigengradcam"
    global_weights = True

    def combine(self, activations: torch.Tensor, grads: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        if grads is None:
            raise NotImplementedError("EigenGradCAM needs gradients")
        return first_principal_component(activations * grads)
