"""Hand-worked maps on tiny fixed-weight models, and reference formulas."""

import numpy as np
import pytest
import torch
from helpers import Pyramid, TinySeg

import volcam

X2 = torch.tensor([[1.0, -2.0], [3.0, 4.0]])


def tiny_input(dims):
    return X2.view(1, 1, 2, 2) if dims == 2 else X2.view(1, 1, 2, 1, 2)


def as_grid(t, dims):
    """Map [1, 1, *S] of the tiny model back to the 2x2 grid of X2."""
    return t.reshape(2, 2)


# feat = [x, 2x]; score = sum(logits[0]) = 3 * sum(relu(x)); dy/dfeat_k = 1[x > 0] for both channels.
# Grad-CAM weights = mean(1[x > 0]) = 0.75 -> map = 0.75 * (x + 2x) = 2.25 x -> relu.
@pytest.mark.parametrize("dims", [2, 3])
def test_gradcam_hand_computed(dims, device):
    model = TinySeg(dims).to(device).eval()
    res = volcam.GradCAM(model, "feat").explain(
        tiny_input(dims).to(device), targets=volcam.SegmentationTarget(0, mask="all")
    )
    raw = as_grid(res.layer_maps[0], dims).cpu()
    assert torch.allclose(raw, torch.tensor([[2.25, 0.0], [6.75, 9.0]]))
    assert torch.allclose(as_grid(res.heat, dims).cpu(), torch.tensor([[0.25, 0.0], [0.75, 1.0]]))
    assert torch.allclose(res.scores.cpu(), torch.tensor([24.0]))  # 3 * (1 + 3 + 4)
    assert res.heat.device.type == device.type


@pytest.mark.parametrize("dims", [2, 3])
def test_masked_target_hand_computed(dims):
    # mask keeps the voxels 1 and 4 (diagonal): dy/dfeat_k = mask * 1[x>0] = [[1,0],[0,1]] -> weights 0.5
    model = TinySeg(dims).eval()
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, *tiny_input(dims).shape[2:])
    res = volcam.GradCAM(model, "feat").explain(tiny_input(dims), targets=volcam.SegmentationTarget(0, mask=mask))
    assert torch.allclose(as_grid(res.layer_maps[0], dims), torch.tensor([[1.5, 0.0], [4.5, 6.0]]))
    assert torch.allclose(res.scores, torch.tensor([15.0]))  # 3 * (1 + 4)


@pytest.mark.parametrize("dims", [2, 3])
def test_negative_evidence_is_cut_by_relu(dims):
    # class 1 = -relu(2x): weights [0, -0.75] -> map = -1.5 x; relu keeps only x < 0.
    model = TinySeg(dims).eval()
    x = tiny_input(dims)
    target = volcam.SegmentationTarget(1, mask="all")
    with_relu = volcam.GradCAM(model, "feat").explain(x, targets=target)
    assert torch.allclose(as_grid(with_relu.layer_maps[0], dims), torch.tensor([[0.0, 3.0], [0.0, 0.0]]))
    raw = volcam.GradCAM(model, "feat", relu=False, normalize=False).explain(x, targets=target)
    assert torch.allclose(as_grid(raw.heat, dims), torch.tensor([[-1.5, 3.0], [-4.5, -6.0]]))


@pytest.mark.parametrize("dims", [2, 3])
def test_per_voxel_methods_hand_computed(dims):
    model = TinySeg(dims).eval()
    x = tiny_input(dims)
    t = volcam.SegmentationTarget(0, mask="all")
    # HiResCAM: sum_k g * A = 1[x>0] * 3x
    hires = volcam.HiResCAM(model, "feat").explain(x, targets=t)
    assert torch.allclose(as_grid(hires.layer_maps[0], dims), torch.tensor([[3.0, 0.0], [9.0, 12.0]]))
    # LayerCAM: relu(g) = g here, same as HiResCAM
    layer = volcam.LayerCAM(model, "feat").explain(x, targets=t)
    assert torch.allclose(as_grid(layer.layer_maps[0], dims), torch.tensor([[3.0, 0.0], [9.0, 12.0]]))
    # XGrad-CAM: w_k = sum(g * A_k) / sum(A_k); channel 0: (1+3+4)/6 = 4/3, channel 1: 16/12 = 4/3
    # map = 4/3 * (x + 2x) = 4x -> relu
    xgrad = volcam.XGradCAM(model, "feat").explain(x, targets=t)
    assert torch.allclose(as_grid(xgrad.layer_maps[0], dims), torch.tensor([[4.0, 0.0], [12.0, 16.0]]), atol=1e-5)


