#!/usr/bin/env python
"""Speed and peak memory of volcam against the alternatives, on MONAI segmentation networks.

In one run, for every case (network, 2D/3D, size) and target layer, this times

- ``inference``: a bare forward pass under ``torch.no_grad()`` (the reference: ratios are to it),
- ``forward+backward``: a bare forward and a full backward of the same masked score,
- ``volcam GradCAM``, ``volcam GradCAM++``,
- ``volcam ScoreCAM`` batched (``batch_size=--scorecam-batch``) and as a loop of single
  forwards (``batch_size=1``),
- ``MONAI GradCAM`` / ``MONAI GradCAMpp`` (``monai.visualize``, on a deep copy of the model
  since they leave their hooks on it), with ``class_score`` replaced by the same masked sum,
- ``Captum LayerGradCam`` on a forward function returning the same masked sum, followed by
  the same upsampling and normalisation as volcam,

with warm-up, interleaved repetitions (the order rotates every repetition) and medians.
Every method explains the same score, ``sum(logits[:, 1] * mask)`` with ``mask`` the region
the network predicts as class 1 (computed once, shared), at the same layer, on the same
input, in float32.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during one call (reported as the
model + input + what the call allocated on top of them); on CPU the peak resident set size
of a separate process per measurement (a fork of a server process with the libraries
loaded; the high-water mark is reset after the model and input are built, and "extra" is
the growth above that point).

Also: a full-volume CAM of a CT-sized volume through ``volcam.sliding_window_cam`` against
``monai.inferers.sliding_window_inference`` of the same network (``--sliding``), and the
export of slice PNGs through ``volcam.figures.save_slice_pngs`` (``--png``).

Examples::

    python scripts/benchmark.py --out bench-quick              # quick CPU run (small sizes)
    python scripts/benchmark.py --full --devices cpu --out bench-cpu
    python scripts/benchmark.py --devices cuda --sliding --out bench-gpu
    python scripts/benchmark.py --classes --quick --out bench-classes   # K classes per call (see benchmark_classes.py)

Writes ``benchmark.json`` and ``benchmark.md`` to ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Fixed (not dynamic) mmap threshold: freed tensors go back to the OS at once, so the
# resident-set high-water mark of a CPU measurement is not hidden by reused heap pages.
# Read by glibc at process start: it applies to the forked measurement processes.
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")

import torch  # noqa: E402

import volcam  # noqa: E402
from volcam.postprocess import normalize, upsample  # noqa: E402

MB = 2**20
CATEGORY = 1  # the explained class (of three output channels)

#: target layers per network: the last decoder block with features (before the output
#: block), and the first decoder block after the bottleneck (the backward then runs
#: through the whole decoder).
LAYERS = {
    "unet": {
        "last decoder": "model.1.submodule.2",
        "first decoder": "model.1.submodule.1.submodule.1.submodule.2",
    },
    "segresnet": {
        "last decoder": "up_layers.2",
        "first decoder": "up_layers.0",
    },
}

REFERENCE = "inference"
#: runners that do not depend on the target layer
LAYER_FREE = ("inference", "forward+backward")
GRADIENT_RUNNERS = (
    "volcam GradCAM",
    "volcam GradCAM++",
    "MONAI GradCAM",
    "MONAI GradCAMpp",
    "Captum LayerGradCam",
)
SCORECAM_RUNNERS = ("volcam ScoreCAM batched", "volcam ScoreCAM loop")


@dataclass(frozen=True)
class Case:
    network: str  # "unet" | "segresnet"
    dims: int  # 2 or 3
    size: int  # edge length of the (square/cubic) input

    @property
    def shape(self) -> tuple[int, ...]:
        return (1, 1) + (self.size,) * self.dims

    @property
    def label(self) -> str:
        name = {"unet": "UNet", "segresnet": "SegResNet"}[self.network]
        return f"{name} {self.dims}D {self.size}^{self.dims}"


def default_cases(full: bool) -> list[Case]:
    sizes3d, size2d = ((96, 128), 512) if full else ((48,), 256)
    cases = [Case(net, 3, s) for s in sizes3d for net in ("unet", "segresnet")]
    return cases + [Case("unet", 2, size2d)]


# --------------------------------------------------------------------------- models and inputs
def build_network(name: str, dims: int) -> torch.nn.Module:
    """The networks as usually configured in MONAI's tutorials, seeded, in eval mode."""
    from monai.networks.nets import SegResNet, UNet

    torch.manual_seed(0)
    if name == "unet":
        net = UNet(dims, 1, 3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
    elif name == "segresnet":
        net = SegResNet(dims, init_filters=16, in_channels=1, out_channels=3)
    else:
        raise ValueError(f"network must be 'unet' or 'segresnet', not {name!r}")
    return net.eval()


def build_case(case: Case, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Model, input ``[1, 1, *S]`` and the shared target mask ``[1, *S]`` (float32)."""
    model = build_network(case.network, case.dims).to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(case.shape, generator=gen).to(device)
    with torch.no_grad():
        pred = model(x).argmax(1)
    mask = (pred == CATEGORY).float()
    if not bool(mask.any()):  # a random network may predict no voxel of the class
        mask = torch.ones_like(mask)
    return model, x, mask


def masked_score(mask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``logits [B, classes, *S] -> [B]``: the summed logits of class 1 inside ``mask``."""

    def score(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, CATEGORY].float() * mask).flatten(1).sum(1)

    return score


def get_module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return dict(model.named_modules())[name]


def make_runner(
    kind: str, model: torch.nn.Module, layer: str | None, x: torch.Tensor, mask: torch.Tensor, scorecam_batch: int
) -> Callable[[], Any]:
    """A function running one computation of ``kind`` once (returns its result)."""
    score = masked_score(mask)
    target = volcam.SegmentationTarget(CATEGORY, mask=mask)
    if kind == "inference":

        def run():
            with torch.no_grad():
                return model(x)

        return run
    if kind == "forward+backward":
        params = [p for p in model.parameters() if p.requires_grad]

        def run():
            out = model(x)
            score(out).sum().backward()
            for p in params:
                p.grad = None
            return out.detach()

        return run
    if kind.startswith("volcam"):
        cls = {
            "volcam GradCAM": lambda: volcam.GradCAM(model, layer),
            "volcam GradCAM++": lambda: volcam.GradCAMPlusPlus(model, layer),
            "volcam ScoreCAM batched": lambda: volcam.ScoreCAM(model, layer, batch_size=scorecam_batch),
            "volcam ScoreCAM loop": lambda: volcam.ScoreCAM(model, layer, batch_size=1),
        }[kind]
        cam = cls()
        return lambda: cam(x, target)
    if kind.startswith("MONAI"):
        from monai.visualize import GradCAM as MonaiGradCAM
        from monai.visualize import GradCAMpp as MonaiGradCAMpp

        net = copy.deepcopy(model)  # MONAI leaves hooks (and flipped inplace flags) on the module
        cls = MonaiGradCAM if kind == "MONAI GradCAM" else MonaiGradCAMpp
        cam = cls(nn_module=net, target_layers=layer)
        cam.nn_module.class_score = lambda logits, class_idx: score(logits)
        wrapped = cam.nn_module

        def run():
            out = cam(x, class_idx=CATEGORY)
            # drop what the hooks keep between calls, so each call starts from the same state
            wrapped.activations.clear()
            wrapped.gradients.clear()
            wrapped.score = None
            for p in net.parameters():
                p.grad = None
            return out

        return run
    if kind == "Captum LayerGradCam":
        from captum.attr import LayerGradCam

        lgc = LayerGradCam(lambda inp: score(model(inp)), get_module(model, layer))

        def run():
            attr = lgc.attribute(x, relu_attributions=True)
            return normalize(upsample(attr.float(), x.shape[2:]))

        return run
    raise ValueError(f"unknown runner {kind!r}")


# --------------------------------------------------------------------------- measurement
def on_gpu(device: torch.device) -> bool:
    return device.type == "cuda"


def _sync(device: torch.device) -> None:
    if on_gpu(device):
        torch.cuda.synchronize(device)


def time_runners(
    runners: dict[str, Callable[[], Any]],
    device: torch.device,
    warmup: int,
    repeats: dict[str, int],
    log: Callable[[str], None],
) -> dict[str, list[float]]:
    """Seconds per call: ``warmup`` untimed calls each, then interleaved repetitions (the
    order rotates every round, so slow drifts of a shared machine hit every runner alike)."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            out = runners[name]()
            del out
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    rounds = max(repeats.values())
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            if len(times[name]) >= repeats[name]:
                continue
            _sync(device)
            t0 = time.perf_counter()
            out = runners[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            del out
        log(f"    round {r + 1}/{rounds} done")
    return times


def gpu_peak(run: Callable[[], Any], device: torch.device, resident_bytes: int) -> dict[str, float]:
    """Peak CUDA memory of one call: model + input (``resident_bytes``) + what the call allocated."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = run()
    torch.cuda.synchronize(device)
    extra = torch.cuda.max_memory_allocated(device) - base
    del out
    return {"peak_mb": (resident_bytes + extra) / MB, "extra_mb": extra / MB}


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child_runner(spec: dict) -> Callable[[], Any]:
    """Build, in the measurement process, what ``spec`` describes; return the call to measure."""
    cpu = torch.device("cpu")
    if spec["kind"] == "sliding":
        parts = sliding_setup(tuple(spec["shape"]), spec["roi"], spec["batch"], spec["overlap"], cpu)
        return sliding_runners(*parts)[spec["runner"]]
    model, x, mask = build_case(Case(**spec["case"]), cpu)
    return make_runner(spec["runner"], model, spec["layer"], x, mask, spec["scorecam_batch"])


def _cpu_peak_child(spec: dict, conn) -> None:
    """Runs in a separate process: build the inputs, reset the RSS high-water mark, run once."""
    try:
        torch.set_num_threads(spec["threads"])
        run = _child_runner(spec)
        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            reset = True
        except OSError:
            reset = False
        base = _proc_status_kb("VmRSS")
        out = run()
        del out
        peak = _proc_status_kb("VmHWM")
        conn.send({"peak_mb": peak / 1024, "extra_mb": (peak - base) / 1024 if reset else None})
    except BaseException as err:  # report to the parent instead of dying silently
        conn.send({"error": f"{type(err).__name__}: {err}"})
    finally:
        conn.close()


_MP_CONTEXT = None


def _mp_context():
    global _MP_CONTEXT
    if _MP_CONTEXT is None:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "monai.networks.nets", "monai.visualize", "captum.attr", "volcam"])
        _MP_CONTEXT = ctx
    return _MP_CONTEXT


