"""Real nnU-Net results folders built from scratch for the tests: a small synthetic dataset in
nnU-Net's raw layout, nnU-Net's own fingerprinting, planning and preprocessing on it, plans shrunk
to tiny networks and patches, and a trainer's network saved as ``checkpoint_final.pth``.

nnU-Net reads ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` from the environment;
:func:`nnunet_environment` sets them to folders under the test session's temporary folder before
anything of nnU-Net runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing.pool
import os
import threading
from pathlib import Path

import numpy as np

#: 3D dataset: one channel, two nested labels; sitk direction not the identity, anisotropic spacing
TOY = 11
#: region-based dataset: two channels, BraTS-like nested regions, read with nibabel (reoriented)
REGIONS = 12

TOY_NAME = f"Dataset{TOY:03d}_Toy"
REGIONS_NAME = f"Dataset{REGIONS:03d}_Regions"

# sitk direction (row-major 3x3): the image's x axis points along world y, its y axis along -x
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def nnunet_environment(root: Path) -> dict[str, str]:
    """Point nnU-Net's three folders into ``root`` (set in ``os.environ``) and return them."""
    paths = {
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"),
    }
    for key, value in paths.items():
        Path(value).mkdir(parents=True, exist_ok=True)
        os.environ[key] = value
    return paths


# ----------------------------------------------------------------------------- synthetic scans
def _phantom(rng: np.random.Generator, size_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float]):
    """An image (body disc of noise, a bright ellipsoid 'organ' with a dark 'lesion' inside) and
    its labels, as arrays [z, y, x]. The body is zero outside, so cropping to non-zero bites."""
    z, y, x = (np.arange(n, dtype=np.float64) for n in size_zyx)
    zz, yy, xx = np.meshgrid(z * spacing_zyx[0], y * spacing_zyx[1], x * spacing_zyx[2], indexing="ij")
    extent = [n * s for n, s in zip(size_zyx, spacing_zyx)]
    cy, cx = extent[1] / 2, extent[2] / 2
    body = ((yy - cy) / (0.45 * extent[1])) ** 2 + ((xx - cx) / (0.45 * extent[2])) ** 2 <= 1.0
    image = np.where(body, rng.normal(100.0, 12.0, size_zyx), 0.0)
    centre = [extent[0] / 2, cy + rng.uniform(-3, 3), cx + rng.uniform(-3, 3)]
    radii = [extent[0] * 0.3, rng.uniform(6, 8), rng.uniform(7, 9)]
    organ = sum(((c - m) / r) ** 2 for c, m, r in zip((zz, yy, xx), centre, radii)) <= 1.0
    lesion_centre = [centre[0], centre[1] + rng.uniform(-2, 2), centre[2] + rng.uniform(-2, 2)]
    lesion = sum(((c - m) / r) ** 2 for c, m, r in zip((zz, yy, xx), lesion_centre, (4.0, 3.0, 3.0))) <= 1.0
    organ &= body
    lesion &= organ
    image = np.where(organ, image + 80.0, image)
    image = np.where(lesion, image - 130.0, image)
    labels = np.zeros(size_zyx, dtype=np.uint8)
    labels[organ] = 1
    labels[lesion] = 2
    return image.astype(np.float32), labels


def _write_sitk(array_zyx: np.ndarray, path: Path, spacing_xyz, origin, direction=DIRECTION) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path), True)


def _write_nibabel(array_zyx: np.ndarray, path: Path, affine: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), affine), str(path))


#: sizes [z, y, x] and spacings [z, y, x] of the test cases: one larger than the patch (several
#: tiles, resampled), one smaller than the patch along y (padded)
TEST_CASES = {
    "case_a": ((14, 44, 52), (2.8, 0.85, 0.85)),
    "case_b": ((9, 30, 40), (3.1, 0.8, 0.8)),
}


def write_toy_dataset(raw: Path, n_train: int = 6) -> Path:
    """``Dataset011_Toy``: 3D, channel ``CT``, labels background/organ/lesion, SimpleITK geometry
    with a rotated direction; ``imagesTs`` holds :data:`TEST_CASES`."""
    folder = raw / TOY_NAME
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n_train):
        image, labels = _phantom(rng, (12, 36, 40), (3.0, 0.8, 0.8))
        origin = (10.0 + i, -20.0, 5.0)
        _write_sitk(image, folder / "imagesTr" / f"toy_{i:03d}_0000.nii.gz", (0.8, 0.8, 3.0), origin)
        _write_sitk(labels, folder / "labelsTr" / f"toy_{i:03d}.nii.gz", (0.8, 0.8, 3.0), origin)
    for name, (size, spacing) in TEST_CASES.items():
        image, labels = _phantom(rng, size, spacing)
        _write_sitk(image, folder / "imagesTs" / f"{name}_0000.nii.gz", spacing[::-1], (-3.0, 7.5, 12.0))
        _write_sitk(labels, folder / "labelsTs" / f"{name}.nii.gz", spacing[::-1], (-3.0, 7.5, 12.0))
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


