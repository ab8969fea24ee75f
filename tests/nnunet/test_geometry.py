"""Back onto the scan: heat volumes with the source image's exact geometry, aligned with it voxel
for voxel, written beside nnU-Net's segmentation; and the network left as it was."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from helpers import hook_count
from scipy.ndimage import distance_transform_edt

import volcam.nnunet
from volcam.errors import EmptyTargetWarning

# (folder attribute, images attribute, labels attribute): SimpleITK reader with a rotated
# direction (3D and 2D configurations), nibabel reader reorienting a LAS, oblique file
MODELS = {
    "3d": ("toy_3d", "toy_images", "toy_labels"),
    "2d": ("toy_2d", "toy_images", "toy_labels"),
    "regions": ("regions", "regions_images", "regions_labels"),
}


@pytest.fixture(scope="session")
def explained(folders, tmp_path_factory):
    """HiResCAM at the last decoder stage, each class over its label in labelsTs, saved."""
    out = {}
    for key, (model_attr, images_attr, labels_attr) in MODELS.items():
        model = volcam.nnunet.load(getattr(folders, model_attr), folds=(0,), device="cpu")
        image = getattr(folders, images_attr) / "case_a_0000.nii.gz"
        label = getattr(folders, labels_attr) / "case_a.nii.gz"
        res = model.explain(image, method="hirescam", layer="decoder.stages.1", mask=label, use_mirroring=key != "3d")
        folder = tmp_path_factory.mktemp(f"saved-{key}")
        written = res.save(folder, axes=("axial", "coronal"))
        out[key] = (res, image, label, folder, written)
    return out


@pytest.mark.parametrize("key", list(MODELS))
def test_heat_has_the_source_geometry(explained, key):
    import nibabel as nib
    import SimpleITK as sitk

    res, image, _, folder, _ = explained[key]
    source = sitk.ReadImage(str(image))
    source_nib = nib.load(str(image))
    for info in res.classes:
        path = folder / info.slug / "heat.nii.gz"
        heat = sitk.ReadImage(str(path))
        assert heat.GetSize() == source.GetSize()
        np.testing.assert_allclose(heat.GetSpacing(), source.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(heat.GetOrigin(), source.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(heat.GetDirection(), source.GetDirection(), atol=1e-6)
        assert heat.GetPixelID() == sitk.sitkFloat32
        heat_nib = nib.load(str(path))
        assert heat_nib.shape == source_nib.shape
        np.testing.assert_allclose(heat_nib.affine, source_nib.affine, atol=1e-5)
        np.testing.assert_array_equal(heat_nib.get_fdata(dtype=np.float32), res.heat[info.value])
    np.testing.assert_allclose(res.affine, source_nib.affine, atol=1e-5)


@pytest.mark.parametrize("key", list(MODELS))
def test_heat_lies_on_the_explained_region(explained, key):
    """HiResCAM at the layer before the 1x1 segmentation head, over a given region, is the
    class's logit minus the bias inside the region (ReLU'd) and zero outside, on the network's
    grid; back on the scan it must sit on the labelled voxels (only resampling blurs the rim)."""
    res, _, label, _, _ = explained[key]
    labels = np.asanyarray(__import__("nibabel").load(str(label)).dataobj)
    for info in res.classes:
        stats = res.stats[info.value]
        region = labels == info.value if info.region is None else np.isin(labels, info.region)
        # a small structure loses more of its heat to the resampled rim than a large one
        assert stats["energy_in_label"] > (0.9 if region.sum() > 1000 else 0.6), (key, info.name, stats)
        far = distance_transform_edt(~region) > 2.0  # more than two voxels away from the region
        assert far.any() and res.heat[info.value][far].max() == 0.0


def test_heat_is_zero_outside_the_crop(explained):
    """nnU-Net crops to the non-zero region of the image; the heat is put back at the same place."""
    res, image, _, _, _ = explained["3d"]
    data = np.asanyarray(__import__("nibabel").load(str(image)).dataobj)
    nonzero = np.nonzero(data)
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nonzero)
    for info in res.classes:
        outside = np.ones(data.shape, bool)
        outside[box] = False
        assert outside.any() and res.heat[info.value][outside].max() == 0.0
        assert res.heat[info.value][box].max() == pytest.approx(1.0)


@pytest.mark.parametrize("key", list(MODELS))
def test_saved_files(explained, key):
    import nibabel as nib

    res, _, _, folder, written = explained[key]
    seg = nib.load(str(folder / "segmentation.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(seg.dataobj), res.segmentation)
    assert all(p.exists() for p in written)
    record = json.loads((folder / "volcam-case.json").read_text())
    assert record["settings"]["method"] == "hirescam"
    assert record["settings"]["layers"] == ["decoder.stages.1"]
    assert len(record["images"][0]["sha256"]) == 64
    assert sorted(record["files"]) == sorted(str(p.relative_to(folder)) for p in written[:-1])
    for info in res.classes:
        pngs = sorted((folder / info.slug / "axial").glob("*.png"))
        assert len(pngs) == res.heat[info.value].shape[2]
        assert (folder / info.slug / "coronal").is_dir() and (folder / info.slug / "figure.png").is_file()
        row = next(r for r in res.summary_rows() if r["class"] == info.value)
        assert row["class_name"] == info.name and row["predicted_voxels"] == res.stats[info.value]["predicted_voxels"]


def test_mask_all_and_empty_classes(folders):
    model = volcam.nnunet.load(folders.toy_3d, folds=(0,), device="cpu")
    image = folders.toy_images / "case_b_0000.nii.gz"
    everywhere = model.explain(image, classes=[1], layer="decoder.stages.1", mask="all", use_mirroring=False)
    predicted = model.explain(image, classes=[1], layer="decoder.stages.1", use_mirroring=False)
    assert everywhere.stats[1]["windows"] >= predicted.stats[1]["windows"] > 0
    assert not np.array_equal(everywhere.heat[1], predicted.heat[1])
    empty = folders.root / "empty_label.nii.gz"
    nib = __import__("nibabel")
    source = nib.load(str(folders.toy_labels / "case_b.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(source.shape, np.uint8), source.affine, source.header), str(empty))
    with pytest.warns(EmptyTargetWarning, match=r"class 2 \(lesion\) has an empty target region"):
        res = model.explain(image, classes=[2], layer="decoder.stages.1", mask=empty, use_mirroring=False)
    assert res.stats[2]["windows"] == 0 and res.heat[2].max() == 0.0 and "empty" in res.stats[2]["note"]


def _state(model):
    return {
        "hooks": hook_count(model.network),
        "requires_grad": [p.requires_grad for p in model.network.parameters()],
        "training": model.network.training,
        "params": {k: v.clone() for k, v in model.network.state_dict().items()},
    }


def _same_as_fold0(model, before):
    after = _state(model)
    assert after["hooks"] == before["hooks"] == 0
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert all(torch.equal(after["params"][k], v) for k, v in model.parameters[0].items())
    assert all(p.grad is None for p in model.network.parameters())


def test_network_unchanged_after_runs_and_failures(folders, monkeypatch):
    import volcam.nnunet.loop as loop

    model = volcam.nnunet.load(folders.toy_3d, folds=(0, 1), device="cpu")
    before = _state(model)
    image = folders.toy_images / "case_b_0000.nii.gz"
    model.explain(image, classes=[1], layer="decoder.stages.1", use_mirroring=False)
    _same_as_fold0(model, before)
    model.predict_logits(model.preprocess(image), use_mirroring=False)
    _same_as_fold0(model, before)

    # a failure in the second fold's loop, after fold 1's weights were loaded
    original, calls = loop._explain_window, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3 and not torch.equal(
            model.network.state_dict()["decoder.stages.1.convs.0.conv.weight"],
            model.parameters[0]["decoder.stages.1.convs.0.conv.weight"],
        ):
            raise RuntimeError("failure in the middle of fold 1")
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "_explain_window", failing)
    with pytest.raises(RuntimeError, match="fold 1"):
        model.explain(image, classes=[1], layer="decoder.stages.1", use_mirroring=False)
    _same_as_fold0(model, before)
    monkeypatch.setattr(loop, "_explain_window", original)

    # a failure inside the engine (a head that does not run with deep supervision off)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(volcam.LayerNotReachedError):
            model.explain(image, classes=[1], layer="decoder.seg_layers.0", use_mirroring=False)
    _same_as_fold0(model, before)


def test_other_methods_explain_the_same_prediction(folders):
    """Methods with other weights, per-voxel maps, or perturbed forwards (ScoreCAM, which scores
    rows of the bound target) go through the same loop; the logits do not depend on the method."""
    model = volcam.nnunet.load(folders.toy_3d, folds=(0,), device="cpu")
    image = folders.toy_images / "case_b_0000.nii.gz"
    options = dict(classes=[1], layer="decoder.stages.1", use_mirroring=False, keep_logits=True)
    reference = model.explain(image, **options)
    for method in ("gradcam++", "layercam", "scorecam"):
        res = model.explain(image, method=method, **options)
        assert torch.equal(res.logits, reference.logits), method
        assert res.heat[1].max() == pytest.approx(1.0) and res.heat[1].min() == 0.0, method
        assert not np.array_equal(res.heat[1], reference.heat[1]), method
    with pytest.raises(volcam.errors.ArgumentError, match="normalised once"):
        model.explain(image, normalize=True, **options)
    with pytest.raises(volcam.MethodNotFoundError):
        model.explain(image, method="gradcm", **options)