def cpu_peak(spec: dict) -> dict[str, float]:
    """Peak resident memory of a separate process running one call (see module docstring)."""
    ctx = _mp_context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_cpu_peak_child, args=(spec, child))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        result = {"error": f"measurement process died (exit code {proc.exitcode})"}
    proc.join()
    return result


def summarize(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0], ms[0], ms[0]]
    return {"median_ms": statistics.median(ms), "q1_ms": q[0], "q3_ms": q[2], "min_ms": ms[0], "n": len(ms)}


# --------------------------------------------------------------------------- one case
def runners_for(case: Case, layer_name: str, device: torch.device, args) -> list[str]:
    names = list(GRADIENT_RUNNERS)
    if args.scorecam != "none" and (args.scorecam == "all" or layer_name == "last decoder"):
        names += list(SCORECAM_RUNNERS)
    return names


def bench_case(case: Case, device: torch.device, args, log) -> list[dict]:
    """All rows (one per runner and layer) of one case on one device."""
    model, x, mask = build_case(case, device)
    resident = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    resident += x.numel() * x.element_size()
    runners: dict[str, Callable[[], Any]] = {}
    layer_of: dict[str, str | None] = {}
    for kind in LAYER_FREE:
        runners[kind] = make_runner(kind, model, None, x, mask, args.scorecam_batch)
        layer_of[kind] = None
    for layer_name, layer in LAYERS[case.network].items():
        for kind in runners_for(case, layer_name, device, args):
            key = f"{kind} @ {layer_name}"
            runners[key] = make_runner(kind, model, layer, x, mask, args.scorecam_batch)
            layer_of[key] = layer_name
    repeats = {k: (args.scorecam_repeats if "ScoreCAM" in k else args.repeats) for k in runners}
    log(f"  timing {len(runners)} runners, {max(repeats.values())} rounds")
    times = time_runners(runners, device, args.warmup, repeats, log)

    rows = []
    for key, run in runners.items():
        kind = key.split(" @ ")[0]
        layer_name = layer_of[key]
        row = {
            "device": device.type,
            "case": case.label,
            "network": case.network,
            "dims": case.dims,
            "size": case.size,
            "layer": layer_name or "-",
            "layer_module": LAYERS[case.network][layer_name] if layer_name else None,
            "method": kind,
            **summarize(times[key]),
        }
        if not args.no_memory:
            if on_gpu(device):
                row.update(gpu_peak(run, device, resident))
            else:
                layer = LAYERS[case.network][layer_name] if layer_name else None
                mem = cpu_peak(
                    {
                        "kind": "case",
                        "case": asdict(case),
                        "runner": kind,
                        "layer": layer,
                        "threads": torch.get_num_threads(),
                        "scorecam_batch": args.scorecam_batch,
                    }
                )
                if "error" in mem:
                    log(f"    memory of {key}: {mem['error']}")
                row.update({k: v for k, v in mem.items() if k != "error"})
            log(f"    {key}: {row['median_ms']:.1f} ms, peak {row.get('peak_mb', float('nan')):.0f} MB")
        rows.append(row)
    ref = next(r for r in rows if r["method"] == REFERENCE)
    for r in rows:
        r["time_x_inference"] = r["median_ms"] / ref["median_ms"]
        if r.get("peak_mb") is not None and ref.get("peak_mb"):
            r["peak_x_inference"] = r["peak_mb"] / ref["peak_mb"]
        if r.get("extra_mb") is not None and ref.get("extra_mb"):
            r["extra_x_inference"] = r["extra_mb"] / ref["extra_mb"]
    del runners, model, x, mask
    gc.collect()
    if on_gpu(device):
        torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- profile
def profile_case(case: Case, device: torch.device, layer_name: str, kinds: list[str], args) -> str:
    """torch.profiler tables (top operators by self time) of one call of each runner."""
    from torch.profiler import ProfilerActivity, profile

    model, x, mask = build_case(case, device)
    layer = LAYERS[case.network][layer_name]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu(device) else [])
    sort = "self_cuda_time_total" if on_gpu(device) else "self_cpu_time_total"
    parts = []
    for kind in kinds:
        run = make_runner(kind, model, None if kind in LAYER_FREE else layer, x, mask, args.scorecam_batch)
        for _ in range(2):
            run()
        _sync(device)
        with profile(activities=activities) as prof:
            run()
            _sync(device)
        table = prof.key_averages().table(sort_by=sort, row_limit=args.profile_rows)
        parts.append(f"### {device.type} {case.label} @ {layer_name} ({layer}): {kind}\n\n```\n{table}\n```\n")
    return "\n".join(parts)


