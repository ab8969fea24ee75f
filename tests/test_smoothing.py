"""aug_smooth (flip/zoom test-time augmentation) and eigen_smooth, in 2D and 3D, batched."""

import warnings

import numpy as np
import pytest
import torch
from helpers import Pyramid, assert_same_state, hook_count, model_state
from torch import nn

import volcam
from volcam.smoothing import AugSmooth, View, apply_view, invert_view

FLIPS_ONLY = AugSmooth(flips="all", scales=(1.0,))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these small models run faster without thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conv(dims):
    return nn.Conv2d if dims == 2 else nn.Conv3d


def symmetric_net(dims):
    """Stride-1 convolutions with kernels symmetric under every flip, zero padding: the
    network commutes exactly with flips of any spatial axis."""
    torch.manual_seed(3)
    c = conv(dims)
    net = nn.Sequential(c(1, 4, 3, padding=1), nn.ReLU(), c(4, 6, 3, padding=1), nn.ReLU(), c(6, 3, 1)).eval()
    with torch.no_grad():
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                w = m.weight
                for axes in [(a,) for a in range(2, w.ndim)]:
                    w.copy_((w + w.flip(axes)) / 2)
    return net


def pointwise_net(dims):
    torch.manual_seed(4)
    c = conv(dims)
    return nn.Sequential(c(1, 4, 1), nn.ReLU(), c(4, 5, 1), nn.ReLU(), c(5, 3, 1)).eval()


def shape(dims, batch=2):
    return (batch, 1, 7, 10) if dims == 2 else (batch, 1, 5, 6, 7)


def total_variation(h):
    return sum(h.diff(dim=d).abs().flatten(1).sum(1) for d in range(2, h.ndim))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("make_net", [pointwise_net, symmetric_net])
def test_flip_smoothing_of_a_flip_equivariant_net_changes_nothing(dims, make_net):
    net = make_net(dims)
    x = torch.randn(*shape(dims))
    cam = volcam.GradCAM(net, "2")
    plain = cam.explain(x)  # default target: each sample's largest predicted class, its predicted region
    smooth = cam.explain(x, aug_smooth=FLIPS_ONLY)
    assert torch.allclose(smooth.heat, plain.heat, atol=1e-5)
    assert torch.allclose(smooth.layer_maps[0], plain.layer_maps[0], rtol=1e-4, atol=1e-5)
    assert torch.allclose(smooth.output, plain.output, atol=1e-6) and torch.allclose(smooth.scores, plain.scores)
    assert plain.heat.std() > 0.05  # a real map, not a constant


@pytest.mark.parametrize("dims", [2, 3])
def test_user_mask_follows_each_flip(dims):
    # an asymmetric mask: only if it is flipped with the input do the views explain the same region
    net = symmetric_net(dims)
    x = torch.randn(*shape(dims))
    mask = torch.zeros(x.shape[2:])
    mask[(slice(0, 3),) * dims] = 1
    target = volcam.SegmentationTarget(2, mask=mask)
    cam = volcam.HiResCAM(net, "2")
    plain = cam(x, targets=target)
    smooth = cam(x, targets=target, aug_smooth=FLIPS_ONLY)
    assert torch.allclose(smooth, plain, atol=1e-5)


def blob_detector(dims):
    """An ordinary (not equivariant) net that finds bright structures: positive-mean kernels
    with strong random asymmetric parts; class 1 is the summed features."""
    c = conv(dims)
    net = nn.Sequential(c(1, 4, 3, padding=1), nn.ReLU(), c(4, 4, 3, padding=1), nn.ReLU(), c(4, 2, 1)).eval()
    with torch.no_grad():
        for m in (net[0], net[2]):
            m.weight.copy_((1 + torch.randn_like(m.weight)) / m.weight[0].numel())
            m.bias.zero_()
        net[4].weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]).view(2, 4, *[1] * dims))
        net[4].bias.zero_()
    return net


def blobs(centres, size, noise=0.5):
    grid = torch.meshgrid(*[torch.arange(s).float() for s in size], indexing="ij")
    out = [torch.exp(-sum((g - c) ** 2 for g, c in zip(grid, centre)) / 8) for centre in centres]
    return (torch.stack(out) + noise * torch.randn(len(centres), *size))[:, None]


