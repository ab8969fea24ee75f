"""A network trained for a few short epochs by nnU-Net's own training loop: the structure it
segments carries most of the heat, on the scan's grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

import volcam.nnunet


@pytest.mark.slow
@pytest.mark.parametrize("case", ["case_a", "case_b"])
def test_heat_lies_inside_the_predicted_structure(folders, trained_3d, case):
    model = volcam.nnunet.load(trained_3d, folds=(4,), device="cpu")
    image = folders.toy_images / f"{case}_0000.nii.gz"
    res = model.explain(image, classes=["organ"], method="gradcam", layer="decoder.stages.1")
    truth = np.asanyarray(nib.load(str(folders.toy_labels / f"{case}.nii.gz")).dataobj) == 1
    predicted = res.segmentation == 1
    dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert dice > 0.8  # the network has learnt the organ
    heat = res.heat[1]
    assert res.stats[1]["energy_in_prediction"] > 0.8
    assert heat[predicted].mean() > 20 * heat[~predicted].mean()
    # the hottest voxel is in the organ, and the figure's point is that voxel's world position
    peak = tuple(int(i) for i in res.stats[1]["peak_voxel"].split())
    assert predicted[peak]
    world = res.affine @ np.array([*peak, 1.0])
    assert res.stats[1]["peak_x"] == pytest.approx(world[0], abs=1e-3)