def phase_breakdown(case: Case, device: torch.device, layer_name: str, repeats: int, log) -> dict:
    """Where volcam GradCAM's time goes, as cumulative stages timed like the runners:
    inference; forward with the capture hooks and the graph from the layer on; + target
    score and ``autograd.grad`` back to the layer; the whole ``explain`` (+ weights,
    upsampling, normalisation)."""
    from volcam.capture import capture

    model, x, mask = build_case(case, device)
    layer = LAYERS[case.network][layer_name]
    cam = volcam.GradCAM(model, layer)
    target = volcam.SegmentationTarget(CATEGORY, mask=mask)
    score = masked_score(mask)

    def inference():
        with torch.no_grad():
            return model(x)

    def forward():
        with capture(model, cam.layers) as state, torch.enable_grad():
            out = model(x)
            return out, state.activations[layer]

    def backward():
        with capture(model, cam.layers) as state, torch.enable_grad():
            out = model(x)
            return torch.autograd.grad(score(out).sum(), [state.activations[layer]])

    stages = {
        "inference": inference,
        "+ forward with graph after the layer": forward,
        "+ score and gradient to the layer": backward,
        "whole explain()": lambda: cam.explain(x, target),
    }
    times = time_runners(stages, device, 1, {k: repeats for k in stages}, log)
    return {
        "case": case.label,
        "device": device.type,
        "layer": layer_name,
        "stages_ms": {k: statistics.median(v) * 1000 for k, v in times.items()},
    }


# --------------------------------------------------------------------------- sliding window
SLIDING_INFERENCE = "MONAI sliding_window_inference"
SLIDING_CAM = "volcam sliding_window_cam (GradCAM)"


def sliding_setup(shape: tuple[int, ...], roi: int, batch: int, overlap: float, device: torch.device):
    """The 3D UNet, a GradCAM at its last decoder block, a volume ``[1, 1, *shape]`` and the
    sliding-window settings shared by inference and CAM."""
    model = build_network("unet", 3).to(device)
    cam = volcam.GradCAM(model, LAYERS["unet"]["last decoder"])
    gen = torch.Generator().manual_seed(2)
    x = torch.randn((1, 1, *shape), generator=gen).to(device)
    sw = {"roi_size": (roi,) * 3, "sw_batch_size": batch, "overlap": overlap, "mode": "constant"}
    return model, cam, x, sw


def sliding_runners(model, cam, x, sw, stitch: str | None = None) -> dict[str, Callable[[], Any]]:
    """Inference and CAM of the whole volume; ``stitch``: where the stitched volumes live
    (default: ``x``'s device)."""
    from monai.inferers import sliding_window_inference

    where = {} if stitch is None else {"device": stitch}

    def infer():
        with torch.no_grad():
            return sliding_window_inference(x, predictor=model, **sw, **where)

    out = {SLIDING_INFERENCE: infer}
    sliding_cam = getattr(volcam, "sliding_window_cam", None)
    if sliding_cam is not None:
        out[SLIDING_CAM] = lambda: sliding_cam(cam, x, targets=CATEGORY, **sw, **where)
    return out


