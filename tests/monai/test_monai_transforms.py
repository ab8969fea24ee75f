"""CAMd: a dictionary transform adding a CAM, alone, batched, in an evaluator's
post-processing chain, and inverted back onto the source grid with Invertd."""

from __future__ import annotations

import random

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import hook_count
from monai.data import DataLoader, Dataset, MetaTensor
from monai.networks.nets import UNet
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, Spacingd

import volcam
from volcam.errors import ConfigError
from volcam.monai import CAMd

LAYER = "model.1.submodule"
AFFINE = np.array([[-1.5, 0.0, 0.0, 10.0], [0.0, 2.0, 0.0, -20.0], [0.0, 0.0, 2.5, 5.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(autouse=True)
def _few_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_unet(dims: int = 3, dropout: float = 0.0) -> UNet:
    return UNet(dims, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0, dropout=dropout).eval()


def case(shape=(16, 16, 16), seed=0) -> tuple[MetaTensor, MetaTensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, *shape, generator=g)
    image[(slice(None),) + tuple(slice(3, 9) for _ in shape)] += 1
    label = (image > 1).float()
    meta = {"filename_or_obj": "/data/patient7.nii.gz"}
    return MetaTensor(image, affine=torch.as_tensor(AFFINE), meta=meta), MetaTensor(
        label, affine=torch.as_tensor(AFFINE)
    )


def test_single_case_heat_and_metadata():
    net = tiny_unet()
    image, label = case()
    data = {"image": image, "label": label}
    out = CAMd(keys="image", cam=volcam.GradCAM(net, LAYER), targets=1, heat_key="cam")(data)
    expected = volcam.GradCAM(net, LAYER)(image.as_tensor()[None], targets=1)[0]
    assert isinstance(out["cam"], MetaTensor)
    torch.testing.assert_close(out["cam"].as_tensor(), expected)
    assert out["cam"].shape == (1, 16, 16, 16)
    np.testing.assert_allclose(out["cam"].affine.numpy(), AFFINE)
    assert out["cam"].meta["filename_or_obj"] == "/data/patient7.nii.gz"
    assert out["image"] is image and out["label"] is label and "cam" not in data
    assert hook_count(net) == 0


def test_batched_equals_single_cases():
    net = tiny_unet(dims=2)
    cam = volcam.GradCAM(net, LAYER)
    images = torch.stack([case((16, 16), seed=s)[0].as_tensor() for s in range(3)])
    batched = CAMd(keys="img", cam=cam, targets=1, heat_key="heat", batched=True)({"img": images})["heat"]
    single = CAMd(keys="img", cam=cam, targets=1, heat_key="heat")
    assert batched.shape == (3, 1, 16, 16)
    for i in range(3):
        torch.testing.assert_close(batched[i], single({"img": images[i]})["heat"], rtol=1e-5, atol=1e-6)


def test_mask_key_restricts_to_label():
    net = tiny_unet()
    image, label = case()
    out = CAMd(keys="image", cam=volcam.GradCAM(net, LAYER), targets=1, mask_key="label")(
        {"image": image, "label": label}
    )
    expected = volcam.GradCAM(net, LAYER)(
        image.as_tensor()[None], targets=volcam.SegmentationTarget(1, mask=label[None])
    )
    torch.testing.assert_close(out["cam"].as_tensor(), expected[0])


def test_mode_and_random_state_untouched():
    net = tiny_unet(dropout=0.5).train()
    image, _ = case()
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    CAMd(keys="image", cam=volcam.GradCAM(net, LAYER), eval_mode=False)({"image": image})
    assert net.training and all(m.training for m in net.modules())
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cam": None}, "`cam` must be a CAM object"),
        ({"keys": ["a", "b"], "heat_key": "cam"}, r"`heat_key` must give one key per image key \(2\), not 1"),
    ],
)
def test_bad_arguments(kwargs, message):
    kwargs.setdefault("cam", volcam.GradCAM(tiny_unet(), LAYER))
    with pytest.raises(ConfigError, match=message):
        CAMd(**kwargs)


def test_missing_mask_key_raises():
    image, _ = case()
    t = CAMd(keys="image", cam=volcam.GradCAM(tiny_unet(), LAYER), mask_key="label")
    with pytest.raises(ConfigError, match="`mask_key` 'label' is not in the data dictionary"):
        t({"image": image})


def test_post_processing_chain_in_evaluator_inverts_to_source_grid(tmp_path):
    pytest.importorskip("ignite")
    from ignite.engine import Events
    from monai.engines import SupervisedEvaluator

    shape = (16, 14, 12)
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(image, AFFINE), str(path))
    pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Spacingd("image", pixdim=(3.0, 4.0, 5.0))])
    net = tiny_unet()
    cam = volcam.GradCAM(net, LAYER)
    post = Compose(
        [
            CAMd(keys="image", cam=cam, targets=1, heat_key="cam"),
            Invertd(keys="cam", orig_keys="image", transform=pre, nearest_interp=False),
        ]
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        network=net,
        postprocessing=post,
        val_data_loader=DataLoader(Dataset([{"image": str(path)}], pre), batch_size=1),
    )
    seen = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output[0]["cam"]))
    evaluator.run()
    (heat,) = seen
    assert heat.shape == (1, *shape)  # back on the source grid (the network saw 8 x 7 x 6)
    np.testing.assert_allclose(heat.affine.numpy(), AFFINE, atol=1e-6)
    assert float(heat.min()) >= 0 and float(heat.max()) <= 1
    assert hook_count(net) == 0
