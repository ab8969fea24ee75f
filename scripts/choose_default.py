"""Which CAM method and which layer should ``volcam run`` use when the config names none?

This script measures it. It trains several segmentation networks of different architectures on
the demo's synthetic CT dataset (two lesion classes; and a two-class variant with the lesions
merged), runs ``volcam compare`` on each (every gradient method at the bottleneck and each
decoder stage, over the held-out cases), and ranks every (method, layer rule) pair by what the
maps do on all networks together:

- energy inside the predicted structure (a random map scores the structure's share of the volume),
- the smallest "times a random map" over every case and class,
- how often the peak lies inside the prediction ("pointing"), and how often the map is empty.

The layer rules are the ones a default can apply to any encoder-decoder, from
:func:`volcam.layers.candidate_layers`: the bottleneck, the last (finest) decoder stage, and
the decoder stage before it.

Usage::

    python scripts/choose_default.py --work /tmp/choose            # about 10 minutes on 2 CPU cores
    python scripts/choose_default.py --work /tmp/choose --steps 60 --networks unet  # a quick look

It prints one table per network and the ranking of the rules, and writes
``scripts/results/choose-default-cpu.{json,md}`` and each network's montage to ``--figures``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from volcam.demo import demo_config, held_out_dice, make_dataset, train  # noqa: E402

#: the networks measured: MONAI classes with the demo's small sizes
NETWORKS = {
    "unet": (
        "UNet (demo), 3 classes",
        {
            "_target_": "monai.networks.nets.UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "channels": [8, 16, 32],
            "strides": [2, 2],
            "num_res_units": 1,
        },
        3,
    ),
    "segresnet": (
        "SegResNet, 3 classes",
        {
            "_target_": "monai.networks.nets.SegResNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "init_filters": 8,
            "blocks_down": [1, 2, 2],
            "blocks_up": [1, 1],
        },
        3,
    ),
    "dynunet": (
        "DynUNet, 2 classes (lesions merged)",
        {
            "_target_": "monai.networks.nets.DynUNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "kernel_size": [3, 3, 3],
            "strides": [1, 2, 2],
            "upsample_kernel_size": [2, 2],
            "filters": [8, 16, 32],
            "res_block": True,
        },
        2,
    ),
    "basicunet": (
        "BasicUNet, 3 classes",
        {
            "_target_": "monai.networks.nets.BasicUNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "features": [8, 8, 16, 32, 64, 8],
        },
        3,
    ),
}

RULES = ("bottleneck", "last decoder stage", "decoder stage before the last")


def merged_labels(data: Path) -> Path:
    """A copy of the dataset whose labels are 1 wherever a lesion is (two classes)."""
    target = data.parent / (data.name + "_binary")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(data, target)
    for path in list((target / "labelsTr").glob("*.nii.gz")) + list((target / "labelsTs").glob("*.nii.gz")):
        img = nib.load(path)
        merged = (np.asarray(img.dataobj) > 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(merged, img.affine, img.header), path)
    return target / "dataset.json"


def network_config(root: Path, dataset_json: Path, net: dict, classes: int) -> dict:
    cfg = demo_config(root.as_posix())
    cfg["network_def"] = {**net, "out_channels": classes}
    cfg["device"] = "cpu"
    cfg["data"]["dataset_json"] = str(dataset_json)
    cfg["outputs"]["dir"] = str(root / "cams")
    if classes == 2:
        cfg["targets"] = {"classes": [1], "names": {1: "lesion"}, "mask": "prediction"}
    if net["_target_"].endswith("BasicUNet"):
        cfg["preprocessing"][-1]["k"] = 16  # four downsamplings
    return cfg


def layer_of_rule(rule: str, layers: list[dict]) -> str | None:
    decoders = [m["name"] for m in layers if m["role"] == "decoder"]
    if rule == "bottleneck":
        return next((m["name"] for m in layers if m["role"] == "bottleneck"), None)
    if rule == "last decoder stage":
        return decoders[-1] if decoders else None
    return decoders[-2] if len(decoders) > 1 else (decoders[-1] if decoders else None)


def _read_rows(path: Path) -> list[dict]:
    """The rows of a ``compare.csv`` with numbers and yes/no read back."""
    import csv

    def value(v: str):
        if v in ("yes", "no"):
            return v == "yes"
        try:
            return float(v)
        except ValueError:
            return v if v else None

    with open(path) as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def measure(key: str, work: Path, data_json: dict[int, Path], steps: int, cases: int, reuse: bool) -> dict:
    from volcam.config import load_config
    from volcam.layers import candidate_layers
    from volcam.run.compare import CompareOptions, compare

    title, net, classes = NETWORKS[key]
    root = work / key
    root.mkdir(parents=True, exist_ok=True)
    cfg = network_config(root, data_json[classes], net, classes)
    cfg["checkpoint"] = "none"
    cfg["cam"] = {"method": "hirescam", "target_layers": "unused"}  # compare chooses its own layers
    config = load_config(cfg)
    start = time.perf_counter()
    checkpoint = root / "model.pt"
    trained = root / "train.json"
    if reuse and checkpoint.is_file() and trained.is_file():  # an earlier run of this script trained it
        model = config.build_network(load_weights=False)
        model.load_state_dict(torch.load(checkpoint, weights_only=True))
        model.eval()
        info = json.loads(trained.read_text())
        seconds, done = info["seconds"], info["steps"]
    else:
        model, seconds, done = train(config, data_json[classes], steps=steps, seed=0)
        torch.save(model.state_dict(), checkpoint)
        trained.write_text(json.dumps({"seconds": seconds, "steps": done}))
    cfg["checkpoint"] = str(checkpoint)
    dice = held_out_dice(model, config, data_json[classes])
    print(f"{title}: trained {done} steps in {seconds:.0f} s, held-out Dice {dice}", flush=True)
    x = torch.zeros(1, 1, 40, 40, 32)
    found = [{"name": c.name, "role": c.role, "shape": list(c.output_shape)} for c in candidate_layers(model, x)]
    cfg["cam"]["target_layers"] = found[0]["name"]
    done_before = root / "compare" / "summary.json"
    if reuse and done_before.is_file() and (root / "compare" / "compare.csv").is_file():
        summary = json.loads(done_before.read_text())
        means, rows, reason = summary["means"], _read_rows(root / "compare" / "compare.csv"), summary["reason"]
    else:
        comparison = compare(
            load_config(cfg),
            CompareOptions(output=str(root / "compare"), cases=cases, steps=10),
            say=lambda line: print("  " + line, flush=True),
            warn=lambda line: print("  " + line, flush=True),
        )
        means, rows, reason = comparison.means, comparison.rows, comparison.reason
    return {
        "network": key,
        "title": title,
        "classes": classes,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_steps": done,
        "train_seconds": round(seconds, 1),
        "dice": {str(k): round(v, 3) for k, v in dice.items()},
        "layers": found,
        "means": means,
        "rows": rows,
        "recommendation": reason,
        "montage": str(root / "compare" / "plots" / "montage.png"),
        "seconds": round(time.perf_counter() - start, 1),
    }


def rank_rules(results: list[dict]) -> list[dict]:
    """Every (method, rule): means over every network, case and class."""
    methods = sorted({m["method"] for r in results for m in r["means"]})
    table = []
    for method in methods:
        for rule in RULES:
            rows = []
            for r in results:
                layer = layer_of_rule(rule, r["layers"])
                rows += [x for x in r["rows"] if x["method"] == method and x["layer"] == layer]
            if not rows:
                continue

            def finite(key: str, rows: list = rows) -> list[float]:
                return [float(x[key]) for x in rows if x.get(key) is not None and not math.isnan(float(x[key]))]

            ratios = finite("energy_ratio")
            table.append(
                {
                    "method": method,
                    "rule": rule,
                    "maps": len(rows),
                    "energy_in_prediction": float(np.mean(finite("energy_in_prediction") or [0.0])),
                    "min_energy_ratio": min(ratios) if ratios else 0.0,
                    "pointing": float(np.mean([float(x["pointing"]) for x in rows])),
                    "empty": float(np.mean([float(x["empty"]) for x in rows])),
                    "insertion_auc": float(np.mean(finite("insertion_auc") or [float("nan")])),
                }
            )
    table.sort(key=lambda t: (-(t["pointing"] == 1.0 and t["empty"] == 0.0), -t["energy_in_prediction"]))
    return table


def markdown(results: list[dict], ranking: list[dict], machine: str) -> str:
    lines = ["# Choosing the default method and layer", "", f"Machine: {machine}", ""]
    lines += ["| network | parameters | training steps | held-out Dice | candidate layers |", "|---|---|---|---|---|"]
    for r in results:
        layers = ", ".join(f"{m['role']} `{m['name']}`" for m in r["layers"])
        lines.append(f"| {r['title']} | {r['parameters']} | {r['train_steps']} | {r['dice']} | {layers} |")
    lines += [
        "",
        "Every (method, layer rule) over every network, held-out case and class:",
        "",
        "| method | layer | maps | energy in prediction | min x random | peak inside | empty | insertion AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in ranking:
        lines.append(
            f"| {t['method']} | {t['rule']} | {t['maps']} | {t['energy_in_prediction']:.2f} | "
            f"{t['min_energy_ratio']:.1f} | {t['pointing']:.0%} | {t['empty']:.0%} | {t['insertion_auc']:.2f} |"
        )
    lines.append("")
    for r in results:
        lines += [f"## {r['title']}", "", f"volcam compare: {r['recommendation']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="choose-default", help="working folder (data, checkpoints, compare)")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--steps", type=int, default=250, help="training steps per network (demo: 250)")
    parser.add_argument("--cases", type=int, default=4, help="held-out cases compared per network")
    parser.add_argument("--results", default=str(ROOT / "scripts" / "results" / "choose-default-cpu"))
    parser.add_argument("--figures", default=None, help="folder to copy each network's montage to")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the checkpoints and comparisons an earlier run left in --work"
    )
    args = parser.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    three = work / "data" / "dataset.json"
    if not (args.reuse and three.is_file()):
        three = make_dataset(work / "data", n_train=16, n_test=args.cases, seed=0)
    binary = work / "data_binary" / "dataset.json"
    data_json = {3: three, 2: binary if args.reuse and binary.is_file() else merged_labels(work / "data")}
    results = [measure(key, work, data_json, args.steps, args.cases, args.reuse) for key in args.networks]
    ranking = rank_rules(results)
    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    text = markdown(results, ranking, machine)
    print(text)
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    slim = [{k: v for k, v in r.items() if k != "rows"} for r in results]
    out.with_suffix(".json").write_text(
        json.dumps({"machine": machine, "networks": slim, "ranking": ranking}, indent=1, default=str)
    )
    if args.figures:
        figures = Path(args.figures)
        figures.mkdir(parents=True, exist_ok=True)
        for r in results:
            shutil.copy(r["montage"], figures / f"montage-{r['network']}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