def bench_sliding(device: torch.device, args, log) -> dict:
    """Full-volume CAM through the sliding window vs MONAI sliding-window inference.

    Same network (the 3D UNet), same volume, ROI, window batch, overlap and blending.
    Peak memory also at a second, smaller volume: the growth per voxel is what the stitched
    volumes cost, the rest (the intercept) is bounded by the ROI. On CUDA also one window
    batch on its own, and both stitched in host memory (``device="cpu"``), where the GPU
    holds only the windows.
    """
    shape = tuple(args.sliding_shape)
    gpu = on_gpu(device)
    model, cam, x, sw = sliding_setup(shape, args.sliding_roi, args.sliding_batch, args.sliding_overlap, device)
    result: dict[str, Any] = {
        "device": device.type,
        "network": "UNet 3D",
        "volume": list(shape),
        "roi": list(sw["roi_size"]),
        "sw_batch_size": args.sliding_batch,
        "overlap": args.sliding_overlap,
        "mode": sw["mode"],
        "layer": LAYERS["unet"]["last decoder"],
        "target": f"class {CATEGORY}, the region each window predicts as the class",
        "rows": [],
        "volume_mb": x.numel() * x.element_size() / MB,
    }
    main = sliding_runners(model, cam, x, sw)
    if SLIDING_CAM not in main:
        result["pending"] = "volcam.sliding_window_cam is not available in this checkout"
    log(f"  sliding window on {shape}, roi {sw['roi_size']}, {len(main)} runners")
    warmup = 1 if gpu else args.sliding_cpu_warmup
    times = time_runners(main, device, warmup, {k: args.sliding_repeats for k in main}, log)
    small_shape = tuple(max(args.sliding_roi, s // 2) for s in shape)
    small_voxels = 1
    for v in small_shape:
        small_voxels *= v
    peaks: dict[str, dict] = {}
    for name, run in main.items():
        row = {"method": name, "stitched_on": device.type, **summarize(times[name])}
        if not args.no_memory:
            if gpu:
                row.update(gpu_peak(run, device, x.numel() * x.element_size()))
            else:
                spec = {
                    "kind": "sliding",
                    "shape": list(shape),
                    "roi": args.sliding_roi,
                    "batch": args.sliding_batch,
                    "overlap": args.sliding_overlap,
                    "runner": name,
                    "threads": torch.get_num_threads(),
                }
                big = cpu_peak(spec)
                small = cpu_peak({**spec, "shape": list(small_shape)})
                row.update({k: v for k, v in big.items() if k != "error"})
                peaks[name] = {"small": small.get("peak_mb"), "big": big.get("peak_mb")}
                if "error" in big or "error" in small:
                    log(f"    memory of {name}: {big.get('error') or small.get('error')}")
        result["rows"].append(row)
        log(f"    {name}: {row['median_ms']:.0f} ms, peak {row.get('peak_mb', float('nan')):.0f} MB")
    ref = result["rows"][0]
    for r in result["rows"]:
        r["time_x_inference"] = r["median_ms"] / ref["median_ms"]
        if r.get("peak_mb") and ref.get("peak_mb"):
            r["peak_x_inference"] = r["peak_mb"] / ref["peak_mb"]

    if gpu and not args.no_memory:
        # one window batch alone: what the ROI costs, whatever the volume
        window = x[(slice(None), slice(None)) + tuple(slice(0, r) for r in sw["roi_size"])]
        window = window.repeat(args.sliding_batch, 1, 1, 1, 1)

        def window_infer(model=model):
            with torch.no_grad():
                return model(window)

        wbytes = window.numel() * window.element_size()
        result["one_window_batch"] = {
            "inference": gpu_peak(window_infer, device, wbytes),
            "GradCAM": gpu_peak(lambda cam=cam: cam.explain(window, CATEGORY), device, wbytes),
        }
        del window
        small = sliding_setup(small_shape, args.sliding_roi, args.sliding_batch, args.sliding_overlap, device)[2]
        for name, run in sliding_runners(model, cam, small, sw).items():
            run()
            peaks[name] = {
                "small": gpu_peak(run, device, small.numel() * small.element_size())["peak_mb"],
                "big": next(r["peak_mb"] for r in result["rows"] if r["method"] == name),
            }
        del small
    if peaks:
        growth: dict[str, Any] = {"small_volume": list(small_shape)}
        for name, p in peaks.items():
            if p["small"] is None or p["big"] is None:
                continue
            per_voxel = (p["big"] - p["small"]) * MB / (x.numel() - small_voxels)
            growth[name] = {
                "peak_small_mb": p["small"],
                "peak_mb": p["big"],
                "bytes_per_voxel": per_voxel,
                "intercept_mb": p["big"] - per_voxel * x.numel() / MB,
            }
        result["growth"] = growth
    if gpu and args.sliding_host_stitch:
        host = sliding_runners(model, cam, x, sw, stitch="cpu")
        log("  stitched in host memory")
        htimes = time_runners(host, device, 1, {k: 1 for k in host}, log)
        for name, run in host.items():
            row = {"method": name, "stitched_on": "cpu", **summarize(htimes[name])}
            row.update(gpu_peak(run, device, x.numel() * x.element_size()))
            row["time_x_inference"] = row["median_ms"] / ref["median_ms"]
            result["rows"].append(row)
    del x, model, cam
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------- slice PNGs
def ct_phantom(shape: tuple[int, int, int], seed: int = 3):
    """A CT-like volume in HU (air, an elliptic body, a bone ring, CT-like noise of 15 HU)
    and a smooth heat map (two Gaussian blobs), both float32 ``[X, Y, Z]``. Random noise
    alone would be the worst case for PNG compression; this is closer to real scans."""
    import numpy as np

    nx, ny, nz = shape
    x = np.linspace(-1, 1, nx, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    z = np.linspace(-1, 1, nz, dtype=np.float32)[None, None, :]
    r = (x / 0.85) ** 2 + (y / 0.65) ** 2 + (z / 1.2) ** 2
    image = np.where(r < 1, np.float32(40), np.float32(-1000))
    image = np.where((r > 0.8) & (r < 0.9), np.float32(700), image)
    image += np.random.default_rng(seed).normal(0, 15, size=shape).astype(np.float32)
    heat = np.exp(-((x - 0.3) ** 2 + (y + 0.1) ** 2 + z**2) / 0.05) + 0.6 * np.exp(
        -((x + 0.4) ** 2 + (y - 0.2) ** 2 + (z - 0.3) ** 2) / 0.02
    )
    return image.astype(np.float32), heat.astype(np.float32)


def bench_png(args, log) -> dict:
    """Export of ``--png-slices`` axial slice PNGs of a 512x512 CT-like volume (CPU)."""
    try:
        from volcam.figures import save_slice_pngs
    except ImportError as err:
        return {"pending": f"volcam.figures.save_slice_pngs is not available in this checkout ({err})"}
    import numpy as np

    n = args.png_slices
    image, heat = ct_phantom((512, 512, n))
    times, sizes = [], []
    for _ in range(args.png_repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            paths = save_slice_pngs(image, heat, tmp, affine=np.eye(4), axis="axial", window="soft_tissue")
            times.append(time.perf_counter() - t0)
            sizes.append(sum(p.stat().st_size for p in paths) / len(paths))
    log(f"  {len(paths)} PNGs: {statistics.median(times):.2f} s")
    return {
        "slices": len(paths),
        "shape": [512, 512, n],
        "cpu_count": os.cpu_count(),
        "content": "CT-like phantom",
        "window": "soft_tissue",
        "kib_per_png": statistics.median(sizes) / 1024,
        **summarize(times),
    }


# --------------------------------------------------------------------------- HTML viewer
def _page_meta(path: Path) -> dict:
    import re

    text = path.read_text(encoding="utf-8")
    return json.loads(re.search(r'<script type="application/json" id="volcam-meta">(.*?)</script>', text, re.S)[1])


def _open_seconds(path: Path, repeats: int) -> list[float] | None:
    """Seconds from navigation to a drawn page in headless Chromium (None without Chromium)."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from chromium_cdp import Chromium, chromium_executable

        chromium_executable()
    except (ImportError, RuntimeError):
        return None
    times = []
    with Chromium(1400, 900) as browser:
        for _ in range(repeats):
            page = browser.page()
            t0 = time.perf_counter()
            page.goto(path)
            page.evaluate("volcamViewer.ready.then(() => true)", timeout=300)
            times.append(time.perf_counter() - t0)
            assert page.errors() == [], page.errors()
            page.send("Page.close")
    return times


def bench_viewer(args, log) -> dict:
    """A case's HTML viewer (``volcam.figures.viewer.write_viewer``) of a 512x512xN CT-like
    volume with one and with three classes: build time, page size, and the time headless
    Chromium takes to open and draw it."""
    try:
        from volcam.figures.viewer import write_viewer
    except ImportError as err:
        return {"pending": f"volcam.figures.viewer is not available in this checkout ({err})"}
    import numpy as np

    shape = (512, 512, args.viewer_slices)
    image, heat = ct_phantom(shape)
    image = np.rint(image)  # CT files hold integer HU (float32 once loaded)
    affine = np.diag([-0.7, -0.7, 1.5, 1.0])
    variants = {
        "1 class": {"liver": heat},
        "3 classes": {"liver": heat, "kidney": heat**2, "tumour": np.roll(heat, 60, axis=0)},
    }
    out = {
        "shape": list(shape),
        "cpu_count": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],  # other work on the machine, before the run
        "content": "CT-like phantom, integer HU",
        "rows": [],
    }
    for name, heats in variants.items():
        times = []
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "viewer.html"
            for _ in range(args.viewer_repeats):
                t0 = time.perf_counter()
                write_viewer(image, heats, path, affine=affine)
                times.append(time.perf_counter() - t0)
            meta = _page_meta(path)
            opened = _open_seconds(path, 2) if args.viewer_browser else None
            row = {
                "variant": name,
                "mb": path.stat().st_size / 1e6,
                "factors": meta["factors"],
                "display_shape": meta["shape"],
                "open_s": statistics.median(opened) if opened else None,
                **summarize(times),
            }
        log(f"  viewer, {name}: {row['median_ms'] / 1000:.2f} s, {row['mb']:.1f} MB, factors {row['factors']}")
        out["rows"].append(row)
    return out


def viewer_markdown(viewer: dict | None) -> list[str]:
    """The viewer section of the report, with its two targets."""
    if not viewer:
        return []
    lines = ["## HTML viewer", ""]
    if viewer.get("pending"):
        return lines + [f"Pending: {viewer['pending']}.", ""]
    shape = "x".join(map(str, viewer["shape"]))
    lines += [
        f"`write_viewer` on a {shape} {viewer['content']}, {viewer['cpu_count']} cores, load average "
        f"{viewer.get('load_average', ['?'])[0]} before the run (build: median of the runs; open: navigation "
        "to the first drawn planes in headless Chromium).",
        "",
        "| classes | build (s) | runs | page (MB) | shown at | reduced by | open (s) |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for r in viewer["rows"]:
        lines.append(
            f"| {r['variant']} | {r['median_ms'] / 1000:.2f} | {r['n']} | {r['mb']:.1f} | "
            f"{'x'.join(map(str, r['display_shape']))} | {'x'.join(map(str, r['factors']))} | "
            f"{_fmt(r['open_s'], '.1f')} |"
        )
    one = viewer["rows"][0]
    targets = [
        _target(
            f"viewer build, {shape}, 1 class ({viewer['cpu_count']} cores): seconds",
            one["median_ms"] / 1000,
            10.0,
            "max",
        ),
        _target(f"viewer page, {shape}, 1 class: MB", one["mb"], 25.0, "max"),
    ]
    lines += ["", "| target | measured | limit | met |", "|---|---:|---:|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {t['value']:.2f} | <= {t['limit']} | {'yes' if t['met'] else '**no**'} |")
    return lines + [""]


# --------------------------------------------------------------------------- targets
def _target(name: str, value: float | None, limit: float, kind: str) -> dict:
    """``kind`` 'max': value must be <= limit; 'min': value must be >= limit."""
    if value is None:
        return {"target": name, "value": None, "limit": limit, "kind": kind, "met": None, "by": None}
    met = value <= limit if kind == "max" else value >= limit
    by = (value / limit - 1) if kind == "max" else (1 - value / limit)  # over the limit / short of it
    return {"target": name, "value": value, "limit": limit, "kind": kind, "met": met, "by": by}


def check_targets(rows: list[dict], sliding: list[dict], png: dict | None) -> list[dict]:
    """The issue's targets, from the ratios measured in this run."""
    out = []

    def get(device, case, layer, method, key):
        for r in rows:
            if (r["device"], r["case"], r["layer"], r["method"]) == (device, case, layer, method):
                return r.get(key)
        return None

    def inf(device, case, key):
        return get(device, case, "-", "inference", key)

    for device in sorted({r["device"] for r in rows}):
        cases = sorted({r["case"] for r in rows if r["device"] == device and r["dims"] == 3 and r["size"] == 128})
        for case in cases:
            for layer in LAYERS["unet"]:
                suffix = "" if layer == "last decoder" else " (deeper layer, reported only)"
                gc_t = get(device, case, layer, "volcam GradCAM", "median_ms")
                ref_t = inf(device, case, "median_ms")
                limit = 2.0 if device == "cpu" else 1.5
                name = f"{device} {case} @ {layer}: GradCAM time / inference{suffix}"
                out.append(_target(name, gc_t / ref_t if gc_t else None, limit, "max"))
                monai_t = get(device, case, layer, "MONAI GradCAM", "median_ms")
                out.append(
                    _target(
                        f"{device} {case} @ {layer}: MONAI GradCAM time / volcam GradCAM{suffix}",
                        monai_t / gc_t if gc_t and monai_t else None,
                        1.5,
                        "min",
                    )
                )
                if device == "cuda":
                    a = get(device, case, layer, "volcam GradCAM", "peak_mb")
                    b = get(device, case, layer, "MONAI GradCAM", "peak_mb")
                    out.append(
                        _target(
                            f"{device} {case} @ {layer}: GradCAM peak memory / MONAI GradCAM{suffix}",
                            a / b if a and b else None,
                            0.6,
                            "max",
                        )
                    )
        for case in sorted({r["case"] for r in rows if r["device"] == device}):
            for layer in LAYERS["unet"]:
                batched = get(device, case, layer, "volcam ScoreCAM batched", "median_ms")
                loop = get(device, case, layer, "volcam ScoreCAM loop", "median_ms")
                if batched and loop:
                    name = f"{device} {case} @ {layer}: ScoreCAM loop time / batched"
                    out.append(_target(name, loop / batched, 2.0, "min"))
    for s in sliding:
        same = [r for r in s["rows"] if r.get("stitched_on", s["device"]) == s["device"]]
        cam = next((r for r in same if r["method"].startswith("volcam")), None)
        if cam is not None:
            name = f"{s['device']} sliding window {s['volume']}: CAM time / inference"
            out.append(_target(name, cam["time_x_inference"], 1.5, "max"))
    if png and "median_ms" in png:
        name = f"{png['slices']} slice PNGs 512x512 ({png['cpu_count']} cores): seconds"
        out.append(_target(name, png["median_ms"] / 1000, 5.0, "max"))
    return out


# --------------------------------------------------------------------------- reporting
def _fmt(v, spec=".1f", none="-"):
    return none if v is None else format(v, spec)


def markdown(report: dict) -> str:
    lines = ["# volcam benchmark", ""]
    env = report["environment"]
    for key in (
        "date",
        "torch",
        "monai",
        "captum",
        "python",
        "platform",
        "processor",
        "cpu_count",
        "torch_threads",
        "cuda_device",
        "cuda",
        "cudnn",
        "tf32_conv",
        "cudnn_benchmark",
    ):
        if env.get(key) is not None:
            lines.append(f"- {key}: {env[key]}")
    lines.append("")
    for device in sorted({r["device"] for r in report["rows"]}):
        rows = [r for r in report["rows"] if r["device"] == device]
        mem_note = (
            "peak = torch.cuda.max_memory_allocated (model + input + the call)"
            if device == "cuda"
            else "peak = peak RSS of a separate process (libraries included); extra = growth during the call"
        )
        st = report["settings"][device]
        lines += [
            f"## {device.upper()}",
            "",
            f"Times: median of {st['repeats']} interleaved repetitions (ScoreCAM {st['scorecam_repeats']}) after "
            f"{st['warmup']} warm-up call(s), IQR beside it; "
            f"ScoreCAM batched = batch_size {st['scorecam_batch']}; "
            f"{mem_note}.",
            "",
        ]
        lines.append("| case | layer | method | median ms | IQR ms | x inference | peak MB | x inference | extra MB |")
        lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            lines.append(
                f"| {r['case']} | {r['layer']} | {r['method']} | {_fmt(r['median_ms'])} | "
                f"{_fmt(r['q1_ms'], '.0f')}-{_fmt(r['q3_ms'], '.0f')} | {_fmt(r['time_x_inference'], '.2f')} | "
                f"{_fmt(r.get('peak_mb'), '.0f')} | {_fmt(r.get('peak_x_inference'), '.2f')} | "
                f"{_fmt(r.get('extra_mb'), '.0f')} |"
            )
        lines.append("")
    for device in sorted({r["device"] for r in report["rows"]}):
        lines += [f"## {device.upper()}, per case", ""] + compact_tables(report["rows"], device)
    for s in report.get("sliding", []):
        lines += [
            f"## Sliding window ({s['device']})",
            "",
            f"{s['network']}, volume {'x'.join(map(str, s['volume']))}, ROI {'x'.join(map(str, s['roi']))}, "
            f"sw_batch_size {s['sw_batch_size']}, overlap {s['overlap']}, {s['mode']} blending, "
            f"layer `{s['layer']}`, target {s['target']}. "
            + (
                "Peak: torch.cuda.max_memory_allocated (input volume + the call)."
                if s["device"] == "cuda"
                else "Peak: peak RSS of a separate process per measurement (libraries included)."
            ),
            "",
        ]
        if s.get("pending"):
            lines += [f"Sliding-window CAM pending: {s['pending']}.", ""]
        lines.append("| method | stitched on | median ms | x inference | peak MB | x inference |")
        lines.append("|---|---|---:|---:|---:|---:|")
        for r in s["rows"]:
            lines.append(
                f"| {r['method']} | {r.get('stitched_on', s['device'])} | {_fmt(r['median_ms'])} | "
                f"{_fmt(r['time_x_inference'], '.2f')} | "
                f"{_fmt(r.get('peak_mb'), '.0f')} | {_fmt(r.get('peak_x_inference'), '.2f')} |"
            )
        lines.append("")
        if "one_window_batch" in s:
            w = s["one_window_batch"]
            lines.append(
                f"One batch of {s['sw_batch_size']} windows alone: "
                f"inference peak {w['inference']['peak_mb']:.0f} MB, "
                f"GradCAM peak {w['GradCAM']['peak_mb']:.0f} MB. The input volume is {s['volume_mb']:.0f} MB."
            )
        if "growth" in s:
            g = s["growth"]
            lines.append(
                f"Peak memory against volume size (second volume {'x'.join(map(str, g['small_volume']))}): "
                "the growth per voxel is what the stitched volumes cost; the intercept (the peak "
                "extrapolated to an empty volume) is the part bounded by the ROI."
            )
            lines.append("")
            lines.append("| method | peak MB (small) | peak MB | bytes per voxel | intercept MB |")
            lines.append("|---|---:|---:|---:|---:|")
            for name, v in g.items():
                if isinstance(v, dict):
                    lines.append(
                        f"| {name} | {v['peak_small_mb']:.0f} | {v['peak_mb']:.0f} | "
                        f"{v['bytes_per_voxel']:.1f} | {v['intercept_mb']:.0f} |"
                    )
        lines.append("")
    if report.get("breakdown"):
        lines += [
            "## Where volcam GradCAM's time goes",
            "",
            "Cumulative stages, medians in ms: each column adds one stage to the one before (the second "
            "replaces the no-grad forward by the forward with hooks and a graph from the target layer on).",
            "",
        ]
        stages = list(report["breakdown"][0]["stages_ms"])
        lines += ["| device | case | layer | " + " | ".join(stages) + " |", "|---|---|---|" + "---:|" * len(stages)]
        for b in report["breakdown"]:
            lines.append(
                f"| {b['device']} | {b['case']} | {b['layer']} | "
                + " | ".join(f"{b['stages_ms'][k]:.0f}" for k in stages)
                + " |"
            )
        lines.append("")
    png = report.get("png")
    if png:
        lines += ["## Slice PNG export", ""]
        if png.get("pending"):
            lines += [f"Pending: {png['pending']}.", ""]
        else:
            lines += [
                f"{png['slices']} axial slices of a {png['shape'][0]}x{png['shape'][1]}x{png['shape'][2]} "
                f"{png.get('content', 'volume')}, {png['cpu_count']} cores: "
                f"median {png['median_ms'] / 1000:.2f} s "
                f"({png['n']} runs, {png.get('kib_per_png', float('nan')):.0f} KiB per PNG), "
                "volcam.figures.save_slice_pngs, soft-tissue window, otherwise its defaults.",
                "",
            ]
    lines += viewer_markdown(report.get("viewer"))
    if report["targets"]:
        lines += [
            "## Targets",
            "",
            "| target | measured | limit | met | missed by (over / short of the limit) |",
            "|---|---:|---:|---|---:|",
        ]
        for t in report["targets"]:
            op = "<=" if t["kind"] == "max" else ">="
            met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
            by = "-" if not t["by"] or t["met"] else f"{t['by'] * 100:.0f}%"
            lines.append(f"| {t['target']} | {_fmt(t['value'], '.2f')} | {op} {t['limit']} | {met} | {by} |")
        lines.append("")
    return "\n".join(lines)


def compact_tables(rows: list[dict], device: str) -> list[str]:
    """One table per case: a row per method, both layers side by side (for the README)."""
    lines: list[str] = []
    rows = [r for r in rows if r["device"] == device]
    layers = list(LAYERS["unet"])
    for case in dict.fromkeys(r["case"] for r in rows):
        crow = [r for r in rows if r["case"] == case]
        net = crow[0]["network"]
        names = " / ".join(f"{lay}: `{LAYERS[net][lay]}`" for lay in layers)
        lines += [f"**{case}** ({names})", ""]
        head = "| method | " + " | ".join(f"{lay}: ms | x inf | peak MB" for lay in layers) + " |"
        lines += [head, "|---|" + "---:|---:|---:|" * len(layers)]
        methods = list(dict.fromkeys(r["method"] for r in crow))
        for m in methods:
            cells = []
            for lay in layers:
                r = next((r for r in crow if r["method"] == m and r["layer"] in (lay, "-")), None)
                if r is None:
                    cells.append("- | - | -")
                else:
                    peak = _fmt(r.get("peak_mb"), ".0f")
                    cells.append(f"{r['median_ms']:.0f} | {r['time_x_inference']:.2f} | {peak}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def print_table(rows: list[dict]) -> None:
    header = f"{'device':6} {'case':22} {'layer':13} {'method':26} {'ms':>10} {'x inf':>6} {'peak MB':>8} {'x inf':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['device']:6} {r['case']:22} {r['layer']:13} {r['method']:26} {r['median_ms']:10.1f} "
            f"{r['time_x_inference']:6.2f} {_fmt(r.get('peak_mb'), '8.0f', '       -')} "
            f"{_fmt(r.get('peak_x_inference'), '6.2f', '     -')}"
        )


def environment(devices: list[torch.device]) -> dict:
    import monai

    try:
        import captum

        captum_version = captum.__version__
    except ImportError:
        captum_version = None
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "captum": captum_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda_device": None,
    }
    if any(d.type == "cuda" for d in devices):
        env["cuda_device"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["tf32_conv"] = torch.backends.cudnn.allow_tf32
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return env


# --------------------------------------------------------------------------- nnU-Net
def _nnunet_folder(
    root: Path, shape: tuple[int, ...], scan_shape: tuple[int, ...], spacing: tuple[float, ...], folds: int, log
):
    """A results folder with nnU-Net's default 3d_fullres plans for CT-like phantoms of ``shape``
    ``[z, y, x]`` and random weights per fold (trainer network, checkpoints as the trainer writes
    them), and a scan of ``scan_shape`` to explain; returns ``(model folder, scan, configuration)``."""
    import contextlib
    import io

    import numpy as np
    import SimpleITK as sitk

    for key in ("raw", "preprocessed", "results"):
        (root / key).mkdir(parents=True, exist_ok=True)
        os.environ[f"nnUNet_{key}"] = str(root / key)
    raw = root / "raw" / "Dataset901_Bench"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (raw / sub).mkdir(parents=True, exist_ok=True)

    def write(array_zyx, path):
        img = sitk.GetImageFromArray(array_zyx)
        img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        sitk.WriteImage(img, str(path), True)

    for i in range(5):
        size = scan_shape if i == 0 else shape
        image, _ = ct_phantom(size[::-1], seed=i)  # [x, y, z]
        image = image.transpose(2, 1, 0)
        z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in size], indexing="ij")
        labels = (((x - 0.2) ** 2 + y**2 + z**2) < 0.15).astype(np.uint8)
        labels[((x - 0.25) ** 2 + (y - 0.05) ** 2 + z**2) < 0.01] = 2
        image = np.where(labels == 1, image + 60, np.where(labels == 2, image - 40, image)).astype(np.float32)
        if i == 0:
            write(image, raw / "imagesTs" / "scan_0000.nii.gz")
            continue
        write(image, raw / "imagesTr" / f"bench_{i:03d}_0000.nii.gz")
        write(labels, raw / "labelsTr" / f"bench_{i:03d}.nii.gz")
    (raw / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "organ": 1, "lesion": 2},
                "numTraining": 4,
                "file_ending": ".nii.gz",
            }
        )
    )
    with contextlib.redirect_stdout(io.StringIO()):
        from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
            DatasetFingerprintExtractor,
        )
        from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        extractor = DatasetFingerprintExtractor(901, num_processes=1)
        extractor.num_foreground_voxels_for_intensitystats = 100000
        extractor.run(overwrite_existing=True)
        plan_experiment_dataset(901)
    plans = json.loads((root / "preprocessed" / "Dataset901_Bench" / "nnUNetPlans.json").read_text())
    manager = PlansManager(plans)
    conf = manager.get_configuration("3d_fullres")
    dataset_json = json.loads((raw / "dataset.json").read_text())
    folder = root / "results" / "Dataset901_Bench" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    heads = manager.get_label_manager(dataset_json).num_segmentation_heads
    for fold in range(folds):
        torch.manual_seed(fold)
        net = nnUNetTrainer.build_network_architecture(manager, conf, 1, heads, enable_deep_supervision=False)
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        checkpoint = {
            "network_weights": net.state_dict(),
            "trainer_name": "nnUNetTrainer",
            "init_args": {"configuration": "3d_fullres"},
            "inference_allowed_mirroring_axes": (0, 1, 2),
        }
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
    arch = conf.network_arch_init_kwargs
    log(
        f"  nnU-Net plans: patch {conf.patch_size}, spacing {[round(s, 3) for s in conf.spacing]}, "
        f"{arch['n_stages']} stages, features {arch['features_per_stage']}"
    )
    return folder, raw / "imagesTs" / "scan_0000.nii.gz", conf


