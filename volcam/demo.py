"""``volcam demo``: a synthetic NIfTI dataset, a small 3D U-Net trained on it, and its CAMs.

Everything is generated locally (no download). The scans imitate CT: a soft-tissue body in
air, with two kinds of lesions that make the two foreground classes:

- class 1, "bright": contrast-enhancing spheres (about 180 HU);
- class 2, "dark": hypodense ellipsoids (about -60 HU).

The volumes have a realistic, non-identity geometry: 1.5 x 1.5 x 2.5 mm voxels, axes flipped
like an LPS-stored scan and rotated (oblique acquisition), and a non-zero origin. The demo
config resamples them to 2.5 mm isotropic voxels in RAS orientation, so the heat volumes written on
the scans' own grids also exercise the inversion of the preprocessing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEMO_SHAPE",
    "DEMO_SPACING",
    "CLASS_NAMES",
    "demo_affine",
    "synth_case",
    "make_dataset",
    "demo_config",
    "train",
    "held_out_dice",
    "run_demo",
]

_log = logging.getLogger(__name__)

DEMO_SHAPE = (64, 64, 40)
DEMO_SPACING = (1.5, 1.5, 2.5)
CLASS_NAMES = {1: "bright", 2: "dark"}
_HU = {"air": -1000.0, "body": 40.0, "bright": 180.0, "dark": -60.0}


def demo_affine(spacing=DEMO_SPACING, origin=(84.0, 102.0, -47.5)) -> np.ndarray:
    """The 4x4 voxel-to-world (RAS mm) matrix of the demo scans.

    Columns are the voxel axes: x and y are flipped (as in a scan stored LPS), the grid is
    rotated by 12 degrees about the z axis and 8 degrees about the x axis (oblique), the
    voxels are ``spacing`` mm and the first voxel lies at ``origin``.
    """
    az, ax = math.radians(12.0), math.radians(8.0)
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    flip = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ flip @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _ellipsoid(grid, center, radii):
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def synth_case(rng: np.random.Generator, shape=DEMO_SHAPE, spacing=DEMO_SPACING):
    """One synthetic scan and its label, as voxel arrays of ``shape``.

    Returns:
        ``(image float32 in HU, label uint8 with 0 background, 1 bright, 2 dark)``.
    """
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    mm = [g * s for g, s in zip(grid, spacing)]  # lesion sizes are set in mm, as in a real scan
    extent = [n * s for n, s in zip(shape, spacing)]
    center = [e / 2 + rng.uniform(-4, 4) for e in extent]
    body_r = [0.42 * extent[0], 0.36 * extent[1], 0.55 * extent[2]]
    body = _ellipsoid(mm, center, body_r)
    image = np.full(shape, _HU["air"], np.float32)
    image[body] = _HU["body"]
    label = np.zeros(shape, np.uint8)

    placed: list[tuple[np.ndarray, float]] = []
    kinds = [1] * int(rng.integers(1, 3)) + [2] * int(rng.integers(1, 3))
    rng.shuffle(kinds)
    for kind in kinds:
        for _ in range(50):  # rejection sampling: inside the body, not touching another lesion
            r = rng.uniform(6.0, 10.0) if kind == 1 else rng.uniform(7.0, 11.0)
            radii = [r, r, r] if kind == 1 else [r * 1.3, r * 0.8, r]
            c = np.array([cb + rng.uniform(-0.6, 0.6) * (rb - max(radii)) for cb, rb in zip(center, body_r)])
            if all(np.linalg.norm(c - pc) > max(radii) + pr + 3 for pc, pr in placed):
                break
        else:
            continue
        placed.append((c, max(radii)))
        region = _ellipsoid(mm, c, radii) & body
        image[region] = _HU["bright"] if kind == 1 else _HU["dark"]
        label[region] = kind

    # smooth bias field + noise, as a scanner would add
    bias = sum(rng.uniform(-15, 15) * (g / n - 0.5) for g, n in zip(grid, shape))
    image += bias.astype(np.float32) + rng.normal(0.0, 18.0, shape).astype(np.float32)
    return image.astype(np.float32), label


def make_dataset(root, *, n_train: int = 16, n_test: int = 4, shape=DEMO_SHAPE, seed: int = 0) -> Path:
    """Write the synthetic dataset under ``root`` in the MSD layout and return its ``dataset.json``.

    ``imagesTr``/``labelsTr`` hold the training cases, ``imagesTs``/``labelsTs`` the held-out
    ones; ``dataset.json`` lists them in its ``training`` and ``test`` sections (test entries
    carry their label too, so the demo can measure Dice and CAM energy inside the label).
    """
    import nibabel as nib

    root = Path(root)
    rng = np.random.default_rng(seed)
    affine = demo_affine()
    listing: dict = {
        "name": "volcam-demo",
        "description": "synthetic CT-like scans with bright (1) and dark (2) lesions",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(k): v for k, v in CLASS_NAMES.items()}},
        "numTraining": n_train,
        "numTest": n_test,
        "training": [],
        "test": [],
    }
    for section, n, img_dir, lbl_dir in (
        ("training", n_train, "imagesTr", "labelsTr"),
        ("test", n_test, "imagesTs", "labelsTs"),
    ):
        (root / img_dir).mkdir(parents=True, exist_ok=True)
        (root / lbl_dir).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            name = f"demo_{section[:2]}{i:03d}.nii.gz"
            image, label = synth_case(rng, shape)
            img = nib.Nifti1Image(image, affine)
            img.header.set_xyzt_units("mm")
            lbl = nib.Nifti1Image(label, affine)
            lbl.header.set_xyzt_units("mm")
            nib.save(img, root / img_dir / name)
            nib.save(lbl, root / lbl_dir / name)
            listing[section].append({"image": f"./{img_dir}/{name}", "label": f"./{lbl_dir}/{name}"})
    path = root / "dataset.json"
    path.write_text(json.dumps(listing, indent=2) + "\n")
    return path


def demo_config(root="demo-output") -> dict:
    """The demo's run configuration, for a demo folder ``root`` (as ``configs/demo.yaml``)."""
    root = str(root).rstrip("/")
    keys = ["image", "label"]
    return {
        "network_def": {
            "_target_": "monai.networks.nets.UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "channels": [8, 16, 32],
            "strides": [2, 2],
            "num_res_units": 1,
        },
        "checkpoint": f"{root}/model.pt",
        "device": "auto",
        "cam": {"method": "hirescam", "target_layers": "model.1.submodule.2"},
        "targets": {"classes": [1, 2], "names": {1: "bright", 2: "dark"}, "mask": "prediction"},
        "preprocessing": [
            {"_target_": "Orientationd", "keys": list(keys), "axcodes": "RAS", "labels": None},
            {"_target_": "Spacingd", "keys": list(keys), "pixdim": [2.5, 2.5, 2.5], "mode": ["bilinear", "nearest"]},
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": -200,
                "a_max": 300,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            },
            {"_target_": "DivisiblePadd", "keys": list(keys), "k": 4},
        ],
        "data": {"dataset_json": f"{root}/data/dataset.json", "section": "test", "num_workers": 1},
        "outputs": {
            "dir": f"{root}/cams",
            "axes": ["axial"],
            "figure": "orthogonal",
            "window": [-200, 300],
            "cmap": "jet",
            "alpha": 0.5,
        },
    }


