"""The CAM loop reproduces nnU-Net's prediction: the segmentation volcam derives from its own
forwards is the one ``nnUNetPredictor.predict_from_files`` writes, voxel for voxel, and the logits
and probabilities agree (same folds, mirroring and step size)."""

from __future__ import annotations

import nnunet_data as nd
import numpy as np
import pytest
import torch

# (folder attribute, folds, case, classes, mirroring, step): every configuration the tests build,
# with mirroring on (3D: 8 views, 2D: 4 views) and off, one fold and two
SETTINGS = {
    "3d-two-folds-mirrored": ("toy_3d", (0, 1), "case_b", [2], True, 0.5),
    "3d-one-fold-plain": ("toy_3d", (0,), "case_a", None, False, 0.5),
    "2d-mirrored": ("toy_2d", (0,), "case_b", [1], True, 0.5),
    "regions-mirrored": ("regions", (0,), "case_b", ["whole", "core"], True, 0.7),
}


def _images(folders, name):
    return folders.regions_images if name == "regions" else folders.toy_images


def _one_case(images, case, out):
    """A folder holding only ``case``'s channel files (links), for predict_from_files."""
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(images.glob(f"{case}_*")):
        (out / f.name).symlink_to(f)
    return out


@pytest.fixture(scope="session")
def parity(folders, tmp_path_factory):
    """For each setting: volcam's result and nnU-Net's predict_from_files output folder."""
    import volcam.nnunet

    out = {}
    for key, (attr, folds, case, classes, mirroring, step) in SETTINGS.items():
        base = tmp_path_factory.mktemp(key)
        images = _one_case(_images(folders, attr), case, base / "images")
        reference = nd.nnunet_predict(
            getattr(folders, attr), folds, images, base / "nnunet", use_mirroring=mirroring, tile_step_size=step
        )
        model = volcam.nnunet.load(getattr(folders, attr), folds=folds, device="cpu")
        res = model.explain(
            images / f"{case}_0000.nii.gz",
            classes=classes,
            layer="decoder.stages.1",
            use_mirroring=mirroring,
            tile_step_size=step,
            probabilities=True,
            keep_logits=True,
        )
        out[key] = (model, res, reference / f"{case}.nii.gz", reference / f"{case}.npz", images / f"{case}_0000.nii.gz")
    return out


@pytest.mark.parametrize("key", list(SETTINGS))
def test_segmentation_equals_predict_from_files(parity, key):
    import nibabel as nib

    _, res, seg_file, _, _ = parity[key]
    expected = np.asanyarray(nib.load(str(seg_file)).dataobj)
    assert res.segmentation.shape == expected.shape
    assert np.array_equal(res.segmentation, expected)
    # a random network still predicts more than one label: the comparison is not between empty maps
    assert len(np.unique(expected)) >= 2


@pytest.mark.parametrize("key", list(SETTINGS))
def test_probabilities_agree(parity, key):
    _, res, _, npz, _ = parity[key]
    expected = res.grid.to_file_order(np.load(npz)["probabilities"])
    assert res.probabilities.shape == expected.shape
    np.testing.assert_allclose(res.probabilities, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("key", list(SETTINGS))
def test_logits_equal_nnunet_logits(parity, key):
    """Bit for bit, with one view per forward (the default)."""
    model, res, _, _, image = parity[key]
    _, folds, _, _, mirroring, step = SETTINGS[key]
    expected = model.predict_logits(model.preprocess(image), use_mirroring=mirroring, tile_step_size=step)
    assert res.logits.dtype == torch.float16
    assert torch.equal(res.logits, expected)


def test_heat_is_explained_and_normalised(parity):
    for key, (_, res, _, _, _) in parity.items():
        for info in res.classes:
            heat = res.heat[info.value]
            assert heat.dtype == np.float32 and heat.shape == res.segmentation.shape
            assert heat.min() == 0.0 and heat.max() == pytest.approx(1.0), key
            assert res.stats[info.value]["windows"] > 0


def test_batched_views_agree_within_tolerance(folders):
    """Several views per forward: logits agree within half precision, the segmentation almost everywhere."""
    import volcam.nnunet

    model = volcam.nnunet.load(folders.toy_3d, folds=(0,), device="cpu")
    image = folders.toy_images / "case_b_0000.nii.gz"
    one = model.explain(image, classes=[1], layer="decoder.stages.1", keep_logits=True, use_mirroring=True)
    four = model.explain(
        image, classes=[1], layer="decoder.stages.1", keep_logits=True, use_mirroring=True, batch_size=4
    )
    torch.testing.assert_close(four.logits.float(), one.logits.float(), rtol=0, atol=2e-3)
    assert np.mean(four.segmentation == one.segmentation) > 0.999
    assert np.abs(four.heat[1] - one.heat[1]).max() < 1e-3


@pytest.mark.slow
def test_segmentation_equals_predict_from_files_with_worker_processes(folders, tmp_path):
    """nnU-Net's predict_from_files as users run it (spawned preprocessing and export workers)."""
    import nibabel as nib

    import volcam.nnunet

    images = _one_case(folders.toy_images, "case_b", tmp_path / "images")
    reference = nd.nnunet_predict(folders.toy_3d, (0, 1), images, tmp_path / "nnunet", processes=True)
    model = volcam.nnunet.load(folders.toy_3d, folds=(0, 1), device="cpu")
    res = model.explain(images / "case_b_0000.nii.gz", classes=[1], layer="decoder.stages.1")
    expected = np.asanyarray(nib.load(str(reference / "case_b.nii.gz")).dataobj)
    assert np.array_equal(res.segmentation, expected)
