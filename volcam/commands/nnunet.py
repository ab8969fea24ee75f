"""``volcam nnunet``: CAMs of a trained nnU-Net v2 model for a folder of scans.

Arguments follow ``nnUNetv2_predict`` (``-i``, ``-o``, ``-m`` or ``-d``/``-c``/``-tr``/``-p``,
``-f``, ``-chk``, ``-step_size``, ``--disable_tta``, ``-device``), so a prediction command becomes
a CAM command by changing its name and adding ``--classes`` / ``--layer``.
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  volcam nnunet -i imagesTs/ -o cams/ -m $nnUNet_results/Dataset003_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres \\
      -f 0 1 2 3 4 --classes 1 2 --layer decoder.stages.3
  volcam nnunet -i imagesTs/ -o cams/ -d 3 -c 3d_fullres -f 0 --classes tumor
  volcam nnunet -m MODEL_FOLDER --layers            # list the layers to choose from

Writes, per case, CASE/segmentation (nnUNetv2_predict's labels), CASE/CLASS/heat (float32 on the
scan's grid, in the scan's format), slice PNGs and a figure, CASE/volcam-case.json; and
summary.csv with one row per case and class. Exit status: 0 every case done, 1 some case
failed (see summary.csv), 2 the model or the arguments are wrong.
"""

SUMMARY_COLUMNS = [
    "case",
    "class",
    "class_name",
    "status",
    "error",
    "note",
    "seconds",
    "image",
    "predicted_voxels",
    "predicted_volume_ml",
    "peak_x",
    "peak_y",
    "peak_z",
    "peak_voxel",
    "energy_in_prediction",
    "energy_in_label",
    "raw_max",
    "windows",
]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    model = parser.add_argument_group("model (a results folder, or -d and -c under $nnUNet_results)")
    model.add_argument("-m", "--model", metavar="FOLDER", help="the results folder (with dataset.json, plans.json)")
    model.add_argument("-d", "--dataset", metavar="ID", help="dataset id or name, as for nnUNetv2_predict")
    model.add_argument("-c", "--configuration", metavar="CONF", help="configuration, e.g. 3d_fullres")
    model.add_argument("-tr", "--trainer", default="nnUNetTrainer", help="trainer class (default: nnUNetTrainer)")
    model.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    model.add_argument(
        "-f", "--folds", nargs="+", default=["0"], metavar="F", help="folds to average (default: 0); 'all' ok"
    )
    model.add_argument(
        "-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in each fold folder"
    )
    model.add_argument(
        "--trust-checkpoint",
        "--trust_checkpoint",
        action="store_true",
        help="read checkpoints that the safe reader refuses with full unpickling (can run code from the file)",
    )
    model.add_argument("-device", "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    model.add_argument("--layers", action="store_true", help="list the network's layers with their shapes and exit")

    io = parser.add_argument_group("cases and outputs")
    io.add_argument("-i", "--input", nargs="+", metavar="PATH", help="a folder of scans in nnU-Net's naming, or files")
    io.add_argument("-o", "--output", metavar="DIR", help="output folder")
    io.add_argument(
        "--masks",
        metavar="DIR",
        help="folder of label maps named CASE<file ending> (e.g. labelsTs): each class is explained over its label",
    )
    io.add_argument("--no-pngs", action="store_true", help="do not write slice PNGs")
    io.add_argument("--no-figure", action="store_true", help="do not write the orthogonal-views figure")
    io.add_argument("--axes", nargs="+", default=["axial"], choices=["axial", "coronal", "sagittal"])
    io.add_argument("-q", "--quiet", action="store_true", help="no per-case lines")

    cam = parser.add_argument_group("CAM")
    cam.add_argument("--classes", nargs="+", metavar="C", help="label values or names (default: all foreground)")
    cam.add_argument("--method", default="gradcam", help="CAM method (default: gradcam)")
    cam.add_argument(
        "--layer", nargs="+", metavar="NAME", help="target layer(s) (default: second-to-last decoder stage)"
    )
    cam.add_argument("--layer-output", type=int, default=None, help="index into a layer's list output (encoder skips)")
    cam.add_argument(
        "-step_size", "--step-size", type=float, default=0.5, dest="step_size", help="tile step (default: 0.5)"
    )
    cam.add_argument(
        "--disable_tta", "--disable-tta", action="store_true", dest="disable_tta", help="no mirroring, as nnU-Net's"
    )
    cam.add_argument(
        "--batch-size", type=int, default=1, help="views per forward (default 1: nnU-Net's logits exactly)"
    )


def _write_summary(rows: list[dict], path) -> None:
    import csv
    import io

    from volcam.io import atomic_write

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in SUMMARY_COLUMNS})
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue()))


