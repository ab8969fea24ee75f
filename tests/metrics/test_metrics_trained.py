"""A small MONAI U-Net trained in the test on a synthetic blob task: GradCAM must localise
the blob far better than a random map, be faithful, and fail the randomisation tests as a
map that depends on the model should. Ends with ``volcam evaluate`` on the same model."""

import contextlib
import csv
import io
import json
import warnings

import pytest
import torch
from helpers import assert_same_state, model_state
from torch import nn

import volcam
from volcam.errors import ArgumentError, LayerNotFoundError, TargetError
from volcam.metrics import dice, faithfulness, localisation
from volcam.metrics.sanity import label_randomisation, model_randomisation, parameter_layers, randomise_module

SIZE = 24
LAYER = "model.1.submodule"  # the U-Net's bottleneck (12 x 12)


def blobs(n: int, gen: torch.Generator, size: int = SIZE):
    """Images with one bright disc (radius 2.5-4.5) in Gaussian noise, and its mask ``[n, 1, size, size]``."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = torch.rand(n, 2, generator=gen) * (size - 10) + 5
    radius = torch.rand(n, generator=gen) * 2 + 2.5
    d2 = (yy[None] - centre[:, 0, None, None]) ** 2 + (xx[None] - centre[:, 1, None, None]) ** 2
    mask = (d2 <= radius[:, None, None] ** 2).float()[:, None]
    return mask + 0.3 * torch.randn(n, 1, size, size, generator=gen), mask


def make_unet():
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16), strides=(2,), num_res_units=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster than two, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_blob_model():
    """(model in eval mode, 8 held-out images, their masks): about 0.3 s of CPU training."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        model = make_unet()
        images, masks = blobs(64, gen)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(100):
            idx = torch.randint(0, 64, (8,), generator=gen)
            loss = nn.functional.cross_entropy(model(images[idx]), masks[idx, 0].long())
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    for p in model.parameters():
        p.grad = None
    x, m = blobs(8, torch.Generator().manual_seed(1))
    return model, x, m


@pytest.fixture(scope="module")
def trained():
    model, x, m = train_blob_model()
    with torch.no_grad():
        pred = model(x).argmax(1, keepdim=True).bool()
    assert dice(pred, m.bool()).mean() > 0.9  # the task is learnt
    return model, x, m


def test_gradcam_localises_the_blob_better_than_a_random_map(trained):
    model, x, m = trained
    heat = volcam.GradCAM(model, LAYER)(x, 1)
    cam = localisation(heat, m)
    rnd = localisation(torch.rand(heat.shape, generator=torch.Generator().manual_seed(2)), m)
    # figures reported in the README (seeded; 8 held-out images)
    assert cam["energy"].mean() > 0.75 and rnd["energy"].mean() < 0.1
    assert cam["pointing"].mean() == 1.0 and rnd["pointing"].mean() <= 0.25
    assert cam["dice"].mean() > 0.8 and rnd["dice"].mean() < 0.15
    assert bool((cam["energy"] > 3 * rnd["energy"]).all())


def test_gradcam_is_faithful_compared_with_a_random_map(trained):
    model, x, m = trained
    heat = volcam.GradCAM(model, LAYER)(x, 1)
    rnd = torch.rand(heat.shape, generator=torch.Generator().manual_seed(2))
    kw = dict(steps=10, baseline="min", batch_size=32, generator=torch.Generator().manual_seed(0))
    cam = faithfulness(model, x, heat, 1, **kw)
    ref = faithfulness(model, x, rnd, 1, **kw)
    assert cam["deletion"].auc.mean() < ref["deletion"].auc.mean() - 0.3
    assert cam["insertion"].auc.mean() > ref["insertion"].auc.mean() + 0.3


def test_gradcam_fails_cascading_randomisation_as_it_should(trained):
    model, x, _ = trained
    before = model_state(model)
    rng = torch.get_rng_state()
    cam = volcam.GradCAM(model, LAYER)
    res = model_randomisation(cam, x, 1, mode="cascading")
    assert res.steps == parameter_layers(model, x)
    assert res.steps[0] == "model.2.conv" and res.steps[-1] == "model.0.conv"  # output back to input
    assert res.spearman.shape == res.ssim.shape == (len(res.steps), 8)
    mean = res.spearman.mean(dim=1)
    assert mean[-1] < 0.5 and not res.unchanged.any()
    assert res.spearman.max() < 0.5  # no step leaves the map in place
    # the user's model and the global random state are untouched
    assert_same_state(before, model_state(model))
    assert torch.equal(torch.get_rng_state(), rng)


