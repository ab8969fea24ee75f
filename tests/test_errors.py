"""Each bad input raises a typed error whose message says what was expected and what was given."""

import pytest
import torch
from helpers import Pyramid, TinySeg, assert_same_state, model_state
from torch import nn

import volcam


def test_unknown_layer_suggests_the_closest_names():
    model = Pyramid.pair()[0]
    with pytest.raises(volcam.LayerNotFoundError) as info:
        volcam.GradCAM(model, "dwn")
    msg = str(info.value)
    assert "'dwn'" in msg and "did you mean" in msg and "'down'" in msg
    assert isinstance(info.value, LookupError)
    assert "down" in info.value.suggestions


def test_module_not_in_model():
    with pytest.raises(volcam.LayerNotFoundError, match="not part of it"):
        volcam.GradCAM(Pyramid.pair()[0], nn.Conv2d(1, 1, 1))


@pytest.mark.parametrize("shape", [(8, 8), (1, 1, 1, 1, 8, 8)])
def test_wrong_input_rank(shape):
    cam = volcam.GradCAM(Pyramid.pair()[0], "down")
    with pytest.raises(volcam.ShapeError) as info:
        cam(torch.randn(*shape), targets=1)
    assert info.value.actual_shape == shape
    assert "[B, C, *S]" in str(info.value) and str(list(shape)) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_mask_shape_mismatch():
    cam = volcam.GradCAM(Pyramid.pair()[0], "down")
    with pytest.raises(volcam.ShapeError, match=r"spatial shape \[8, 8\].*not \[7, 8\]") as info:
        cam(torch.randn(2, 1, 8, 8), targets=volcam.SegmentationTarget(1, mask=torch.ones(7, 8)))
    assert info.value.actual_shape == (7, 8)
    with pytest.raises(volcam.ShapeError, match="one channel"):
        cam(torch.randn(2, 1, 8, 8), targets=volcam.SegmentationTarget(1, mask=torch.ones(2, 3, 8, 8)))
    with pytest.raises(volcam.ShapeError, match="B = 2"):
        cam(torch.randn(2, 1, 8, 8), targets=volcam.SegmentationTarget(1, mask=torch.ones(3, 8, 8)))


def test_masks_shared_per_sample_bool_and_float_agree():
    model = Pyramid.pair()[0]
    x = torch.randn(2, 1, 8, 8)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:6, 3:7] = True
    cam = volcam.GradCAM(model, "down")
    shared = cam(x, targets=volcam.SegmentationTarget(1, mask=mask))
    per_sample = cam(x, targets=volcam.SegmentationTarget(1, mask=mask.float().expand(2, 1, 8, 8)))
    assert torch.equal(shared, per_sample)
    assert not torch.equal(shared, cam(x, targets=volcam.SegmentationTarget(1)))


@pytest.mark.parametrize("category", [3, -4, 17])
def test_category_out_of_range(category):
    cam = volcam.GradCAM(Pyramid.pair()[0], "down")
    with pytest.raises(volcam.TargetError, match=rf"\[0, 2\].*3 channel.*not {category}"):
        cam(torch.randn(1, 1, 8, 8), targets=category)


def test_bad_target_values():
    cam = volcam.GradCAM(Pyramid.pair()[0], "down")
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(volcam.TargetError, match="one entry per sample"):
        cam(x, targets=[1])
    with pytest.raises(volcam.TargetError, match="not 'one'"):
        cam(x, targets="one")
    with pytest.raises(volcam.ShapeError, match=r"one score per sample, shape \[2\]"):
        cam(x, targets=lambda out: out.sum())
    with pytest.raises(volcam.TargetError, match="must be an int"):
        volcam.SegmentationTarget(1.5)


def test_non_tensor_output_without_selector():
    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = Pyramid(2)

        def forward(self, x):
            return {"seg": self.body(x), "aux": x.mean()}

    model = Dict().eval()
    with pytest.raises(
        volcam.SelectorError, match=r"model output must be a tensor, not dict\('seg': Tensor\[1, 3, 8, 8\]"
    ) as info:
        volcam.GradCAM(model, "body.down")(torch.randn(1, 1, 8, 8), targets=1)
    assert "selector" in str(info.value) and isinstance(info.value, TypeError)
    with pytest.raises(volcam.SelectorError, match="'sge' does not fit"):
        volcam.GradCAM(model, "body.down", model_output="sge")(torch.randn(1, 1, 8, 8), targets=1)


def test_layer_not_reached_by_the_forward_pass():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(1, 2, 1)
            self.spare = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return self.used(x)

    model = Unused()
    before = model_state(model)
    with pytest.raises(volcam.LayerNotReachedError, match=r"\['spare'\] were not run"):
        volcam.GradCAM(model, "spare")(torch.randn(1, 1, 4, 4), targets=1)
    assert_same_state(before, model_state(model))


def test_score_that_does_not_depend_on_the_layer():
    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.seg = nn.Conv2d(1, 2, 1)
            self.aux = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return self.seg(x), self.aux(x)

    with pytest.raises(
        volcam.LayerNotReachedError, match=r"does not depend on the output of target layer\(s\) \['aux'\]"
    ):
        volcam.GradCAM(Aux(), "aux", model_output=0)(torch.randn(1, 1, 4, 4), targets=1)


def test_token_layer_without_reshape():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(1, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):  # [B, 1, Y, X] -> tokens [B, N, 4] -> [B, 2, Y, X]
            b, _, h, w = x.shape
            t = self.embed(x.flatten(2).transpose(1, 2))
            return self.head(t).transpose(1, 2).reshape(b, 2, h, w)

    with pytest.raises(volcam.ShapeError, match="pass `reshape`"):
        volcam.GradCAM(Tokens(), "embed")(torch.randn(1, 1, 4, 4), targets=1)
    ok = volcam.GradCAM(Tokens(), "embed", reshape=lambda t: t.transpose(1, 2).reshape(t.shape[0], 4, 4, 4))
    assert ok(torch.randn(1, 1, 4, 4), targets=1).shape == (1, 1, 4, 4)


def test_unknown_method_name_suggests():
    with pytest.raises(volcam.MethodNotFoundError, match="did you mean 'gradcam'") as info:
        volcam.get_method("gradcm")
    assert isinstance(info.value, KeyError)
    assert volcam.get_method("GradCAM++") is volcam.GradCAMPlusPlus
    assert volcam.get_method("grad-cam-pp") is volcam.GradCAMPlusPlus
    assert volcam.get_method("score_cam") is volcam.ScoreCAM


def test_inference_mode_is_refused():
    cam = volcam.GradCAM(TinySeg(2), "feat")
    with torch.inference_mode():
        x = torch.randn(1, 1, 2, 2)
        with pytest.raises(volcam.VolcamError, match="inference_mode"):
            cam(x, targets=0)


def test_scorecam_batch_size_is_checked():
    with pytest.raises(volcam.ArgumentError, match="`batch_size` must be a positive int or None, not 0") as info:
        volcam.ScoreCAM(TinySeg(2), "feat", batch_size=0)
    assert isinstance(info.value, ValueError) and info.value.name == "batch_size"
