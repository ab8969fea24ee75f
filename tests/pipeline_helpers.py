"""Small datasets, networks and configs for the runner tests (also imported by subprocesses)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import UNet

SHAPE = (20, 18, 12)


def oblique_affine(spacing=(1.5, 1.5, 2.5), origin=(30.0, -12.0, 7.5)) -> np.ndarray:
    """LPS-like (x and y flipped), rotated 20 degrees about z, non-zero origin."""
    a = np.deg2rad(20.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def write_case(folder: Path, name: str, seed: int, shape=SHAPE, label_folder: Path | None = None) -> Path:
    """A noisy volume with a bright box (class 1) and a dark box (class 2), and its label."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 0.1, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    x0, y0 = 2 + seed % 5, 3 + seed % 4
    label[x0 : x0 + 5, y0 : y0 + 5, 3:8] = 1
    label[x0 + 8 : x0 + 12, y0 + 6 : y0 + 10, 4:9] = 2
    image[label == 1] += 1.0
    image[label == 2] -= 1.0
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(image, oblique_affine()), path)
    if label_folder is not None:
        label_folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(label, oblique_affine()), label_folder / f"{name}.nii.gz")
    return path


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(3, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0)


NETWORK_DEF = {
    "_target_": "monai.networks.nets.UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}


def config(root: Path, **sections) -> dict:
    """A run config over ``root/images`` (labels in ``root/labels``) with a tiny checkpoint."""
    ckpt = root / "model.pt"
    if not ckpt.exists():
        torch.save({"state_dict": tiny_unet().state_dict()}, ckpt)
    keys = ["image", "label"]
    cfg = {
        "network_def": dict(NETWORK_DEF),
        "checkpoint": str(ckpt),
        "device": "cpu",
        "cam": {"method": "gradcam", "target_layers": "model.1.submodule"},
        "targets": {"classes": [1, 2], "names": {1: "bright", 2: "dark"}, "mask": "whole"},
        "preprocessing": [
            {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS", "labels": None},
            {"_target_": "Spacingd", "keys": keys, "pixdim": [2.0, 2.0, 2.5], "mode": ["bilinear", "nearest"]},
            {"_target_": "DivisiblePadd", "keys": keys, "k": 2},
        ],
        "data": {"folder": str(root / "images"), "label_folder": str(root / "labels"), "num_workers": 0},
        "outputs": {"dir": str(root / "out"), "axes": ["axial"], "figure": "orthogonal"},
    }
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


class GatedUNet(UNet):
    """The tiny U-Net, but its forward pass number ``block_after + 1`` (and later ones) waits
    until the file ``gate`` exists: a run can be killed at a known point of a case."""

    calls = 0

    def __init__(self, gate: str, block_after: int, **kwargs):
        super().__init__(**kwargs)
        self.gate = gate
        self.block_after = block_after

    def forward(self, x):
        GatedUNet.calls += 1
        if GatedUNet.calls > self.block_after:
            Path(self.gate + ".waiting").touch()
            deadline = time.monotonic() + 120
            while not os.path.exists(self.gate):
                if time.monotonic() > deadline:
                    raise RuntimeError("gate never opened")
                time.sleep(0.02)
        return super().forward(x)


class BrightnessNet(torch.nn.Module):
    """A network whose class 1 is the image itself (``relu(x)``) and class 0 its negative: the CAM of
    class 1 at ``feat`` (HiResCAM, whole volume) is the image, so it peaks where the image does."""

    def __init__(self, dims: int = 3):
        super().__init__()
        conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
        self.feat = conv(1, 1, 1, bias=False)
        self.act = torch.nn.ReLU()
        self.head = conv(1, 2, 1, bias=False)
        with torch.no_grad():
            self.feat.weight.fill_(1.0)
            self.head.weight.copy_(torch.tensor([-1.0, 1.0]).view(2, 1, *([1] * dims)))

    def forward(self, x):
        return self.head(self.act(self.feat(x)))
