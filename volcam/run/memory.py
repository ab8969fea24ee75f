"""Will a case fit in memory? An estimate before the case runs, from measurements.

The peak memory of the CAM computation grows about linearly with the number of voxels, and
its cost per voxel falls (or stays) as volumes grow (convolution buffers are chosen by size).
:class:`MemoryGuard` measures the peak of every case it lets through and, before the next
case, estimates ``peak(V) = V x rate``, with the rate per voxel of the largest measured case
that is not larger than this one: accurate for cases of similar size, and erring high (never
low) for larger ones. Before the first case there is no measurement yet: the computation is run
once on a crop of the case (an eighth of its voxels, at least 48 voxels an axis) to measure a
first rate, which overestimates larger volumes by up to about 2.5x. A sliding-window run is
estimated for one batch of windows plus the stitched volumes (output, heat, weights: float32).
Measured on a 2-core CPU with MONAI's UNet and SegResNet: a rate from a case of the same size
estimates another case within 15%; from a crop a quarter to an eighth the size, 1.0 to 2.5x.

When the estimate exceeds 85% of the free memory, the case fails cleanly before it starts,
naming the sliding-window size that would fit; the run goes on with the next case.

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

__all__ = ["MemoryGuard", "MemoryLimitError", "available_bytes", "peak_bytes"]

log = logging.getLogger(__name__)

GB = 1024**3
#: fraction of the free memory a case may plan to use
HEADROOM = 0.85
#: voxels below which the first case runs without a first measurement on a crop
SMALL = 64**3


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
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - start)
    _trim()
    start = _status("VmRSS")
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


class MemoryGuard:
    """Checks before each case that it fits (see the module docstring).

    Args:
        compute: ``compute(x)`` runs the CAM computation of the run on an input ``[1, C, *S]``
            (used for the first measurement, on a crop).
        device: where it runs.
        divisor: the size every axis of the network's input must be a multiple of.
        sliding: ``(roi_size, sw_batch_size)`` when the run explains by windows, else None.
        out_channels: classes of the network's output (for the stitched volumes).
    """

    def __init__(
        self,
        compute: Callable[[torch.Tensor], Any],
        device: torch.device,
        *,
        divisor: Sequence[int] | None = None,
        sliding: tuple[Sequence[int], int] | None = None,
        out_channels: int = 2,
    ):
        self.compute = compute
        self.device = device
        self.divisor = divisor
        self.sliding = sliding
        self.out_channels = out_channels
        #: measured ``(voxels, peak bytes)`` of the computation, without the stitched volumes
        self.measured: list[tuple[int, int]] = []

    def _stitched(self, voxels: int) -> int:
        return 0 if self.sliding is None else (self.out_channels + 3) * voxels * 4

    def _work(self, shape: Sequence[int]) -> int:
        """Voxels the network sees at once: the volume, or a batch of windows."""
        if self.sliding is None:
            return _prod(shape)
        roi, batch = self.sliding
        return _prod([min(r, s) for r, s in zip(roi, shape)]) * batch

    def rate(self, voxels: int) -> float | None:
        """Bytes per voxel for ``voxels`` (see the module docstring); None before any measurement."""
        if not self.measured:
            return None
        below = [(v, p) for v, p in self.measured if v <= voxels]
        v, p = max(below) if below else min(self.measured)
        return p / v

    def estimate(self, shape: Sequence[int]) -> float | None:
        """Estimated peak bytes of a case with spatial ``shape`` (None before any measurement)."""
        work = self._work(shape)
        rate = self.rate(work)
        return None if rate is None else rate * work + self._stitched(_prod(shape))

    def record(self, shape: Sequence[int], peak: int) -> None:
        """Note the measured peak of a case (stitched volumes included)."""
        work = self._work(shape)
        own = peak - self._stitched(_prod(shape))
        if work > 0 and own > 0:
            self.measured.append((work, own))

    def probe(self, x: torch.Tensor) -> None:
        """A first measurement on a crop of ``x`` ``[1, C, *S]`` (an eighth of its voxels)."""
        shape = tuple(int(s) for s in x.shape[2:])
        div = list(self.divisor) if self.divisor is not None else [8] * len(shape)
        crop = tuple(min(s, max(_round_to(s // 2, d), _round_to(48, d))) for s, d in zip(shape, div))
        if self.sliding is not None:
            crop = tuple(min(c, r) for c, r in zip(crop, self.sliding[0]))
        part = x[(slice(None), slice(None), *(slice(0, c) for c in crop))].contiguous()
        peak = peak_bytes(lambda: self.compute(part), self.device)
        if peak > 0:
            self.measured.append((_prod(crop) * (self.sliding[1] if self.sliding else 1), peak))

    def measure(self, fn: Callable[[], Any], shape: Sequence[int]) -> Any:
        """Run ``fn()`` (a whole case of spatial ``shape``), record its peak, return its result."""
        result: list[Any] = []
        peak = peak_bytes(lambda: result.append(fn()), self.device)
        self.record(shape, peak)
        return result[0]

    def check(self, x: torch.Tensor) -> None:
        """Raise :class:`MemoryLimitError` when the case ``x`` ``[1, C, *S]`` will not fit."""
        shape = tuple(int(s) for s in x.shape[2:])
        if not self.measured:
            if _prod(shape) <= SMALL:
                return  # small enough to run as it is; its measurement sets the first rate
            self.probe(x)
        need = self.estimate(shape)
        free = available_bytes(self.device)
        if need is None or free is None or need <= HEADROOM * free:
            return
        raise MemoryLimitError(
            f"this case ({' x '.join(map(str, shape))} voxels) needs about {need / GB:.2f} GB (estimated from "
            f"measured cases), but {free / GB:.2f} GB are free on {self.device}; " + self.suggestion(shape, free)
        )

    def suggestion(self, shape: Sequence[int], free: float) -> str:
        """What would fit: a sliding-window size, or another device."""
        div = list(self.divisor) if self.divisor is not None else [16] * len(shape)
        batch = self.sliding[1] if self.sliding is not None else 1
        other = " or device: cpu" if self.device.type == "cuda" else ""
        for edge in (192, 160, 128, 112, 96, 80, 64, 48, 32):
            roi = [min(s, _round_to(edge, d)) for s, d in zip(shape, div)]
            work = _prod(roi) * batch
            need = (self.rate(work) or 0.0) * work + (self.out_channels + 3) * _prod(shape) * 4
            if need <= HEADROOM * free:
                gb = need / GB
                return f"set sliding_window.roi_size: {roi} (about {gb:.2f} GB with sw_batch_size {batch}){other}"
        return "free memory, or run it on a machine with more" + other
