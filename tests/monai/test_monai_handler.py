"""CAMHandler inside real MONAI engines: files and geometry, untouched engine state,
bit-identical training, no memory growth, bundle config."""

from __future__ import annotations

import copy
import gc
import random
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("ignite")

from helpers import hook_count
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.networks.nets import UNet
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from monai.utils import set_determinism

import volcam
from volcam.errors import ConfigError, MethodNotFoundError
from volcam.monai import CAMHandler, overlay

LAYER = "model.1.submodule"
# voxel sizes 1.5/2/2.5 mm, a flip of the first axis and a shift: not the identity
AFFINE = np.array([[-1.5, 0.0, 0.0, 10.0], [0.0, 2.0, 0.0, -20.0], [0.0, 0.0, 2.5, 5.0], [0.0, 0.0, 0.0, 1.0]])


def make_cases(folder: Path, n: int = 3, shape=(16, 16, 16), seed: int = 0) -> list[dict]:
    """``n`` NIfTI image/label pairs: noise plus a bright box, the box as label 1."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        image = rng.normal(0, 0.1, shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        lo = 2 + i
        box = tuple(slice(lo, lo + 6) for _ in shape)
        image[box] += 1.0
        label[box] = 1
        paths = {}
        for key, arr in (("image", image), ("label", label)):
            p = folder / f"case{i}_{key}.nii.gz"
            nib.save(nib.Nifti1Image(arr, AFFINE), str(p))
            paths[key] = str(p)
        cases.append(paths)
    return cases


def tiny_unet(dims: int = 3, dropout: float = 0.0, norm: str = "instance") -> UNet:
    return UNet(dims, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0, dropout=dropout, norm=norm)


def loader(cases: list[dict], batch_size: int = 2) -> DataLoader:
    keys = ["image", "label"]
    transform = Compose([LoadImaged(keys), EnsureChannelFirstd(keys)])
    return DataLoader(Dataset(cases, transform), batch_size=batch_size, num_workers=0)


@pytest.fixture(autouse=True)
def _few_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Recorder:
    """Replaces ``CAMHandler._export`` to keep what would be written (tests of the CAM part)."""

    def __init__(self, handler: CAMHandler):
        self.calls = []
        self.handler = handler
        self.original = handler._export
        handler._export = self

    def __call__(self, engine, epoch, name, image, heat, label, predicted=None):
        self.calls.append((epoch, name, image, heat, label))
        return {"dir": None}


# --------------------------------------------------------------------------- evaluator
@pytest.mark.parametrize("decollate", [True, False])
def test_evaluator_heat_equals_direct_cam(tmp_path, decollate):
    cases = make_cases(tmp_path / "data", n=3)
    net = tiny_unet()
    handler = CAMHandler(target_layers=LAYER, targets=1, output_dir=tmp_path / "out", max_cases=3, exports=())
    rec = Recorder(handler)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader(cases),
        network=net,
        decollate=decollate,
        val_handlers=[handler],
    )
    evaluator.run()
    assert [(c[0], c[1]) for c in rec.calls] == [(1, "case0_image"), (1, "case1_image"), (1, "case2_image")]
    assert hook_count(net) == 0
    reference = volcam.GradCAM(net.eval(), LAYER)
    for i, (_, _, image, heat, label) in enumerate(rec.calls):
        src = nib.load(cases[i]["image"])
        np.testing.assert_array_equal(image[0].numpy(), src.get_fdata(dtype=np.float32))
        np.testing.assert_allclose(image.affine.numpy(), AFFINE)
        expected = reference(torch.as_tensor(src.get_fdata(dtype=np.float32))[None, None], targets=1)[0]
        torch.testing.assert_close(heat, expected, rtol=1e-5, atol=1e-6)
        assert heat.shape == (1, 16, 16, 16) and float(heat.max()) == pytest.approx(1.0)
        assert label.shape == (1, 16, 16, 16)


def test_evaluator_writes_files_on_the_source_grid(tmp_path):
    cases = make_cases(tmp_path / "data", n=3)
    net = tiny_unet()
    out = tmp_path / "out"
    handler = CAMHandler(target_layers=LAYER, targets=1, output_dir=out, max_cases=2)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader(cases), network=net, val_handlers=[handler]
    )
    evaluator.run()
    assert hook_count(net) == 0
    assert sorted(p.name for p in (out / "epoch_0001").iterdir()) == ["case0_image", "case1_image"]
    reference = volcam.GradCAM(net.eval(), LAYER)
    for i in range(2):
        case_dir = out / "epoch_0001" / f"case{i}_image" / "class1"  # the layout of `volcam run`
        heat = nib.load(case_dir / "heat.nii.gz")
        np.testing.assert_allclose(heat.affine, AFFINE)
        assert heat.shape == (16, 16, 16)
        x = torch.as_tensor(nib.load(cases[i]["image"]).get_fdata(dtype=np.float32))[None, None]
        expected = reference(x, targets=1)[0, 0].numpy()
        np.testing.assert_allclose(heat.get_fdata(dtype=np.float32), expected, rtol=1e-5, atol=1e-6)
        slices = sorted(p.name for p in (case_dir / "axial").iterdir())
        assert len(slices) == 16 and all(n.startswith("axial_") and n.endswith(".png") for n in slices)
        assert (case_dir / "figure.png").stat().st_size > 0
    assert handler.written["case1_image"]["nifti"] == out / "epoch_0001" / "case1_image" / "class1" / "heat.nii.gz"


@pytest.mark.parametrize("with_transform", [True, False])
def test_spatial_preprocessing_is_inverted_with_transform(tmp_path, with_transform):
    from monai.transforms import Spacingd

    cases = make_cases(tmp_path / "data", n=1, shape=(16, 14, 12))
    pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Spacingd("image", pixdim=(3.0, 4.0, 5.0))])
    net = tiny_unet()
    handler = CAMHandler(
        target_layers=LAYER, output_dir=tmp_path / "out", exports="nifti", transform=pre if with_transform else None
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        network=net,
        val_handlers=[handler],
        val_data_loader=DataLoader(Dataset([{"image": cases[0]["image"]}], pre), batch_size=1),
    )
    case_dir = tmp_path / "out" / "epoch_0001" / "case0_image" / "cam"
    if with_transform:
        evaluator.run()
        heat = nib.load(case_dir / "heat.nii.gz")
        assert heat.shape == (16, 14, 12)  # the network saw 8 x 8 x 6
        np.testing.assert_allclose(heat.affine, AFFINE, atol=1e-6)
    else:
        with pytest.warns(RuntimeWarning, match="Pass the preprocessing as `transform=`"):
            evaluator.run()
        heat = nib.load(case_dir / "heat_preprocessed.nii.gz")
        assert heat.shape == (8, 8, 6)
        np.testing.assert_allclose(np.abs(np.diag(heat.affine))[:3], [3.0, 4.0, 5.0])
    assert hook_count(net) == 0


def test_two_dimensional_cases_export(tmp_path):
    net = tiny_unet(dims=2)
    batch, output = _decollated_batch(n=1)
    handler = CAMHandler(target_layers=LAYER, output_dir=tmp_path, targets=1)
    handler(_fake_engine(net, batch, output))
    case_dir = tmp_path / "epoch_0001" / "img0" / "class1"
    assert nib.load(case_dir / "heat.nii.gz").shape[:2] == (16, 16)
    assert len(list((case_dir / "axial").iterdir())) == 1
    assert (case_dir / "figure.png").exists()


class ImageRecorder:
    """Has the one SummaryWriter method that plot_2d_or_3d_image calls for a 2D RGB image."""

    def __init__(self):
        self.images = []

    def add_image(self, tag, data, step, dataformats="CHW"):
        self.images.append((tag, np.asarray(data), step, dataformats))


def test_tensorboard_overlay_through_monai_plot_helper(tmp_path):
    net = tiny_unet()
    image = torch.zeros(1, 16, 16, 16)
    image[0, 4:8, 4:8, 4:8] = 1.0
    from monai.data import MetaTensor

    batch = [{"image": MetaTensor(image, meta={"filename_or_obj": "scan.nii.gz"})}]
    writer = ImageRecorder()
    handler = CAMHandler(target_layers=LAYER, output_dir=tmp_path, exports=(), summary_writer=writer, tag="cams")
    rec_heat = []
    original = CAMHandler._export

    def export(engine, epoch, name, image, heat, label, predicted=None):
        rec_heat.append(heat)
        return original(handler, engine, epoch, name, image, heat, label)

    handler._export = export
    handler(_fake_engine(net, batch, [{}], epoch=3))
    ((tag, data, step, formats),) = writer.images
    assert (tag, step, formats) == ("cams/scan_CHW", 3, "CHW")
    heat = rec_heat[0][0]
    k = int(heat.flatten().argmax()) % 16  # the slice through the hottest voxel, last axis
    assert data.shape == (3, 16, 16)
    torch.testing.assert_close(torch.as_tensor(data), overlay(image[0][..., k], heat[..., k]))


def test_tensorboard_summary_writer(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from torch.utils.tensorboard import SummaryWriter

    net = tiny_unet(dims=2)
    batch, output = _decollated_batch(n=1)
    with SummaryWriter(log_dir=str(tmp_path / "tb")) as writer:
        handler = CAMHandler(target_layers=LAYER, output_dir=tmp_path / "out", exports=(), summary_writer=writer)
        handler(_fake_engine(net, batch, output))
    assert any((tmp_path / "tb").iterdir())


# --------------------------------------------------------------------------- trainer
def _train(cases, extra_handlers=(), epochs: int = 2) -> dict:
    set_determinism(seed=0)
    random.seed(0)
    net = tiny_unet(dropout=0.3, norm="batch")
    data = DataLoader(
        Dataset(cases, Compose([LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"])])),
        batch_size=2,
        shuffle=True,
        num_workers=0,
    )
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    from monai.losses import DiceCELoss

    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=data,
        network=net,
        optimizer=opt,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        train_handlers=list(extra_handlers),
    )
    trainer.run()
    set_determinism(seed=None)
    assert hook_count(net) == 0
    return {
        "weights": copy.deepcopy(net.state_dict()),
        "opt": copy.deepcopy(opt.state_dict()),
        "training": net.training,
    }


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["training"] == b["training"]
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    for i, s in a["opt"]["state"].items():
        for k, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["opt"]["state"][i][k])), (i, k)


@pytest.mark.parametrize("eval_mode", [True, False], ids=["eval", "train-mode-cam"])
def test_trainer_bit_identical_with_handler(tmp_path, eval_mode):
    cases = make_cases(tmp_path / "data", n=3)
    plain_run = _train(cases)
    handler = CAMHandler(
        target_layers=LAYER,
        output_dir=tmp_path / "out",
        every_n_epochs=1,
        max_cases=3,
        exports="nifti",
        eval_mode=eval_mode,
    )
    with_cams = _train(cases, [handler])
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.nii.gz"))
    assert written == [f"epoch_000{e}/case{i}_image/cam/heat.nii.gz" for e in (1, 2) for i in range(3)]
    _assert_same_run(plain_run, with_cams)


def test_trainer_run_is_sensitive_to_random_state(tmp_path):
    # control for the test above: drawing one random number per iteration changes the weights
    # (dropout masks, shuffling), so an unrestored random state would be caught
    from ignite.engine import Events

    class Draw:
        def attach(self, engine):
            engine.add_event_handler(Events.ITERATION_COMPLETED, lambda _: torch.rand(1))

    cases = make_cases(tmp_path / "data", n=3)
    a, b = _train(cases), _train(cases, [Draw()])
    assert any(not torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])


# --------------------------------------------------------------------------- engine state
def _fake_engine(net, batch, output, epoch=1):
    import logging

    return SimpleNamespace(
        network=net, state=SimpleNamespace(epoch=epoch, batch=batch, output=output), logger=logging.getLogger("test")
    )


def _decollated_batch(n=2, shape=(16, 16), seed=0):
    from monai.data import MetaTensor

    g = torch.Generator().manual_seed(seed)
    batch, output = [], []
    for i in range(n):
        image = MetaTensor(
            torch.rand(1, *shape, generator=g),
            affine=torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0])),
            meta={"filename_or_obj": f"/data/img{i}.nii.gz"},
        )
        label = MetaTensor((torch.rand(1, *shape, generator=g) > 0.5).float())
        batch.append({"image": image, "label": label})
        output.append({"image": image, "label": label, "pred": torch.rand(2, *shape, generator=g)})
    return batch, output


def test_call_leaves_engine_state_untouched(tmp_path):
    net = tiny_unet(dims=2, dropout=0.3, norm="batch").train()
    net.model[0].adn.A.requires_grad_(False)  # mixed flags must come back as they were
    net.model[1].submodule.eval()  # mixed modes too
    opt = torch.optim.SGD(net.parameters(), 0.1, momentum=0.9)
    net(torch.rand(2, 1, 16, 16)).sum().backward()
    opt.step()
    batch, output = _decollated_batch()
    engine = _fake_engine(net, batch, output)
    snapshot = copy.deepcopy((batch, output))
    before = {
        "modes": [m.training for m in net.modules()],
        "flags": [p.requires_grad for p in net.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in net.parameters()],
        "state": copy.deepcopy(net.state_dict()),
        "opt": copy.deepcopy(opt.state_dict()),
        "rng": (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()),
    }
    handler = CAMHandler(target_layers=LAYER, output_dir=tmp_path, exports=(), eval_mode=False)
    rec = Recorder(handler)
    handler(engine)
    assert len(rec.calls) == 2 and hook_count(net) == 0
    assert engine.state.batch is batch and engine.state.output is output
    for (b0, o0), (b1, o1) in zip(zip(*snapshot), zip(batch, output)):
        for k in b0:
            assert torch.equal(b0[k], b1[k]) and b0[k].meta == b1[k].meta
        for k in o0:
            assert torch.equal(o0[k], o1[k])
    assert [m.training for m in net.modules()] == before["modes"]
    assert [p.requires_grad for p in net.parameters()] == before["flags"]
    for g0, p in zip(before["grads"], net.parameters()):
        assert (g0 is None and p.grad is None) or torch.equal(g0, p.grad)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before["state"][k]), k
    assert str(opt.state_dict()) == str(before["opt"])
    assert torch.equal(torch.get_rng_state(), before["rng"][0])
    assert np.array_equal(np.random.get_state()[1], before["rng"][1])
    assert random.getstate() == before["rng"][2]


def test_every_n_epochs_and_max_cases_across_batches(tmp_path):
    net = tiny_unet(dims=2)
    handler = CAMHandler(target_layers=LAYER, output_dir=tmp_path, exports=(), every_n_epochs=2, max_cases=3)
    rec = Recorder(handler)
    for epoch in (1, 2, 3, 4):
        for it in range(3):  # three batches of two cases per epoch
            batch, output = _decollated_batch(n=2, seed=10 * epoch + it)
            handler(_fake_engine(net, batch, output, epoch=epoch))
    # epochs 2 and 4 only; the first three cases: both of the first batch, one of the second
    assert [(c[0], c[1]) for c in rec.calls] == [(e, n) for e in (2, 4) for n in ("img0", "img1", "img0_002")]
    batch, _ = _decollated_batch(n=2, seed=40)
    torch.testing.assert_close(rec.calls[3][2], batch[0]["image"])


@pytest.mark.cuda
def test_cuda_network_and_random_state(tmp_path):
    net = tiny_unet(dims=2, dropout=0.5).cuda().train()
    batch, output = _decollated_batch(n=2)
    cuda_rng, cpu_rng = torch.cuda.get_rng_state(), torch.get_rng_state()
    handler = CAMHandler(target_layers=LAYER, output_dir=tmp_path, exports="nifti", eval_mode=False)
    handler(_fake_engine(net, batch, output))
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng) and torch.equal(torch.get_rng_state(), cpu_rng)
    assert hook_count(net) == 0 and net.training
    heat = nib.load(tmp_path / "epoch_0001" / "img0" / "cam" / "heat.nii.gz").get_fdata(dtype=np.float32)
    cpu_net = copy.deepcopy(net).cpu().eval()
    expected = volcam.GradCAM(cpu_net, LAYER)(batch[0]["image"].as_tensor()[None])[0, 0].numpy()
    np.testing.assert_allclose(heat, expected, atol=1e-4)


# --------------------------------------------------------------------------- memory
def _census() -> tuple[int, int, int]:
    """(live tensors, gc-tracked objects, blocks held by Python's allocator) after a full
    collection (which also empties CPython's free lists, so their filling up is no growth)."""
    gc.collect()
    blocks = sys.getallocatedblocks()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on deprecated torch.distributed aliases
        objects = gc.get_objects()
        return sum(isinstance(o, torch.Tensor) for o in objects), len(objects), blocks


def _run_iterations(handler, engine, start, stop):
    for it in range(start, stop):
        engine.state.epoch = it + 1  # a new epoch every iteration: the handler fires every time
        handler(engine)


def test_memory_does_not_grow_over_200_iterations(tmp_path):
    net = tiny_unet(dims=2)
    batch, output = _decollated_batch(n=2)
    engine = _fake_engine(net, batch, output)
    handler = CAMHandler(target_layers=LAYER, output_dir=tmp_path, exports=(), max_cases=2)
    calls = []
    handler._export = lambda *args: calls.append(1) or {}
    _run_iterations(handler, engine, 0, 20)  # warm-up: allocator caches, lazy imports
    tensors, objects, blocks = _census()
    _run_iterations(handler, engine, 20, 220)
    tensors_after, objects_after, blocks_after = _census()
    assert len(calls) == 2 * 220
    assert hook_count(net) == 0
    assert tensors_after == tensors
    # anything kept per iteration would be >= 200 more objects and blocks
    assert objects_after - objects < 20, f"{objects_after - objects} more Python objects after 200 iterations"
    assert blocks_after - blocks < 100, f"{blocks_after - blocks} more allocator blocks after 200 iterations"

    # the census catches a leak: a handler that keeps each heat map
    class Leaky(CAMHandler):
        kept = []

        def _export(self, engine, epoch, name, image, heat, label, predicted=None):
            self.kept.append(heat)
            return {}

    leaky = Leaky(target_layers=LAYER, output_dir=tmp_path, exports=())
    before = _census()
    _run_iterations(leaky, engine, 0, 50)
    after = _census()
    assert after[0] - before[0] >= 100


# --------------------------------------------------------------------------- arguments
def test_double_attachment_registers_once(tmp_path):
    from ignite.engine import Engine, Events

    engine = Engine(lambda e, b: None)
    engine.network = tiny_unet(dims=2)
    handler = CAMHandler(target_layers=LAYER, output_dir=tmp_path, exports=())
    handler.attach(engine)
    handler.attach(engine)
    assert len(engine._event_handlers[Events.ITERATION_COMPLETED]) == 1
    assert len(engine._event_handlers[Events.STARTED]) == 1


def test_attach_to_engine_with_other_network_raises(tmp_path):
    batch, output = _decollated_batch(n=1)
    handler = CAMHandler(target_layers=LAYER, output_dir=tmp_path, exports=())
    Recorder(handler)
    handler(_fake_engine(tiny_unet(dims=2), batch, output))
    with pytest.raises(volcam.VolcamError, match="one handler per network"):
        handler(_fake_engine(tiny_unet(dims=2), batch, output))


def test_engine_without_network_raises(tmp_path):
    batch, output = _decollated_batch(n=1)
    engine = _fake_engine(None, batch, output)
    with pytest.raises(ConfigError, match="pass `network=`"):
        CAMHandler(target_layers=LAYER, output_dir=tmp_path, exports=())(engine)


def test_missing_ignite_is_a_clear_error(monkeypatch, tmp_path):
    from monai.utils import OptionalImportError

    import volcam.monai.handler as mod

    monkeypatch.setattr(mod, "has_ignite", False)
    with pytest.raises(OptionalImportError, match="needs pytorch-ignite"):
        CAMHandler(target_layers=LAYER, output_dir=tmp_path).attach(SimpleNamespace())


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"method": "gradkam"}, MethodNotFoundError, "did you mean 'gradcam'"),
        ({"method": 3}, ConfigError, "`method` must be a registry name"),
        ({"every_n_epochs": 0}, ConfigError, "`every_n_epochs` must be a positive int, not 0"),
        ({"max_cases": -1}, ConfigError, "`max_cases` must be a positive int or None, not -1"),
        (
            {"exports": ("nifti", "gif")},
            ConfigError,
            r"`exports` must be a subset of \['nifti', 'png', 'figure', 'viewer', 'dicom'\]",
        ),
        ({"batch_transform": "image"}, ConfigError, "`batch_transform` must be a callable, not 'image'"),
        ({"targets": [1, 2]}, ConfigError, "`targets` must be None, an int or a target callable"),
        ({"method_args": {"upsample": False}}, ConfigError, "`method_args` must not set upsample=False"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        CAMHandler(target_layers=LAYER, **kwargs)


def test_mask_from_label_without_labels_raises(tmp_path):
    batch, output = _decollated_batch(n=1)
    handler = CAMHandler(
        target_layers=LAYER, output_dir=tmp_path, exports=(), mask_from_label=True, output_transform=lambda out: None
    )
    with pytest.raises(ConfigError, match="`mask_from_label` needs labels"):
        handler(_fake_engine(tiny_unet(dims=2), batch, output))


def test_mask_from_label_explains_the_labelled_region(tmp_path):
    # TinySeg-like fixed net: the heat of class 1 masked by the label equals GradCAM with that mask
    net = tiny_unet(dims=2).eval()
    batch, output = _decollated_batch(n=2)
    handler = CAMHandler(target_layers=LAYER, targets=1, output_dir=tmp_path, exports=(), mask_from_label=True)
    rec = Recorder(handler)
    handler(_fake_engine(net, batch, output))
    x = torch.stack([b["image"].as_tensor() for b in batch])
    mask = torch.stack([b["label"].as_tensor() for b in batch])
    expected = volcam.GradCAM(net, LAYER)(x, targets=volcam.SegmentationTarget(1, mask=mask))
    for i, call in enumerate(rec.calls):
        torch.testing.assert_close(call[3], expected[i])
    unmasked = volcam.GradCAM(net, LAYER)(x, targets=1)
    assert not torch.allclose(unmasked, expected)


def test_overlay_colours_hand_computed():
    image = torch.tensor([[0.0, 2.0], [4.0, 4.0]])
    heat = torch.tensor([[0.0, 0.5], [1.0, 0.25]])
    rgb = overlay(image, heat, alpha=0.5)
    # jet(0) = (0, 0, .5), jet(.5) = (.5, 1, .5), jet(1) = (.5, 0, 0), jet(.25) = (0, .5, 1)
    expected_jet = torch.tensor([[[0.0, 0.5], [0.5, 0.0]], [[0.0, 1.0], [0.0, 0.5]], [[0.5, 0.5], [0.0, 1.0]]])
    grey = torch.tensor([[0.0, 0.5], [1.0, 1.0]])
    torch.testing.assert_close(rgb, 0.5 * grey + 0.5 * expected_jet)


def test_default_batch_transform_shapes():
    from volcam.monai import default_batch_transform, default_output_transform

    a, b = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    assert default_batch_transform({"image": a, "label": b}) is a
    cases = [{"image": torch.zeros(1, 4, 4)}, {"image": torch.ones(1, 4, 4)}]
    assert default_batch_transform(cases)[1] is cases[1]["image"]
    assert default_batch_transform((a, b)) is a  # an (image, label) pair
    pairs = [[a[0], b[0]], [a[1], b[1]]]  # decollated pairs
    assert all(x is y for x, y in zip(default_batch_transform(pairs), [pairs[0][0], pairs[1][0]]))
    assert default_output_transform({"image": a, "pred": b}) is None
    labels = [{"label": torch.zeros(1, 4, 4)}, {"label": torch.ones(1, 4, 4)}]
    assert default_output_transform(labels)[0] is labels[0]["label"]
    assert default_output_transform([{"label": b[0]}, {"pred": b[1]}]) is None


@pytest.mark.parametrize("method", sorted(volcam.METHODS))
def test_every_registered_method_by_name(tmp_path, method):
    net = tiny_unet(dims=2).eval()
    batch, output = _decollated_batch(n=2)
    handler = CAMHandler(target_layers=LAYER, method=method, targets=1, output_dir=tmp_path, exports=())
    rec = Recorder(handler)
    handler(_fake_engine(net, batch, output))
    assert hook_count(net) == 0 and type(handler.cam) is volcam.METHODS[method]
    x = torch.stack([b["image"].as_tensor() for b in batch])
    expected = volcam.get_method(method)(net, LAYER)(x, targets=1)
    torch.testing.assert_close(torch.stack([c[3] for c in rec.calls]), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- what volcam run writes


def test_the_handler_writes_what_volcam_run_writes_on_the_scans_grid(tmp_path):
    """PNGs and figure on the scan's grid (not the network's), a CT window that is not washed out,
    the label's outline, and a viewer page, for a preprocessing that resamples and rescales."""
    from monai.transforms import ScaleIntensityRanged, Spacingd
    from PIL import Image

    rng = np.random.default_rng(0)
    shape = (24, 20, 16)
    ct = np.full(shape, -1000.0, np.float32)  # air
    ct[3:21, 3:17, 2:14] = 40.0 + rng.normal(0, 10, (18, 14, 12))  # soft tissue
    label = np.zeros(shape, np.uint8)
    label[8:14, 7:12, 5:10] = 1
    ct[label == 1] = 200.0
    (tmp_path / "data").mkdir()
    nib.save(nib.Nifti1Image(ct, AFFINE), str(tmp_path / "data" / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(label, AFFINE), str(tmp_path / "data" / "ct_label.nii.gz"))
    keys = ["image", "label"]
    pre = Compose(
        [
            LoadImaged(keys),
            EnsureChannelFirstd(keys),
            Spacingd(keys, pixdim=(3.0, 4.0, 5.0), mode=("bilinear", "nearest")),
            ScaleIntensityRanged("image", a_min=-200, a_max=300, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
    data = [{"image": str(tmp_path / "data" / "ct.nii.gz"), "label": str(tmp_path / "data" / "ct_label.nii.gz")}]
    handler = CAMHandler(
        target_layers=LAYER, targets=1, output_dir=tmp_path / "out", transform=pre, png_args={"alpha": 0.0}
    )  # no heat drawn: the PNGs show the grey window alone
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        network=tiny_unet(),
        val_handlers=[handler],
        val_data_loader=DataLoader(Dataset(data, pre), batch_size=1),
    )
    evaluator.run()
    folder = tmp_path / "out" / "epoch_0001" / "ct" / "class1"
    pngs = sorted((folder / "axial").glob("*.png"))
    assert len(pngs) == shape[2]  # one per slice of the scan, not of the 8 x 5 x 4 network grid
    middle = np.asarray(Image.open(pngs[7]).convert("RGB")).astype(int)
    h, w = middle.shape[:2]  # square pixels (y: 20 x 2 mm, x: 24 x 1.5 mm) at 256 pixels or more
    assert min(h, w) >= 256 and h / w == pytest.approx(20 * 2.0 / (24 * 1.5), rel=0.02)
    grey = middle[(middle[..., 0] == middle[..., 1]) & (middle[..., 1] == middle[..., 2])][:, 0]
    assert grey.min() < 30 and 60 < np.median(grey) < 250  # air dark, tissue mid-grey: not washed out
    assert ((middle == 255).all(-1)).sum() >= 8  # the label's outline in white
    assert (folder / "figure.png").stat().st_size > 0 and (folder.parent / "viewer.html").stat().st_size > 0


def test_every_n_epochs_on_a_standalone_evaluator_says_why_nothing_is_written(tmp_path):
    cases = make_cases(tmp_path / "data", n=1)
    handler = CAMHandler(target_layers=LAYER, output_dir=tmp_path / "out", every_n_epochs=5, exports="nifti")
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader(cases), network=tiny_unet(), val_handlers=[handler]
    )
    with pytest.warns(RuntimeWarning, match=r"every_n_epochs=5.*standalone evaluator runs epoch 1 only"):
        evaluator.run()
    assert not (tmp_path / "out").exists()
