"""Class activation maps of nnU-Net v2 models, from their results folder to heat volumes on the scans.

    import volcam.nnunet
    model = volcam.nnunet.load("$nnUNet_results/Dataset003_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres",
                               folds=(0, 1, 2, 3, 4))
    res = model.explain("imagesTs/liver_7_0000.nii.gz", classes=[1, 2], method="gradcam",
                        layer="decoder.stages.3")
    res.heat[2]          # [x, y, z] float32 in [0, 1], on the scan's own grid
    res.segmentation     # the labels nnUNetv2_predict writes for the case
    res.save("cams/liver_7")

- :mod:`~volcam.nnunet.folder`: results folders, folds, safe checkpoint reading;
- :mod:`~volcam.nnunet.loading`: :func:`load`, through nnU-Net's own classes;
- :mod:`~volcam.nnunet.model`: :class:`NnUNetModel` (layers, preprocessing, CAMs);
- :mod:`~volcam.nnunet.preprocess`: a case's files and nnU-Net's preprocessing of them;
- :mod:`~volcam.nnunet.loop`: the CAM sliding window with nnU-Net's tiles, Gaussian weights,
  mirroring and fold averaging;
- :mod:`~volcam.nnunet.mapback`: back onto the scan's grid, as nnU-Net exports its logits;
- :mod:`~volcam.nnunet.result`: :class:`NnUNetResult` and writing it.

Needs nnU-Net v2 (``pip install 'volcam[nnunet]'``); ``import volcam`` does not import this package.
"""

from volcam.nnunet.folder import find_model_folder, read_checkpoint
from volcam.nnunet.labels import ClassInfo
from volcam.nnunet.loading import load
from volcam.nnunet.model import NnUNetLayer, NnUNetModel
from volcam.nnunet.preprocess import PreprocessedCase
from volcam.nnunet.result import NnUNetResult

__all__ = [
    "load",
    "NnUNetModel",
    "NnUNetLayer",
    "NnUNetResult",
    "ClassInfo",
    "PreprocessedCase",
    "find_model_folder",
    "read_checkpoint",
]
