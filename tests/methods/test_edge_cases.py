"""What a new user meets with their own model and data: constant maps, layers that run twice,
negative classes, non-finite inputs, inference-mode parameters, float64 models and models
left in training mode. Each case gives a clear answer, and the model is left as it was."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import Pyramid, TinySeg, assert_same_state, model_state
from torch import nn

import volcam
from volcam.postprocess import normalize

ALL = sorted(volcam.METHODS)


def make(name, model, layer, **kw):
    return volcam.get_method(name)(model, layer, **kw)


# ----------------------------------------------------------------------------- constant maps
def test_a_constant_map_normalises_to_zeros_not_to_a_pattern():
    # a 2x2 constant map upsampled bilinearly keeps a spread of one float32 ulp (6e-8)
    up = F.interpolate(torch.full((1, 1, 2, 2), 0.3), size=(7, 9), mode="bilinear", align_corners=False)
    assert 0 < float(up.max() - up.min()) < 1e-7
    assert torch.equal(normalize(up), torch.zeros_like(up))
    # a real map of the same magnitude keeps its structure
    ramp = 0.3 + 1e-3 * torch.arange(63.0).view(1, 1, 7, 9)
    assert torch.allclose(normalize(ramp), (ramp - ramp.min()) / (ramp.max() - ramp.min()))
    # per sample and per channel, never NaN
    both = torch.cat([up, ramp])
    out = normalize(both)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and float(out[1].max()) == 1.0
    assert torch.equal(normalize(torch.zeros(2, 3, 4, 4)), torch.zeros(2, 3, 4, 4))


class Pooled(nn.Module):
    """A layer with a 2x2 map whose Grad-CAM is constant: the gradient and the activation are
    uniform over the map."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Conv2d(1, 2, 1)

    def forward(self, x):
        pooled = self.pool(x).mean((2, 3), keepdim=True).expand(-1, -1, 2, 2)
        return self.head(F.interpolate(pooled + 0.3, size=x.shape[2:], mode="nearest"))


def test_constant_layer_map_gives_zero_heat_and_says_why():
    model = Pooled().eval()
    with torch.no_grad():
        model.head.weight.fill_(1.0)
    x = torch.ones(1, 1, 7, 9)
    with pytest.warns(volcam.EmptyMapWarning, match="constant"):
        res = volcam.GradCAM(model, "pool").explain(x, targets=volcam.SegmentationTarget(1, mask="all"))
    assert torch.equal(res.heat, torch.zeros_like(res.heat))
    assert [n.reason for n in res.notes] == ["constant_map"]


