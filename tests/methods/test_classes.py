"""Several targets of each sample from one forward pass (``explain_classes``): each map equals
the one a single-target call gives, for every method, in 2D and 3D, with masks, aug_smooth,
sliding windows and chunks of classes; the predicted regions come from channel comparisons
equal to ``argmax``; the Eigen methods need no host synchronisation."""

import warnings

import pytest
import torch
from helpers import Pyramid, assert_same_state, model_state

import volcam
import volcam.methods._steps as steps
from volcam.methods.scorecam import default_batch_size
from volcam.pca import first_principal_component
from volcam.sliding import sliding_window_cam
from volcam.smoothing import AugSmooth
from volcam.targets import SegmentationTarget, predicted_labels

ALL = sorted(volcam.METHODS)
CLASSES = [1, 3, 2]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pyramid(dims, classes=4):
    torch.manual_seed(11)
    return Pyramid(dims, classes).eval()


def make(name, model, layer="down", **kw):
    return volcam.get_method(name)(model, layer, **kw)


def quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", volcam.VolcamWarning)
        return fn()


def one_at_a_time(cam, x, classes, masks=None, **kw):
    maps = []
    for c in classes:
        mask = masks.get(c) if isinstance(masks, dict) else masks
        maps.append(quiet(lambda c=c, mask=mask: cam.explain(x, SegmentationTarget(c, mask=mask), **kw).heat))
    return torch.cat(maps, 1)


