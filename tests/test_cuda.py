"""CUDA end to end: CPU and CUDA maps agree, autocast maps agree with float32, results stay
on the device, and the engine does not synchronise with the host except where it must.

Every test here needs a GPU (``pytest.mark.cuda``; tests/conftest.py skips them without one).

Tolerances (on maps normalised to [0, 1]):

- CPU vs CUDA, float32 with TF32 off: max |difference| <= 1e-3.
- autocast float16: mean |difference| <= 0.003, correlation with the float32 map >= 0.999;
  bfloat16 (8 bits of mantissa): mean <= 0.015, correlation >= 0.995. Max |difference|:
  for the channel-weighted methods (GradCAM, GradCAM++, XGradCAM, ScoreCAM, EigenCAM)
  <= 0.02 in float16 and <= 0.1 in bfloat16; the per-voxel methods (HiResCAM, LayerCAM,
  EigenGradCAM, and any method not named here) can differ at single voxels where a ReLU
  gate of the network flips in half precision, so for them max <= 0.35.
  The score and mask are fixed beforehand, so the comparison measures the precision of
  the activations and gradients, not a change of the predicted region. The float32
  reference itself was measured against CPU autocast at 0.0008-0.005 (float16) and
  0.006-0.04 (bfloat16) max difference for the channel-weighted methods.
"""

from __future__ import annotations

import copy
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import volcam

from helpers import Pyramid, hook_count

pytestmark = pytest.mark.cuda

METHOD_NAMES = sorted(volcam.METHODS)
CUDA = torch.device("cuda")
VOLCAM_DIR = str(Path(volcam.__file__).resolve().parent)

AUTOCAST_TOL = {
    torch.float16: {"max": 0.02, "max_per_voxel": 0.35, "mean": 0.003, "corr": 0.999},
    torch.bfloat16: {"max": 0.1, "max_per_voxel": 0.35, "mean": 0.015, "corr": 0.995},
}
#: methods whose channel weights average over the volume (small errors stay small everywhere)
CHANNEL_WEIGHTED = {"gradcam", "gradcam++", "xgradcam", "scorecam", "eigencam"}


def _unet(dims: int) -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(dims, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).eval()


LAYER = "model.1.submodule.2"  # the last decoder block with features (8 channels, half resolution)


def _case(dims: int = 3, batch: int = 2, size: int = 32):
    model = _unet(dims)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, *([size] * dims), generator=gen)
    with torch.no_grad():
        pred = model(x).argmax(1)
    mask = (pred == 1).float()
    return model, x, mask


def _make(name: str, model: torch.nn.Module, layer: str = LAYER):
    cls = volcam.METHODS[name]
    return cls(model, layer, batch_size=8) if name == "scorecam" else cls(model, layer)


@contextmanager
def _no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-30))


# ----------------------------------------------------------------------------- CPU == CUDA
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_cpu_and_cuda_maps_agree(name, dims):
    model, x, mask = _case(dims)
    target = volcam.SegmentationTarget(1, mask=mask)
    cpu = _make(name, model).explain(x, target)
    model_gpu = copy.deepcopy(model).to(CUDA)
    with _no_tf32():
        gpu = _make(name, model_gpu).explain(x.to(CUDA), volcam.SegmentationTarget(1, mask=mask.to(CUDA)))
    assert gpu.heat.device.type == CUDA.type
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, rtol=1e-4, atol=1e-3)
    diff = (gpu.heat.cpu() - cpu.heat).abs().max().item()
    assert diff <= 1e-3, f"{name}: CPU and CUDA heat differ by up to {diff:.2e}"
    # raw maps, relative to each sample's largest value
    raw_cpu, raw_gpu = cpu.layer_maps[0], gpu.layer_maps[0].cpu()
    scale = raw_cpu.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (raw_cpu.ndim - 1)))
    rel = ((raw_gpu - raw_cpu).abs() / scale).max().item()
    assert rel <= 1e-3, f"{name}: raw maps differ by up to {rel:.2e} of their maximum"


def test_default_target_agrees_on_cpu_and_cuda():
    """The default target (largest predicted foreground class) is chosen on the device."""
    model, x, _ = _case(3)
    cpu = volcam.GradCAM(model, LAYER).explain(x)
    with _no_tf32():
        gpu = volcam.GradCAM(copy.deepcopy(model).to(CUDA), LAYER).explain(x.to(CUDA))
    torch.testing.assert_close(gpu.heat.cpu(), cpu.heat, rtol=0, atol=1e-3)