def _prepared(config, entries, base: Path):
    """Preprocessed (image, label) tensors of dataset entries, through the config's pipeline."""
    import torch

    pre = config.build_preprocessing()
    images, labels = [], []
    for e in entries:
        d = pre({"image": str(base / e["image"]), "label": str(base / e["label"])})
        images.append(d["image"].as_tensor().float())  # plain tensors: MetaTensor ops are slow
        labels.append(d["label"].as_tensor().long())
    return torch.stack(images), torch.stack(labels)


def train(
    config,
    dataset_json,
    *,
    steps: int = 300,
    max_seconds: float | None = None,
    batch_size: int = 2,
    lr: float = 1e-2,
    seed: int = 0,
    log: Any = None,
):
    """Train ``config``'s network on the ``training`` section of ``dataset_json`` (CPU).

    Whole preprocessed volumes, random flips, Dice (foreground classes) + cross-entropy
    loss, Adam. Stops after ``steps`` steps or ``max_seconds`` seconds, whichever comes
    first. Dice on held-out cases passes 0.9 after about 150 steps; the demo's 250 steps
    take about 20 s on one CPU core (the training runs single-threaded).

    Returns:
        ``(model in eval mode, seconds spent, steps run)``.
    """
    import torch
    from monai.losses import DiceCELoss

    dataset_json = Path(dataset_json)
    listing = json.loads(dataset_json.read_text())
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = _prepared(config, listing["training"], dataset_json.parent)
    model = config.build_network(load_weights=False).train()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # This small network parallelises poorly; with one thread it trains about as fast on an
    # idle machine and many times faster on a busy one (no oversubscribed cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start, step = time.perf_counter(), 0
    n = images.shape[0]
    try:
        while step < steps and (max_seconds is None or time.perf_counter() - start < max_seconds):
            idx = torch.randperm(n, generator=gen)[:batch_size]
            x, y = images[idx], labels[idx]
            for axis in (2, 3, 4):
                if torch.rand((), generator=gen) < 0.5:
                    x, y = x.flip(axis), y.flip(axis)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            step += 1
            if log is not None and (step % 50 == 0 or step == 1):
                log(f"  step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - start:.0f} s)")
    finally:
        torch.set_num_threads(threads)
    return model.eval(), time.perf_counter() - start, step


