"""``volcam run`` and ``volcam layers`` with an nnU-Net results folder (the ``nnunet`` section)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

import volcam.nnunet as vn
from volcam.cli import main

LAYER = "decoder.stages.1"


def write_config(path: Path, folder: Path, images: Path, labels: Path, out: Path, **extra) -> Path:
    cfg = {
        "nnunet": {"folder": str(folder), "folds": [0, 1], "use_mirroring": False, "tile_step_size": 0.7},
        "device": "cpu",
        "cam": {"method": "gradcam", "target_layers": LAYER},
        "targets": {"classes": [1, 2]},
        "data": {"folder": str(images), "label_folder": str(labels), "num_workers": 0},
        "outputs": {"dir": str(out), "figure": False},
    }
    for key, value in extra.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def model_copy(folders, tmp_path) -> Path:
    """A copy of the toy 3D results folder (folds 0 and 1) that a test may change."""
    target = tmp_path / "results" / folders.toy_3d.parent.name / folders.toy_3d.name
    shutil.copytree(folders.toy_3d, target)
    return target


def test_run_writes_the_heat_nnunet_computes_on_the_scans_grid(folders, model_copy, tmp_path, capsys):
    out = tmp_path / "out"
    path = write_config(tmp_path / "run.yaml", model_copy, folders.toy_images, folders.toy_labels, out)
    assert main(["run", str(path), "--no-supervise"]) == 0
    printed = capsys.readouterr().out
    assert "nnU-Net's sliding window" in printed and str(model_copy) in printed
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert sorted((r["case"], r["class_name"], r["status"]) for r in rows) == [
        ("case_a", "lesion", "ok"),
        ("case_a", "organ", "ok"),
        ("case_b", "lesion", "ok"),
        ("case_b", "organ", "ok"),
    ]
    assert all(r["method"] == "gradcam" and r["layer"] == LAYER for r in rows)

    # the same heat and segmentation as the Python API with the same settings, on the scan's own grid
    model = vn.load(model_copy, folds=[0, 1], device="cpu")
    for case in ("case_a", "case_b"):
        image = folders.toy_images / f"{case}_0000.nii.gz"
        res = model.explain(
            image, classes=[1, 2], method="gradcam", layer=LAYER, use_mirroring=False, tile_step_size=0.7, mask=None
        )
        source = nib.load(image)
        for value, name in ((1, "organ"), (2, "lesion")):
            written = nib.load(out / case / name / "heat.nii.gz")
            assert written.shape == source.shape
            np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
            np.testing.assert_allclose(np.asarray(written.dataobj), res.heat[value], atol=1e-6)
            row = next(r for r in rows if r["case"] == case and r["class_name"] == name)
            assert int(row["predicted_voxels"]) == int((res.segmentation == value).sum())
            assert len(list((out / case / name / "axial").glob("*.png"))) > 0
    record = json.loads((out / "case_a" / "volcam-case.json").read_text())
    assert record["maps"]["checkpoint"]["path"] == str(model_copy)
    assert record["maps"]["checkpoint"]["folds"] == ["0", "1"]


def test_resume_skips_same_maps_and_refuses_a_retrained_fold(folders, model_copy, tmp_path, capsys):
    out = tmp_path / "out"
    path = write_config(
        tmp_path / "run.yaml", model_copy, folders.toy_images, folders.toy_labels, out, outputs__pngs=False
    )
    assert main(["run", str(path), "--no-supervise", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "--no-supervise"]) == 0
    assert "2 of 2 case(s) already complete" in capsys.readouterr().out
    # another fold's weights at fold 0's path: the maps on disk are stale
    fold0 = model_copy / "fold_0" / "checkpoint_final.pth"
    fold0.write_bytes((model_copy / "fold_1" / "checkpoint_final.pth").read_bytes())
    assert main(["run", str(path), "--no-supervise"]) == 2
    assert "checkpoint (its content) in 2 case(s)" in capsys.readouterr().err
    # other folds or another step size change the maps too
    assert main(["run", str(path), "--no-supervise", "--overwrite", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "--no-supervise", "-o", "nnunet.tile_step_size=0.5"]) == 2
    assert "nnunet" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"network_def": {"_target_": "monai.networks.nets.UNet"}}, "network_def must be left out with an nnunet"),
        ({"sliding_window": {"roi_size": [16, 16, 16]}}, "sliding_window must be left out"),
        ({"outputs__raw_heat": True}, "outputs.raw_heat must be false with an nnunet section"),
        ({"nnunet": {"folder": "x", "fold": [0]}}, "nnunet.fold is not a setting of nnunet"),
        ({"targets": {"classes": [3]}}, "targets.classes must be label values of the model's dataset.json"),
        ({"nnunet": {"folds": [0]}}, "nnunet.folder is required"),
    ],
)
def test_config_errors_exit_2_naming_the_key(folders, model_copy, tmp_path, capsys, extra, message):
    path = write_config(
        tmp_path / "run.yaml", model_copy, folders.toy_images, folders.toy_labels, tmp_path / "o", **extra
    )
    assert main(["run", str(path), "--no-supervise"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "o" / "summary.csv").exists()


def test_evaluate_refuses_an_nnunet_config(folders, model_copy, tmp_path, capsys):
    path = write_config(tmp_path / "run.yaml", model_copy, folders.toy_images, folders.toy_labels, tmp_path / "o")
    assert main(["evaluate", str(path)]) == 2
    assert "volcam evaluate needs a config with network_def" in capsys.readouterr().err


def test_layers_of_a_results_folder_and_of_an_nnunet_config(folders, model_copy, tmp_path, capsys):
    assert main(["layers", str(folders.toy_2d)]) == 0
    printed = capsys.readouterr().out
    assert "decoder.stages.1" in printed and "decoder stage" in printed and "Tensor[1, 4, 24, 32]" in printed
    path = write_config(tmp_path / "run.yaml", model_copy, folders.toy_images, folders.toy_labels, tmp_path / "o")
    assert main(["layers", str(path), "--depth", "1"]) == 0
    printed = capsys.readouterr().out
    assert "a list of skips" in printed and "decoder.stages.1" not in printed and "encoder.stages" not in printed


def test_fallback_explains_a_class_whose_map_is_all_zero(folders, model_copy, tmp_path, capsys, monkeypatch):
    # the first method's map of "organ" is made all zero (as an all-negative layer gives): the run
    # explains that class again with cam.fallback, says so, and keeps the other class's map
    original = vn.NnUNetModel.explain
    calls = []

    def explain(self, image, classes, method, **kwargs):
        calls.append((method, list(classes)))
        res = original(self, image, classes=classes, method=method, **kwargs)
        if method == "gradcam" and 1 in res.heat:
            res.heat[1] = np.zeros_like(res.heat[1])
        return res

    monkeypatch.setattr(vn.NnUNetModel, "explain", explain)
    out = tmp_path / "out"
    cam = {"method": "gradcam", "fallback": "hirescam", "target_layers": LAYER}
    path = write_config(tmp_path / "run.yaml", model_copy, folders.toy_images, folders.toy_labels, out, cam=cam)
    assert main(["run", str(path), "--no-supervise"]) == 0
    assert "gradcam (hirescam for a class whose gradcam map is all zero)" in capsys.readouterr().out
    assert calls == [("gradcam", [1, 2]), ("hirescam", [1])] * 2  # one more pass per case, for that class only
    rows = list(csv.DictReader(open(out / "summary.csv")))
    model = vn.load(model_copy, folds=[0, 1], device="cpu")
    for row in rows:
        if row["class_name"] == "organ":
            assert row["method"] == "hirescam" and row["note"].startswith("hirescam in place of gradcam")
            image = folders.toy_images / f"{row['case']}_0000.nii.gz"
            res = original(
                model,
                image,
                classes=[1],
                method="hirescam",
                layer=LAYER,
                use_mirroring=False,
                tile_step_size=0.7,
                mask=None,
            )
            written = np.asarray(nib.load(out / row["case"] / "organ" / "heat.nii.gz").dataobj)
            np.testing.assert_allclose(written, res.heat[1], atol=1e-6)
        else:
            assert row["method"] == "gradcam" and not row["note"].startswith("hirescam")
