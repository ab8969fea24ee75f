"""FullGrad against the paper's decomposition written out in the test, on small 3D (and 2D) nets."""

import pytest
import torch
import torch.nn.functional as F
from helpers import Pyramid, assert_same_state, model_state
from torch import nn

import volcam


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these small models run faster without thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_net(dims, norms=True):
    torch.manual_seed(0)
    c = nn.Conv2d if dims == 2 else nn.Conv3d
    t = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
    bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    inorm = nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d
    layers = [c(1, 4, 3, padding=1), bn(4), nn.ReLU(), c(4, 6, 3, stride=2, padding=1)]
    if norms:
        layers += [nn.GroupNorm(2, 6)]
    layers += [nn.ReLU(), t(6, 4, 2, stride=2)]
    if norms:
        layers += [inorm(4, affine=True)]
    layers += [nn.ReLU(), c(4, 3, 1)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm2d, nn.InstanceNorm3d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval()


def bias_of(module, inp):
    """The constant of the affine map each layer applies (eval-mode batch norm: running
    statistics; group/instance norm: statistics of this input)."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return module.bias.view(1, -1)
    if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
        mu, var = module.running_mean.view(1, -1), module.running_var.view(1, -1)
    elif isinstance(module, nn.GroupNorm):
        g = inp.reshape(inp.shape[0], module.num_groups, -1)
        per = inp.shape[1] // module.num_groups
        mu = g.mean(-1).repeat_interleave(per, 1)
        var = g.var(-1, unbiased=False).repeat_interleave(per, 1)
    else:
        flat = inp.flatten(2)
        mu, var = flat.mean(-1), flat.var(-1, unbiased=False)
    return module.bias.view(1, -1) - module.weight.view(1, -1) * mu / torch.sqrt(var + module.eps)


def decomposition(net, x, category):
    """Input-gradient and bias-gradient terms, by plain autograd with hooks."""
    outs, biases = [], []

    def keep(m, i, o):
        o.retain_grad()
        outs.append(o)
        biases.append(bias_of(m, i[0].detach()))

    hooks = [m.register_forward_hook(keep) for m in net if not isinstance(m, nn.ReLU)]
    xin = x.clone().requires_grad_(True)
    out = net(xin)
    for h in hooks:
        h.remove()
    mask = (out.argmax(1) == category).float()
    score = (out[:, category] * mask).flatten(1).sum(1)
    score.sum().backward()
    terms = [(xin.grad * x).detach()]
    for o, b in zip(outs, biases):
        terms.append((b.view(*b.shape, *[1] * (o.ndim - 2)) * o.grad).detach())
    for p in net.parameters():
        p.grad = None
    return score.detach(), terms


def psi_channel_sum(t, size):
    """abs, min-max per sample over channels and space, channel sum, N-linear resize."""
    out = []
    for b in range(t.shape[0]):
        a = t[b].abs()
        a = (a - a.min()) / (a.max() - a.min())
        out.append(a.sum(0, keepdim=True))
    m = torch.stack(out)
    mode = "bilinear" if m.ndim == 4 else "trilinear"
    return m, F.interpolate(m, size=size, mode=mode, align_corners=False)


def test_reference_decomposition_is_complete_for_a_piecewise_linear_net():
    # checks the reference itself: with fixed statistics, y = sum(x dy/dx) + sum_l sum(b_l dy/dz_l)
    net = make_net(3, norms=False)
    x = torch.randn(2, 1, 4, 8, 8)
    score, terms = decomposition(net, x, 2)
    total = sum(t.flatten(1).sum(1) for t in terms)
    assert torch.allclose(total, score, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dims", [2, 3])
def test_matches_the_papers_formula(dims, device):
    net = make_net(dims)
    x = torch.randn(2, 1, *((8, 8) if dims == 2 else (4, 8, 8)))
    _, terms = decomposition(net, x, 2)
    on_device = volcam.FullGrad(net.to(device), normalize=False).explain(x.to(device), targets=2)
    assert on_device.heat.device == x.to(device).device
    net.cpu()
    before = model_state(net)
    res = volcam.FullGrad(net, normalize=False).explain(x, targets=2)
    assert torch.allclose(on_device.heat.cpu(), res.heat, atol=1e-4)
    pairs = [psi_channel_sum(t, x.shape[2:]) for t in terms]
    assert res.layer_names == ["(input)", "0", "1", "3", "4", "6", "7", "9"]
    for got, (raw, _) in zip(res.layer_maps, pairs):
        assert torch.allclose(got, raw, atol=1e-5)
    expected = sum(up for _, up in pairs)
    assert torch.allclose(res.heat, expected, atol=1e-4)
    normalised = volcam.FullGrad(net)(x, targets=2)
    assert torch.allclose(normalised, volcam.postprocess.normalize(expected), atol=1e-5)
    assert_same_state(before, model_state(net))


def test_target_layers_restrict_the_bias_terms():
    net = make_net(3)
    x = torch.randn(1, 1, 4, 8, 8)
    res = volcam.FullGrad(net, ["3", "6"], normalize=False).explain(x, targets=2)
    assert res.layer_names == ["(input)", "3", "6"]
    _, terms = decomposition(net, x, 2)
    expected = sum(psi_channel_sum(terms[i], x.shape[2:])[1] for i in (0, 3, 5))
    assert torch.allclose(res.heat, expected, atol=1e-4)


def test_training_mode_batch_norm_uses_batch_statistics_and_is_restored():
    net = make_net(2).train()
    before = model_state(net)
    x = torch.randn(3, 1, 8, 8)
    res = volcam.FullGrad(net, normalize=False).explain(x, targets=1)
    assert torch.isfinite(res.heat).all() and res.heat.abs().max() > 0
    assert_same_state(before, model_state(net))
    assert net.training


def test_2d_equals_3d_with_depth_one_over_the_whole_model():
    m2, m3 = Pyramid.pair()
    x = torch.randn(2, 1, 8, 8)
    h3 = volcam.FullGrad(m3)(x.unsqueeze(2), targets=1)
    assert torch.allclose(h3[:, :, 0], volcam.FullGrad(m2)(x, targets=1), atol=1e-5)


def test_bad_arguments():
    with pytest.raises(volcam.LayerNotFoundError, match="FullGrad needs convolution or normalisation layers"):
        volcam.FullGrad(nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU()))
    with pytest.raises(volcam.VolcamError, match="`upsample` must be True, not False"):
        volcam.FullGrad(make_net(2), upsample=False)
    with pytest.raises(volcam.VolcamError, match="`layer_output` and `reshape` must be None"):
        volcam.FullGrad(make_net(2), layer_output=0)
    with pytest.warns(UserWarning, match="eigen_smooth` is ignored"):
        volcam.FullGrad(make_net(2), eigen_smooth=True)
