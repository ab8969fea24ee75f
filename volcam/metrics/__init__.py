"""Is the map right? Localisation, faithfulness and sanity checks of heat maps.

Every metric takes tensors ``[B, 1, *S]`` (heat maps, masks) or ``[B, C, *S]`` (images),
with two or three spatial axes (one works too), is vectorised over the batch and stays
on the input's device. Plots live in :mod:`volcam.metrics.plots`, which is the only
module here that imports matplotlib, and only when its functions are called.

- Localisation (:mod:`~volcam.metrics.localisation`, :mod:`~volcam.metrics.components`):
  energy pointing game, pointing game, IoU / Dice at a threshold or at the mask's volume,
  the same per connected component.
- Faithfulness (:mod:`~volcam.metrics.faithfulness`): deletion and insertion curves and
  their areas.
- Similarity (:mod:`~volcam.metrics.similarity`): Spearman rank correlation and SSIM.
- Sanity checks (:mod:`~volcam.metrics.sanity`): cascading and independent model-parameter
  randomisation, label randomisation (Adebayo et al. 2018).
"""

from volcam.metrics.components import component_localisation, connected_components
from volcam.metrics.faithfulness import (
    Curve,
    blur,
    deletion_curve,
    faithfulness,
    insertion_curve,
    make_baseline,
    trapezoid_auc,
    voxel_order,
)
from volcam.metrics.localisation import (
    binarize,
    dice,
    energy_pointing_game,
    iou,
    localisation,
    pointing_game,
    top_k_mask,
)
from volcam.metrics.sanity import SanityResult, label_randomisation, model_randomisation
from volcam.metrics.similarity import rank, spearman, ssim

__all__ = [
    "energy_pointing_game",
    "pointing_game",
    "binarize",
    "top_k_mask",
    "iou",
    "dice",
    "localisation",
    "connected_components",
    "component_localisation",
    "Curve",
    "blur",
    "make_baseline",
    "voxel_order",
    "deletion_curve",
    "insertion_curve",
    "faithfulness",
    "trapezoid_auc",
    "rank",
    "spearman",
    "ssim",
    "SanityResult",
    "model_randomisation",
    "label_randomisation",
]
