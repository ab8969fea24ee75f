"""CUDA end to end: CPU and CUDA maps agree, autocast maps agree with float32, results stay
on the device, and the engine does not synchronise with the host except where it must.

The tests marked ``cuda`` need a GPU (tests/conftest.py skips them without one). One test
runs everywhere: it lists, on the CPU, the operators that would make the host wait for
the device on CUDA (``item``/``bool``, ``nonzero``, ``tolist``, SVD's error check, ...).

Tolerances (on maps normalised to [0, 1]):

- CPU vs CUDA, float32 with TF32 off: max |difference| <= 1e-3.
- autocast float16: mean |difference| <= 0.003, correlation with the float32 map >= 0.999;
  bfloat16 (8 bits of mantissa): mean <= 0.015, correlation >= 0.995. Max |difference|:
  for the channel-weighted methods (GradCAM, GradCAM++, XGradCAM, ScoreCAM, EigenCAM)
  <= 0.02 in float16 and <= 0.1 in bfloat16; the per-voxel methods (HiResCAM, LayerCAM,
  EigenGradCAM, and any method not named here) can differ at single voxels where a ReLU
  gate of the network flips in half precision, so for them max <= 0.35.
  The score and mask are fixed beforehand, so the comparison measures the precision of
  the activations and gradients, not a change of the predicted region. The limits are
  about four times the differences measured with CPU autocast on the same model (max
  0.0008-0.005 in float16 and 0.006-0.04 in bfloat16 for the channel-weighted methods,
  0.04-0.17 for the per-voxel ones; mean <= 0.0005 and <= 0.0036).
"""

from __future__ import annotations

import copy
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from helpers import Pyramid, hook_count
from torch.utils._python_dispatch import TorchDispatchMode

import volcam

cuda = pytest.mark.cuda

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
@cuda
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


@cuda
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


@cuda
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
@cuda
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


#: syncs that are allowed, as (file, function) of the innermost volcam frame: only
#: read_evidence(), which brings the checks of a computation (non-finite values, empty
#: targets and maps) to the host in one transfer at the end. EigenCAM/EigenGradCAM find
#: their principal component by fixed power iterations on the device (no solver error
#: code to read back, unlike torch.linalg.svd).
ALLOWED = (("diagnostics.py", "read_evidence"),)


def _allowed(site: str) -> bool:
    return any(site.startswith(f) and f" {fn}" in site for f, fn in ALLOWED)


def _sync_case(target_kind: str, device: torch.device):
    """A plain-torch model (so that any sync found comes from volcam, not from the network),
    an input and a target of the given kind."""
    _, model = Pyramid.pair(classes=3)
    model = model.to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 1, 24, 24, generator=gen).to(device)
    with torch.no_grad():
        mask = (model(x).argmax(1) == 1).float()
    targets = {
        "mask": volcam.SegmentationTarget(1, mask=mask),
        "predicted": volcam.SegmentationTarget(1),
        "default": None,
    }[target_kind]
    return model, x, targets


def engine_syncs(name: str, targets, model: torch.nn.Module, x: torch.Tensor) -> tuple[list[str], list[str]]:
    """(unexpected, allowed) sync sites of one explain() on CUDA."""
    cam = _make(name, model, "dec")
    cam.explain(x, targets)  # warm-up: CUDA context, cuDNN handles, lazy modules
    with record_syncs() as stacks:
        res = cam.explain(x, targets)
    assert res.heat.device.type == CUDA.type
    sites = sync_sites(stacks)
    return [s for s in sites if not _allowed(s)], [s for s in sites if _allowed(s)]


