"""LayerCAM.

Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
Localization", IEEE TIP 2021.

    map[b] = relu(sum_k relu(dy/dA[b, k, ...]) * A[b, k, ...])

Only positive gradients count, voxel by voxel; it works on shallow layers too, where
Grad-CAM's averaged weights blur out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from volcam.methods.base import BaseCAM, LayerContext


class LayerCAM(BaseCAM):
    """LayerCAM: activations weighted voxel by voxel by their positive gradients."""

    name = "layercam"

    def combine(self, activations: torch.Tensor, grads: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        if grads is None:
            raise NotImplementedError("LayerCAM needs gradients")
        return self.reduce_channels(F.relu(grads) * activations, ctx)
