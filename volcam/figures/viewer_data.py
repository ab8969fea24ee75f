"""Volumes of one case encoded for the HTML viewer: compact, exact to half a quantisation step.

Format (version 1), as the page decodes it:

- Every volume lies on one *display grid*: the scan reoriented to RAS+ voxel order with
  :class:`volcam.geometry.Canonical` (flips and transposes, no resampling), then, only
  when the page would exceed its size budget, reduced in-plane by integer block factors
  (block mean for the image and the heat, "any voxel" for the masks). Its shape is
  ``[X, Y, Z]`` and its affine maps ``(i, j, k)`` to RAS world millimetres.
- Values are stored as unsigned integer codes: ``value = offset + scale * code``. The
  image takes 8 bits when its values are integers spanning at most 256 levels and 16
  bits otherwise (integers spanning at most 65536 levels, CT in HU for instance, are
  exact); heat volumes take 8 bits (values in [0, 1] use ``scale = 1/255``, so code
  ``q`` is heat ``q / 255``); the masks are bit fields, up to 8 masks per ``uint8``
  volume (bit ``b`` set = inside mask ``b`` of the group).
- The codes of a volume are flattened with ``i`` fastest (``k`` slowest) and cut into
  chunks of whole ``k`` slices. A 16-bit chunk stores all its low bytes, then all its
  high bytes (byte planes compress better than interleaved bytes). Each chunk is a zlib
  stream (RFC 1950, the browser's ``DecompressionStream("deflate")``) in base64 text.

:func:`encode_case` returns the manifest (JSON-ready) and the base64 text of every
chunk; :mod:`volcam.figures.viewer` puts both in the page.
"""

from __future__ import annotations

import base64
import math
import os
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from volcam.errors import ValueRangeError
from volcam.geometry import Canonical

__all__ = [
    "FORMAT_VERSION",
    "FACTORS",
    "Quantisation",
    "Summary",
    "EncodedCase",
    "quantisation",
    "slice_axis_of",
    "display_affine",
    "encode_case",
]

#: version of the embedded data format, recorded in the page
FORMAT_VERSION = 1

#: in-plane reduction factors tried, in order, when a page is over its size budget
FACTORS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)

_CHUNK_BYTES = 4 << 20  # raw bytes per chunk (before compression)
_ZLIB_LEVEL = 1  # the fastest level: 6 saves about 4 % on CT and takes three times longer
_SAMPLE_SLICES = 16  # slices compressed to estimate a page's size
_FULL_ENCODE_VOXELS = 4_000_000  # below this, the size is measured by encoding everything


@dataclass(frozen=True)
class Quantisation:
    """How one volume's values become integer codes: ``value = offset + scale * code``."""

    bits: int
    offset: float
    scale: float
    exact: bool  # whether every value of the source is represented without error

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.bits == 8 else np.uint16)

    def codes(self, values: np.ndarray) -> np.ndarray:
        """Codes of ``values``; NaN takes code 0, values beyond the range the end codes."""
        top = (1 << self.bits) - 1
        # float32 holds integer codes and block means of integers well; 16-bit codes of
        # arbitrary floats take float64 so that the error stays within half a step
        precise = np.float64 if self.bits == 16 and not self.exact else np.float32
        work = np.subtract(values, self.offset, dtype=precise)
        if self.scale != 1.0:
            work *= 1.0 / self.scale
        np.rint(work, out=work)
        np.clip(work, 0, top, out=work)
        np.nan_to_num(work, copy=False, nan=0.0)
        return work.astype(self.dtype)

    def manifest(self) -> dict:
        return {"dtype": self.dtype.name, "offset": self.offset, "scale": self.scale, "exact": self.exact}


@dataclass(frozen=True)
class Summary:
    """Finite range of a volume, whether its values are all integers, and where its maximum is."""

    low: float
    high: float
    integral: bool
    argmax: tuple[int, ...] | None = None  # index of the first (finite) maximum

    @classmethod
    def of(cls, volume: np.ndarray, *, integral: bool = True, argmax: bool = False) -> Summary:
        """Summarise a volume, best given in its own memory order (contiguous: fast passes)."""
        arr = np.asarray(volume)
        if arr.dtype == bool:
            arr = arr.view(np.uint8)
        is_int = np.issubdtype(arr.dtype, np.integer)
        lo, hi = arr.min(), arr.max()
        finite = is_int or bool(np.isfinite(lo) and np.isfinite(hi))
        if not finite:  # NaN or inf somewhere: the range of the finite values
            good = arr[np.isfinite(arr)]
            lo, hi = (good.min(), good.max()) if good.size else (0.0, 0.0)
        whole = is_int or (integral and all(_integral(arr[k : k + 8]) for k in range(0, arr.shape[0], 8)))
        peak = None
        if argmax:
            flat = int(np.argmax(arr))
            if not finite:
                flat = int(np.argmax(np.where(np.isfinite(arr), arr, -np.inf)))
            peak = tuple(int(i) for i in np.unravel_index(flat, arr.shape))
        return cls(float(lo), float(hi), bool(whole), peak)


