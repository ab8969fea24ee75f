"""Tuple, list and dict outputs of layers and models, through selectors."""

from collections import OrderedDict

import pytest
import torch
from helpers import assert_same_state, model_state
from torch import nn

import volcam
from volcam.selectors import replace, select


def test_select_and_replace_paths():
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    out = {"seg": a, "skips": [b, (c,)]}
    assert select(out, "seg") is a
    assert select(out, ("skips", 1, 0)) is c
    new = torch.full((1,), 9.0)
    rebuilt = replace(out, ("skips", 1, 0), new)
    assert rebuilt["skips"][1][0] is new and rebuilt["skips"][0] is b and rebuilt["seg"] is a
    assert out["skips"][1][0] is c  # the original structure is not mutated
    assert isinstance(rebuilt["skips"][1], tuple)
    od = OrderedDict(x=a, y=b)
    assert isinstance(replace(od, "y", new), OrderedDict)
    assert replace(out, lambda o: o["skips"][0], new, old=b)["skips"][0] is new


def test_bad_selectors():
    out = (torch.zeros(1), [torch.ones(1)])
    with pytest.raises(volcam.SelectorError, match="selector 5 does not fit"):
        select(out, 5)
    with pytest.raises(volcam.SelectorError, match="must be a tensor, not list"):
        select(out, 1)
    with pytest.raises(volcam.SelectorError, match="not 1.5"):
        select(out, 1.5)
    with pytest.raises(volcam.SelectorError, match="must return one of the tensors"):
        replace(out, lambda o: o[0] * 2, torch.zeros(1), old=torch.zeros(1))


class EncoderWithSkips(nn.Module):
    """A block returning (features, skips), like an encoder stage."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool3d(2)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        skip = self.act(self.conv(x))
        return self.pool(skip), [skip]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = EncoderWithSkips()
        self.mid = nn.Conv3d(4, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.head = nn.Conv3d(8, 2, 1)

    def forward(self, x):
        feats, skips = self.enc(x)
        y = torch.relu_(self.mid(feats))  # in-place right after the selected tensor
        return {"seg": self.head(torch.cat([self.up(y), skips[0]], 1)), "feats": feats}


def manual_gradcam(model, x, pick):
    """Grad-CAM written out with plain autograd (independent of volcam's hooks)."""
    kept = {}

    def hook(m, i, o):
        t = pick(o)
        kept["a"] = t
        t.retain_grad()

    x = x.clone().requires_grad_(True)
    h = model.enc.register_forward_hook(hook)
    out = model(x)["seg"]
    h.remove()
    mask = (out.argmax(1) == 1).float()
    score = (out[:, 1] * mask).flatten(1).sum(1).sum()
    a = kept["a"]
    g = torch.autograd.grad(score, a)[0]
    return torch.relu((g.mean(dim=(2, 3, 4), keepdim=True) * a).sum(1, keepdim=True)).detach()


@pytest.mark.parametrize("selector,pick", [(0, lambda o: o[0]), ((1, 0), lambda o: o[1][0])])
def test_layer_output_selector_on_tuple_block(selector, pick):
    torch.manual_seed(3)
    model = Net().eval()
    x = torch.randn(2, 1, 8, 8, 8)
    before = model_state(model)
    res = volcam.GradCAM(model, "enc", layer_output=selector, model_output="seg").explain(x, targets=1)
    assert_same_state(before, model_state(model))
    ref = manual_gradcam(model, x, pick)
    assert torch.allclose(res.layer_maps[0], ref, atol=1e-5)
    # the same forward's prediction (the engine's convolutions after the layer run channels-last on
    # the CPU: equal up to float rounding)
    torch.testing.assert_close(res.output, model(x)["seg"], rtol=1e-6, atol=1e-6)


def test_callable_selectors():
    model = Net().eval()
    x = torch.randn(1, 1, 8, 8, 8)
    a = volcam.GradCAM(model, "enc", layer_output=(1, 0), model_output="seg")(x, targets=1)
    b = volcam.GradCAM(model, "enc", layer_output=lambda o: o[1][0], model_output=lambda o: o["seg"])(x, targets=1)
    assert torch.equal(a, b)
