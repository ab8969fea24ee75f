"""HiResCAM.

Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
convolutional neural networks", 2020.

    map[b] = relu(sum_k dy/dA[b, k, ...] * A[b, k, ...])

The element-wise product replaces Grad-CAM's averaged gradient, so the map is the exact
first-order contribution of each voxel of the layer.
"""

from __future__ import annotations

import torch

from volcam.methods.base import BaseCAM, LayerContext


class HiResCAM(BaseCAM):
    """HiResCAM: activations times gradients, summed over channels, voxel by voxel."""

    name = "hirescam"

    def combine(self, activations: torch.Tensor, grads: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        if grads is None:
            raise NotImplementedError("HiResCAM needs gradients")
        return self.reduce_channels(grads * activations, ctx)