def _integral(slab: np.ndarray) -> bool:
    with np.errstate(invalid="ignore"):
        return bool(np.all((slab == np.rint(slab)) | ~np.isfinite(slab)))


def quantisation(summary: Summary, kind: str) -> Quantisation:
    """The codes of a volume: ``kind`` is ``"image"`` (8 or 16 bits, see the module doc) or
    ``"heat"`` (8 bits; values within [0, 1] use offset 0 and scale 1/255)."""
    lo, hi = summary.low, summary.high
    if kind == "heat":
        if lo >= 0.0 and hi <= 1.0:
            return Quantisation(8, 0.0, 1.0 / 255.0, False)
        return Quantisation(8, lo, (hi - lo) / 255.0 if hi > lo else 1.0, False)
    span = hi - lo
    if summary.integral and span <= 65535:
        return Quantisation(8 if span <= 255 else 16, lo, 1.0, True)
    return Quantisation(16, lo, span / 65535.0 if span > 0 else 1.0, False)


def slice_axis_of(canonical: Canonical) -> int:
    """The canonical axis the scan was acquired across: the source axis with the largest
    spacing (the source's last axis on ties, and its singleton axis for a 2D image)."""
    shape = canonical.source_shape
    if 1 in shape:
        source_axis = len(shape) - 1 - shape[::-1].index(1)
    else:
        src_zooms = np.sqrt((canonical.source_affine[:3, :3] ** 2).sum(axis=0))
        largest = np.flatnonzero(np.isclose(src_zooms, src_zooms.max(), rtol=1e-3))
        source_axis = int(largest[-1])
    return int(canonical.ornt[source_axis, 0])


def _block_reduce(slab: np.ndarray, factors: Sequence[int], how: str) -> np.ndarray:
    """Blocks of ``factors`` voxels reduced to one: their mean (float32), or their maximum
    (masks). The slab is padded with its edge values to whole blocks."""
    if all(f == 1 for f in factors):
        return slab
    pad = [(0, -n % f) for n, f in zip(slab.shape, factors)]
    if any(p[1] for p in pad):
        slab = np.pad(slab, pad, mode="edge")
    fx, fy, fz = factors
    acc = slab[::fx, ::fy, ::fz].astype(np.float32 if how == "mean" else slab.dtype)
    for dx in range(fx):  # strided sums: no 6D reshape of a non-contiguous view
        for dy in range(fy):
            for dz in range(fz):
                if dx == dy == dz == 0:
                    continue
                part = slab[dx::fx, dy::fy, dz::fz]
                if how == "max":
                    np.maximum(acc, part, out=acc)
                else:
                    acc += part
    if how == "mean":
        acc *= np.float32(1.0 / (fx * fy * fz))
    return acc


def _chunk_bytes(codes: np.ndarray) -> bytes:
    flat = codes.ravel(order="F")  # i fastest, k slowest
    if flat.dtype.itemsize == 2:
        planes = flat.astype("<u2", copy=False).view(np.uint8).reshape(-1, 2)
        return planes[:, 0].tobytes() + planes[:, 1].tobytes()
    return flat.tobytes()


@dataclass
class _Stream:
    """One embedded volume: ``slab(k0, k1)`` gives its codes on display slices ``k0..k1-1``."""

    name: str
    slab: Callable[[int, int], np.ndarray]
    itemsize: int
    manifest: dict = field(default_factory=dict)


@dataclass
class EncodedCase:
    """The embedded data of a page.

    Attributes:
        factors: in-plane reduction per canonical axis (all 1: full resolution).
        shape: display grid shape ``[X, Y, Z]``.
        affine: display grid voxel-to-RAS-world matrix.
        volumes: name (``"image"``, ``"heat0"``..., ``"mask0"``...) -> manifest entry
            (quantisation and chunk list) of every stream.
        chunks: chunk id -> base64 text.
    """

    factors: tuple[int, int, int]
    shape: tuple[int, int, int]
    affine: np.ndarray
    volumes: dict
    chunks: dict

    @property
    def nbytes(self) -> int:
        return sum(len(text) for text in self.chunks.values())


def display_affine(canonical: Canonical, factors: Sequence[int]) -> np.ndarray:
    """Affine of the reduced grid: its voxel i' is the centre of canonical block [f i', f i' + f - 1]."""
    scale = np.eye(4)
    for axis, f in enumerate(factors):
        scale[axis, axis] = f
        scale[axis, 3] = (f - 1) / 2.0
    return canonical.affine @ scale