@pytest.mark.parametrize("dims", [2, 3])
def test_smoothing_an_ordinary_net_lowers_total_variation_and_keeps_the_blobs(dims):
    torch.manual_seed(0)
    net = blob_detector(dims)
    centres = [(5, 9), (10, 6)] if dims == 2 else [(5, 7, 6), (7, 5, 6)]
    size = (16, 16) if dims == 2 else (12, 12, 12)
    x = blobs(centres, size)
    cam = volcam.HiResCAM(net, "0")
    target = volcam.SegmentationTarget(1, mask="all")
    plain = cam(x, targets=target)
    smooth = cam(x, targets=target, aug_smooth=True)  # single-axis flips, zoom 1.1: 6 views in 2D, 8 in 3D
    assert (total_variation(smooth) < 0.95 * total_variation(plain)).all()
    # and it still shows the blobs: closer to the noise-free images than the plain map
    clean = blobs(centres, size, noise=0.0)
    assert (correlation(smooth, clean) > correlation(plain, clean)).all()
    assert (correlation(smooth, clean) > 0.5).all()


def correlation(a, b):
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def test_all_views_go_through_one_batched_forward():
    net = symmetric_net(3)
    target = volcam.SegmentationTarget(1, mask="all")
    calls = []
    handle = net.register_forward_pre_hook(lambda m, inp: calls.append(inp[0].shape[0]))
    try:
        volcam.GradCAM(net, "2")(torch.randn(*shape(3)), targets=target, aug_smooth=AugSmooth(scales=(1.0, 1.1)))
        assert calls == [2 * 4 * 2]  # B * (identity + 3 single-axis flips) * 2 scales
        calls.clear()
        volcam.GradCAM(net, "2")(torch.randn(*shape(3)), targets=target, aug_smooth=AugSmooth(batch_size=6))
        assert calls == [6, 6, 4]  # whole views per call (3 views of 2 samples), 8 views in all
    finally:
        handle.remove()
    assert hook_count(net) == 0


def test_views_identity_first_and_bounded():
    assert AugSmooth(flips="all", scales=(1.1,)).views(3)[0] == View((), 1.0)
    assert len(AugSmooth(flips="all", scales=(1.0, 0.9, 1.1)).views(3)) == 24
    assert [v.flips for v in AugSmooth(flips="single", scales=(1.0,)).views(2)] == [(), (0,), (1,)]
    assert [v.flips for v in AugSmooth(flips=[(1, -1), (0,)], scales=(1.0,)).views(3)] == [(), (1, 2), (0,)]
    with pytest.raises(volcam.ArgumentError, match="at most `max_views` = 32 views, not 40"):
        AugSmooth(flips="all", scales=(1.0, 0.8, 0.9, 1.1, 1.2)).views(3)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_inverse_zoom_recovers_a_linear_map_where_the_view_sees_it(dims):
    size = (12, 10, 8)[:dims]
    coords = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in size], indexing="ij")
    ramp = sum((i + 1) * c for i, c in enumerate(coords)).expand(2, 1, *size)
    view = View((dims - 1,), 1.25)
    back, cover = invert_view(apply_view(ramp, view), view)
    inside = cover > 0.999
    assert inside.float().mean() > 0.3 and (cover[..., 0] < 0.5).all()  # the rim is outside the zoomed view
    assert torch.allclose(back[inside], ramp[inside], atol=1e-5)


@pytest.mark.parametrize("name", sorted(volcam.METHODS))
def test_every_method_with_both_smoothings_restores_the_model_and_batches(name, device):
    model = Pyramid.pair()[1].to(device)
    before = model_state(model)
    kw = {"batch_size": 8} if name in ("scorecam", "ablationcam") else {}
    cam = volcam.get_method(name)(model, "down", **kw)
    x = torch.randn(2, 1, 2, 8, 8, device=device)
    aug = AugSmooth(flips=[(2,)], scales=(1.0, 1.1))  # 4 views
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FullGrad: eigen_smooth does not apply
        both = cam(x, targets=1, aug_smooth=aug, eigen_smooth=True)
        single = torch.cat([cam(x[i : i + 1], targets=1, aug_smooth=aug, eigen_smooth=True) for i in range(2)])
    assert torch.allclose(both, single, atol=1e-5)
    assert both.shape == x.shape and both.device == x.device
    assert float(both.min()) >= 0 and float(both.max()) <= 1
    assert_same_state(before, model_state(model))
    with pytest.raises(RuntimeError, match="target failed"):
        cam(x, targets=lambda out: (_ for _ in ()).throw(RuntimeError("target failed")), aug_smooth=True)
    assert_same_state(before, model_state(model))


