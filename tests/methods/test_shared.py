"""Several methods of one layer from one forward and one backward pass."""

import warnings

import pytest
import torch
from helpers import Pyramid, assert_same_state, model_state

import volcam

TARGET = volcam.SegmentationTarget(2, mask="all")


def model():
    torch.manual_seed(7)
    return Pyramid(3, classes=4).eval()


def test_every_shared_method_equals_its_own_call():
    net = model()
    x = torch.randn(2, 1, 2, 8, 8)
    before = model_state(net)
    calls = []
    handle = net.register_forward_pre_hook(lambda m, inp: calls.append(1))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", volcam.VolcamWarning)
            maps = volcam.explain_methods(net, x, ["enc", "down"], targets=TARGET)
    finally:
        handle.remove()
    assert calls == [1]  # one forward pass for all of them
    assert list(maps) == list(volcam.methods.SHARED_METHODS)
    for name, res in maps.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", volcam.VolcamWarning)
            own = volcam.get_method(name)(net, ["enc", "down"]).explain(x, targets=TARGET)
        torch.testing.assert_close(res.heat, own.heat, atol=1e-6, rtol=0)
        torch.testing.assert_close(res.scores, own.scores)
        assert res.output is maps["gradcam"].output  # one output for all
        assert [(n.sample, n.reason) for n in res.notes] == [(n.sample, n.reason) for n in own.notes]
        assert res.heat.abs().sum() > 0 or res.notes
    assert_same_state(before, model_state(net))


def test_options_and_perturbation_methods():
    net = model()
    x = torch.randn(1, 1, 2, 8, 8)
    maps = volcam.explain_methods(
        net,
        x,
        "down",
        ["gradcam", "scorecam", "ablationcam"],
        targets=TARGET,
        relu=False,
        normalize=False,
        batch_size=4,
    )
    for name, res in maps.items():
        kw = {"batch_size": 4} if name != "gradcam" else {}
        own = volcam.get_method(name)(net, "down", relu=False, normalize=False, **kw).explain(x, targets=TARGET)
        torch.testing.assert_close(res.heat, own.heat, atol=1e-5, rtol=1e-5)
    assert float(maps["gradcam"].heat.min()) < 0  # relu=False reached the method


def test_bad_arguments():
    net = model()
    x = torch.randn(1, 1, 2, 8, 8)
    with pytest.raises(volcam.ArgumentError, match="not 'fullgrad'"):
        volcam.explain_methods(net, x, "down", ["gradcam", "fullgrad"])
    with pytest.raises(volcam.ArgumentError, match="must not repeat a method"):
        volcam.explain_methods(net, x, "down", ["gradcam", "GradCAM"])
    with pytest.raises(volcam.ArgumentError, match=r"settings of the methods, not \['colour'\]"):
        volcam.explain_methods(net, x, "down", ["gradcam"], colour="red")
    with pytest.raises(volcam.ArgumentError, match="`aug_smooth` is not shared"):
        volcam.explain_methods(net, x, "down", ["gradcam"], aug_smooth=True)
    with pytest.raises(volcam.MethodNotFoundError):
        volcam.explain_methods(net, x, "down", ["gradcm"])
