"""Small segmentation networks of three architectures, trained on the demo's synthetic CT data
for the tests that need maps that mean something (the default method and layer, ``volcam
compare``). Built once per test session (about a minute on two CPU cores)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from scripts.choose_default import NETWORKS, merged_labels, network_config
from volcam.demo import held_out_dice, make_dataset, train

#: training steps of each network (the study in scripts/choose_default.py trains longer)
STEPS = {"unet": 100, "segresnet": 150, "dynunet": 100}


@dataclass
class Trained:
    """A trained network: its run configuration (a dict; ``cam`` left out) and held-out Dice."""

    name: str
    config: dict
    dice: dict


def train_networks(root: Path) -> dict[str, Trained]:
    from volcam.config import load_config

    data = {3: make_dataset(root / "data", n_train=8, n_test=3, shape=(40, 40, 24), seed=1)}
    data[2] = merged_labels(root / "data")
    out = {}
    for name, steps in STEPS.items():
        _, net, classes = NETWORKS[name]
        cfg = network_config(root / name, data[classes], net, classes)
        cfg["checkpoint"] = "none"
        cfg["data"]["num_workers"] = 0
        cfg["outputs"] = {"dir": str(root / name / "cams"), "pngs": False, "figure": False}
        del cfg["cam"]
        config = load_config(cfg)
        model, _, _ = train(config, data[classes], steps=steps, seed=0)
        (root / name).mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), root / name / "model.pt")
        cfg["checkpoint"] = str(root / name / "model.pt")
        out[name] = Trained(name, cfg, held_out_dice(model, config, data[classes]))
    return out
