"""Explain one NIfTI scan with the Python API: the steps `volcam run` takes for each case.

After `volcam demo` (which trains the network this script rebuilds):

    python scripts/explain_volume.py demo-output/data/imagesTs/demo_te000.nii.gz \
        --checkpoint demo-output/model.pt --category 1 --roi 32 32 32 --out explained/

writes explained/heat.nii.gz (on the scan's grid, with its affine) and
explained/figure.png (axial, coronal and sagittal views through the hottest voxel).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from monai.networks.nets import UNet
from monai.transforms import Compose, DivisiblePad, Orientation, ScaleIntensityRange, Spacing

import volcam
from volcam import figures, io


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="a .nii or .nii.gz scan")
    parser.add_argument("--checkpoint", required=True, help="state dict of the demo network")
    parser.add_argument("--layer", default="model.1.submodule.2", help="target layer (see `volcam layers`)")
    parser.add_argument("--category", type=int, default=1, help="output channel to explain")
    parser.add_argument("--method", default="hirescam", choices=sorted(volcam.METHODS))
    parser.add_argument("--roi", type=int, nargs=3, default=None, help="sliding-window size (default: whole volume)")
    parser.add_argument("--out", default="explained", help="output folder")
    args = parser.parse_args(argv)

    # 1. the network, with weights loaded safely
    model = UNet(3, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    model.eval()

    # 2. the scan, preprocessed as in training; the MetaTensor records every spatial step
    preprocess = Compose(
        [
            Orientation("RAS", labels=None),
            Spacing((2.5, 2.5, 2.5)),
            ScaleIntensityRange(-200, 300, 0.0, 1.0, clip=True),
            DivisiblePad(4),
        ]
    )
    source = io.load_image(args.image)  # MetaTensor [1, X, Y, Z] with the scan's affine
    x = preprocess(source.clone())  # the network's grid

    # 3. the CAM: the whole volume at once, or window by window like inference
    cam = volcam.get_method(args.method)(model, args.layer)
    target = volcam.SegmentationTarget(args.category)  # summed logits over the predicted region
    batch = x.as_tensor()[None]
    if args.roi:
        heat, output = volcam.sliding_window_cam(cam, batch, args.roi, sw_batch_size=2, targets=target)
    else:
        res = cam.explain(batch, targets=target)
        heat, output = res.heat, res.output
    predicted = int((output.argmax(1) == args.category).sum())

    # 4. back onto the scan's own grid, as NIfTI and as a figure
    heat_src = io.invert_to_source(heat, x, preprocess)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    io.save_heat(heat_src, out / "heat.nii.gz", reference=source)
    fig = figures.orthogonal_views(source, heat_src, window=(-200, 300))
    figures.save_figure(fig, out / "figure.png")
    print(
        f"{predicted} voxels predicted as class {args.category}; wrote {out / 'heat.nii.gz'} and {out / 'figure.png'}"
    )


if __name__ == "__main__":
    main()