def gradcampp_reference(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The paper's eq. 19 with the exponential score, written out with loops. a, g: [K, *S]."""
    k = a.shape[0]
    flat_a, flat_g = a.reshape(k, -1), g.reshape(k, -1)
    cam = np.zeros(flat_a.shape[1])
    for c in range(k):
        total = flat_a[c].sum()
        w = 0.0
        for i in range(flat_a.shape[1]):
            gi = flat_g[c, i]
            denom = 2 * gi**2 + total * gi**3
            alpha = gi**2 / denom if denom != 0 else 0.0
            w += alpha * max(gi, 0.0)
        cam += w * flat_a[c]
    return np.maximum(cam, 0).reshape(a.shape[1:])


@pytest.mark.parametrize("dims", [2, 3])
def test_gradcampp_matches_reference_formula(dims):
    torch.manual_seed(1)
    model, _ = Pyramid.pair() if dims == 2 else (None, None)
    model = Pyramid.pair()[0 if dims == 2 else 1]
    x = torch.randn(2, 1, *((1,) if dims == 3 else ()), 8, 8)
    layer = "down"
    # independent reference: activations and gradients through plain autograd on a copy of the input
    feats = {}
    handle = model.down.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o))
    out = model(x.clone().requires_grad_(True))
    handle.remove()
    mask = (out.argmax(1) == 2).float()
    score = (out[:, 2] * mask).flatten(1).sum(1)
    g = torch.autograd.grad(score.sum(), feats["a"])[0]
    res = volcam.GradCAMPlusPlus(model, layer).explain(x, targets=volcam.SegmentationTarget(2))
    for b in range(2):
        ref = gradcampp_reference(feats["a"][b].detach().double().numpy(), g[b].double().numpy())
        np.testing.assert_allclose(res.layer_maps[0][b, 0].numpy(), ref, rtol=1e-4, atol=1e-5)


def test_upsampling_is_nlinear_of_layer_map():
    model = Pyramid.pair()[1]
    x = torch.randn(1, 1, 1, 8, 8)
    res = volcam.GradCAM(model, "down").explain(x, targets=1)
    raw = res.layer_maps[0]
    assert raw.shape[2:] == (1, 4, 4)
    up = torch.nn.functional.interpolate(raw, size=(1, 8, 8), mode="trilinear", align_corners=False)
    expected = (up - up.amin()) / (up.amax() - up.amin())
    assert torch.allclose(res.heat, expected, atol=1e-6)
    assert res.heat.amin() == 0 and res.heat.amax() == 1


def test_options_keep_raw_values():
    model = Pyramid.pair()[0]
    x = torch.randn(2, 1, 8, 8)
    raw = volcam.GradCAM(model, "down", upsample=False, normalize=False).explain(x, targets=1)
    assert raw.heat.shape == (2, 1, 4, 4)
    assert torch.equal(raw.heat, raw.layer_maps[0])
    signed = volcam.GradCAM(model, "down", relu=False, upsample=False, normalize=False)(x, targets=1)
    assert torch.equal(torch.relu(signed), raw.heat)


