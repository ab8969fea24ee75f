"""AblationCAM against the paper's formula written out with loops, in 2D and 3D."""

import math

import pytest
import torch
from helpers import assert_same_state, model_state
from torch import nn

import volcam


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these small models run faster without thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class SmallNet(nn.Module):
    def __init__(self, dims):
        super().__init__()
        c = nn.Conv2d if dims == 2 else nn.Conv3d
        self.enc = c(1, 4, 3, padding=1)
        self.down = c(4, 6, 3, stride=2, padding=1)
        self.act = nn.ReLU(inplace=True)  # in place, right after the target layer
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = c(6 + 4, 3, 1)

    def forward(self, x):
        e = torch.relu(self.enc(x))
        d = self.act(self.down(e))
        return self.head(torch.cat([self.up(d), e], 1))  # skip connection: the part before the layer is needed


def reference(model, layer, x, category, channels=None):
    """w[b, k] = (y - y_k) / |y| with channel k of ``layer`` zeroed; map = relu(sum_k w A_k)."""
    feats = {}
    h = layer.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o.detach().clone()))
    with torch.no_grad():
        out = model(x)
    h.remove()
    mask = (out.argmax(1) == category).float()
    y = (out[:, category] * mask).flatten(1).sum(1)
    a = feats["a"]
    w = torch.zeros(a.shape[:2])
    for b in range(x.shape[0]):
        for k in range(a.shape[1]) if channels is None else channels[b]:

            def zero(m, i, o, k=k):
                o = o.clone()
                o[:, k] = 0
                return o

            h = layer.register_forward_hook(zero)
            with torch.no_grad():
                yk = (model(x[b : b + 1])[0, category] * mask[b]).sum()
            h.remove()
            w[b, k] = (y[b] - yk) / y[b].abs()
    return torch.relu((w.view(*w.shape, *[1] * (a.ndim - 2)) * a).sum(1, keepdim=True)), a


@pytest.mark.parametrize("dims", [2, 3])
def test_matches_the_papers_formula(dims, device):
    torch.manual_seed(0)
    model = SmallNet(dims).eval()
    x = torch.randn(2, 1, *((8, 8) if dims == 2 else (4, 8, 8)))
    ref, _ = reference(model, model.down, x, 2)
    model.to(device)
    before = model_state(model)
    res = volcam.AblationCAM(model, "down", batch_size=5).explain(x.to(device), targets=2)
    assert ref.abs().max() > 0 and res.heat.device == x.to(device).device
    assert torch.allclose(res.layer_maps[0].cpu(), ref, rtol=1e-4, atol=1e-5)
    assert_same_state(before, model_state(model))


def test_ratio_ablates_only_the_strongest_channels_per_sample():
    torch.manual_seed(1)
    model = SmallNet(3).eval()
    x = torch.randn(2, 1, 4, 8, 8)
    cam = volcam.AblationCAM(model, "down", ratio=0.4, batch_size=3)
    res = cam.explain(x, targets=2)
    _, a = reference(model, model.down, x, 2, channels=[[], []])
    keep = math.ceil(0.4 * 6)
    chosen = a.abs().mean(dim=(2, 3, 4)).topk(keep, dim=1).indices.tolist()  # the documented rule
    ref, _ = reference(model, model.down, x, 2, channels=chosen)
    assert ref.abs().max() > 0
    assert torch.allclose(res.layer_maps[0], ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(cam.channels(a), torch.tensor(chosen))


def test_batch_size_does_not_change_the_map():
    model = SmallNet(3).eval()
    x = torch.randn(3, 1, 4, 8, 8)
    a = volcam.AblationCAM(model, "down", batch_size=1)(x, targets=2)
    b = volcam.AblationCAM(model, "down", batch_size=11)(x, targets=2)
    assert a.abs().max() > 0
    assert torch.allclose(a, b, atol=1e-6)


class TupleLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)

    def forward(self, x):
        f = self.conv(x)
        return {"features": f, "aux": f.mean()}


class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = TupleLayer()
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.block(x)["features"]))


def test_selected_output_of_a_dict_layer_is_ablated_in_place():
    torch.manual_seed(2)
    model = TupleNet().eval()
    x = torch.randn(2, 1, 4, 6, 6)
    cam = volcam.AblationCAM(model, "block", layer_output="features")
    res = cam.explain(x, targets=volcam.SegmentationTarget(1, mask="all"))
    feats = model.block.conv(x).detach()
    with torch.no_grad():
        y = model(x)[:, 1].flatten(1).sum(1)
        w = torch.zeros(2, 4)
        for k in range(4):
            h = model.block.conv.register_forward_hook(lambda m, i, o, k=k: o.index_fill(1, torch.tensor([k]), 0.0))
            w[:, k] = (y - model(x)[:, 1].flatten(1).sum(1)) / y.abs()
            h.remove()
    expected = torch.relu((w.view(2, 4, 1, 1, 1) * feats).sum(1, keepdim=True))
    assert torch.allclose(res.layer_maps[0], expected, rtol=1e-4, atol=1e-5)


def test_bad_arguments():
    model = SmallNet(2)
    with pytest.raises(volcam.ArgumentError, match="`batch_size` must be a positive int or None, not 0") as info:
        volcam.AblationCAM(model, "down", batch_size=0)
    assert isinstance(info.value, ValueError) and info.value.name == "batch_size"
    with pytest.raises(volcam.ArgumentError, match=r"`ratio` must be a number in \(0, 1\], not 1.5"):
        volcam.AblationCAM(model, "down", ratio=1.5)
