"""Regenerate scripts/figures/example_orthogonal.png, the README's example figure.

A synthetic heat blob is placed at a world point on the grid a network would see
(the T1 scan shipped with nibabel, reoriented to RAS and resampled to 1.5 mm), taken
back onto the scan's own grid with volcam.io.invert_to_source, written as NIfTI, read
back, and drawn through the hottest voxel with volcam.figures.orthogonal_views.

    python scripts/make_readme_figure.py [OUTPUT.png]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Compose, Orientation, ScaleIntensityRange, Spacing
from nibabel.testing import data_path

from volcam import figures, io

SCAN = Path(data_path) / "anatomical.nii"  # T1, stored LAS, 2 mm voxels
POINT = np.array([-16.0, 4.0, 20.0])  # world mm (RAS+): in the patient's left hemisphere
DEFAULT_OUT = Path(__file__).resolve().parent / "figures" / "example_orthogonal.png"


def main(out: Path = DEFAULT_OUT) -> Path:
    preprocess = Compose(
        [
            Orientation("RAS", labels=None),
            Spacing((1.5, 1.5, 1.5)),
            ScaleIntensityRange(0.0, 14000.0, 0.0, 1.0, clip=True),
        ]
    )
    x = io.load_image(SCAN, preprocess)
    affine = x.affine.numpy()
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in x.shape[1:]], indexing="ij"), -1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    heat = np.exp(-((world - POINT) ** 2).sum(-1) / (2 * 7.0**2))
    heat_src = io.invert_to_source(torch.as_tensor(heat[None], dtype=torch.float32), x, preprocess)
    with tempfile.TemporaryDirectory() as tmp:
        saved = io.save_heat(heat_src, Path(tmp) / "heat.nii.gz", reference=SCAN)
        heat_file = nib.load(saved).get_fdata(dtype=np.float32)
    scan = nib.load(SCAN)
    fig = figures.orthogonal_views(
        scan.get_fdata(dtype=np.float32),
        heat_file,
        affine=scan.affine,
        alpha=0.7,
        panel_size=2.6,
        interpolation="bilinear",
    )
    return figures.save_figure(fig, out, dpi=110)


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT))