def test_independent_randomisation_reuses_the_cascading_weights(trained):
    model, x, _ = trained
    cam = volcam.GradCAM(model, LAYER)
    layers = ["model.2.conv", "model.0.conv"]
    ind = model_randomisation(cam, x, 1, mode="independent", layers=layers, keep_maps=True)
    cas = model_randomisation(cam, x, 1, mode="cascading", layers=layers, keep_maps=True)
    assert ind.steps == cas.steps == layers
    # step 1 randomises the same layer with the same seed in both checks
    assert torch.equal(ind.maps[0], cas.maps[0])
    assert torch.equal(ind.spearman[0], cas.spearman[0])
    assert ind.maps.shape == (2, 8, 1, SIZE, SIZE)
    # the head re-initialised alone already destroys the map
    assert ind.spearman[0].mean() < 0.5


def test_label_randomisation_explaining_the_background_changes_the_map(trained):
    model, x, _ = trained
    res = label_randomisation(volcam.GradCAM(model, LAYER), x, 1)
    assert res.kind == "label" and res.steps == ["class 0"]
    assert res.spearman.mean() < 0.0 and not res.unchanged.any()


def test_a_map_that_ignores_the_model_is_flagged(trained):
    """A 'method' returning the input itself does not change with the weights: flagged."""
    model, x, _ = trained

    class InputMap(volcam.GradCAM):
        def combine(self, activations, grads, ctx):
            return ctx.x[:, :1]

    res = model_randomisation(InputMap(model, LAYER), x, 1, mode="cascading")
    assert torch.allclose(res.spearman, torch.ones_like(res.spearman))
    assert res.flagged.all() and res.unchanged.all()
    ind = model_randomisation(InputMap(model, LAYER), x, 1, mode="independent", layers=["model.2.conv"])
    assert ind.unchanged.all()


def test_randomise_module_is_reproducible_and_restores_the_random_state():
    a, b = nn.Conv2d(2, 3, 3), nn.Conv2d(2, 3, 3)
    state = torch.get_rng_state()
    randomise_module(a, 7)
    randomise_module(b, 7)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert torch.equal(torch.get_rng_state(), state)
    p = nn.PReLU(3)
    with torch.no_grad():
        p.weight.fill_(0.9)
    randomise_module(p, 0)
    assert torch.equal(p.weight, torch.full((3,), 0.25))  # PReLU's own initialisation


def test_sanity_bad_arguments(trained):
    model, x, _ = trained
    cam = volcam.GradCAM(model, LAYER)
    with pytest.raises(ArgumentError, match="`mode` must be 'cascading' or 'independent', not 'all'"):
        model_randomisation(cam, x[:1], 1, mode="all")
    with pytest.raises(ArgumentError, match="`threshold` must be a number in \\[-1, 1\\]"):
        model_randomisation(cam, x[:1], 1, threshold=2)
    with pytest.raises(LayerNotFoundError, match="did you mean 'model.2.conv'"):
        model_randomisation(cam, x[:1], 1, layers=["model.2.con"])
    with pytest.raises(TargetError, match="`categories` must be a non-empty list of classes in \\[0, 1\\]"):
        label_randomisation(cam, x[:1], 1, categories=[5])
    with pytest.raises(TargetError, match="label randomisation needs a target whose class can be swapped"):
        label_randomisation(cam, x[:1], lambda out: out[:, 1].sum(dim=(1, 2)))


