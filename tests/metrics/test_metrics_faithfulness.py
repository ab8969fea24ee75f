"""Deletion and insertion curves: hand-worked values on tiny fixed models."""

import pytest
import torch
from torch import nn

from volcam.errors import ArgumentError, ShapeError, TargetError
from volcam.metrics import blur, deletion_curve, faithfulness, insertion_curve, make_baseline, voxel_order


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster than two, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Identity1(nn.Module):
    """One-channel 'segmentation' whose logit is the image itself."""

    def forward(self, x):
        return x[:, :1]


class TwoClass(nn.Module):
    """Background logit -x, foreground logit x (argmax == 1 where x > 0)."""

    def forward(self, x):
        return torch.cat([-x, x], dim=1)


def literal():
    return torch.tensor([[4.0, 3.0], [2.0, 1.0]])[None, None]


def test_deletion_and_insertion_hand_worked():
    x = literal()  # score = sum of the image over the predicted region (all of it)
    d = deletion_curve(Identity1(), x, x, steps=4, baseline=0.0)
    assert d.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert d.scores.tolist() == [[10.0, 6.0, 3.0, 1.0, 0.0]]
    assert d.reference.tolist() == [10.0]
    assert d.relative[0].tolist() == pytest.approx([1.0, 0.6, 0.3, 0.1, 0.0])
    assert d.auc.tolist() == pytest.approx([0.25 * (0.5 + 0.6 + 0.3 + 0.1)])  # 0.375
    i = insertion_curve(Identity1(), x, x, steps=4, baseline=0.0)
    assert i.scores.tolist() == [[0.0, 4.0, 7.0, 9.0, 10.0]]
    assert i.auc.tolist() == pytest.approx([0.625])
    # the reversed map removes the smallest values first
    r = deletion_curve(Identity1(), x, -x, steps=4, baseline=0.0)
    assert r.scores.tolist() == [[10.0, 9.0, 7.0, 4.0, 0.0]]


def test_region_is_frozen_on_the_unperturbed_image():
    # deleting to a negative baseline flips voxels to background; the score still sums the
    # logits over the region predicted on the original image
    x = literal()
    d = deletion_curve(TwoClass(), x, x, 1, steps=2, baseline=-1.0)
    assert d.scores.tolist() == [[10.0, 10 - 7 - 2, -4.0]]
    # rescaled between the baseline image's score (-4) and the image's (10)
    assert d.baseline_score.tolist() == [-4.0]
    assert d.relative[0].tolist() == pytest.approx([1.0, 5 / 14, 0.0])
    assert d.auc.tolist() == pytest.approx([0.5 * (0.5 + 5 / 14)])


def test_perfect_map_deletes_fastest_in_3d():
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.rand(2, 1, 8, 8, 8, generator=g)
    x[0, :, 1:4, 2:6, 2:5] += 1.0
    x[1, :, 4:7, 1:3, 3:7] += 1.0
    perfect = (x > 0.5).float()
    model = TwoClass()
    aucs = {}
    for name, heat in {
        "perfect": perfect,
        "random": torch.rand(perfect.shape, generator=g),
        "inverted": 1 - perfect,
    }.items():
        c = faithfulness(
            model, x, heat, 1, steps=16, baseline="min", batch_size=7, generator=torch.Generator().manual_seed(1)
        )
        aucs[name] = (c["deletion"].auc, c["insertion"].auc)
    for b in range(2):
        assert aucs["perfect"][0][b] < aucs["random"][0][b] < aucs["inverted"][0][b]
        assert aucs["perfect"][1][b] > aucs["random"][1][b] > aucs["inverted"][1][b]
    # the blob holds about 60% of the score, the faint background the rest
    assert aucs["perfect"][0].max() < 0.3 and aucs["inverted"][0].min() > 0.7


def test_batching_does_not_change_the_curves_and_batch_equals_single():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 2, 6, 7, generator=g)
    heat = torch.rand(3, 1, 6, 7, generator=g)
    model = nn.Conv2d(2, 3, 3, padding=1)
    torch.manual_seed(0)
    nn.init.normal_(model.weight)
    model.eval()
    ref = deletion_curve(model, x, heat, [1, 2, 0], steps=5, batch_size=1)
    for bs in (2, 5, 64):
        other = deletion_curve(model, x, heat, [1, 2, 0], steps=5, batch_size=bs)
        assert torch.allclose(other.scores, ref.scores, atol=1e-5)
    single = deletion_curve(model, x[1:2], heat[1:2], 2, steps=5)
    assert torch.allclose(single.scores[0], ref.scores[1], atol=1e-5)


def test_2d_equals_3d_with_depth_one():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 9, 8, generator=g)
    heat = torch.rand(2, 1, 9, 8, generator=g)
    flat = faithfulness(
        TwoClass(), x, heat, 1, steps=6, baseline="blur", sigma=2.0, generator=torch.Generator().manual_seed(0)
    )
    deep = faithfulness(
        TwoClass(),
        x[:, :, None],
        heat[:, :, None],
        1,
        steps=6,
        baseline="blur",
        sigma=2.0,
        generator=torch.Generator().manual_seed(0),
    )
    for kind in ("deletion", "insertion"):
        assert torch.allclose(deep[kind].scores, flat[kind].scores, atol=1e-4)
        assert torch.allclose(deep[kind].auc, flat[kind].auc, atol=1e-5)


def test_results_stay_on_the_input_device(device):
    x = literal().to(device)
    d = deletion_curve(Identity1().to(device), x, x, steps=4, baseline="blur", sigma=1.0)
    assert d.scores.device == d.auc.device == d.fractions.device == x.device