def _cases(model, inputs: list[str]) -> dict:
    from pathlib import Path

    from volcam.nnunet.preprocess import case_files

    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        return model.list_cases(inputs[0])
    cases: dict = {}
    for item in inputs:
        case, files = case_files(item, model.file_ending, len(model.channel_names))
        cases[case] = files
    return cases


def print_layers(model, *, depth: int | None = None) -> None:
    """The layers of an nnU-Net model with their kinds and shapes for one patch."""
    layers = model.layers()
    if depth is not None:
        layers = [layer for layer in layers if layer.name.count(".") < depth]
    width = max(len(layer.name) for layer in layers)
    kind_width = max(len(layer.kind) for layer in layers)
    print(f"{type(model.network).__name__} on one patch {list(model.patch_size)}; pass a name with --layer")
    print(f"{'name':<{width}}  {'kind':<{kind_width}}  {'params':>9}  output")
    for layer in layers:
        print(f"{layer.name:<{width}}  {layer.kind:<{kind_width}}  {layer.num_parameters:>9}  {layer.output_shape}")


def main(args: argparse.Namespace) -> int:
    import time
    import warnings
    from pathlib import Path

    import volcam.nnunet as vn
    from volcam.errors import ArgumentError, VolcamError

    if args.model is None and (args.dataset is None or args.configuration is None):
        raise ArgumentError("give the model with -m FOLDER, or with -d DATASET and -c CONFIGURATION")
    try:
        model = vn.load(
            args.model,
            folds=[int(f) if f.isdigit() else f for f in args.folds],
            checkpoint=args.checkpoint,
            device=args.device,
            trust_checkpoint=args.trust_checkpoint,
            dataset=args.dataset if args.model is None else None,
            configuration=args.configuration if args.model is None else None,
            trainer=args.trainer,
            plans=args.plans,
        )
    except ModuleNotFoundError as err:
        if err.name != "nnunetv2":
            raise
        print(f"volcam nnunet: error: {err}", file=sys.stderr)
        return 2
    if args.layers:
        print_layers(model)
        return 0
    if not args.input or not args.output:
        raise ArgumentError("-i INPUT and -o OUTPUT are needed (or --layers to list the layers)")
    cases = _cases(model, args.input)
    out = Path(args.output)
    rows, failed = [], 0
    for i, (case, files) in enumerate(cases.items(), 1):
        start = time.perf_counter()
        mask = Path(args.masks) / f"{case}{model.file_ending}" if args.masks else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # empty targets are reported in the summary's note
                res = model.explain(
                    files,
                    classes=args.classes,
                    method=args.method,
                    layer=args.layer,
                    layer_output=args.layer_output,
                    mask=mask,
                    use_mirroring=not args.disable_tta,
                    tile_step_size=args.step_size,
                    batch_size=args.batch_size,
                )
            res.save(out / case, pngs=not args.no_pngs, figure=not args.no_figure, axes=tuple(args.axes))
            seconds = round(time.perf_counter() - start, 3)
            for row in res.summary_rows():
                rows.append({**row, "status": "ok", "error": "", "seconds": seconds, "image": str(files[0])})
            line = f"{case}: ok ({seconds:.1f} s)"
        except VolcamError as err:
            failed += 1
            rows.append({"case": case, "status": "failed", "error": str(err), "image": str(files[0])})
            line = f"{case}: failed: {err}"
        if not args.quiet:
            print(f"[{i}/{len(cases)}] {line}", flush=True)
    _write_summary(rows, out / "summary.csv")
    if not args.quiet:
        print(f"{len(cases) - failed} of {len(cases)} case(s) done; summary: {out / 'summary.csv'}")
    return 1 if failed else 0