def bench_nnunet(device: torch.device, args, log) -> dict:
    """CAM of one whole volume through ``volcam.nnunet`` against ``nnUNetPredictor`` inference of
    the same volume: same 3d_fullres network (nnU-Net's default plans), folds, mirroring and step."""
    try:
        import volcam.nnunet
        from volcam.nnunet.loop import explain_volume
    except ImportError as err:
        return {"pending": f"volcam.nnunet is not available ({err})"}
    shape = tuple(args.nnunet_shape)
    scan_shape = tuple(args.nnunet_scan_shape or [round(s * 1.5) for s in shape])
    spacing = tuple(args.nnunet_spacing)
    folds = tuple(range(args.nnunet_folds))
    mirroring = not args.nnunet_no_mirroring
    with tempfile.TemporaryDirectory() as tmp:
        folder, image, conf = _nnunet_folder(Path(tmp), shape, scan_shape, spacing, len(folds), log)
        model = volcam.nnunet.load(folder, folds=folds, device=device)
        case = model.preprocess(image)
        classes = [c for c in model.classes if c.name == "organ"]
        cam = volcam.get_method("gradcam")(model.network, [model.default_layer()], normalize=False, upsample=True)
        windows = len(model._slicers(0.5)(tuple(max(a, b) for a, b in zip(case.data.shape[1:], conf.patch_size))))

        def infer():
            return model.predict_logits(case, use_mirroring=mirroring)

        def loop():
            return explain_volume(
                cam,
                model.parameters,
                case.data,
                [c.channel for c in classes],
                num_heads=3,
                activation="softmax",
                patch_size=model.patch_size,
                slicers=model._slicers(0.5),
                mirror_axes=model.mirror_axes if mirroring else None,
                device=device,
            )

        def whole():
            return model.explain(image, classes=["organ"], use_mirroring=mirroring)

        runners = {"nnUNetPredictor logits": infer, "volcam CAM loop (GradCAM)": loop, "volcam explain (file)": whole}
        cpu: dict[str, list[float]] = {k: [] for k in runners}

        def with_cpu_time(name, run):
            def timed():
                t0 = time.process_time()
                out = run()
                cpu[name].append(time.process_time() - t0)
                return out

            return timed

        timed = {k: with_cpu_time(k, v) for k, v in runners.items()}
        raw = time_runners(timed, device, args.nnunet_warmup, {k: args.nnunet_repeats for k in runners}, log)
        times = {
            k: {
                **summarize(v),
                "max_ms": max(v) * 1000,
                "cpu_median_s": statistics.median(cpu[k][args.nnunet_warmup :]),
            }
            for k, v in raw.items()
        }
        organ = whole()
        log(f"  organ: {organ.stats[1]['windows']} of {windows} windows explained per fold")
    base = times["nnUNetPredictor logits"]["median_ms"]
    base_cpu = times["nnUNetPredictor logits"]["cpu_median_s"]
    return {
        "device": device.type,
        "training_shape_zyx": list(shape),
        "shape_zyx": list(scan_shape),
        "spacing_zyx": list(spacing),
        "preprocessed_shape": list(case.data.shape[1:]),
        "patch_size": list(conf.patch_size),
        "features": list(conf.network_arch_init_kwargs["features_per_stage"]),
        "windows": windows,
        "folds": len(folds),
        "mirroring": mirroring,
        "layer": model.default_layer(),
        "explained_windows": organ.stats[1]["windows"],
        "rows": [
            {"runner": k, **v, "x_inference": v["median_ms"] / base, "x_inference_cpu": v["cpu_median_s"] / base_cpu}
            for k, v in times.items()
        ],
    }


