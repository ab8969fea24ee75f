"""Invariants that hold for every method: 2D == 3D with depth 1, batch == one at a time,
repeatable, on the input's device, and the model left exactly as it was."""

import pytest
import torch
from helpers import Pyramid, TinySeg, assert_same_state, hook_count, model_state
from torch import nn

import volcam

ALL = sorted(volcam.METHODS)


def make(name, model, layer, **kw):
    cls = volcam.get_method(name)
    if name == "scorecam":
        kw.setdefault("batch_size", 4)
    return cls(model, layer, **kw)


@pytest.mark.parametrize("name", ALL)
def test_2d_equals_3d_with_depth_one(name):
    m2, m3 = Pyramid.pair()
    x2 = torch.randn(2, 1, 8, 8)
    h2 = make(name, m2, "down")(x2, targets=1)
    h3 = make(name, m3, "down")(x2.unsqueeze(2), targets=1)
    assert h3.shape == (2, 1, 1, 8, 8)
    assert torch.allclose(h3[:, :, 0], h2, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_batch_equals_samples_one_at_a_time(name):
    model = Pyramid.pair()[1]
    x = torch.randn(3, 1, 1, 8, 8)
    whole = make(name, model, "down")(x, targets=2)
    single = torch.cat([make(name, model, "down")(x[i : i + 1], targets=2) for i in range(3)])
    assert torch.allclose(whole, single, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_two_calls_give_identical_results_and_state_is_restored(name, device):
    model = Pyramid.pair()[1].to(device)
    before = model_state(model)
    cam = make(name, model, ["enc", "down"])
    x = torch.randn(2, 1, 1, 8, 8, device=device)
    a = cam(x, targets=1)
    b = cam(x, targets=1)
    assert torch.equal(a, b)
    assert a.device == x.device and a.dtype == torch.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("failure", ["target", "forward"])
def test_no_hook_or_flag_left_after_an_error(name, failure):
    model = Pyramid.pair()[0]
    before = model_state(model)
    cam = make(name, model, "down")
    x = torch.randn(1, 1, 8, 8)
    if failure == "target":

        def target(_out):
            raise RuntimeError("target failed")

        with pytest.raises(RuntimeError, match="target failed"):
            cam(x, targets=target)
    else:
        with pytest.raises(RuntimeError):
            cam(torch.randn(1, 3, 8, 8), targets=1)  # wrong channel count: the model's own error
    assert_same_state(before, model_state(model))


class TwinReLU(nn.Module):
    def __init__(self, inplace):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv3d(4, 4, 3, padding=1)
        self.act2 = nn.LeakyReLU(0.1, inplace=inplace)
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x):
        y = self.act(self.conv(x))
        y = self.conv2(y)
        y += 0.5  # in-place add right on the second target's output
        return self.head(self.act2(y))


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "hirescam", "layercam", "scorecam", "eigencam"])
def test_inplace_relu_after_target_gives_the_out_of_place_map(name):
    a, b = TwinReLU(True).eval(), TwinReLU(False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 6, 6, 6)
    ha = make(name, a, ["conv", "conv2"])(x, targets=1)
    hb = make(name, b, ["conv", "conv2"])(x, targets=1)
    assert torch.allclose(ha, hb, atol=1e-6)
    assert a.act.inplace and a.act2.inplace and not b.act.inplace


def test_training_mode_model_keeps_its_mode_and_batchnorm_statistics():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).train()
    before = model_state(model)
    volcam.GradCAM(model, "0")(torch.randn(2, 1, 8, 8), targets=1)
    assert_same_state(before, model_state(model))
    assert model.training


def test_parameters_that_did_not_require_grad_stay_so():
    model = Pyramid.pair()[0]
    model.enc[0].weight.requires_grad_(False)
    before = model_state(model)
    volcam.GradCAM(model, "dec")(torch.randn(1, 1, 8, 8), targets=1)
    assert_same_state(before, model_state(model))
    assert model.enc[0].weight.requires_grad is False


def test_input_that_requires_grad_works_and_gets_no_grad():
    model = Pyramid.pair()[0]
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    h = volcam.GradCAM(model, ["enc", "dec"])(x, targets=1)
    ref = volcam.GradCAM(model, ["enc", "dec"])(x.detach(), targets=1)
    assert torch.allclose(h, ref, atol=1e-6)
    assert x.grad is None


def test_works_inside_no_grad():
    model = Pyramid.pair()[0]
    x = torch.randn(1, 1, 8, 8)
    ref = volcam.GradCAM(model, "down")(x, targets=1)
    with torch.no_grad():
        h = volcam.GradCAM(model, "down")(x, targets=1)
    assert torch.equal(h, ref)


def test_cpu_autocast_map_is_float32_and_close_to_full_precision():
    model = Pyramid.pair()[1]
    x = torch.randn(2, 1, 1, 8, 8)
    ref = volcam.GradCAM(model, "dec")(x, targets=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = volcam.GradCAM(model, "dec").explain(x, targets=1)
    assert res.heat.dtype == torch.float32
    assert res.output.dtype == torch.bfloat16  # the activations really were half precision
    assert (res.heat - ref).abs().max() < 0.05


def test_empty_mask_gives_zero_map_and_a_warning():
    model = TinySeg(2).eval()
    x = torch.tensor([[1.0, -2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    with pytest.warns(RuntimeWarning, match="empty"):
        h = volcam.GradCAM(model, "feat")(x, targets=volcam.SegmentationTarget(0, mask=torch.zeros(2, 2)))
    assert torch.equal(h, torch.zeros_like(h))


def test_default_target_is_largest_predicted_foreground_per_sample():
    # logits: class 0 = 3 relu(x), class 1 = -relu(2x); argmax: class 0 where x > 0, else 0 (tie) -> no class 1
    # use a 3-class model instead, built by hand
    conv = nn.Conv2d(1, 3, 1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.0, 1.0, -1.0]).view(3, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.5, 0.0, 0.0]))
    net = nn.Sequential(conv).eval()
    # sample 0: three voxels > 0.5 -> class 1 wins; sample 1: three voxels < -0.5 -> class 2 wins
    x = torch.tensor([[[[1.0, 2.0], [3.0, 0.0]]], [[[-1.0, -2.0], [-3.0, 0.0]]]])
    res = volcam.GradCAM(net, "0").explain(x)
    logits = net(x)
    expected = torch.stack(
        [(logits[0, 1] * (logits[0].argmax(0) == 1)).sum(), (logits[1, 2] * (logits[1].argmax(0) == 2)).sum()]
    )
    assert torch.allclose(res.scores, expected)
    assert torch.allclose(res.scores, torch.tensor([6.0, 6.0]))


def test_hooks_of_the_user_stay_in_place():
    model = Pyramid.pair()[0]
    seen = []
    h = model.down.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    volcam.GradCAM(model, "down")(torch.randn(1, 1, 8, 8), targets=1)
    assert len(model.down._forward_hooks) == 1 and seen == [torch.Size([1, 8, 4, 4])]
    h.remove()
    assert hook_count(model) == 0