def region(shape):
    m = torch.zeros(shape)
    m[..., 1:5, 2:7] = 1
    return m


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", ALL)
def test_k_classes_equal_k_single_calls(name, dims):
    model = pyramid(dims)
    x = torch.randn(2, 1, *((8, 8) if dims == 2 else (2, 8, 8)))
    cam = make(name, model)
    res = quiet(lambda: cam.explain_classes(x, CLASSES))
    assert res.heat.shape == (2, 3, *x.shape[2:]) and res.scores.shape == (2, 3)
    torch.testing.assert_close(res.heat, one_at_a_time(cam, x, CLASSES), atol=1e-5, rtol=0)
    assert res.heat.abs().sum() > 0
    # masks: one per class, 'all', or the predicted region
    masks = {1: region(x.shape[2:]), 3: "all"}
    res = quiet(lambda: cam.explain_classes(x, CLASSES, masks=masks))
    torch.testing.assert_close(res.heat, one_at_a_time(cam, x, CLASSES, masks), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_k_classes_with_aug_smooth(name):
    model = pyramid(3)
    x = torch.randn(2, 1, 2, 8, 8)
    cam = make(name, model)
    aug = AugSmooth(flips=[(2,)], scales=(1.0, 1.1))
    res = quiet(lambda: cam.explain_classes(x, CLASSES, masks={3: "all"}, aug_smooth=aug))
    ref = one_at_a_time(cam, x, CLASSES, {3: "all"}, aug_smooth=aug)
    torch.testing.assert_close(res.heat, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_k_classes_in_sliding_windows(name):
    model = pyramid(3)
    x = torch.randn(2, 1, 4, 12, 12)
    cam = make(name, model)
    kw = {"roi_size": (4, 8, 8), "overlap": 0.5, "sw_batch_size": 3}
    res = quiet(lambda: sliding_window_cam(cam, x, classes=CLASSES, masks={2: "all"}, **kw))
    single = [
        quiet(
            lambda c=c: sliding_window_cam(cam, x, targets=SegmentationTarget(c, mask="all" if c == 2 else None), **kw)
        )
        for c in CLASSES
    ]
    assert res.heat.shape == (2, 3, 4, 12, 12)
    torch.testing.assert_close(res.heat, torch.cat([s.heat for s in single], 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.output, single[0].output)


@pytest.mark.parametrize("name", ["gradcam", "hirescam", "gradcam++", "eigengradcam", "fullgrad"])
def test_chunks_of_classes_and_batched_backward_agree(name, monkeypatch):
    model = pyramid(2, classes=5)
    x = torch.randn(2, 1, 8, 8)
    cam = make(name, model)
    classes = [1, 2, 3, 4]
    whole = quiet(lambda: cam.explain_classes(x, classes, class_chunk=4))
    for chunk in (1, 2, 3):
        got = quiet(lambda chunk=chunk: cam.explain_classes(x, classes, class_chunk=chunk))
        torch.testing.assert_close(got.heat, whole.heat)
    monkeypatch.setattr(steps, "BATCHED_BACKWARD", True)
    torch.testing.assert_close(quiet(lambda: cam.explain_classes(x, classes, class_chunk=3)).heat, whole.heat)


def test_one_forward_pass_for_all_classes():
    model = pyramid(3)
    x = torch.randn(2, 1, 2, 8, 8)
    calls = []
    handle = model.register_forward_pre_hook(lambda m, inp: calls.append(inp[0].shape[0]))
    try:
        for name in ("gradcam", "hirescam", "eigencam", "fullgrad"):
            calls.clear()
            quiet(lambda name=name: make(name, model).explain_classes(x, CLASSES))
            assert calls == [2], name
        calls.clear()
        quiet(lambda: make("scorecam", model, batch_size=100).explain_classes(x, CLASSES))
        assert calls == [2, 2, 16]  # the forward, the zero baseline, the 2 x 8 masked inputs, scored for all 3
    finally:
        handle.remove()


def test_class_chunk_default_follows_the_formula():
    a = torch.zeros(2, 16, 32, 32, 32)
    assert steps.chunk_size(None, 13, 2, [a]) == min(13, 2**27 // (2 * 16 * 32**3))
    assert steps.chunk_size(None, 13, 1, [torch.zeros(1, 64, 128, 128, 128)]) == 1
    assert steps.chunk_size(5, 13, 1, [a]) == 5 and steps.chunk_size(20, 13, 1, [a]) == 13


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("name", ALL)
def test_model_is_left_as_it_was_with_k_classes(name, k):
    model = pyramid(3)
    before = model_state(model)
    cam = make(name, model, ["enc", "down"])
    x = torch.randn(2, 1, 1, 8, 8)
    a = quiet(lambda: cam.explain_classes(x, CLASSES[:k]).heat)
    b = quiet(lambda: cam.explain_classes(x, CLASSES[:k]).heat)
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape[1] == k
    assert_same_state(before, model_state(model))

    def target_fails(out):
        raise RuntimeError("target failed")

    with pytest.raises(RuntimeError, match="target failed"):
        cam.explain_targets(x, [1, target_fails, 2][:k] if k > 1 else [target_fails])
    assert_same_state(before, model_state(model))


def test_empty_classes_get_notes_and_one_warning():
    model = pyramid(2)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        labels = model(x).argmax(1)
    absent = [c for c in range(4) if not bool((labels == c).any())]
    assert absent, "the test needs a class the network predicts nowhere"
    classes = [c for c in range(1, 4) if c not in absent][:1] + absent[:1]
    with pytest.warns(volcam.EmptyTargetWarning, match=r"sample\(s\) \[0, 1\] for target 1"):
        res = volcam.HiResCAM(model, "dec").explain_classes(x, classes)
    assert {(n.sample, n.target, n.reason) for n in res.notes} == {(0, 1, "empty_target"), (1, 1, "empty_target")}
    assert torch.equal(res.heat[:, 1], torch.zeros_like(res.heat[:, 1]))


def test_bad_class_arguments():
    cam = volcam.GradCAM(pyramid(2), "down")
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(volcam.ArgumentError, match="`classes` must be a non-empty list"):
        cam.explain_classes(x, 2)
    with pytest.raises(volcam.ArgumentError, match="`classes` must be a non-empty list"):
        cam.explain_classes(x, [])
    with pytest.raises(volcam.ArgumentError, match=r"`masks` must only name classes of `classes` \[1, 2\], not \[3\]"):
        cam.explain_classes(x, [1, 2], masks={3: "all"})
    with pytest.raises(volcam.ArgumentError, match="`class_chunk` must be a positive int or None, not 0"):
        cam.explain_classes(x, [1, 2], class_chunk=0)
    with pytest.raises(volcam.TargetError, match=r"\[0, 3\] .* not 4"):
        cam.explain_classes(x, [1, 4])
    with pytest.raises(volcam.ArgumentError, match="`targets` or `classes`, not both"):
        sliding_window_cam(cam, torch.randn(1, 1, 8, 8), 8, targets=1, classes=[1])


# ----------------------------------------------------------------------------- predicted regions
def test_predicted_labels_equal_argmax_with_ties():
    torch.manual_seed(5)
    for classes in (1, 2, 3, 5, 14):
        out = torch.randint(0, 3, (2, classes, 6, 7, 5)).float()  # values in {0, 1, 2}: many ties
        out[:, :, 0] = 1.0  # a slice tied across every channel
        assert torch.equal(predicted_labels(out).long(), out.argmax(1))
        for c in range(classes if classes > 1 else 0):
            bound = SegmentationTarget(c).bind(out)
            assert torch.equal(bound.masks, out.argmax(1) == c)
    assert int((torch.randint(0, 3, (2, 5, 6, 7)).float().argmax(1) == 0).sum()) > 0  # ties do occur


def test_a_segmentation_target_subclass_with_its_own_bind_is_bound_by_it():
    class Box(SegmentationTarget):  # a subclass that chooses its region itself
        def __init__(self):
            super().__init__(1)
            self.calls = 0

        def bind(self, output):
            self.calls += 1
            box = torch.zeros(output.shape[0], *output.shape[2:], dtype=torch.bool)
            box[:, :2, :2] = True
            return volcam.targets.BoundTarget(torch.tensor([1] * output.shape[0]), box)

    model = pyramid(2)
    x = torch.randn(1, 1, 16, 16)
    target = Box()
    res = quiet(lambda: make("gradcam", model).explain(x, target))
    boxed = quiet(lambda: make("gradcam", model).explain(x, SegmentationTarget(1, mask=target.bind(model(x)).masks)))
    assert target.calls == 2 and torch.allclose(res.heat, boxed.heat)
    assert not torch.allclose(res.heat, quiet(lambda: make("gradcam", model).explain(x, SegmentationTarget(1)).heat))


def test_default_target_uses_the_same_tie_rule():
    out = torch.zeros(1, 3, 2, 2)
    out[0, 1, 0, 0] = out[0, 2, 0, 0] = 5.0  # tie: argmax says class 1
    out[0, 2, 1, 1] = 1.0
    bound = volcam.targets.default_target(out)
    # class 1 and 2 both predict one voxel; argmax over volumes picks the first, class 1
    assert bound.categories.tolist() == [1] and bound.masks[0].tolist() == [[True, False], [False, False]]


# ----------------------------------------------------------------------------- principal component
@pytest.mark.parametrize("shape", [(3, 6, 10, 12), (2, 32, 6, 7, 8), (1, 128, 5, 5, 5), (4, 2, 9)])
def test_principal_component_equals_the_svd_up_to_sign(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    scale = torch.linspace(0.3, 3.0, shape[1]).view(1, -1, *([1] * (len(shape) - 2)))
    features = torch.randn(*shape, generator=gen) * scale
    got = first_principal_component(features).flatten(1)
    points = features.reshape(shape[0], shape[1], -1).transpose(1, 2).double()
    centred = points - points.mean(1, keepdim=True)
    v = torch.linalg.svd(centred, full_matrices=False).Vh[:, 0]
    ref = (centred @ v.unsqueeze(-1)).squeeze(-1).float()
    sign = torch.sign((got * ref).sum(1, keepdim=True))
    torch.testing.assert_close(got, sign * ref, atol=2e-5 * float(ref.abs().max()), rtol=1e-4)


def test_principal_component_of_zero_features_is_zero():
    assert torch.equal(first_principal_component(torch.zeros(2, 4, 3, 3)), torch.zeros(2, 1, 3, 3))


# ----------------------------------------------------------------------------- perturbation batches
def test_perturbation_batch_size_is_chosen_by_device():
    assert default_batch_size(torch.device("cpu")) == 1
    assert default_batch_size(torch.device("cuda")) == 16
    model = pyramid(2)
    x = torch.randn(2, 1, 8, 8)
    sizes = []
    handle = model.register_forward_pre_hook(lambda m, inp: sizes.append(inp[0].shape[0]))
    try:
        volcam.ScoreCAM(model, "down")(x, targets=1)
        assert sizes == [2, 2] + [1] * 16  # forward, baseline, then one masked input per pass on the CPU
        sizes.clear()
        volcam.AblationCAM(model, "down")(x, targets=1)
        assert sizes == [2] + [1] * 16
        sizes.clear()
        volcam.AblationCAM(model, "down", batch_size=5)(x, targets=1)
        assert sizes == [2, 5, 5, 5, 1]
    finally:
        handle.remove()


def test_rollout_with_gradients_and_k_classes():
    from monai.networks.nets import UNETR

    torch.manual_seed(0)
    net = UNETR(1, 3, (32, 32), feature_size=4, hidden_size=16, mlp_dim=16, num_heads=2, spatial_dims=2).eval()
    x = torch.randn(2, 1, 32, 32)
    cam = volcam.AttentionRollout(net, gradients=True)
    res = quiet(lambda: cam.explain_classes(x, [1, 2], masks="all"))
    torch.testing.assert_close(res.heat, one_at_a_time(cam, x, [1, 2], "all"), atol=1e-5, rtol=0)
    assert not torch.allclose(res.heat[:, 0], res.heat[:, 1])  # class-specific with gradients
    plain = volcam.AttentionRollout(net)
    res = quiet(lambda: plain.explain_classes(x, [1, 2], masks="all"))
    assert torch.equal(res.heat[:, 0], res.heat[:, 1])  # class-agnostic without
