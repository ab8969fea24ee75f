"""Connected components, and localisation per component for lesion-style targets.

Labelling runs on the input's device by label propagation: every foreground voxel starts
with its own (flat) index, takes the largest label among its neighbours (a max-pool for
full connectivity, shifted maxima otherwise), then follows its label to the voxel that
label names ("pointer jumping"), until nothing changes. The pointer jumps make the number
of rounds grow roughly with the logarithm of a component's length rather than with the
length itself, so the loop suits a GPU. On the CPU, :func:`scipy.ndimage.label` is faster
and is used by default (``method="auto"``); both give the same partition.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from volcam.errors import ArgumentError
from volcam.metrics._common import as_mask, check_map, check_pair, spatial_dims
from volcam.metrics.localisation import binarize

__all__ = ["connected_components", "component_localisation"]


def _check_connectivity(connectivity, ndim: int) -> int:
    if connectivity is None:
        return ndim
    if isinstance(connectivity, bool) or not isinstance(connectivity, int) or not 1 <= connectivity <= ndim:
        raise ArgumentError(
            f"`connectivity` must be an int from 1 (faces) to {ndim} (faces, edges and corners) "
            f"for {ndim} spatial axes, not {connectivity!r}"
        )
    return connectivity


def _neighbour_max(labels: torch.Tensor, connectivity: int) -> torch.Tensor:
    """Maximum over each voxel and its neighbours, ``labels`` ``[B, 1, *S]`` float64."""
    nd = labels.ndim - 2
    if connectivity == nd:
        pool = getattr(F, f"max_pool{nd}d")
        return pool(labels, kernel_size=3, stride=1, padding=1)
    padded = F.pad(labels, (1, 1) * nd)
    out = labels
    for offset in itertools.product((-1, 0, 1), repeat=nd):
        if not 0 < sum(abs(o) for o in offset) <= connectivity:
            continue
        index = (slice(None), slice(None)) + tuple(slice(1 + o, 1 + o + n) for o, n in zip(offset, labels.shape[2:]))
        out = torch.maximum(out, padded[index])
    return out


def _label_torch(fg: torch.Tensor, connectivity: int, max_rounds: int) -> torch.Tensor:
    """Labels ``[B, 1, *S]`` int64 of the foreground, each component named by its largest flat index + 1."""
    n = fg.numel()
    # float64 holds every index exactly (up to 2**53 voxels); max-pooling has no int64 kernel
    index = torch.arange(1, n + 1, device=fg.device, dtype=torch.float64).reshape(fg.shape)
    labels = torch.where(fg, index, torch.zeros((), dtype=torch.float64, device=fg.device))
    for _ in range(max_rounds):
        grown = torch.where(fg, _neighbour_max(labels, connectivity), labels)
        flat = grown.reshape(-1)
        # pointer jumping: take the label held by the voxel the label names
        jumped = torch.where(flat > 0, flat[(flat.long() - 1).clamp_min(0)], flat).reshape(fg.shape)
        jumped = torch.maximum(jumped, grown)
        if torch.equal(jumped, labels):
            return labels.long()
        labels = jumped
    raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")  # pragma: no cover


def _label_scipy(fg: torch.Tensor, connectivity: int) -> torch.Tensor:
    import numpy as np
    from scipy import ndimage

    arr = fg.detach().cpu().numpy()
    structure = ndimage.generate_binary_structure(arr.ndim - 2, connectivity)
    out = np.zeros(arr.shape, dtype=np.int64)
    for b in range(arr.shape[0]):  # scipy labels one array at a time
        out[b, 0], _ = ndimage.label(arr[b, 0], structure=structure)
    return torch.from_numpy(out).to(fg.device)


def connected_components(
    mask: torch.Tensor, *, connectivity: int | None = None, method: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label the connected components of a mask, per sample.

    Args:
        mask: ``[B, 1, *S]`` mask (bool or nonzero = inside).
        connectivity: which neighbours touch, as in scikit-image: 1 = faces only
            (4-neighbourhood in 2D, 6 in 3D) up to the number of spatial axes = faces, edges
            and corners (8 in 2D, 26 in 3D; the default).
        method: ``"torch"`` (label propagation on the mask's device), ``"scipy"``
            (:func:`scipy.ndimage.label` on the CPU, result moved back), or ``"auto"``:
            torch on a GPU, scipy on the CPU.

    Returns:
        ``(labels, counts)``: ``labels`` ``[B, 1, *S]`` int64 with 0 for background and
        ``1..counts[b]`` for the components of sample ``b``, numbered in order of their
        first voxel (raster order); ``counts`` ``[B]`` int64.
    """
    check_map(mask, "mask")
    fg = as_mask(mask)
    nd = fg.ndim - 2
    connectivity = _check_connectivity(connectivity, nd)
    if method not in ("auto", "torch", "scipy"):
        raise ArgumentError(f"`method` must be 'auto', 'torch' or 'scipy', not {method!r}")
    if method == "auto":
        method = "scipy" if fg.device.type == "cpu" else "torch"
    if method == "scipy":
        raw = _label_scipy(fg, connectivity)
        offsets = torch.arange(fg.shape[0], device=fg.device).reshape(-1, *([1] * (fg.ndim - 1))) * fg[0].numel()
        raw = torch.where(raw > 0, raw + offsets, raw)  # make labels distinct across the batch
    else:
        raw = _label_torch(fg, connectivity, max_rounds=fg[0].numel() + 1)
    return _renumber(raw)


