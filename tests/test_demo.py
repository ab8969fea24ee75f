"""`volcam demo`: the synthetic dataset's geometry and labels, and the demo end to end (short training)."""

import csv
import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from volcam import cli
from volcam.config import load_config
from volcam.demo import DEMO_SPACING, demo_affine, make_dataset, run_demo, synth_case

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_demo_affine_is_realistic():
    affine = demo_affine()
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), DEMO_SPACING)  # voxel sizes in mm
    assert nib.aff2axcodes(affine) == ("L", "P", "S")  # stored like an LPS scan
    rot = affine[:3, :3] / np.asarray(DEMO_SPACING)
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)  # a rotation (with flips)
    assert np.abs(rot - np.round(rot)).max() > 0.1  # oblique, not a permutation of the axes
    assert np.all(affine[:3, 3] != 0)


def test_synthetic_case_has_two_lesion_kinds():
    image, label = synth_case(np.random.default_rng(1))
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1, 2}
    body = (label == 0) & (image > -500)
    # bright lesions about 180 HU, dark about -60 HU, body about 40 HU (noise 18 HU)
    assert np.median(image[label == 1]) == pytest.approx(180, abs=20)
    assert np.median(image[label == 2]) == pytest.approx(-60, abs=20)
    assert np.median(image[body]) == pytest.approx(40, abs=20)
    # lesions are several mm across
    assert (label == 1).sum() * np.prod(DEMO_SPACING) > 500


def test_dataset_layout(tmp_path):
    path = make_dataset(tmp_path, n_train=2, n_test=1, shape=(24, 20, 12), seed=3)
    listing = json.loads(path.read_text())
    assert [len(listing["training"]), len(listing["test"])] == [2, 1]
    entry = listing["test"][0]
    img = nib.load(str(tmp_path / entry["image"]))
    lbl = nib.load(str(tmp_path / entry["label"]))
    assert img.shape == lbl.shape == (24, 20, 12)
    np.testing.assert_allclose(img.affine, demo_affine())
    np.testing.assert_allclose(lbl.affine, demo_affine())
    assert img.header.get_xyzt_units()[0] == "mm"


def test_demo_end_to_end_short_training(tmp_path, capsys):
    out = tmp_path / "demo"
    result = run_demo(out, steps=3, max_seconds=None, n_train=2, n_test=1, shape=(32, 28, 16), log=print)
    printed = capsys.readouterr().out
    assert result["exit_status"] == 0 and result["steps"] == 3
    assert set(result["dice"]) == {1, 2} and all(0 <= d <= 1 for d in result["dice"].values())
    assert f"{out / 'cams'}" in printed and "held-out Dice" in printed
    # the saved config reruns as is: everything is complete, nothing redone
    config = load_config(result["config"])
    assert config["checkpoint"] == str(result["checkpoint"]) and config["device"] == "cpu"
    net = config.build_network()
    assert isinstance(net, torch.nn.Module)
    rows = list(csv.DictReader(open(result["summary"])))
    assert [(r["case"], r["class_name"], r["status"]) for r in rows] == [
        ("demo_te000", "bright", "ok"),
        ("demo_te000", "dark", "ok"),
    ]
    case_dir = result["outputs"] / "demo_te000"
    source = nib.load(str(out / "data" / "imagesTs" / "demo_te000.nii.gz"))
    for name in ("bright", "dark"):
        heat = nib.load(str(case_dir / name / "heat.nii.gz"))
        assert heat.shape == source.shape
        np.testing.assert_allclose(heat.affine, source.affine, atol=1e-5)
        assert len(list((case_dir / name / "axial").glob("*.png"))) == source.shape[2]
        assert (case_dir / name / "figure.png").is_file()
    assert cli.main(["run", str(result["config"]), "--quiet"]) == 0
    assert {r["status"] for r in csv.DictReader(open(result["summary"]))} == {"skipped"}

    # scripts/explain_volume.py does the same steps with the Python API
    spec = importlib.util.spec_from_file_location("explain_volume", SCRIPTS / "explain_volume.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    image = out / "data" / "imagesTs" / "demo_te000.nii.gz"
    script.main(
        [
            str(image),
            "--checkpoint",
            str(result["checkpoint"]),
            "--roi",
            "16",
            "16",
            "16",
            "--out",
            str(tmp_path / "explained"),
        ]
    )
    heat = nib.load(str(tmp_path / "explained" / "heat.nii.gz"))
    assert heat.shape == source.shape
    np.testing.assert_allclose(heat.affine, source.affine, atol=1e-5)
    assert (tmp_path / "explained" / "figure.png").is_file()


def test_demo_command_checks_its_arguments(capsys):
    assert cli.main(["demo", "--steps", "0"]) == 2
    assert "volcam demo: error: --steps must be at least 1, not 0" in capsys.readouterr().err