def nnunet_markdown(result: dict, env: dict) -> str:
    lines = ["# volcam benchmark: nnU-Net", ""]
    lines += [f"- {k}: {v}" for k, v in env.items() if v is not None]
    if "pending" in result:
        return "\n".join([*lines, "", result["pending"], ""])
    lines += [
        "",
        f"## nnU-Net 3d_fullres ({result['device']})",
        "",
        f"nnU-Net's default plans for CT-like phantoms of {result['training_shape_zyx']} voxels (z, y, x) at "
        f"{result['spacing_zyx']} mm: patch {result['patch_size']}, features {result['features']}; a scan of "
        f"{result['shape_zyx']} voxels, "
        f"{result['windows']} windows, {result['folds']} fold(s), mirroring {'on' if result['mirroring'] else 'off'}, "
        f"step 0.5, random weights. CAM: GradCAM of class 1 at `{result['layer']}`, the region each window "
        f"predicts ({result['explained_windows']} windows hold it). `nnUNetPredictor logits` is "
        "`predict_logits_from_preprocessed_data`; the CAM loop computes the same logits and the heat from the "
        "same preprocessed volume; `volcam explain (file)` adds nnU-Net's preprocessing and the way back "
        "onto the scan (segmentation and heat).",
        "",
        "Wall time is what a user waits; CPU time (all threads of the process, `time.process_time`) is less "
        "sensitive to other processes on a shared machine.",
        "",
        "| runner | median ms | min ms | max ms | x inference | CPU s (median) | x inference (CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['runner']} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | {r['max_ms']:.0f} | {r['x_inference']:.2f} "
        f"| {r['cpu_median_s']:.1f} | {r['x_inference_cpu']:.2f} |"
        for r in result["rows"]
    ]
    return "\n".join(lines) + "\n"