@cuda
@pytest.mark.parametrize("target_kind", ["mask", "predicted", "default"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_no_host_sync_inside_the_engine(name, target_kind):
    """torch's sync debug mode reports no synchronisation but the allowed ones."""
    model, x, targets = _sync_case(target_kind, CUDA)
    unexpected, _ = engine_syncs(name, targets, model, x)
    assert not unexpected, f"{name}: host synchronisation inside the engine at:\n" + "\n".join(unexpected)


# ----------------------------------------------------------------------------- host reads, on CPU
#: operators that make the host wait for a CUDA device: they read a value back
#: (item/bool/int), or size their output from the data (nonzero, unique, masked_select,
#: repeat_interleave without output_size, boolean indexing), or check a solver's error
#: code (SVD, eigh and the linalg functions without ``_ex``)
_HOST_READ_OPS = {
    "aten::_local_scalar_dense",
    "aten::is_nonzero",
    "aten::equal",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::_linalg_svd",
    "aten::_linalg_eigh",
    "aten::linalg_eig",
    "aten::_linalg_check_errors",
}


class _HostReads(TorchDispatchMode):
    """Record, with the innermost volcam frame, every operator that would sync on CUDA."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: list[str] = []

    def _record(self, what: str) -> None:
        frames = [f for f in traceback.extract_stack() if f.filename.startswith(VOLCAM_DIR)]
        if frames:  # operators of the network or of the test itself are not the engine's
            f = frames[-1]
            self.sites.append(f"{Path(f.filename).name}:{f.lineno} {f.name}: {f.line}  [{what}]")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in _HOST_READ_OPS:
            self._record(name)
        elif name == "aten::repeat_interleave" and kwargs.get("output_size") is None and "Tensor" in str(func):
            self._record(name)
        elif name in ("aten::index", "aten::index_put", "aten::index_put_"):
            indices = args[1] if len(args) > 1 else []
            if any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices or []):
                self._record(f"{name} with a boolean mask")
        return func(*args, **kwargs)


@contextmanager
def record_host_reads():
    """Also catches tolist()/numpy()/cpu(), which do not go through the dispatcher on CPU."""
    mode = _HostReads()
    saved = {m: getattr(torch.Tensor, m) for m in ("tolist", "numpy", "cpu")}

    def spy(method):
        original = saved[method]

        def wrapper(self, *args, **kwargs):
            mode._record(f"Tensor.{method}()")
            return original(self, *args, **kwargs)

        return wrapper

    try:
        for m in saved:
            setattr(torch.Tensor, m, spy(m))
        with mode:
            yield mode.sites
    finally:
        for m, original in saved.items():
            setattr(torch.Tensor, m, original)


@pytest.mark.parametrize("target_kind", ["mask", "predicted", "default"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_no_host_read_inside_the_engine(name, target_kind):
    """On any machine: explain() calls no operator that would make the host wait for a CUDA
    device, except the allowed ones (see ALLOWED)."""
    model, x, targets = _sync_case(target_kind, torch.device("cpu"))
    cam = _make(name, model, "dec")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty masks are fine here
        with record_host_reads() as sites:
            cam.explain(x, targets)
    unexpected = [s for s in sites if not _allowed(s)]
    assert not unexpected, f"{name}: operators that wait for the device, inside the engine:\n" + "\n".join(unexpected)
    allowed = [s for s in sites if _allowed(s)]
    assert len(allowed) == 1, allowed  # the recorder sees the one read of the evidence, once per call


class _ReadsBack(volcam.GradCAM):
    """A method that reads values back to the host (what the test above must catch)."""

    def weights(self, activations, grads):
        scale = float(grads.abs().max())  # item()
        _ = grads.flatten()[:2].tolist()
        keep = activations[activations > 0]  # boolean indexing
        return grads.mean(dim=(2, 3, 4)) * scale + 0 * keep.sum()


def test_host_read_recorder_catches_planted_reads():
    model, x, targets = _sync_case("mask", torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with record_host_reads() as sites:
            _ReadsBack(model, "dec").explain(x, targets)
    unexpected = " ".join(s for s in sites if not _allowed(s))
    assert "aten::_local_scalar_dense" in unexpected
    assert "Tensor.tolist()" in unexpected
    assert "boolean mask" in unexpected or "aten::nonzero" in unexpected