def test_default_target_is_the_largest_predicted_foreground_class():
    class Fixed(nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 3, *x.shape[2:])
            out[:, 1, :1] = 5.0  # class 1 wins one row
            out[:, 2, 1:] = 5.0 * x[:, 0, 1:]  # class 2 wins the other three rows
            return out

    x = torch.ones(1, 1, 4, 4)
    heat = torch.rand(1, 1, 4, 4)
    d = deletion_curve(Fixed(), x, heat, steps=1, baseline=0.0)
    assert d.reference.tolist() == [60.0]  # class 2: 12 voxels x 5
    assert d.scores.tolist() == [[60.0, 0.0]]


def test_model_output_selector_picks_the_tensor_of_a_structured_output():
    class Deep(nn.Module):
        def forward(self, x):
            return {"aux": torch.zeros(1), "seg": x[:, :1]}

    x = literal()
    d = deletion_curve(Deep(), x, x, steps=4, baseline=0.0, model_output="seg")
    assert d.scores.tolist() == [[10.0, 6.0, 3.0, 1.0, 0.0]]


def test_ties_are_broken_at_random_not_in_raster_order():
    heat = torch.zeros(1, 1, 50, 50)
    order = voxel_order(heat, torch.Generator().manual_seed(0))
    first_half = (order < 1250).float()[0, 0]
    # raster order would remove the top 25 rows first
    assert 0.35 < float(first_half[:25].mean()) < 0.65
    assert sorted(order.flatten().tolist()) == list(range(2500))


def test_baselines():
    x = torch.rand(2, 3, 9, 8, 7)
    assert torch.allclose(blur(torch.full((1, 1, 5, 6), 2.5), 3.0), torch.full((1, 1, 5, 6), 2.5))
    blurred = make_baseline(x, "blur", sigma=2.0)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    assert torch.equal(make_baseline(x, "min")[1, 2], x[1, 2].min().expand(9, 8, 7))
    assert torch.allclose(make_baseline(x, "mean")[0, 1], x[0, 1].mean().expand(9, 8, 7))
    assert torch.equal(make_baseline(x, -1.0), torch.full_like(x, -1.0))
    assert torch.equal(make_baseline(x, torch.zeros(1, 3, 1, 1, 1)), torch.zeros_like(x))
    with pytest.raises(
        ArgumentError, match="`baseline` must be 'blur', 'min', 'mean', a number or a tensor, not 'black'"
    ):
        make_baseline(x, "black")
    with pytest.raises(ShapeError, match="`baseline` must broadcast to the image shape"):
        make_baseline(x, torch.zeros(4, 1, 1, 1, 1))


def test_bad_inputs():
    x = literal()
    with pytest.raises(
        ShapeError, match="`x` must have shape \\[B, C, \\*S\\] with the batch and spatial size of `heat`"
    ):
        deletion_curve(Identity1(), x, torch.rand(1, 1, 3, 2))
    with pytest.raises(ArgumentError, match="`steps` must be a positive int, not 0"):
        deletion_curve(Identity1(), x, x, steps=0)
    with pytest.raises(TargetError, match=r"`category` must be a class index in \[0, 1\] .*, not 2"):
        deletion_curve(TwoClass(), x, x, 2)
    with pytest.raises(TargetError, match="`targets` as a list must have one entry per sample"):
        deletion_curve(TwoClass(), x, x, [1, 1])


def test_a_weak_baseline_is_reported():
    x = literal()
    with pytest.warns(UserWarning, match=r"the baseline image is weak \(sample 0: removes only 20% of the score\)"):
        d = deletion_curve(Identity1(), x, x, steps=4, baseline=2.0)
    assert d.baseline_score.tolist() == [8.0]
    # a baseline that raises the score says so, never "keeps -1503%"
    with pytest.warns(UserWarning, match=r"sample 0: raises the score by 900%") as caught:
        deletion_curve(Identity1(), x, x, steps=4, baseline=25.0)
    assert "%," not in str(caught[0].message) and "-" not in str(caught[0].message).split("(")[1].split(")")[0]
    assert d.relative[0].tolist() == pytest.approx([1.0, 0.0, -0.5, -0.5, 0.0])  # (s - 8) / 2


def test_training_mode_warns_and_model_is_left_as_it_was():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)).train()
    x = literal()
    with pytest.warns(UserWarning, match="the model is in training mode"):
        deletion_curve(model, x, x, 1, steps=1)
    assert model.training


def test_plot_curves_draws_the_mean_relative_curve_and_writes_a_png(tmp_path):
    from volcam.metrics.plots import plot_curves, save_figure

    x = literal()
    cam = faithfulness(Identity1(), x, x, steps=4, baseline=0.0)
    rev = faithfulness(Identity1(), x, -x, steps=4, baseline=0.0)
    fig = plot_curves({"cam": cam, "reversed": rev}, title="t")
    deletion, insertion = fig.axes
    assert deletion.get_title().startswith("Deletion") and insertion.get_title().startswith("Insertion")
    lines = deletion.get_lines()
    assert lines[0].get_ydata().tolist() == pytest.approx([1.0, 0.6, 0.3, 0.1, 0.0])
    assert lines[1].get_ydata().tolist() == pytest.approx([1.0, 0.9, 0.7, 0.4, 0.0])
    labels = [t.get_text() for t in deletion.get_legend().get_texts()]
    assert labels == ["cam (AUC 0.375)", "reversed (AUC 0.625)"]
    path = save_figure(fig, tmp_path / "sub" / "curves.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and list(path.parent.iterdir()) == [path]
