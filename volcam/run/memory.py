"""Will a case fit in memory? An estimate before the case runs, calibrated by measurement.

The estimate starts from the network's activations: the bytes of every module's output for
the case's volume, found once per run from a forward pass on a small crop with hooks (under
``torch.no_grad()``) and scaled by the number of voxels. The peak of the CAM computation is a
multiple ``k`` of that, which depends on the network, the method and the target layer; it is
measured on every case that runs (``k = measured peak / activations``) and the estimate of the
next case uses the ``k`` of the largest measured case that is not larger than it. Before the
first measurement ``k = 1``. A sliding-window run is estimated for one batch of windows plus
the stitched volumes (output, heat, weights: float32).

Stated error, measured on a 2-core CPU and tested: once a case of the same size has run, the
estimate is within -15% to +50% of the peak (the first case measured in a process also counts
memory kept for later ones, such as convolution caches); from a smaller case, 0.9 to 2.5 times
(the cost per voxel falls as volumes grow). Before any case has run, ``k`` between 0.4 (MONAI's
SegResNet, DynUNet) and 2.5 (a two-level UNet) was measured: the first estimate is a rough one.

When the estimate exceeds 85% of the free memory, the case fails cleanly before it starts,
naming the sliding-window size that would fit; the run goes on with the next case. A case that
the system kills all the same is recorded by the supervising process (:mod:`volcam.run.supervise`).

Peaks are measured as the growth of the process's resident memory (Linux: VmHWM, reset through
``/proc/self/clear_refs``, after ``malloc_trim`` hands freed memory back) on the CPU, and with
``torch.cuda.max_memory_allocated`` on a GPU. Free memory is the smallest of the system's
available memory, the cgroup's limit and the address space left under ``RLIMIT_AS`` on the
CPU, and ``torch.cuda.mem_get_info`` (plus PyTorch's cached blocks) on a GPU.
"""

from __future__ import annotations

import logging
import re
import resource
from collections.abc import Callable, Sequence
from typing import Any

import torch

from volcam.errors import VolcamError

__all__ = ["MemoryGuard", "MemoryLimitError", "available_bytes", "peak_bytes", "activation_bytes"]

log = logging.getLogger(__name__)

GB = 1024**3
#: fraction of the free memory a case may plan to use
HEADROOM = 0.85
#: voxels from which a case's measured peak calibrates the estimate
MEASURED = 48**3


class MemoryLimitError(VolcamError, MemoryError):
    """A case would need more memory than is free; the message says how much and what would fit."""


