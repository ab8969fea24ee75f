"""The method and layer ``volcam run`` uses when the config names none (volcam.run.defaults)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.networks import nets
from pipeline_helpers import config, write_case

from volcam import cli
from volcam.errors import ConfigError
from volcam.run.defaults import DEFAULT_METHOD, choose_layer

DEMO_UNET = {
    "_target_": "monai.networks.nets.UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "num_res_units": 1,
}


@pytest.mark.parametrize(
    ("make", "expected", "channels"),
    [
        (lambda: nets.UNet(3, 1, 3, (8, 16, 32), (2, 2), num_res_units=1), "model.1.submodule.2", 8),
        (lambda: nets.SegResNet(3, 8, 1, 3, blocks_down=(1, 2, 2), blocks_up=(1, 1)), "up_layers.1", 8),
        (
            lambda: nets.DynUNet(3, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], filters=[8, 16, 32], res_block=True),
            "upsamples.1",
            8,
        ),
        (lambda: nets.BasicUNet(3, 1, 3, features=(8, 8, 16, 32, 64, 8)), "upcat_1", 8),
    ],
)
def test_the_default_layer_is_the_last_decoder_stage(make, expected, channels):
    model = make().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chosen = choose_layer(model, torch.zeros(1, 1, 32, 32, 32))
    assert chosen.name == expected
    assert chosen.reason.startswith("the last decoder stage") and f"{channels} channels" in chosen.reason
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # left as it was
    assert not model.training


def test_a_decoder_stage_with_no_more_channels_than_classes_is_passed_over():
    # a SegResNet whose last decoder stage has as many channels (8) as the output has classes
    model = nets.SegResNet(3, 8, 1, 8, blocks_down=(1, 2, 2), blocks_up=(1, 1)).eval()
    chosen = choose_layer(model, torch.zeros(1, 1, 32, 32, 32))
    assert chosen.name == "up_layers.0"
    assert chosen.reason.startswith("the last decoder stage with more channels than the 8 classes, 16 channels")


def test_a_network_without_decoder_stages_needs_target_layers():
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1))
    with pytest.raises(ConfigError, match="cam.target_layers is required for this network") as err:
        choose_layer(model.eval(), torch.zeros(1, 1, 16, 16, 16))
    assert err.value.key == "cam.target_layers"


def test_run_without_method_and_layer_explains_with_the_default(tmp_path, capsys):
    for i in range(2):
        write_case(tmp_path / "images", f"case{i}", seed=i, label_folder=tmp_path / "labels")
    cfg = config(tmp_path, outputs={"pngs": False, "figure": False})
    cfg["network_def"] = dict(DEMO_UNET)
    cfg["checkpoint"] = "none"
    cfg["preprocessing"][-1]["k"] = 4
    del cfg["cam"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["run", str(path), "--no-supervise"]) == 0
    printed = capsys.readouterr().out
    assert f"{DEFAULT_METHOD} (hirescam for a class whose {DEFAULT_METHOD} map is all zero) on model.1.submodule.2" in (
        printed
    )
    assert "on model.1.submodule.2 (chosen: the last decoder stage, 8 channels" in printed
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert {(r["method"], r["layer"]) for r in rows} == {(DEFAULT_METHOD, "model.1.submodule.2")}
    record = json.loads((tmp_path / "out" / "case0" / "volcam-case.json").read_text())
    assert record["maps"]["method"] == DEFAULT_METHOD
    assert record["maps"]["target_layers"] == ["model.1.submodule.2"]  # what was used, not what was written
    # the rerun finds the same default and skips
    assert cli.main(["run", str(path), "--no-supervise"]) == 0
    assert "2 of 2 case(s) already complete" in capsys.readouterr().out


def test_run_without_a_layer_on_a_network_without_decoder_stages_exits_2(tmp_path, capsys):
    write_case(tmp_path / "images", "case0", seed=0, label_folder=tmp_path / "labels")
    cfg = config(tmp_path)  # the tiny U-Net: one level, its only decoder block is the output block
    cfg["cam"] = {"method": "layercam"}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["run", str(path), "--no-supervise"]) == 2
    err = capsys.readouterr().err
    assert "cam.target_layers is required for this network" in err and "volcam layers" in err
    assert not (tmp_path / "out" / "summary.csv").exists()


def _fallback_run(tmp_path: Path, cam: dict) -> list[dict]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(2):  # positive 2D scans: NegativeFeatures predicts class 1 everywhere
        nib.save(nib.Nifti1Image((rng.random((12, 10)) + 0.5).astype(np.float32), np.eye(4)), images / f"c{i}.nii.gz")
    cfg = {
        "network_def": {"_target_": "helpers.NegativeFeatures", "dims": 2},
        "checkpoint": "none",
        "spatial_dims": 2,
        "device": "cpu",
        "cam": cam,
        "targets": {"classes": [0, 1]},
        "data": {"folder": str(images), "num_workers": 0},
        "outputs": {"dir": str(tmp_path / "out"), "pngs": False, "figure": False, "viewer": False},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["run", str(path), "--no-supervise", "--overwrite"]) == 0
    return list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))


def test_the_default_method_falls_back_to_hirescam_where_its_map_is_empty(tmp_path, capsys):
    rows = _fallback_run(tmp_path, {"target_layers": "feat"})
    printed = capsys.readouterr().out
    assert "layercam (hirescam for a class whose layercam map is all zero) on feat" in printed
    for case in ("c0", "c1"):
        (zero,) = [r for r in rows if r["case"] == case and r["class"] == "0"]
        (one,) = [r for r in rows if r["case"] == case and r["class"] == "1"]
        assert zero["method"] == "layercam" and zero["note"].startswith("empty target")  # nothing to redo
        assert one["method"] == "hirescam"
        assert one["note"].startswith("hirescam in place of layercam (layercam: empty map:")
        heat = nib.load(tmp_path / "out" / case / "class1" / "heat.nii.gz").get_fdata()
        assert heat.max() > 0 and float(one["energy_in_prediction"]) == pytest.approx(1.0)
    record = json.loads((tmp_path / "out" / "c0" / "volcam-case.json").read_text())
    assert record["maps"]["method"] == "layercam" and record["maps"]["fallback"] == "hirescam"


def test_a_method_the_config_names_has_no_fallback_unless_asked(tmp_path, capsys):
    rows = _fallback_run(tmp_path, {"method": "layercam", "target_layers": "feat"})
    one = [r for r in rows if r["class"] == "1"]
    assert {r["method"] for r in one} == {"layercam"} and all(r["note"].startswith("empty map:") for r in one)
    rows = _fallback_run(tmp_path, {"method": "layercam", "fallback": "hirescam", "target_layers": "feat"})
    assert {r["method"] for r in rows if r["class"] == "1"} == {"hirescam"}
    rows = _fallback_run(tmp_path, {"fallback": "none", "target_layers": "feat"})  # the default method alone
    assert {r["method"] for r in rows} == {"layercam"}