# ----------------------------------------------------------------------------- autocast
def autocast_errors(name: str, dtype: torch.dtype, device: torch.device) -> dict:
    """Max/mean |difference| and correlation between the autocast and float32 heat of one
    method (a fixed target, so both explain the same score)."""
    model, x, mask = _case(3)
    model, x, mask = model.to(device), x.to(device), mask.to(device)
    target = volcam.SegmentationTarget(1, mask=mask)
    ref = _make(name, model).explain(x, target)
    with torch.autocast(device.type, dtype=dtype):
        res = _make(name, model).explain(x, target)
    diff = (res.heat - ref.heat).abs()
    return {
        "heat": res.heat,
        "raw_dtype": res.layer_maps[0].dtype,
        "max": diff.max().item(),
        "mean": diff.mean().item(),
        "corr": _corr(res.heat, ref.heat),
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_autocast_maps_agree_with_float32(name, dtype):
    if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    err = autocast_errors(name, dtype, CUDA)
    assert err["heat"].dtype == torch.float32
    assert err["raw_dtype"] == torch.float32
    assert err["heat"].device.type == CUDA.type
    assert torch.isfinite(err["heat"]).all()
    tol = AUTOCAST_TOL[dtype]
    msg = f"{name} {dtype}: max {err['max']:.3g}, mean {err['mean']:.3g}, corr {err['corr']:.4f}"
    assert err["max"] <= (tol["max"] if name in CHANNEL_WEIGHTED else tol["max_per_voxel"]), msg
    assert err["mean"] <= tol["mean"], msg
    assert err["corr"] >= tol["corr"], msg


# ----------------------------------------------------------------------------- device
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_result_stays_on_the_device(name):
    model, x, mask = _case(3)
    model = model.to(CUDA)
    res = _make(name, model).explain(x.to(CUDA), volcam.SegmentationTarget(1, mask=mask.to(CUDA)))
    tensors = [res.heat, res.output, res.scores, *res.layer_maps]
    assert all(t.device.type == CUDA.type for t in tensors)
    assert res.heat.dtype == torch.float32
    assert hook_count(model) == 0
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- host syncs
@contextmanager
def record_syncs():
    """Collect the Python stack of every synchronising CUDA call (torch's sync debug mode)."""
    found: list[list[traceback.FrameSummary]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if "synchroniz" in str(message):
                found.append(traceback.extract_stack()[:-1])
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode("default")


def sync_sites(stacks) -> list[str]:
    """Where each sync happened: the innermost frame inside volcam (file:line function),
    followed by the frame that was running (e.g. inside torch)."""
    sites = []
    for stack in stacks:
        while len(stack) > 1 and Path(stack[-1].filename).name == "warnings.py":
            stack = stack[:-1]  # the warnings machinery that delivered the report
        inner = [f for f in stack if f.filename.startswith(VOLCAM_DIR)]
        where = inner[-1] if inner else stack[-1]
        site = f"{Path(where.filename).name}:{where.lineno} {where.name}: {where.line}"
        if stack[-1] is not where:
            site += f"  [in {Path(stack[-1].filename).name}:{stack[-1].lineno} {stack[-1].name}]"
        sites.append(site)
    return sites


#: the known sync: warn_empty() reads one bool on the host to decide whether to warn
KNOWN = ("targets.py", "warn_empty")


def engine_syncs(name: str, targets, model: torch.nn.Module, x: torch.Tensor) -> tuple[list[str], list[str]]:
    cam = _make(name, model, "dec")
    cam.explain(x, targets)  # warm-up: CUDA context, cuDNN handles, lazy modules
    with record_syncs() as stacks:
        res = cam.explain(x, targets)
    assert res.heat.device.type == CUDA.type
    sites = sync_sites(stacks)
    known = [s for s in sites if s.startswith(KNOWN[0]) and KNOWN[1] in s]
    return [s for s in sites if s not in known], known


@pytest.mark.parametrize("target_kind", ["mask", "predicted", "default"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_no_host_sync_inside_the_engine(name, target_kind):
    """Only the final warn_empty check may synchronise (a plain-torch model, so that any
    sync found comes from volcam, not from the network)."""
    _, model = Pyramid.pair(classes=3)
    model = model.to(CUDA)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 1, 24, 24, generator=gen).to(CUDA)
    with torch.no_grad():
        mask = (model(x).argmax(1) == 1).float()
    targets = {
        "mask": volcam.SegmentationTarget(1, mask=mask),
        "predicted": volcam.SegmentationTarget(1),
        "default": None,
    }[target_kind]
    unexpected, known = engine_syncs(name, targets, model, x)
    assert not unexpected, f"{name}: host synchronisation inside the engine at:\n" + "\n".join(unexpected)
    assert len(known) <= 1