def test_several_layers_are_normalised_and_averaged():
    model = Pyramid.pair()[0]
    x = torch.randn(2, 1, 8, 8)
    both = volcam.GradCAM(model, ["down", "dec"]).explain(x, targets=1)
    a = volcam.GradCAM(model, "down")(x, targets=1)
    b = volcam.GradCAM(model, "dec")(x, targets=1)
    mean = (a + b) / 2
    lo = mean.amin(dim=(2, 3), keepdim=True)
    hi = mean.amax(dim=(2, 3), keepdim=True)
    assert torch.allclose(both.heat, (mean - lo) / (hi - lo), atol=1e-6)
    assert [m.shape[2:] for m in both.layer_maps] == [(4, 4), (8, 8)]
    assert both.layer_names == ["down", "dec"]


def test_several_layers_without_upsampling_must_share_a_size():
    model = Pyramid.pair()[0]
    with pytest.raises(volcam.ShapeError, match="one size"):
        volcam.GradCAM(model, ["down", "dec"], upsample=False)(torch.randn(1, 1, 8, 8), targets=1)


def test_scorecam_hand_computed():
    # TinySeg, target class 0 over all voxels: y(x) = 3 * sum(relu(x)), y(0) = 0.
    # channel masks after min-max: H0 = H1 = (x - min) / (max - min) = (x + 2) / 6 (channel 1 = 2x normalises the same)
    model = TinySeg(2).eval()
    x = X2.view(1, 1, 2, 2)
    h = (X2 + 2) / 6
    y = 3 * torch.relu(X2 * h).sum()
    expected = torch.relu(y * X2 + y * 2 * X2)
    res = volcam.ScoreCAM(model, "feat", batch_size=1).explain(x, targets=volcam.SegmentationTarget(0, mask="all"))
    assert torch.allclose(res.layer_maps[0].reshape(2, 2), expected, rtol=1e-5)


def test_scorecam_batching_does_not_change_the_map():
    model = Pyramid.pair()[1]
    x = torch.randn(3, 1, 1, 8, 8)
    a = volcam.ScoreCAM(model, "down", batch_size=1)(x, targets=1)
    b = volcam.ScoreCAM(model, "down", batch_size=7)(x, targets=1)
    assert torch.allclose(a, b, atol=1e-5)


def test_eigencam_is_the_first_principal_component():
    model = Pyramid.pair()[0]
    x = torch.randn(2, 1, 8, 8)
    res = volcam.EigenCAM(model, "down", relu=False, normalize=False, upsample=False).explain(x)
    feats = {}
    h = model.down.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o.detach()))
    model(x)
    h.remove()
    for b in range(2):
        pts = feats["a"][b].reshape(8, -1).T.double().numpy()
        centred = pts - pts.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        proj = centred @ vt[0]
        got = res.heat[b, 0].reshape(-1).double().numpy()
        # same component up to sign; the sign follows the channel-mean activation
        ref_sign = np.sign(np.dot(proj, pts.mean(1) - pts.mean()))
        np.testing.assert_allclose(got, proj * ref_sign, rtol=1e-3, atol=1e-4)


def _correlation(a, b):
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize("seed", [3, 5])
def test_gradcampp_is_stable_under_tiny_input_noise_after_normalisation_layers(seed):
    # a MONAI UNet encoder block (instance norm, PReLU, residual): channel sums can be
    # negative there, where the unguarded denominator of alpha crosses zero
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    net = UNet(3, 1, 3, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=2).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    noisy = x + 1e-3 * torch.randn_like(x)
    layer, target = "model.1.submodule.1.submodule.0", volcam.SegmentationTarget(1, mask="all")
    feats = {}
    h = net.get_submodule(layer).register_forward_hook(lambda m, i, o: feats.setdefault("a", o.detach()))
    with torch.no_grad():
        net(x)
    h.remove()
    assert (feats["a"].sum((2, 3, 4)) < 0).any()  # the case the guard is for
    plus = [volcam.GradCAMPlusPlus(net, layer)(v, target) for v in (x, noisy)]
    grad = [volcam.GradCAM(net, layer)(v, target) for v in (x, noisy)]
    assert _correlation(*grad) > 0.99
    assert _correlation(*plus) > 0.99
    assert plus[0].std() > 0.05  # a real map
