"""The engine's structure: one skeleton for every method (template hooks, no copies), a
registry filled from the classes, typed targets, and typed errors and warnings."""

import sys
import warnings

import pytest
import torch
from helpers import Pyramid, TinySeg

import volcam
import volcam.methods as methods
import volcam.methods.registry as registry
from volcam.methods.base import BaseCAM
from volcam.smoothing import _ViewTarget
from volcam.targets import BoundTarget, Scorer, Target

#: what a method may override: the template hooks and its own settings
HOOKS = {
    "weights",
    "combine",
    "reduce_channels",
    "extra_hooks",
    "layer_maps",
    "combine_layers",
    "describe_missing",
    "__init__",
    "__repr__",
}
SKELETON = {"__call__", "explain", "explain_targets", "explain_classes", "to_spatial"}


@pytest.mark.parametrize("cls", sorted({**volcam.METHODS, **volcam.ATTENTION_METHODS}.values(), key=str))
def test_no_method_copies_the_engine_skeleton(cls):
    overridden = {
        name
        for klass in cls.__mro__[: cls.__mro__.index(BaseCAM)]
        for name, value in vars(klass).items()
        if callable(value) and name in vars(BaseCAM)
    }
    assert overridden <= HOOKS, f"{cls.__name__} overrides {sorted(overridden - HOOKS)}"
    assert not overridden & SKELETON
    own = cls.__mro__[: cls.__mro__.index(BaseCAM)]
    assert not any(name.startswith("_explain") for klass in own for name in vars(klass))


def test_registry_is_filled_from_the_classes_names():
    everything = {**volcam.METHODS, **volcam.ATTENTION_METHODS}
    for name, cls in everything.items():
        assert cls.name == name
    assert volcam.METHODS["gradcam++"] is volcam.GradCAMPlusPlus
    assert volcam.get_method("gradcampp") is volcam.GradCAMPlusPlus  # an alias declared on the class
    assert volcam.ATTENTION_METHODS == {"rollout": volcam.AttentionRollout}


def test_a_new_method_is_one_file_and_nothing_else(tmp_path):
    (tmp_path / "doubledcam.py").write_text(
        '"""A test method."""\n'
        "from volcam.methods.gradcam import GradCAM\n\n\n"
        "class DoubledCAM(GradCAM):\n"
        '    """Grad-CAM weights times two."""\n\n'
        '    name = "doubledcam"\n'
        '    aliases = ("double",)\n\n'
        "    def weights(self, activations, grads):\n"
        "        return 2 * super().weights(activations, grads)\n"
    )
    methods.__path__.append(str(tmp_path))
    registry.PATHS.append(str(tmp_path))
    try:
        found, attention, aliases = registry._discover()
    finally:
        methods.__path__.remove(str(tmp_path))
        registry.PATHS.remove(str(tmp_path))
        sys.modules.pop("volcam.methods.doubledcam", None)
    assert "doubledcam" in found and aliases["double"] == "doubledcam" and "doubledcam" not in attention
    model = Pyramid.pair()[0]
    cam = found["doubledcam"](model, "down", normalize=False, relu=False)
    x = torch.randn(1, 1, 8, 8)
    ref = volcam.GradCAM(model, "down", normalize=False, relu=False)(x, 1)
    assert torch.allclose(cam(x, targets=1), 2 * ref) and ref.abs().max() > 0
    assert set(found) == set(volcam.METHODS) | {"doubledcam"}


def test_targets_follow_the_protocols():
    out = torch.randn(2, 3, 4, 4)
    assert isinstance(volcam.SegmentationTarget(1), Target)
    assert isinstance(volcam.SegmentationTarget(1).bind(out), Scorer)
    assert not issubclass(_ViewTarget, volcam.SegmentationTarget)  # a Target of its own


class HalfTarget:
    """A user target: the summed logits of class 2 in the upper half of the image."""

    def bind(self, output):
        mask = torch.zeros(output.shape[0], *output.shape[2:])
        mask[:, : output.shape[2] // 2] = 1
        return BoundTarget(torch.full((output.shape[0],), 2), mask)


def test_a_user_target_binds_like_the_built_in_ones():
    model = Pyramid.pair()[0]
    x = torch.randn(2, 1, 8, 8)
    mask = torch.zeros(8, 8)
    mask[:4] = 1
    cam = volcam.GradCAM(model, "down")
    res = cam.explain(x, targets=HalfTarget())
    ref = cam.explain(x, targets=volcam.SegmentationTarget(2, mask=mask))
    assert torch.equal(res.heat, ref.heat) and torch.equal(res.scores, ref.scores)
    # perturbation methods score the perturbed inputs against the same bound region
    score = volcam.ScoreCAM(model, "down")
    assert torch.allclose(score(x, HalfTarget()), score(x, volcam.SegmentationTarget(2, mask=mask)))
    # and aug_smooth carries it into every view
    smooth = cam.explain(x, targets=HalfTarget(), aug_smooth=True)
    assert torch.allclose(
        smooth.heat, cam.explain(x, targets=volcam.SegmentationTarget(2, mask=mask), aug_smooth=True).heat
    )


def test_bad_engine_arguments_are_argument_errors():
    model = TinySeg(2)
    for kwargs, match in [
        ({"layer_call": "first"}, "`layer_call` must be None"),
        ({"layer_call": 1.5}, "`layer_call` must be None"),
        ({"class_chunk": 0}, "`class_chunk` must be a positive int or None, not 0"),
    ]:
        with pytest.raises(volcam.ArgumentError, match=match) as info:
            volcam.GradCAM(model, "feat", **kwargs)
        assert isinstance(info.value, ValueError) and info.value.name == next(iter(kwargs))
    with pytest.raises(volcam.ArgumentError, match="`head_fusion` must be one of"):
        from monai.networks.nets import ViT

        volcam.AttentionRollout(
            ViT(1, (8, 8), (4, 4), hidden_size=8, mlp_dim=8, num_layers=1, num_heads=2, spatial_dims=2),
            head_fusion="median",
        )


def test_empty_target_warning_is_filtered_by_category():
    model = TinySeg(2).eval()
    x = torch.tensor([[1.0, -2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    target = volcam.SegmentationTarget(0, mask=torch.zeros(2, 2))
    with pytest.warns(volcam.EmptyTargetWarning):
        volcam.GradCAM(model, "feat")(x, targets=target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=volcam.EmptyTargetWarning)
        res = volcam.GradCAM(model, "feat").explain(x, targets=target)  # no other warning
    assert [n.reason for n in res.notes] == ["empty_target"]
    assert issubclass(volcam.EmptyTargetWarning, RuntimeWarning)  # callers filtering RuntimeWarning keep working


def test_warnings_point_at_the_callers_line():
    model = TinySeg(2).train()
    x = torch.tensor([[1.0, -2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    target = volcam.SegmentationTarget(0, mask=torch.zeros(2, 2))
    calls = [
        lambda: volcam.GradCAM(model, "feat")(x, target),
        lambda: volcam.GradCAM(model, "feat").explain(x, target),
        lambda: volcam.GradCAM(model, "feat").explain_classes(x, [0], masks=torch.zeros(2, 2)),
        lambda: volcam.GradCAM(model, "feat").explain(x, target, aug_smooth=True),
    ]
    for call in calls:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        categories = {w.category for w in caught}
        assert categories == {volcam.TrainingModeWarning, volcam.EmptyTargetWarning}
        assert all(w.filename == __file__ for w in caught), [(w.filename, w.lineno) for w in caught]
