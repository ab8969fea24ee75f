import shutil

import pytest


@pytest.fixture(scope="session")
def _run_outputs(tmp_path_factory):
    """One real `volcam run` of the tiny U-Net over two cases and an unreadable one."""
    from pipeline_helpers import config, write_case

    from volcam import pipeline
    from volcam.config import load_config

    root = tmp_path_factory.mktemp("viewer-run")
    for i in range(2):
        write_case(root / "images", f"case{i}", seed=i, label_folder=root / "labels")
    (root / "images" / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    status = pipeline.run(load_config(config(root, outputs={"pngs": False, "figure": False})), quiet=True)
    assert status == 1  # the broken case failed, the others are done
    return root


@pytest.fixture
def run_outputs(_run_outputs, tmp_path):
    """A copy of the run (its dataset and output folder), for a test to change freely."""
    root = tmp_path / "run"
    shutil.copytree(_run_outputs / "out", root / "out")
    return _run_outputs, root / "out"