def _las_affine(spacing_xyz, origin) -> np.ndarray:
    """A LAS affine (x axis towards the patient's left) with a small rotation about z."""
    theta = np.deg2rad(10.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([-1.0, 1.0, 1.0]) @ np.diag(spacing_xyz)
    a[:3, 3] = origin
    return a


def write_regions_dataset(raw: Path, n_train: int = 6) -> Path:
    """``Dataset012_Regions``: two channels, BraTS-style regions (``whole`` = labels 1 and 2,
    ``core`` = label 2), read with ``NibabelIOWithReorient`` from LAS, slightly oblique files."""
    folder = raw / REGIONS_NAME
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)

    def write_case(sub: str, name: str, size, spacing, labels_sub: str | None):
        image, labels = _phantom(rng, size, spacing)
        affine = _las_affine(spacing[::-1], (30.0, -12.0, 4.0))
        second = np.where(labels > 0, image * 0.5 + 40.0, image * 0.8)  # another contrast of the same anatomy
        _write_nibabel(image, folder / sub / f"{name}_0000.nii.gz", affine)
        _write_nibabel(second.astype(np.float32), folder / sub / f"{name}_0001.nii.gz", affine)
        if labels_sub:
            _write_nibabel(labels, folder / labels_sub / f"{name}.nii.gz", affine)

    for i in range(n_train):
        write_case("imagesTr", f"reg_{i:03d}", (12, 36, 40), (3.0, 0.8, 0.8), "labelsTr")
    for name, (size, spacing) in TEST_CASES.items():
        write_case("imagesTs", name, size, spacing, "labelsTs")
    dataset = {
        "channel_names": {"0": "T1", "1": "T2"},
        "labels": {"background": 0, "whole": [1, 2], "core": 2},
        "regions_class_order": [1, 2],
        "numTraining": n_train,
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "NibabelIOWithReorient",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


# ----------------------------------------------------------------------------- nnU-Net's pipeline
class _ThreadContext:
    """Stands in for ``multiprocessing.get_context("spawn")`` inside nnU-Net's fingerprinting,
    preprocessing and prediction: the same code, with threads instead of spawned processes (which
    would each import torch and nnU-Net again, seconds apiece on a small machine)."""

    Pool = multiprocessing.pool.ThreadPool
    Process = threading.Thread


@contextlib.contextmanager
def threads_for_spawn():
    """nnU-Net's planning, preprocessing and ``predict_from_files`` with threads for processes."""
    import nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor as fe
    import nnunetv2.inference.data_iterators as di
    import nnunetv2.inference.predict_from_raw_data as pr
    import nnunetv2.preprocessing.preprocessors.default_preprocessor as dp

    saved = [(m, m.multiprocessing) for m in (fe, dp, di, pr)]

    class _Shim:
        def __getattr__(self, name):
            return getattr(multiprocessing, name)

        @staticmethod
        def get_context(method=None):
            return _ThreadContext

    try:
        for m, _ in saved:
            m.multiprocessing = _Shim()
        yield
    finally:
        for m, original in saved:
            m.multiprocessing = original


#: tiny networks: (patch size, strides, features) per configuration
TINY = {
    "3d_fullres": ([8, 24, 24], [[1, 1, 1], [1, 2, 2], [2, 2, 2]], [4, 8, 16]),
    "2d": ([24, 32], [[1, 1], [2, 2], [2, 2]], [4, 8, 16]),
}


def _shrink_plans(plans_file: Path) -> dict:
    plans = json.loads(plans_file.read_text())
    for name, (patch, strides, features) in TINY.items():
        conf = plans["configurations"].get(name)
        if conf is None:
            continue
        conf["patch_size"] = patch
        conf["batch_size"] = 2
        arch = conf["architecture"]["arch_kwargs"]
        n = len(features)
        arch["n_stages"] = n
        arch["features_per_stage"] = features
        arch["strides"] = strides
        arch["kernel_sizes"] = [[3] * len(patch)] * n
        arch["n_conv_per_stage"] = [1] * n
        arch["n_conv_per_stage_decoder"] = [1] * (n - 1)
    # the cascade is not made for images this small; keep the folder to what the tests use
    plans["configurations"] = {k: v for k, v in plans["configurations"].items() if k in TINY}
    plans_file.write_text(json.dumps(plans, indent=2))
    return plans


def plan_and_preprocess(dataset_id: int, configurations=("3d_fullres", "2d")) -> dict:
    """nnU-Net's fingerprint extraction, experiment planning and preprocessing of one dataset,
    with the plans shrunk to :data:`TINY` networks between planning and preprocessing."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset, preprocess_dataset

    quiet = io.StringIO()
    with threads_for_spawn(), contextlib.redirect_stdout(quiet):
        extractor = DatasetFingerprintExtractor(dataset_id, num_processes=1, verbose=False)
        extractor.num_foreground_voxels_for_intensitystats = 20000  # 1e8 by default: seconds and gigabytes
        extractor.show_progress_bar = False
        extractor.run(overwrite_existing=True)
        plan_experiment_dataset(dataset_id)
        plans_file = Path(os.environ["nnUNet_preprocessed"]) / _dataset_name(dataset_id) / "nnUNetPlans.json"
        plans = _shrink_plans(plans_file)
        preprocess_dataset(
            dataset_id,
            configurations=tuple(configurations),
            num_processes=[1] * len(configurations),
            show_progress_bar=False,
        )
    return plans


def _dataset_name(dataset_id: int) -> str:
    return {TOY: TOY_NAME, REGIONS: REGIONS_NAME}[dataset_id]


def make_trainer(dataset_id: int, configuration: str, fold: int = 0):
    """nnU-Net's base trainer for one fold, on the CPU, initialised (random weights)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    pre = Path(os.environ["nnUNet_preprocessed"]) / _dataset_name(dataset_id)
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((pre / "dataset.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = nnUNetTrainer(plans, configuration, fold, dataset_json, device=torch.device("cpu"))
        trainer.initialize()
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the inference mirror axes
    return trainer


def save_random_checkpoint(dataset_id: int, configuration: str, fold: int = 0, seed: int = 0) -> Path:
    """A trainer's freshly initialised network saved by the trainer as ``fold_F/checkpoint_final.pth``,
    with ``plans.json`` and ``dataset.json`` beside the folds as training leaves them."""
    import shutil

    import torch

    torch.manual_seed(seed)
    trainer = make_trainer(dataset_id, configuration, fold)
    out = Path(trainer.output_folder)
    trainer.save_checkpoint(str(out / "checkpoint_final.pth"))
    base = Path(trainer.output_folder_base)
    pre = Path(os.environ["nnUNet_preprocessed"]) / _dataset_name(dataset_id)
    shutil.copy(pre / "nnUNetPlans.json", base / "plans.json")
    shutil.copy(pre / "dataset.json", base / "dataset.json")
    return base


def train_briefly(dataset_id: int, configuration: str, fold: int = 0, epochs: int = 4, iterations: int = 20) -> Path:
    """A few short epochs of nnU-Net's own training loop on the CPU; writes ``checkpoint_final.pth``."""
    import torch

    torch.manual_seed(0)
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    trainer = make_trainer(dataset_id, configuration, fold)
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = 2
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.run_training()
    return Path(trainer.output_folder_base)


def nnunet_predict(
    model_folder: Path,
    folds,
    images: Path,
    out: Path,
    *,
    use_mirroring: bool = True,
    tile_step_size: float = 0.5,
    processes: bool = False,
) -> Path:
    """``nnUNetPredictor.predict_from_files`` on a folder of images, probabilities saved: the
    reference the CAM loop must reproduce. ``processes=False`` runs it with threads in place of
    its spawned worker processes."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with contextlib.redirect_stdout(io.StringIO()):
        predictor = nnUNetPredictor(
            tile_step_size=tile_step_size,
            use_mirroring=use_mirroring,
            device=torch.device("cpu"),
            allow_tqdm=False,
        )
        predictor.initialize_from_trained_model_folder(str(model_folder), tuple(folds))
        with threads_for_spawn() if not processes else contextlib.nullcontext():
            predictor.predict_from_files(
                str(images),
                str(out),
                save_probabilities=True,
                num_processes_preprocessing=1,
                num_processes_segmentation_export=1,
            )
    return out
