"""How alike are two heat maps? Spearman rank correlation and SSIM, in torch.

Both take two maps ``[B, 1, *S]`` (one to three spatial axes) and return ``[B]`` on their
device; they are the two similarity measures of the sanity checks of Adebayo et al. (2018).
"""

from __future__ import annotations

import torch

from volcam.metrics._common import check_pair

__all__ = ["rank", "spearman", "spearman_in", "support", "body_region", "ssim"]


def rank(values: torch.Tensor) -> torch.Tensor:
    """Ranks of ``values`` ``[B, N]`` along the last axis, 1..N, ties given their average rank.

    Average ranks matter for CAMs: after the ReLU a large part of a map is exactly zero.
    """
    b, n = values.shape
    sorted_values, order = torch.sort(values, dim=1, stable=True)
    new_group = torch.ones_like(sorted_values, dtype=torch.bool)
    new_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    group = torch.cumsum(new_group.reshape(-1).long(), 0) - 1  # tie groups, numbered over the whole batch
    position = torch.arange(n, device=values.device, dtype=torch.float64).repeat(b)
    count = torch.bincount(group).double()
    first = torch.full_like(count, float(n)).scatter_reduce_(0, group, position, reduce="amin")
    average = first[group] + (count[group] - 1) / 2 + 1  # mean of first..first+count-1, 1-based
    out = torch.empty((b, n), dtype=torch.float64, device=values.device)
    out.scatter_(1, order, average.reshape(b, n))
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation between two maps, per sample.

    Pearson correlation of the average ranks (the exact definition with ties). Where one
    map is constant the correlation is undefined; it is reported as 0 (no shared ordering),
    and as 1 where both are constant (two maps that say nothing say the same nothing).

    Args:
        a, b: ``[B, 1, *S]`` maps.

    Returns:
        ``[B]`` float32 in [-1, 1].
    """
    check_pair(a, b, ("a", "b"))
    ra = rank(a.reshape(a.shape[0], -1))
    rb = rank(b.reshape(b.shape[0], -1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    va, vb = (ra * ra).sum(1), (rb * rb).sum(1)
    cov = (ra * rb).sum(1)
    rho = cov / torch.sqrt(va * vb)
    flat_a, flat_b = va == 0, vb == 0
    rho = torch.where(flat_a | flat_b, (flat_a & flat_b).double(), rho)
    return rho.clamp(-1, 1).float()


def support(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[B, 1, *S]`` bool: voxels where either map is non-zero (the union of their supports)."""
    return (a != 0) | (b != 0)


def body_region(x: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """``[B, 1, *S]`` bool: the voxels of an input ``[B, C, *S]`` above its background level (any
    channel more than ``fraction`` of its range above its minimum): the body, not the air or the
    padding around it. An input without background (no voxel at its minimum) is all body."""
    dims = tuple(range(2, x.ndim))
    lo = x.amin(dim=dims, keepdim=True)
    span = x.amax(dim=dims, keepdim=True) - lo
    return ((x - lo) > fraction * span).any(dim=1, keepdim=True)


def spearman_in(a: torch.Tensor, b: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Spearman rank correlation of two maps over a region of each sample.

    Over all voxels, the background both maps leave at zero (air around a body, padding)
    is one large tie that raises the correlation of any two maps that are zero there: a
    volume padded with zeros to twice its size scores higher for the same maps. Inside a
    region (the body, or by default the union of the maps' supports, :func:`support`) the
    verdict does not depend on the padding.

    Args:
        a, b: ``[B, 1, *S]`` maps.
        region: ``[B, 1, *S]`` bool (default: the union of the maps' supports).

    Returns:
        ``[B]`` float32; 1 where the region is empty (the maps agree: both zero everywhere).
    """
    check_pair(a, b, ("a", "b"))
    region = support(a, b) if region is None else region.bool().expand_as(a)
    out = []
    for i in range(a.shape[0]):  # regions differ in size from sample to sample
        keep = region[i].reshape(-1)
        if int(keep.sum()) < 2:
            out.append(torch.ones((), device=a.device))
            continue
        va, vb = a[i].reshape(-1)[keep], b[i].reshape(-1)[keep]
        out.append(spearman(va.view(1, 1, -1), vb.view(1, 1, -1))[0])
    return torch.stack(out).float()


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) between two maps, per sample.

    Computed with MONAI's :func:`monai.metrics.regression.compute_ssim_and_cs` (Gaussian
    window, valid convolution) and averaged over the map. Along an axis shorter than
    ``win_size`` the window shrinks to the largest odd size that fits, so small feature
    maps and 2D slices stored as ``[B, 1, 1, Y, X]`` work (a size-1 axis gets a 1-voxel
    window, which makes a 3D map of depth 1 score exactly as the 2D map). One spatial axis
    is treated as two with a size-1 axis.

    Args:
        a, b: ``[B, 1, *S]`` maps, in ``[0, data_range]`` (volcam's maps are in [0, 1]).
        data_range: value range of the maps, sets the SSIM stability constants.
        win_size: Gaussian window size (odd).
        sigma: Gaussian window standard deviation, voxels.

    Returns:
        ``[B]`` float32, 1 for identical maps.
    """
    from monai.metrics.regression import compute_ssim_and_cs

    check_pair(a, b, ("a", "b"))
    if a.ndim == 3:
        a, b = a.unsqueeze(-1), b.unsqueeze(-1)
    nd = a.ndim - 2
    sizes = [min(win_size, s if s % 2 else s - 1) for s in a.shape[2:]]
    sizes = [max(s, 1) for s in sizes]
    full, _ = compute_ssim_and_cs(
        y_pred=a.float(),
        y=b.float(),
        spatial_dims=nd,
        kernel_size=sizes,
        kernel_sigma=[sigma] * nd,
        data_range=data_range,
    )
    return full.reshape(full.shape[0], -1).mean(1)
