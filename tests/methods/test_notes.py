"""An all-zero map says why: the target is empty, the score does not depend on the layer,
every channel weight is non-positive, or the map has no positive evidence; a warning in the
Python API and a note per sample and target on the result."""

import warnings

import pytest
import torch
from helpers import TinySeg

import volcam

# TinySeg: feat = [x, 2x] -> ReLU -> logits[0] = 3 relu(x), logits[1] = -relu(2x)
POSITIVE = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
NEGATIVE = -POSITIVE
ALL = volcam.SegmentationTarget
MIXED = torch.cat([POSITIVE, NEGATIVE])


def explain(method, x, target, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = volcam.get_method(method)(TinySeg(2).eval(), "feat", **kw).explain(x, targets=target)
    return res, caught


def test_all_channel_weights_non_positive():
    # class 1 on a positive input: weights [0, -0.75], the map -1.5 x is negative everywhere
    res, caught = explain("gradcam", POSITIVE, ALL(1, mask="all"))
    assert torch.equal(res.heat, torch.zeros_like(res.heat))
    assert [(n.sample, n.target, n.reason, n.layer) for n in res.notes] == [(0, 0, "non_positive_weights", "feat")]
    assert "'hirescam', 'layercam'" in res.notes[0].message and "relu=False" in res.notes[0].message
    [w] = [w for w in caught if w.category is volcam.EmptyMapWarning]
    assert "every channel weight at layer 'feat' is <= 0" in str(w.message)
    # relu=False shows the negative evidence, as the note advises
    raw, _ = explain("gradcam", POSITIVE, ALL(1, mask="all"), relu=False, normalize=False)
    assert float(raw.heat.max()) < 0 and raw.notes == []


def test_no_positive_evidence_for_an_element_wise_method():
    res, caught = explain("hirescam", POSITIVE, ALL(1, mask="all"))
    assert [n.reason for n in res.notes] == ["no_positive_evidence"]
    assert any(w.category is volcam.EmptyMapWarning and "<= 0 everywhere" in str(w.message) for w in caught)


def test_score_that_does_not_depend_on_the_layer_in_the_region():
    # a negative input: every feature is cut by the ReLU after the layer, the gradient is zero
    res, caught = explain("gradcam", NEGATIVE, ALL(0, mask="all"))
    assert [n.reason for n in res.notes] == ["no_gradient"]
    assert "does not depend on layer 'feat' in the target region" in res.notes[0].message
    assert [w.category for w in caught] == [volcam.EmptyMapWarning]


def test_notes_per_sample_and_target():
    # sample 0 positive, sample 1 negative; class 0 everywhere, class 1 in an empty mask
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = volcam.GradCAM(TinySeg(2).eval(), "feat").explain_classes(
            MIXED, [0, 1], masks={0: "all", 1: torch.zeros(2, 2)}
        )
    notes = {(n.sample, n.target): n.reason for n in res.notes}
    assert notes == {(1, 0): "no_gradient", (0, 1): "empty_target", (1, 1): "empty_target"}
    assert res.heat[0, 0].max() == 1.0  # the one map with evidence
    categories = sorted(w.category.__name__ for w in caught)
    assert categories == ["EmptyMapWarning", "EmptyTargetWarning"]


def test_a_map_with_evidence_has_no_note_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = volcam.GradCAM(TinySeg(2).eval(), "feat").explain(POSITIVE, targets=ALL(0, mask="all"))
    assert res.notes == [] and res.heat.max() == 1.0


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "eigencam"])
def test_sliding_windows_say_why_too(method):
    from volcam.sliding import sliding_window_cam

    x = POSITIVE.repeat(1, 1, 4, 4)  # 8 x 8, positive: class 1 has no positive evidence anywhere
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cam = volcam.get_method(method)(TinySeg(2).eval(), "feat")
        res = sliding_window_cam(cam, x, roi_size=4, overlap=0.5, targets=ALL(1, mask="all"))
    if method == "eigencam":  # class-agnostic: the map does not depend on the target
        assert res.notes == [] and res.heat.max() == 1.0
        return
    assert torch.equal(res.heat, torch.zeros_like(res.heat))
    assert [n.reason for n in res.notes] == ["non_positive_weights" if method == "gradcam" else "no_positive_evidence"]
    assert any(w.category is volcam.EmptyMapWarning for w in caught)