def test_constant_original_map_gives_nan_and_a_warning(trained):
    model, x, _ = trained
    cam = volcam.GradCAM(model, LAYER)
    empty = volcam.SegmentationTarget(1, mask=torch.zeros(SIZE, SIZE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the engine's empty-mask warning
        with pytest.warns(RuntimeWarning, match="is constant"):
            res = model_randomisation(cam, x[:2], empty, layers=["model.2.conv"])
    assert torch.isnan(res.spearman).all() and not res.flagged.any()


# --- the command --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluation(trained, tmp_path_factory):
    """Four labelled 2D NIfTI cases and a broken one, the trained checkpoint, a config; `volcam evaluate` once."""
    import nibabel as nib
    import numpy as np
    import yaml

    model, _, _ = trained
    root = tmp_path_factory.mktemp("evaluate")
    images, masks = blobs(4, torch.Generator().manual_seed(5))
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for i in range(4):
        nib.save(nib.Nifti1Image(images[i, 0].numpy().astype(np.float32), np.eye(4)), root / "images" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(masks[i, 0].numpy().astype(np.uint8), np.eye(4)), root / "labels" / f"c{i}.nii.gz")
    (root / "images" / "c4.nii.gz").write_bytes(b"not a nifti file")  # this case fails alone
    torch.save(model.state_dict(), root / "model.pt")
    config = {
        "network_def": {
            "_target_": "monai.networks.nets.UNet",
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 2,
            "channels": [8, 16],
            "strides": [2],
            "num_res_units": 0,
        },
        "checkpoint": str(root / "model.pt"),
        "device": "cpu",
        "cam": {"method": "gradcam", "target_layers": LAYER},
        "targets": {"classes": [1], "names": {1: "blob"}},
        "data": {"folder": str(root / "images"), "label_folder": str(root / "labels")},
        "outputs": {"dir": str(root / "out")},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    from volcam.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(
            [
                "evaluate",
                str(root / "config.yaml"),
                "--steps",
                "8",
                "--baseline",
                "min",
                "--sanity",
                "cascading",
                "independent",
                "label",
                "--sanity-cases",
                "2",
            ]
        )
    return root / "out" / "evaluation", (status, stdout.getvalue(), stderr.getvalue())


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_command_writes_tables_and_plots(evaluation):
    out, (status, stdout, stderr) = evaluation
    assert status == 1  # one case could not be read; the others are evaluated and written
    assert "case c4: image must be a readable image file" in stderr and stderr.count("volcam evaluate:") == 1
    rows = read_csv(out / "metrics.csv")
    assert [(r["case"], r["map"]) for r in rows] == [(f"c{i}", m) for i in range(4) for m in ("gradcam", "random")]
    assert {r["reference"] for r in rows} == {"label"}
    cam = [r for r in rows if r["map"] == "gradcam"]
    rnd = [r for r in rows if r["map"] == "random"]
    for a, b in zip(cam, rnd):
        assert float(a["energy"]) > 3 * float(b["energy"])
        assert float(a["deletion_auc"]) < float(b["deletion_auc"])
        assert float(a["insertion_auc"]) > float(b["insertion_auc"])
        assert int(a["components"]) == 1
        assert float(a["baseline_kept"]) < 0.5  # the 'min' baseline removes the evidence
    comps = read_csv(out / "components.csv")
    assert len(comps) == 8 and all(c["component"] == "1" for c in comps)
    sanity = read_csv(out / "sanity.csv")
    checks = [(r["case"], r["check"]) for r in sanity]
    assert checks.count(("c0", "cascading")) == 5 and checks.count(("c1", "label")) == 1
    assert not any(r["unchanged"] == "1" for r in sanity)
    summary = json.loads((out / "summary.json").read_text())
    blob = summary["classes"]["blob"]
    assert blob["cases"] == 4 and blob["sanity"]["cascading"]["unchanged"] == 0
    assert blob["maps"]["gradcam"]["energy"] > blob["maps"]["random"]["energy"]
    curves = json.loads((out / "curves.json").read_text())
    assert len(curves) == 16 and len(curves[0]["relative"]) == 9
    assert curves[0]["relative"][0] == pytest.approx(1.0)  # deletion starts at the image's score
    for name in ["curves_blob.png", "sanity_c0_blob.png", "sanity_c1_blob.png"]:
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "gradcam" in stdout and "cascading randomisation" in stdout


def test_evaluate_command_user_errors(tmp_path, capsys):
    from volcam.cli import main

    assert main(["evaluate", str(tmp_path / "missing.yaml")]) == 2
    assert "volcam evaluate: error: CONFIG must be an existing .yaml/.json file" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("network_def: {_target_: torch.nn.Identity}\n")
    assert main(["evaluate", str(tmp_path / "c.yaml"), "--steps", "0"]) == 2
    assert "--steps must be a positive int, not 0" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "c.yaml"), "--baseline", "black"]) == 2
    assert "--baseline must be blur, min, mean or a number, not 'black'" in capsys.readouterr().err


def test_plot_sanity_draws_one_row_per_check(trained):
    from volcam.metrics.plots import plot_sanity

    model, x, _ = trained
    cam = volcam.GradCAM(model, LAYER)
    results = {
        "cascading": model_randomisation(cam, x[:3], 1, layers=["model.2.conv", "model.0.conv"]),
        "label": label_randomisation(cam, x[:3], 1),
    }
    fig = plot_sanity(results)
    assert len(fig.axes) == 4
    spearman_ax = fig.axes[0]
    assert spearman_ax.get_lines()[0].get_ydata().tolist() == pytest.approx(
        results["cascading"].spearman.mean(dim=1).tolist(), abs=1e-6
    )
    assert [t.get_text() for t in spearman_ax.get_xticklabels()] == ["1. model.2.conv", "2. model.0.conv"]
    assert spearman_ax.get_lines()[1].get_ydata()[0] == 0.5  # the flag threshold


def test_evaluate_against_the_prediction_without_random_map_or_sanity(evaluation, tmp_path):
    from volcam.cli import main

    out, _ = evaluation
    config = out.parents[1] / "config.yaml"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = main(
            [
                "evaluate",
                str(config),
                "--out",
                str(tmp_path),
                "--cases",
                "2",
                "--against",
                "prediction",
                "--no-random",
                "--sanity",
                "none",
                "--steps",
                "4",
                "--level",
                "0.5",
                "-o",
                "targets.mask=whole",
            ]
        )
    assert status == 0
    rows = read_csv(tmp_path / "metrics.csv")
    assert [(r["case"], r["map"], r["reference"]) for r in rows] == [
        ("c0", "gradcam", "prediction"),
        ("c1", "gradcam", "prediction"),
    ]
    assert read_csv(tmp_path / "sanity.csv") == []
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["curves_blob.png"]