# ----------------------------------------------------------------------------- a layer run twice
class Shared(nn.Module):
    """The same convolution applied twice (weight sharing)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(torch.relu(self.conv(torch.relu(self.stem(x)))))))


class Twin(nn.Module):
    """The same network with two copies of the shared convolution."""

    def __init__(self, shared):
        super().__init__()
        self.stem, self.head = shared.stem, shared.head
        self.first, self.second = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.first.load_state_dict(shared.conv.state_dict())
        self.second.load_state_dict(shared.conv.state_dict())

    def forward(self, x):
        return self.head(torch.relu(self.second(torch.relu(self.first(torch.relu(self.stem(x)))))))


@pytest.mark.parametrize("name", ["gradcam", "hirescam", "ablationcam", "scorecam"])
def test_layer_call_chooses_which_call_is_explained(name):
    torch.manual_seed(3)
    shared = Shared().eval()
    twin = Twin(shared).eval()
    x = torch.randn(2, 1, 8, 8)
    before = model_state(shared)
    first = make(name, twin, "first")(x, targets=1)
    second = make(name, twin, "second")(x, targets=1)
    assert not torch.allclose(first, second, atol=1e-3)
    with pytest.warns(volcam.LayerCallWarning, match="ran 2 times .* explains its last call"):
        default = make(name, shared, "conv")(x, targets=1)
    assert torch.allclose(default, second, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", volcam.LayerCallWarning)  # a chosen call does not warn
        assert torch.allclose(make(name, shared, "conv", layer_call=0)(x, targets=1), first, atol=1e-5)
        assert torch.allclose(make(name, shared, "conv", layer_call=-1)(x, targets=1), second, atol=1e-5)
    assert_same_state(before, model_state(shared))


def test_layer_call_error_and_a_call_that_did_not_happen():
    shared = Shared().eval()
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(volcam.LayerCallError, match="'conv' must run once per forward pass .* not 2 times"):
        volcam.GradCAM(shared, "conv", layer_call="error")(x, targets=1)
    with pytest.raises(volcam.LayerCallError, match=r"which ran 2 time\(s\) \(calls 0 to 1, or -1 to -2\), not 2"):
        volcam.GradCAM(shared, "conv", layer_call=2)(x, targets=1)
    assert isinstance(volcam.LayerCallError("x"), RuntimeError)
    # a layer that runs once is fine with layer_call="error"
    assert volcam.GradCAM(shared, "stem", layer_call="error")(x, targets=1).shape == (1, 1, 8, 8)


# ----------------------------------------------------------------------------- negative classes
def test_negative_categories_are_refused():
    cam = volcam.GradCAM(Pyramid.pair()[0], "down")
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(volcam.TargetError, match=r"\[0, 2\] .* not -1; negative indices are not accepted"):
        cam(x, targets=-1)
    with pytest.raises(volcam.TargetError, match="class index >= 0, not -1"):
        volcam.SegmentationTarget(-1)
    with pytest.raises(volcam.TargetError, match="class index >= 0, not -2"):
        volcam.ClassifierTarget(-2)
    with pytest.raises(volcam.TargetError, match="not -1"):
        cam.explain_classes(x, [1, -1])


# ----------------------------------------------------------------------------- non-finite values
@pytest.mark.parametrize("name", ALL)
def test_non_finite_input_is_refused_with_the_count(name):
    model = Pyramid.pair()[0]
    before = model_state(model)
    x = torch.randn(2, 1, 8, 8)
    x[0, 0, 1, 2] = float("nan")
    x[1, 0, 3, 3] = float("inf")
    x[1, 0, 0, 0] = float("nan")
    kw = {"batch_size": 32} if name in ("scorecam", "ablationcam") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no misleading "predicts no voxel" warning first
        with pytest.raises(volcam.ValueRangeError, match=r"not 3 NaN or infinite value\(s\) out of 128"):
            make(name, model, "down", **kw)(x, targets=1)
    assert_same_state(before, model_state(model))


def test_non_finite_input_with_aug_smooth_and_non_finite_model_output():
    model = Pyramid.pair()[0]
    x = torch.randn(1, 1, 8, 8)
    x[0, 0, 4, 4] = float("nan")
    with pytest.raises(volcam.ValueRangeError, match=r"not 1 NaN"):
        volcam.GradCAM(model, "down")(x, targets=1, aug_smooth=True)
    broken = Pyramid.pair()[0]
    with torch.no_grad():
        broken.head.bias[0] = float("inf")
    with pytest.raises(volcam.ValueRangeError, match="model output must be finite, not hold 64 NaN or infinite"):
        volcam.GradCAM(broken, "down")(torch.randn(1, 1, 8, 8), targets=1)


# ----------------------------------------------------------------------------- inference-mode parameters
def test_parameters_created_under_inference_mode():
    with torch.inference_mode():
        model = Pyramid(2)
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(
        volcam.ModelStateError, match=r"inference tensors created under torch.inference_mode\(\)"
    ) as info:
        volcam.GradCAM(model, "down")(x, targets=1)
    assert "assign=True" in str(info.value) and "'enc.0.weight'" in str(info.value)
    assert [p.requires_grad for p in model.parameters()] == flags == [True] * len(flags)  # every flag as it was
    # gradient-free methods need no gradient: they work on such a model
    assert volcam.EigenCAM(model, "down")(x).shape == (1, 1, 8, 8)
    # and the advice works
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    assert volcam.GradCAM(model, "down")(x, targets=1).shape == (1, 1, 8, 8)


def test_calls_under_inference_mode_are_refused():
    cam = volcam.GradCAM(TinySeg(2), "feat")
    with torch.inference_mode():
        x = torch.randn(1, 1, 2, 2)
        with pytest.raises(volcam.ModelStateError, match=r"inference_mode\(\): call outside of it"):
            cam(x, targets=0)


# ----------------------------------------------------------------------------- float32 maps
@pytest.mark.parametrize("name", ALL)
def test_every_method_returns_float32_maps_for_a_float64_model(name):
    model = Pyramid.pair()[1].double()
    x = torch.randn(2, 1, 1, 8, 8, dtype=torch.float64)
    res = make(name, model, "down").explain(x, targets=1)
    assert res.heat.dtype == torch.float32
    assert all(m.dtype == torch.float32 for m in res.layer_maps)
    assert res.output.dtype == torch.float64  # the model's own output is left as it is


# ----------------------------------------------------------------------------- training mode
def test_training_mode_warns_once_per_cam_object():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Dropout(0.5), nn.ReLU(), nn.Conv2d(4, 2, 1)).train()
    x = torch.randn(1, 1, 8, 8)
    cam = volcam.GradCAM(model, "0")
    with pytest.warns(volcam.TrainingModeWarning, match=r"training mode.*model.eval\(\)"):
        a = cam(x, targets=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", volcam.TrainingModeWarning)
        b = cam(x, targets=1)  # the same object does not warn again
    assert not torch.equal(a, b)  # dropout: the maps do change from call to call
    with pytest.warns(volcam.TrainingModeWarning):
        volcam.GradCAM(model, "0")(x, targets=1)  # a new object warns
    assert model.training
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", volcam.TrainingModeWarning)
        c, d = volcam.GradCAM(model, "0")(x, targets=1), volcam.GradCAM(model, "0")(x, targets=1)
    assert torch.equal(c, d)