def run_nnunet(args, log) -> int:
    """``--nnunet``: the nnU-Net case alone; writes ``benchmark-nnunet.json`` and ``.md`` to ``--out``."""
    device = torch.device(args.nnunet_device)
    env = environment([device])
    log(f"[{device.type}] nnU-Net 3d_fullres")
    result = bench_nnunet(device, args, log)
    md = nnunet_markdown(result, env)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "benchmark-nnunet.json").write_text(json.dumps({"environment": env, "nnunet": result}, indent=1))
        (args.out / "benchmark-nnunet.md").write_text(md)
    print(md)
    return 0


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--devices", default=None, help="comma-separated: cpu,cuda (default: cpu, and cuda when available)")
    p.add_argument(
        "--full",
        action="store_true",
        help="full sizes on CPU too (3D 96^3 and 128^3, 2D 512^2; without it 48^3 and 256^2); CUDA always uses them",
    )
    p.add_argument("--sizes", default=None, help="3D sizes, comma-separated (overrides the defaults)")
    p.add_argument("--size2d", type=int, default=None, help="2D size (0: no 2D case)")
    p.add_argument("--networks", default="unet,segresnet")
    p.add_argument(
        "--repeats", type=int, default=None, help="timed repetitions (default: 3 on CPU, 5 with --full, 20 on CUDA)"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per runner (default 1 on CPU, 3 on CUDA)")
    p.add_argument(
        "--scorecam",
        choices=("last", "all", "none"),
        default=None,
        help="layers for ScoreCAM (default: last decoder on CPU, all on CUDA)",
    )
    p.add_argument("--scorecam-batch", type=int, default=16)
    p.add_argument(
        "--scorecam-repeats", type=int, default=None, help="default: 2 on CPU, 3 with --full, as --repeats on CUDA"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: all cores)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument(
        "--profile",
        action="store_true",
        help="profile inference, volcam GradCAM and MONAI GradCAM at the largest 3D case",
    )
    p.add_argument("--profile-rows", type=int, default=15)
    p.add_argument("--sliding", action="store_true", help="full-volume sliding-window CAM vs inference")
    p.add_argument("--sliding-shape", type=int, nargs=3, default=(512, 512, 256))
    p.add_argument("--sliding-roi", type=int, default=96)
    p.add_argument("--sliding-batch", type=int, default=4)
    p.add_argument("--sliding-overlap", type=float, default=0.25)
    p.add_argument("--sliding-repeats", type=int, default=3)
    p.add_argument("--sliding-devices", default="cuda", help="devices for --sliding (CPU is slow at 512x512x256)")
    p.add_argument("--sliding-cpu-warmup", type=int, default=0, help="untimed sliding-window calls on CPU")
    p.add_argument(
        "--sliding-host-stitch", action="store_true", help="on CUDA also stitch in host memory (device='cpu')"
    )
    p.add_argument("--nnunet", action="store_true", help="only the nnU-Net case: volcam.nnunet CAM vs nnUNetPredictor")
    p.add_argument("--nnunet-device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--nnunet-shape", type=int, nargs=3, default=(32, 96, 96), help="training phantoms z y x")
    p.add_argument("--nnunet-scan-shape", type=int, nargs=3, default=None, help="explained scan (default 1.5x)")
    p.add_argument("--nnunet-spacing", type=float, nargs=3, default=(2.5, 0.8, 0.8), help="spacing z y x (mm)")
    p.add_argument("--nnunet-folds", type=int, default=1)
    p.add_argument("--nnunet-no-mirroring", action="store_true")
    p.add_argument("--nnunet-repeats", type=int, default=3)
    p.add_argument("--nnunet-warmup", type=int, default=0)
    p.add_argument("--png", action="store_true", help="time the export of slice PNGs (CPU)")
    p.add_argument("--png-slices", type=int, default=300)
    p.add_argument("--png-repeats", type=int, default=3)
    p.add_argument("--viewer", action="store_true", help="time the HTML viewer of a 512x512 CT-like case (CPU)")
    p.add_argument("--viewer-slices", type=int, default=300)
    p.add_argument("--viewer-repeats", type=int, default=3)
    p.add_argument("--viewer-browser", action=argparse.BooleanOptionalAction, default=True, help="time opening it")
    p.add_argument(
        "--render",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="measure nothing: merge these benchmark.json files and write/print their Markdown",
    )
    p.add_argument("--out", type=Path, default=None, help="folder for benchmark.json, benchmark.md (and profile.md)")
    return p.parse_args(argv)


def render(paths: list[Path], out: Path | None) -> int:
    """Markdown of one or more earlier runs (e.g. a CPU run and a GPU run from two machines)."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    merged = {
        "environment": reports[0]["environment"],
        "settings": {},
        "rows": [],
        "sliding": [],
        "png": None,
        "breakdown": [],
    }
    for rep in reports:
        merged["settings"].update(rep["settings"])
        merged["rows"] += rep["rows"]
        merged["sliding"] += rep.get("sliding", [])
        merged["png"] = merged["png"] or rep.get("png")
        merged["viewer"] = merged.get("viewer") or rep.get("viewer")
        merged["breakdown"] += rep.get("breakdown", [])
    merged["targets"] = check_targets(merged["rows"], merged["sliding"], merged["png"])
    if len(reports) > 1:
        merged["environment"] = {}  # one line per run instead, below
    md = markdown(merged)
    if len(reports) > 1:
        envs = "\n".join(
            f"- run {i + 1}: " + ", ".join(f"{k} {v}" for k, v in rep["environment"].items() if v is not None)
            for i, rep in enumerate(reports)
        )
        md = md.replace("# volcam benchmark\n", f"# volcam benchmark\n\n{envs}\n", 1)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmark.md").write_text(md)
    else:
        print(md)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--classes"]:
        # several targets per call, several methods per pass, sliding windows of K classes:
        # scripts/benchmark_classes.py (run in fresh processes, with its own options)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import benchmark_classes

        return benchmark_classes.main(argv[1:])
    args = parse_args(argv)
    if args.render:
        return render(args.render, args.out)
    if args.nnunet:
        return run_nnunet(args, lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.devices is None:
        names = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        names = [d.strip() for d in args.devices.split(",") if d.strip()]
    if "cuda" in names and not torch.cuda.is_available():
        print("benchmark: CUDA is not available; running on CPU only", file=sys.stderr)
        names = [n for n in names if n != "cuda"]
    devices = [torch.device(n) for n in names]
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rows: list[dict] = []
    profiles: list[str] = []
    settings: dict[str, dict] = {}
    report = {
        "environment": environment(devices),
        "settings": settings,
        "rows": rows,
        "sliding": [],
        "png": None,
        "breakdown": [],
    }

    def save(final: bool = False) -> None:
        """Write what is measured so far (a run cut short still leaves its results)."""
        report["targets"] = check_targets(rows, report["sliding"], report["png"])
        report["complete"] = final
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "benchmark.json").write_text(json.dumps(report, indent=1))
            (args.out / "benchmark.md").write_text(markdown(report))
            if profiles:
                (args.out / "profile.md").write_text("\n".join(profiles))

    to_profile = []
    for device in devices:
        gpu = on_gpu(device)
        full = args.full or gpu
        cases = default_cases(full)
        if args.sizes:
            sizes = [int(s) for s in args.sizes.split(",")]
            cases = [c for c in cases if c.dims == 2] + [Case(n, 3, s) for s in sizes for n in ("unet", "segresnet")]
        if args.size2d is not None:
            cases = [c for c in cases if c.dims == 3] + ([Case("unet", 2, args.size2d)] if args.size2d else [])
        networks = set(args.networks.split(","))
        cases = [c for c in cases if c.network in networks]
        dev_args = argparse.Namespace(**vars(args))
        dev_args.repeats = args.repeats or (20 if gpu else (5 if full else 3))
        dev_args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
        dev_args.scorecam = args.scorecam or ("all" if gpu else "last")
        dev_args.scorecam_repeats = args.scorecam_repeats or (dev_args.repeats if gpu else (3 if full else 2))
        settings[device.type] = {
            k: getattr(dev_args, k) for k in ("repeats", "warmup", "scorecam", "scorecam_repeats", "scorecam_batch")
        }
        for case in cases:
            log(f"[{device.type}] {case.label}")
            t0 = time.perf_counter()
            rows.extend(bench_case(case, device, dev_args, log))
            log(f"  ({time.perf_counter() - t0:.0f} s)")
            save()
        big = [c for c in cases if c.dims == 3]
        if args.profile and big:
            top = max(c.size for c in big)
            to_profile += [(case, device, dev_args) for case in big if case.size == top]
    if args.sliding:
        for name in args.sliding_devices.split(","):
            device = torch.device(name.strip())
            if device in devices:
                log(f"[{device.type}] sliding window")
                report["sliding"].append(bench_sliding(device, args, log))
                save()
    if args.png:
        report["png"] = bench_png(args, log)
        save()
    if args.viewer:
        report["viewer"] = bench_viewer(args, log)
        save()
    for case, device, dev_args in to_profile:
        for layer_name in LAYERS[case.network]:
            log(f"[{device.type}] profile {case.label} @ {layer_name}")
            report["breakdown"].append(phase_breakdown(case, device, layer_name, dev_args.repeats, log))
            kinds = ["inference", "volcam GradCAM", "MONAI GradCAM"]
            profiles.append(profile_case(case, device, layer_name, kinds, dev_args))
            save()
    save(final=True)
    print_table(rows)
    md = markdown(report)
    print()
    print(md[md.find("## Sliding") :] if "## Sliding" in md else md[md.find("## Targets") :])
    if args.viewer:
        print("\n".join(viewer_markdown(report["viewer"])))
    if args.out:
        log(f"wrote {args.out / 'benchmark.json'} and {args.out / 'benchmark.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