def test_constructor_defaults_and_call_overrides():
    model = Pyramid.pair()[0]
    x = torch.randn(2, 1, 8, 8)
    on = volcam.GradCAM(model, "down", aug_smooth=True, eigen_smooth=True)
    off = volcam.GradCAM(model, "down")
    assert torch.equal(on(x, targets=1), off(x, targets=1, aug_smooth=True, eigen_smooth=True))
    assert torch.equal(on(x, targets=1, aug_smooth=False, eigen_smooth=False), off(x, targets=1))
    as_dict = off(x, targets=1, aug_smooth={"flips": "all", "scales": [1.0, 1.1]})  # as a config file gives it
    assert torch.equal(as_dict, off(x, targets=1, aug_smooth=AugSmooth(flips="all", scales=(1.0, 1.1))))


def test_bad_settings_are_reported():
    model = Pyramid.pair()[0]
    x = torch.randn(1, 1, 8, 8)
    # from Python: ArgumentError (a ValueError) naming the argument
    with pytest.raises(volcam.ArgumentError, match="`aug_smooth` must be True, False, a volcam.smoothing.AugSmooth or"):
        volcam.GradCAM(model, "down")(x, targets=1, aug_smooth="yes")
    with pytest.raises(
        volcam.ArgumentError, match=r"`flips` must be one of \['single', 'all', 'none'\], not 'diagonal'"
    ):
        AugSmooth(flips="diagonal")
    with pytest.raises(volcam.ArgumentError, match=r"spatial axes in \[0, 1\] .* not \(2,\)") as info:
        volcam.GradCAM(model, "down")(x, targets=1, aug_smooth=AugSmooth(flips=[(2,)]))
    assert info.value.name == "flips" and isinstance(info.value, ValueError)
    with pytest.raises(volcam.ArgumentError, match="`scales` must be positive"):
        AugSmooth(scales=(1.0, -1.1))
    with pytest.raises(volcam.ArgumentError, match="`batch_size` must be a positive int or None, not 0"):
        AugSmooth(batch_size=0)
    # from a configuration file (a dict): ConfigError naming the key
    with pytest.raises(volcam.ConfigError, match="must be AugSmooth arguments, not {'flip': 'all'}"):
        volcam.GradCAM(model, "down")(x, targets=1, aug_smooth={"flip": "all"})
    with pytest.raises(volcam.ConfigError, match="`scales` must be positive") as info:
        volcam.GradCAM(model, "down")(x, targets=1, aug_smooth={"scales": [1.0, -1.0]})
    assert info.value.key == "aug_smooth.scales"


def test_empty_mask_warns_once_with_the_sample_index():
    model = Pyramid.pair()[0]
    x = torch.randn(2, 1, 8, 8)
    mask = torch.zeros(2, 8, 8)
    mask[0, 2:5, 2:5] = 1
    with pytest.warns(RuntimeWarning, match=r"sample\(s\) \[1\] is empty") as record:
        volcam.GradCAM(model, "down")(x, targets=volcam.SegmentationTarget(1, mask=mask), aug_smooth=True)
    assert len([w for w in record if "empty" in str(w.message)]) == 1


# ---------------------------------------------------------------------------------- eigen_smooth
def reference_pc(weighted: np.ndarray) -> np.ndarray:
    """First principal component of [K, *S] (points = voxels), float64 SVD."""
    k = weighted.shape[0]
    points = weighted.reshape(k, -1).T
    centred = points - points.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[0]).reshape(weighted.shape[1:])


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", ["gradcam", "hirescam"])
def test_eigen_smooth_is_the_first_principal_component_of_the_weighted_activations(dims, name):
    torch.manual_seed(1)
    model = Pyramid.pair()[dims - 2]
    x = torch.randn(3, 1, *((4,) if dims == 3 else ()), 8, 8)
    feats = {}
    handle = model.down.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o))
    out = model(x)
    handle.remove()
    score = (out[:, 2] * (out.argmax(1) == 2)).flatten(1).sum(1)
    a = feats["a"]
    g = torch.autograd.grad(score.sum(), a)[0].double()
    a = a.detach().double()
    weighted = g.mean(dim=tuple(range(2, a.ndim)), keepdim=True) * a if name == "gradcam" else g * a
    cam = volcam.get_method(name)(model, "down", relu=False, normalize=False, upsample=False)
    got = cam.explain(x, targets=2, eigen_smooth=True).layer_maps[0].double()
    plain = cam.explain(x, targets=2).layer_maps[0].double()
    for b in range(3):
        ref = reference_pc(weighted[b].numpy())
        diff = min(np.abs(got[b, 0].numpy() - ref).max(), np.abs(got[b, 0].numpy() + ref).max())
        assert diff < 1e-4 * np.abs(ref).max()
        # the sign follows the plain (summed) map
        assert float((got[b] * (plain[b] - plain[b].mean())).sum()) > 0
