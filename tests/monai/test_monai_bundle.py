"""configs/evaluator_handler.yaml: the CAM handler wired into an evaluator by config values
only, parsed and run with MONAI's bundle machinery."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("ignite")

from helpers import hook_count
from monai.bundle import ConfigParser

import volcam
from volcam.monai import CAMHandler

CONFIG = Path(__file__).parents[2] / "configs" / "evaluator_handler.yaml"
AFFINE = np.array([[0.0, 0.0, 2.5, -30.0], [-1.5, 0.0, 0.0, 12.0], [0.0, 2.0, 0.0, 7.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(autouse=True)
def _few_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_bundle_config_runs_evaluator_with_handler(tmp_path):
    data = tmp_path / "scans"
    data.mkdir()
    rng = np.random.default_rng(1)
    sources = []
    for i in range(3):
        image = rng.normal(0, 1, (16, 16, 16)).astype(np.float32)
        image[4:10, 4:10, 4:10] += 4
        nib.save(nib.Nifti1Image(image, AFFINE), str(data / f"p{i}_image.nii.gz"))
        sources.append(image)
    nib.save(nib.Nifti1Image(sources[0], AFFINE), str(data / "ignored_label.nii.gz"))  # not matched by the glob

    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser["dataset_dir"] = str(data)
    parser["output_dir"] = str(tmp_path / "cams")
    parser["cam_handler"]["max_cases"] = 2
    parser["cam_handler"]["exports"] = ["nifti"]  # PNGs and figures are covered elsewhere

    handler = parser.get_parsed_content("cam_handler")
    assert isinstance(handler, CAMHandler) and handler.method_cls is volcam.GradCAM
    parser.get_parsed_content("run")  # "$@evaluator.run()"

    network = parser.get_parsed_content("network")
    assert hook_count(network) == 0
    written = sorted(p.relative_to(tmp_path / "cams").as_posix() for p in (tmp_path / "cams").rglob("*.nii.gz"))
    assert written == ["epoch_0001/p0_image/class1/heat.nii.gz", "epoch_0001/p1_image/class1/heat.nii.gz"]
    cam = volcam.GradCAM(network.eval(), "model.1.submodule")
    for i in range(2):
        heat = nib.load(tmp_path / "cams" / "epoch_0001" / f"p{i}_image" / "class1" / "heat.nii.gz")
        np.testing.assert_allclose(heat.affine, AFFINE)
        assert heat.shape == (16, 16, 16)
        scaled = (sources[i] - sources[i].min()) / (sources[i].max() - sources[i].min())  # ScaleIntensityd
        expected = cam(torch.as_tensor(scaled)[None, None], targets=1)[0, 0].numpy()
        np.testing.assert_allclose(heat.get_fdata(dtype=np.float32), expected, rtol=1e-4, atol=1e-5)
