"""First principal component of channel features, on the device, without a host synchronisation.

Activations ``[N, K, *S]`` are seen per row as ``P = prod(S)`` points in ``K`` dimensions,
centred over the points. Their first principal component is the top eigenvector ``v`` of
the ``K x K`` Gram matrix ``M = C^T C`` of the centred points ``C``; the map is the
projection ``C v``.

``torch.linalg.svd``/``eigh`` check their solver's error code on the host, which waits for
a CUDA device. Here ``v`` comes from a fixed number of steps instead, all on the device:

1. ``SQUARINGS`` times: ``M <- M @ M / trace(M @ M)`` (in float64). After ``s`` squarings
   the matrix is proportional to ``sum_i lambda_i^(2^s) v_i v_i^T``, which is ``v_1 v_1^T``
   up to terms of relative size ``(lambda_2 / lambda_1)^(2^s)``;
2. the column of that matrix with the largest diagonal entry (never orthogonal to
   ``v_1``), refined by ``ITERATIONS`` multiplications with it, then by two with the
   original Gram matrix.

With ``s = 12`` and 16 iterations the error factor is ``(lambda_2 / lambda_1)^65536``:
the result equals the SVD's up to sign and float rounding unless the two largest
eigenvalues agree to about 1e-4 (then any vector of their plane is a first component,
and the two computations may pick different ones). The cost is ``12 K^3`` flops per row,
independent of the number of voxels beyond forming ``M``.

The sign of an eigenvector is arbitrary; it is chosen so that the map correlates
positively with the channel mean of the features, so the same features give the same map
from run to run and device to device.
"""

from __future__ import annotations

import torch

__all__ = ["first_principal_component", "top_eigenvector"]

SQUARINGS = 12
ITERATIONS = 16


def _unit(v: torch.Tensor) -> torch.Tensor:
    norm: torch.Tensor = v.norm(dim=-1, keepdim=True)
    return v / norm.clamp_min(torch.finfo(v.dtype).tiny)


def top_eigenvector(gram: torch.Tensor) -> torch.Tensor:
    """Unit eigenvector ``[N, K]`` of the largest eigenvalue of symmetric positive
    semi-definite matrices ``[N, K, K]`` (float64 inside; zero for a zero matrix)."""
    m = gram.double()
    tiny = torch.finfo(m.dtype).tiny
    p = m / m.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(tiny)[..., None, None]
    for _ in range(SQUARINGS):
        p = p @ p
        p = p / p.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(tiny)[..., None, None]
    column = p.diagonal(dim1=-2, dim2=-1).argmax(-1)  # [N]
    index = column.view(-1, 1, 1).expand(-1, p.shape[-2], 1)
    v = _unit(p.gather(-1, index).squeeze(-1))
    for _ in range(ITERATIONS):
        v = _unit((p @ v.unsqueeze(-1)).squeeze(-1))
    for _ in range(2):
        v = _unit((m @ v.unsqueeze(-1)).squeeze(-1))
    return v


def first_principal_component(features: torch.Tensor) -> torch.Tensor:
    """Projection of ``[N, K, *S]`` on its first principal component, ``[N, 1, *S]`` float32.

    Example:
        >>> f = torch.randn(2, 8, 5, 6)
        >>> first_principal_component(f).shape
        torch.Size([2, 1, 5, 6])
    """
    n, k = features.shape[:2]
    spatial = features.shape[2:]
    points = features.reshape(n, k, -1).float()  # [N, K, P]
    centred = points - points.mean(2, keepdim=True)
    gram = centred @ centred.transpose(1, 2)  # [N, K, K]
    v = top_eigenvector(gram).to(centred.dtype)  # [N, K]
    projection = (v.unsqueeze(1) @ centred).squeeze(1)  # [N, P]
    reference = points.mean(1)
    reference = reference - reference.mean(1, keepdim=True)
    sign = torch.where((projection * reference).sum(1, keepdim=True) < 0, -1.0, 1.0)
    return (projection * sign).reshape(n, 1, *spatial)
