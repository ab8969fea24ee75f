"""An all-zero map says why in the MONAI handler and in CAMd, as in the Python API: the
engine's explanatory warning reaches the user (a layer whose channel weights are all <= 0)."""

from __future__ import annotations

import warnings

import torch
from helpers import TinySeg
from monai.data import MetaTensor
from test_monai_handler import _fake_engine

import volcam
from volcam.monai import CAMd, CAMHandler


def positive_batch(n: int = 2) -> tuple[list[dict], list[dict]]:
    """Positive images: TinySeg's class 1 (= -relu(2x)) has only negative evidence."""
    batch, output = [], []
    for i in range(n):
        image = MetaTensor(torch.rand(1, 8, 8) + 0.5, meta={"filename_or_obj": f"/data/img{i}.nii.gz"})
        batch.append({"image": image})
        output.append({"image": image, "pred": torch.rand(2, 8, 8)})
    return batch, output


def caught_empty(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if issubclass(w.category, volcam.EmptyMapWarning)]


def test_the_handler_warns_with_the_reason_for_an_all_zero_map(tmp_path):
    net = TinySeg(2).eval()
    batch, output = positive_batch()
    handler = CAMHandler(
        target_layers="feat",
        method="gradcam",
        targets=volcam.SegmentationTarget(1, mask="all"),
        output_dir=tmp_path,
        exports=("nifti",),
    )
    messages = caught_empty(lambda: handler(_fake_engine(net, batch, output)))
    assert messages and "every channel weight at layer 'feat' is <= 0" in messages[0]
    assert "hirescam" in messages[0] and "relu=False" in messages[0]


def test_camd_warns_with_the_reason_for_an_all_zero_map():
    net = TinySeg(2).eval()
    transform = CAMd(keys="image", cam=volcam.GradCAM(net, "feat"), targets=volcam.SegmentationTarget(1, mask="all"))
    batch, _ = positive_batch(1)
    out: dict = {}
    messages = caught_empty(lambda: out.update(transform(batch[0])))
    assert float(out["cam"].max()) == 0.0
    assert messages and "every channel weight at layer 'feat' is <= 0" in messages[0]