def _status(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", open("/proc/self/status").read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def _read_int(path: str) -> int | None:
    try:
        text = open(path).read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can still get on ``device`` (None when it cannot be told)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    limits = []
    try:
        m = re.search(r"^MemAvailable:\s+(\d+) kB", open("/proc/meminfo").read(), re.M)
        if m:
            limits.append(int(m.group(1)) * 1024)
    except OSError:
        pass
    for limit, used in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        lim, cur = _read_int(limit), _read_int(used)
        if lim is not None and cur is not None and lim < 1 << 60:
            limits.append(lim - cur)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    size = _status("VmSize")
    if soft != resource.RLIM_INFINITY and size is not None:
        limits.append(soft - size)
    return max(0, min(limits)) if limits else None


def _trim() -> None:
    """Give freed heap memory back to the system (glibc), so that resident memory measures need."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak memory that ``fn()`` adds on ``device``, in bytes (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    _trim()
    start: int | None = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        start = None
    fn()
    peak = _status("VmHWM")
    if start is None or peak is None:
        return 0
    return max(0, peak - start)


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _round_to(value: int, step: int) -> int:
    return max(step, (value // step) * step)


def activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of every leaf module's output (tensors, in tuples and lists too) for input ``x``."""
    total = 0

    def add(out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()
        elif isinstance(out, (tuple, list)):
            for o in out:
                add(o)
        elif isinstance(out, dict):
            for o in out.values():
                add(o)

    hooks = [m.register_forward_hook(lambda m, i, o: add(o)) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return total


class MemoryGuard:
    """Checks before each case that it fits (see the module docstring).

    Args:
        model: the network (its activations are measured once on a crop).
        device: where it runs.
        divisor: the size every axis of the network's input must be a multiple of.
        sliding: ``(roi_size, sw_batch_size)`` when the run explains by windows, else None.
        out_channels: classes of the network's output (for the stitched volumes).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        *,
        divisor: Sequence[int] | None = None,
        sliding: tuple[Sequence[int], int] | None = None,
        out_channels: int = 2,
    ):
        self.model = model
        self.device = device
        self.divisor = divisor
        self.sliding = sliding
        self.out_channels = out_channels
        #: activation bytes per voxel of the network's input (None until measured)
        self.per_voxel: float | None = None
        #: measured ``(voxels, k)``: the computation's peak over its activations
        self.measured: list[tuple[int, float]] = []

    def _stitched(self, voxels: int) -> int:
        return 0 if self.sliding is None else (self.out_channels + 3) * voxels * 4

    def _work(self, shape: Sequence[int]) -> int:
        """Voxels the network sees at once: the volume, or a batch of windows."""
        if self.sliding is None:
            return _prod(shape)
        roi, batch = self.sliding
        return _prod([min(r, s) for r, s in zip(roi, shape)]) * batch

    def activations(self, x: torch.Tensor) -> None:
        """Measure the activation bytes per voxel on a crop of ``x`` ``[1, C, *S]`` (once)."""
        shape = [int(s) for s in x.shape[2:]]
        div = list(self.divisor) if self.divisor is not None else [1] * len(shape)
        crop = [min(s, _round_to(32, d)) for s, d in zip(shape, div)]
        part = x[(slice(None), slice(None), *(slice(0, c) for c in crop))].contiguous()
        try:
            self.per_voxel = activation_bytes(self.model, part) / _prod(crop)
        except Exception:  # a network that cannot take the crop: no estimate, as before the check existed
            self.per_voxel = None

    def k(self, work: int) -> float:
        """The peak over the activations for ``work`` voxels (see the module docstring)."""
        below = [(v, k) for v, k in self.measured if v <= work]
        if below:
            return max(below)[1]
        return min(self.measured)[1] if self.measured else 1.0

    def estimate(self, shape: Sequence[int]) -> float | None:
        """Estimated peak bytes of a case with spatial ``shape`` (None without the activations)."""
        if self.per_voxel is None:
            return None
        work = self._work(shape)
        return self.k(work) * self.per_voxel * work + self._stitched(_prod(shape))

    def record(self, shape: Sequence[int], peak: int) -> None:
        """Note the measured peak of a case (stitched volumes included)."""
        work = self._work(shape)
        own = peak - self._stitched(_prod(shape))
        if self.per_voxel and work >= MEASURED and own > 0:  # small cases: fixed costs dominate their peak
            self.measured.append((work, own / (self.per_voxel * work)))

    def measure(self, fn: Callable[[], Any], shape: Sequence[int]) -> Any:
        """Run ``fn()`` (a whole case of spatial ``shape``), record its peak, return its result."""
        result: list[Any] = []
        peak = peak_bytes(lambda: result.append(fn()), self.device)
        self.record(shape, peak)
        return result[0]

    def check(self, x: torch.Tensor) -> None:
        """Raise :class:`MemoryLimitError` when the case ``x`` ``[1, C, *S]`` will not fit."""
        shape = tuple(int(s) for s in x.shape[2:])
        if self.per_voxel is None:
            self.activations(x)
        need = self.estimate(shape)
        free = available_bytes(self.device)
        if need is None or free is None or need <= HEADROOM * free:
            return
        raise MemoryLimitError(
            f"this case ({' x '.join(map(str, shape))} voxels) needs about {need / GB:.2f} GB of memory (estimated "
            f"from the network's activations and measured cases), but {free / GB:.2f} GB are free on {self.device}; "
            + self.suggestion(shape, free)
        )

    def suggestion(self, shape: Sequence[int], free: float) -> str:
        """What would fit: a sliding-window size, or another device."""
        div = list(self.divisor) if self.divisor is not None else [16] * len(shape)
        batch = self.sliding[1] if self.sliding is not None else 1
        other = " or device: cpu" if self.device.type == "cuda" else ""
        for edge in (192, 160, 128, 112, 96, 80, 64, 48, 32):
            roi = [min(s, _round_to(edge, d)) for s, d in zip(shape, div)]
            work = _prod(roi) * batch
            need = self.k(work) * (self.per_voxel or 0.0) * work + (self.out_channels + 3) * _prod(shape) * 4
            if need <= HEADROOM * free:
                gb = need / GB
                return f"set sliding_window.roi_size: {roi} (about {gb:.2f} GB with sw_batch_size {batch}){other}"
        return "free memory, or run it on a machine with more" + other