def held_out_dice(model, config, dataset_json, section: str = "test") -> dict[int, float]:
    """Mean Dice per foreground class of ``model`` on a labelled section of ``dataset_json``."""
    import torch

    dataset_json = Path(dataset_json)
    entries = json.loads(dataset_json.read_text())[section]
    images, labels = _prepared(config, entries, dataset_json.parent)
    with torch.no_grad():
        pred = model(images).argmax(1, keepdim=True)
    out = {}
    for c in config["targets.classes"]:
        p, t = pred == c, labels == c
        inter = (p & t).sum(dim=(1, 2, 3, 4)).float()
        denom = (p.sum(dim=(1, 2, 3, 4)) + t.sum(dim=(1, 2, 3, 4))).float()
        dice = torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom))
        out[c] = float(dice.mean())
    return out


def run_demo(
    out_dir="demo-output",
    *,
    steps: int = 250,
    max_seconds: float | None = 150.0,
    n_train: int = 16,
    n_test: int = 4,
    seed: int = 0,
    quiet: bool = False,
    log: Any = None,
    device: str = "cpu",
    shape=DEMO_SHAPE,
) -> dict:
    """Make the dataset, train, save the checkpoint and config, and run the config on the test cases.

    ``steps``/``max_seconds`` bound the training (the defaults take about a minute on two
    CPU cores); ``shape`` is the voxel grid of the synthetic scans.

    Returns a dictionary with the paths (``dataset_json``, ``checkpoint``, ``config``,
    ``outputs``, ``summary``), the held-out ``dice`` per class, the training ``seconds`` and
    ``steps``, and the run's ``exit_status``.
    """
    import torch
    import yaml

    from volcam.config import load_config
    from volcam.run.loop import run

    say = log or _log.info
    log = (lambda *a, **k: None) if quiet else (lambda *a, **k: say(" ".join(str(x) for x in a)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"volcam demo: writing a synthetic dataset to {out_dir / 'data'}")
    dataset_json = make_dataset(out_dir / "data", n_train=n_train, n_test=n_test, seed=seed, shape=shape)
    cfg_dict = demo_config(out_dir.as_posix())
    cfg_dict["device"] = device
    config_path = out_dir / "demo.yaml"
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text(
        "# written by `volcam demo`; rerun with: volcam run "
        + config_path.as_posix()
        + "\n"
        + yaml.safe_dump(cfg_dict, sort_keys=False, default_flow_style=None)
    )
    tmp.replace(config_path)
    config = load_config(config_path)

    log(
        f"volcam demo: training a small 3D U-Net on {n_train} cases (CPU, "
        f"up to {steps} steps" + (f" or {max_seconds:.0f} s" if max_seconds else "") + ")"
    )
    model, seconds, done = train(
        config, dataset_json, steps=steps, max_seconds=max_seconds, seed=seed, log=None if quiet else log
    )
    checkpoint = Path(config["checkpoint"])
    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(checkpoint)
    dice = held_out_dice(model, config, dataset_json)
    log(
        f"volcam demo: trained {done} steps in {seconds:.0f} s; held-out Dice "
        + ", ".join(f"{CLASS_NAMES.get(c, c)} {d:.2f}" for c, d in dice.items())
    )
    if min(dice.values()) < 0.7:
        log(
            f"             (a short training: {done} steps; `volcam demo --max-seconds 600` "
            "lets a busy machine finish the 250 steps)"
        )

    log(f"volcam demo: explaining the {n_test} held-out cases with {config_path}")
    status = run(config, quiet=quiet, overwrite=True, on_line=log).exit_code
    outputs = Path(config["outputs.dir"])
    log(f"volcam demo: done. Heat volumes, slice PNGs and figures are in {outputs}/<case>/<class>/,")
    log(f"             the summary table is {outputs / 'summary.csv'}.")
    log(
        f"             Open a heat volume over its scan in 3D Slicer or ITK-SNAP, or rerun with: "
        f"volcam run {config_path.as_posix()}"
    )
    return {
        "dataset_json": dataset_json,
        "checkpoint": checkpoint,
        "config": config_path,
        "outputs": outputs,
        "summary": outputs / "summary.csv",
        "dice": dice,
        "seconds": seconds,
        "steps": done,
        "exit_status": status,
    }