class _Encoder:
    """The streams of one case, on the display grid of given reduction factors."""

    def __init__(self, canonical: Canonical, image, heats, masks, q_image, q_heats, workers: int):
        self.canonical = canonical
        self.shape = canonical.shape
        self.image = canonical.apply(image)
        self.heats = [canonical.apply(h) for h in heats]
        self.masks = [canonical.apply(m) for m in masks]
        self.q_image = q_image
        self.q_heats = q_heats
        self.workers = workers
        self.slice_axis = slice_axis_of(canonical)

    def factors(self, f: int) -> tuple[int, int, int]:
        x, y, z = (1 if axis == self.slice_axis or n == 1 else min(f, n) for axis, n in enumerate(self.shape))
        return x, y, z

    def grid_shape(self, factors) -> tuple[int, int, int]:
        x, y, z = (math.ceil(n / f) for n, f in zip(self.shape, factors))
        return x, y, z

    def streams(self, factors) -> list[_Stream]:
        fz = factors[2]

        def source(volume, k0, k1):
            return volume[:, :, k0 * fz : min(k1 * fz, volume.shape[2])]

        def values(volume, q: Quantisation):
            return lambda k0, k1: q.codes(_block_reduce(source(volume, k0, k1), factors, "mean"))

        out = [_Stream("image", values(self.image, self.q_image), self.q_image.dtype.itemsize, self.q_image.manifest())]
        for i, (heat, q) in enumerate(zip(self.heats, self.q_heats)):
            out.append(_Stream(f"heat{i}", values(heat, q), 1, q.manifest()))
        for g in range(0, len(self.masks), 8):
            group = self.masks[g : g + 8]

            def bits(k0, k1, group=group):
                acc = None
                for b, mask in enumerate(group):
                    inside = _block_reduce(source(mask, k0, k1) > 0, factors, "max").astype(np.uint8)
                    inside <<= b
                    acc = inside if acc is None else acc | inside
                return acc

            out.append(
                _Stream(f"mask{g // 8}", bits, 1, {"dtype": "uint8", "offset": 0.0, "scale": 1.0, "exact": True})
            )
        return out

    def slabs(self, factors, itemsize: int) -> list[tuple[int, int]]:
        nx, ny, nz = self.grid_shape(factors)
        per = max(1, _CHUNK_BYTES // max(1, nx * ny * itemsize))
        return [(k, min(k + per, nz)) for k in range(0, nz, per)]

    def estimate(self, factors) -> float:
        """Base64 bytes of the data, extrapolated from single slices spread over the volume."""
        nz = self.grid_shape(factors)[2]
        picks = sorted({int(round(v)) for v in np.linspace(0, nz - 1, min(_SAMPLE_SLICES, nz))})
        total = 0.0
        for stream in self.streams(factors):
            sizes = self._map(
                lambda k, st=stream: len(zlib.compress(_chunk_bytes(st.slab(k, k + 1)), _ZLIB_LEVEL)), picks
            )
            total += sum(sizes) * nz / len(picks) * 4 / 3
        return total

    def encode(self, factors) -> EncodedCase:
        volumes, chunks = {}, {}
        for stream in self.streams(factors):
            slabs = self.slabs(factors, stream.itemsize)

            def encode_slab(span, st=stream):
                return base64.b64encode(zlib.compress(_chunk_bytes(st.slab(*span)), _ZLIB_LEVEL)).decode("ascii")

            entries = []
            for n, ((k0, k1), text) in enumerate(zip(slabs, self._map(encode_slab, slabs))):
                cid = f"vc-{stream.name}-{n}"
                chunks[cid] = text
                entries.append({"id": cid, "k0": k0, "nk": k1 - k0})
            volumes[stream.name] = {**stream.manifest, "chunks": entries}
        return EncodedCase(
            tuple(factors), self.grid_shape(factors), display_affine(self.canonical, factors), volumes, chunks
        )

    def _map(self, fn, items):
        if self.workers <= 1 or len(items) <= 1:
            return [fn(s) for s in items]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(fn, items))


def encode_case(
    canonical: Canonical,
    image: np.ndarray,
    heats: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    image_summary: Summary,
    heat_summaries: Sequence[Summary],
    budget: int,
    workers: int | None = None,
) -> EncodedCase:
    """Encode the volumes of a case (on the source grid of ``canonical``) at full resolution
    if their base64 text fits in ``budget`` bytes, else reduced in-plane by the smallest
    factor of :data:`FACTORS` that fits (the estimate comes from a few slices; the
    result is measured).

    Raises:
        ValueRangeError: not even the largest factor fits in ``budget``.
    """
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    q_image = quantisation(image_summary, "image")
    q_heats = [quantisation(s, "heat") for s in heat_summaries]
    enc = _Encoder(canonical, image, heats, masks, q_image, q_heats, workers)
    small = int(np.prod(canonical.shape)) <= _FULL_ENCODE_VOXELS
    candidates = list(dict.fromkeys(enc.factors(f) for f in FACTORS))
    for n, factors in enumerate(candidates):
        if small or n == len(candidates) - 1 or enc.estimate(factors) <= 0.97 * budget:
            encoded = enc.encode(factors)
            if encoded.nbytes <= budget:
                return encoded
    raise ValueRangeError(
        f"`max_bytes` must leave room for the volumes, not {budget} bytes of data: even reduced in-plane by "
        f"{candidates[-1]} they take more; raise max_bytes"
    )
