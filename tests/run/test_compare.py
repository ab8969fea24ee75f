"""``volcam compare`` on a trained network: the table, the plots, the recommendation, and that
every gradient method of a layer comes from one forward and one backward pass."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from volcam import cli
from volcam.config import load_config
from volcam.methods.shared import SHARED_METHODS
from volcam.run.compare import CompareOptions, compare

LAST_DECODER = "model.1.submodule.2"
BOTTLENECK = "model.1.submodule.1.submodule"


@pytest.fixture(scope="module")
def unet_comparison(trained_networks, tmp_path_factory):
    cfg = dict(trained_networks["unet"].config)
    out = tmp_path_factory.mktemp("compare")
    lines: list[str] = []
    result = compare(load_config(cfg), CompareOptions(output=str(out), cases=3, steps=3), say=lines.append)
    return result, out, lines


@pytest.mark.slow
def test_compare_ranks_element_wise_methods_at_the_last_decoder_first(unet_comparison):
    result, out, lines = unet_comparison
    means = {(m["method"], m["layer"]): m for m in result.means}
    assert {layer for _, layer in means} == {BOTTLENECK, LAST_DECODER}  # found by candidate_layers
    assert {method for method, _ in means} == set(SHARED_METHODS)
    best = result.recommendation
    assert best is not None and best["layer"] == LAST_DECODER and best["method"] in ("hirescam", "layercam")
    # element-wise methods at the last decoder put more heat inside the prediction than Grad-CAM there
    for method in ("hirescam", "layercam"):
        assert (
            means[(method, LAST_DECODER)]["energy_in_prediction"]
            > means[("gradcam", LAST_DECODER)]["energy_in_prediction"]
        )
    # the recommended pair beats a random map at least five times on every case and class
    rows = [r for r in result.rows if r["method"] == best["method"] and r["layer"] == best["layer"]]
    assert len(rows) == 3 * 2 and all(r["energy_ratio"] >= 5 for r in rows)
    assert all(r["pointing"] for r in rows)
    # the randomisation check: the recommended map changes when the weights are re-initialised
    assert best["randomised_spearman"] < 0.5
    assert f"cam.method: {best['method']}, cam.target_layers: {LAST_DECODER}" in result.reason
    assert any(result.reason in line for line in lines)


@pytest.mark.slow
def test_compare_writes_its_table_plots_and_summary(unet_comparison):
    result, out, _ = unet_comparison
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result.rows) == 3 * 2 * len(SHARED_METHODS) * 2
    for row in rows:
        ratio, energy, share = (float(row[k]) for k in ("energy_ratio", "energy_in_prediction", "random_energy"))
        assert math.isclose(ratio, energy / share, rel_tol=1e-2)
        if row["empty"] == "no":
            assert 0 <= energy <= 1 and row["deletion_auc"] != ""
    md = (out / "compare.md").read_text()
    assert "| hirescam | model.1.submodule.2 |" in md and result.reason in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recommendation"]["method"] == result.recommendation["method"]
    for plot in ("energy.png", "montage.png"):
        with Image.open(out / "plots" / plot) as img:
            grey = np.asarray(img.convert("L"))
        assert grey.shape[1] > 400 and len(np.unique(grey)) > 20  # a picture, not a blank


def test_all_gradient_methods_share_one_forward_and_one_backward(monkeypatch):
    import volcam
    from volcam.methods.shared import explain_methods

    torch.manual_seed(0)
    from monai.networks.nets import UNet

    model = UNet(3, 1, 3, (8, 16, 32), (2, 2), num_res_units=1).eval()
    x = torch.randn(1, 1, 24, 24, 24)
    forwards, backwards = [0], [0]
    model.register_forward_hook(lambda *a: forwards.__setitem__(0, forwards[0] + 1))
    real = torch.autograd.grad

    def counting(*args, **kwargs):
        backwards[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    maps = explain_methods(model, x, LAST_DECODER, targets=1)
    assert forwards[0] == 1 and backwards[0] == 1
    for name, res in maps.items():  # each equals the method's own explain
        alone = volcam.get_method(name)(model, LAST_DECODER).explain(x, targets=1)
        torch.testing.assert_close(res.heat, alone.heat, atol=1e-5, rtol=1e-4)


def test_compare_command_errors_exit_2(trained_networks, tmp_path, capsys):
    cfg = dict(trained_networks["unet"].config)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["compare", str(path), "--cases", "0"]) == 2
    assert "`cases` must be a positive int, not 0" in capsys.readouterr().err
    assert cli.main(["compare", str(path), "--methods", "gradcam", "nosuchcam"]) == 2
    assert "nosuchcam" in capsys.readouterr().err
