"""Session fixtures: real nnU-Net results folders built once per test session (see nnunet_data)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nnunet_data as nd
import pytest


@dataclass
class Folders:
    root: Path
    toy_3d: Path  # folds 0 and 1, random weights
    toy_2d: Path  # fold 0, random weights
    regions: Path  # fold 0, random weights, two channels, nibabel reader with reorientation
    toy_images: Path
    toy_labels: Path
    regions_images: Path
    regions_labels: Path


@pytest.fixture(scope="session")
def nnunet_env(tmp_path_factory):
    """nnU-Net's three folders under the session's temporary folder, set in the environment
    for the whole session (and put back afterwards)."""
    root = tmp_path_factory.mktemp("nnunet")
    saved = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    nd.nnunet_environment(root)
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def folders(nnunet_env) -> Folders:
    """Two datasets planned and preprocessed by nnU-Net, and trainer checkpoints of random networks."""
    root = nnunet_env
    raw = root / "raw"
    nd.write_toy_dataset(raw)
    nd.write_regions_dataset(raw)
    nd.plan_and_preprocess(nd.TOY, ("3d_fullres", "2d"))
    nd.plan_and_preprocess(nd.REGIONS, ("3d_fullres",))
    toy_3d = nd.save_random_checkpoint(nd.TOY, "3d_fullres", fold=0, seed=0)
    nd.save_random_checkpoint(nd.TOY, "3d_fullres", fold=1, seed=1)
    toy_2d = nd.save_random_checkpoint(nd.TOY, "2d", fold=0, seed=2)
    regions = nd.save_random_checkpoint(nd.REGIONS, "3d_fullres", fold=0, seed=0)
    return Folders(
        root=root,
        toy_3d=toy_3d,
        toy_2d=toy_2d,
        regions=regions,
        toy_images=raw / nd.TOY_NAME / "imagesTs",
        toy_labels=raw / nd.TOY_NAME / "labelsTs",
        regions_images=raw / nd.REGIONS_NAME / "imagesTs",
        regions_labels=raw / nd.REGIONS_NAME / "labelsTs",
    )


@pytest.fixture(scope="session")
def trained_3d(folders) -> Path:
    """The toy 3D configuration's fold 4 after a few short epochs of nnU-Net's own training."""
    return nd.train_briefly(nd.TOY, "3d_fullres", fold=4, epochs=8, iterations=12)