def _renumber(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels distinct across the batch -> per-sample 1..n in raster order of first voxel."""
    b = raw.shape[0]
    flat = raw.reshape(-1)
    fg = flat > 0
    n_vox = flat.numel() // b
    positions = torch.arange(flat.numel(), device=raw.device)
    keys, inverse = torch.unique(flat[fg], return_inverse=True)
    first = torch.full((keys.numel(),), flat.numel(), device=raw.device, dtype=torch.long)
    first.scatter_reduce_(0, inverse, positions[fg], reduce="amin")
    order = torch.argsort(first)  # components in raster order, sample by sample
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=raw.device)
    sample = first // n_vox
    counts = torch.bincount(sample, minlength=b)
    start = torch.cumsum(counts, 0) - counts
    local = rank - start[sample] + 1
    out = torch.zeros_like(flat)
    out[fg] = local[inverse]
    return out.reshape(raw.shape), counts


def component_localisation(
    heat: torch.Tensor,
    mask: torch.Tensor,
    *,
    level: float | None = None,
    connectivity: int | None = None,
    method: str = "auto",
) -> dict[str, torch.Tensor]:
    """Localisation per connected component of the mask (one row per lesion).

    The map is binarised once per sample (at ``level``, or its hottest voxels at the
    mask's total volume), then each mask component ``c`` is compared with the map's region
    ``R`` lesion-wise: ``R_c`` is the union of the connected components of ``R`` that touch
    ``c`` (so a blob of heat spilling past a lesion counts against it, a blob on another
    lesion does not).

    Columns (each a 1-D tensor, one entry per component, sample by sample):
        ``batch``      sample index;
        ``component``  component number within the sample (as in :func:`connected_components`);
        ``volume``     voxels in the component;
        ``energy``     fraction of the sample's heat energy inside this component;
        ``peak``       largest heat value inside the component;
        ``hit``        1.0 if the binarised map overlaps the component, else 0.0;
        ``iou``        ``|R ∩ c| / |R_c ∪ c|``;
        ``dice``       ``2|R ∩ c| / (|R_c| + |c|)``.

    Args:
        heat: ``[B, 1, *S]`` heat map.
        mask: ``[B, 1, *S]`` lesion mask.
        level: threshold of the map; ``None``: top voxels at the mask's volume.
        connectivity, method: as for :func:`connected_components` (used for both the mask
            and the binarised map).
    """
    check_pair(heat, mask)
    b = heat.shape[0]
    dims = spatial_dims(heat)
    region = binarize(heat, level, mask=mask)
    lab_m, n_m = connected_components(mask, connectivity=connectivity, method=method)
    lab_r, n_r = connected_components(region, connectivity=connectivity, method=method)
    # global ids: component j of sample i -> offset[i] + j; 0 stays background
    gm = _globalise(lab_m, n_m)
    gr = _globalise(lab_r, n_r)
    total_m = int(n_m.sum())
    total_r = int(n_r.sum())
    gm_f, gr_f = gm.reshape(-1), gr.reshape(-1)
    h = heat.float().clamp_min(0).reshape(-1)

    volume = torch.bincount(gm_f, minlength=total_m + 1)[1:]
    vol_r = torch.bincount(gr_f, minlength=total_r + 1)
    inter = torch.bincount(gm_f[region.reshape(-1)], minlength=total_m + 1)[1:]
    both = (gm_f > 0) & (gr_f > 0)
    pairs = torch.unique(gm_f[both] * (total_r + 1) + gr_f[both])
    pm, pr = pairs // (total_r + 1), pairs % (total_r + 1)
    touched = torch.zeros(total_m + 1, device=heat.device, dtype=torch.long).index_add_(0, pm, vol_r[pr])[1:]

    energy_in = torch.zeros(total_m + 1, device=heat.device).index_add_(0, gm_f, h)[1:]
    total_energy = heat.float().clamp_min(0).sum(dim=dims).reshape(b)
    peak = torch.zeros(total_m + 1, device=heat.device).scatter_reduce_(
        0, gm_f, heat.float().reshape(-1), reduce="amax", include_self=False
    )[1:]

    batch = torch.repeat_interleave(torch.arange(b, device=heat.device), n_m)
    start = torch.cumsum(n_m, 0) - n_m
    component = torch.arange(total_m, device=heat.device) - start[batch] + 1
    inter_f, volume_f, touched_f = inter.float(), volume.float(), touched.float()
    return {
        "batch": batch,
        "component": component,
        "volume": volume,
        "energy": energy_in / total_energy[batch],
        "peak": peak,
        "hit": (inter > 0).float(),
        "iou": inter_f / (volume_f + touched_f - inter_f),
        "dice": 2 * inter_f / (volume_f + touched_f),
    }


def _globalise(labels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    start = (torch.cumsum(counts, 0) - counts).reshape(-1, *([1] * (labels.ndim - 1)))
    return torch.where(labels > 0, labels + start, labels)
