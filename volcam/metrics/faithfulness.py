"""Faithfulness: does the model's score depend on the voxels the map calls important?

Deletion and insertion curves (Petsiuk et al. 2018, "RISE"), in any number of spatial axes:

- **deletion**: starting from the image, replace the hottest voxels of the map with a
  baseline, a growing fraction at each step, and record the target score. A faithful map
  makes the score fall fast: a low area under the curve is good.
- **insertion**: starting from the baseline, reveal the hottest voxels of the image. A
  faithful map makes the score rise fast: a high area is good.

The score is the one the CAM explains. For a segmentation class it is the summed logits
of the class over the region the model predicted on the *unperturbed* image (the mask is
frozen, so removing voxels cannot move the goalposts). Curves are reported raw and
rescaled between the score of the baseline image (0) and the score of the image (1):

    relative = (score - score(baseline)) / (score(image) - score(baseline))

so deletion runs from 1 to 0 and insertion from 0 to 1 whatever the offset of the logits
(a sum of logits can be negative, and a ratio to the image's score alone would not be
comparable between images or classes). Areas use the trapezoid rule over the fraction
of voxels, from 0 to 1: a map with no information (random order) sits near the middle,
a perfect map near 0 (deletion) or 1 (insertion). Where the baseline scores as much as
the image, the model ignores what is removed and ``relative`` is NaN; where it keeps more
than half of the image's score, a warning says that the baseline is too weak (the
rescaling then divides by a small difference).

All steps of all samples go through the model in batches of ``batch_size`` images under
``torch.no_grad()``, on the input's device. Baselines: a Gaussian blur of the image
(MONAI's separable Gaussian kernel with edge replication), the image's minimum (the
background of most scans) or mean, any constant, or a tensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from volcam.errors import ArgumentError, ShapeError
from volcam.metrics._common import check_map, spatial_dims
from volcam.selectors import select
from volcam.targets import TargetSpec, resolve_targets

__all__ = [
    "Curve",
    "blur",
    "make_baseline",
    "voxel_order",
    "deletion_curve",
    "insertion_curve",
    "faithfulness",
    "trapezoid_auc",
]


@dataclass
class Curve:
    """A deletion or insertion curve for a batch.

    Attributes:
        kind: ``"deletion"`` or ``"insertion"``.
        fractions: ``[T + 1]`` fraction of voxels removed (deletion) or revealed (insertion).
        scores: ``[B, T + 1]`` target score at each step.
        reference: ``[B]`` target score of the unperturbed image.
        baseline_score: ``[B]`` target score of the baseline image (every voxel replaced).
        relative: ``[B, T + 1]`` ``(scores - baseline_score) / (reference - baseline_score)``.
        auc: ``[B]`` area under ``relative`` over ``fractions`` (trapezoid rule).
    """

    kind: str
    fractions: torch.Tensor
    scores: torch.Tensor
    reference: torch.Tensor
    baseline_score: torch.Tensor
    relative: torch.Tensor
    auc: torch.Tensor


def trapezoid_auc(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Area under ``y`` ``[B, T]`` over ``x`` ``[T]`` by the trapezoid rule, ``[B]``."""
    return torch.trapezoid(y, x.to(y.dtype), dim=-1)


def blur(x: torch.Tensor, sigma: float | tuple[float, ...]) -> torch.Tensor:
    """Gaussian blur of ``x`` ``[B, C, *S]`` along every spatial axis, edges replicated.

    Uses MONAI's separable filtering with an erf-sampled Gaussian kernel (truncated at 4
    sigma); ``sigma`` in voxels, one value or one per spatial axis.
    """
    from monai.networks.layers import gaussian_1d, separable_filtering

    nd = x.ndim - 2
    sigmas = (sigma,) * nd if isinstance(sigma, (int, float)) else tuple(sigma)
    if len(sigmas) != nd or any(s < 0 for s in sigmas):
        raise ArgumentError(f"`sigma` must be one non-negative value or {nd} of them, not {sigma!r}")
    kernels = [
        gaussian_1d(torch.tensor(float(s), device=x.device), truncated=4.0, normalize=True).to(x.dtype)
        if s > 0
        else torch.ones(1, device=x.device, dtype=x.dtype)
        for s in sigmas
    ]
    return separable_filtering(x, kernels, mode="replicate")


def make_baseline(x: torch.Tensor, baseline="blur", sigma: float = 5.0) -> torch.Tensor:
    """The image that replaces removed voxels, ``[B, C, *S]`` (or broadcastable to it).

    Args:
        x: ``[B, C, *S]`` image batch.
        baseline: ``"blur"`` (Gaussian blur with ``sigma`` voxels), ``"min"`` (each
            sample's and channel's minimum: the background of most scans), ``"mean"``, a
            number, or a tensor broadcastable to ``x``.
        sigma: blur width in voxels.
    """
    dims = spatial_dims(x)
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.to(device=x.device, dtype=x.dtype), x.shape)
        except RuntimeError as err:
            raise ShapeError(
                f"`baseline` must broadcast to the image shape {tuple(x.shape)}, not {tuple(baseline.shape)}",
                expected=str(tuple(x.shape)),
                actual_shape=tuple(baseline.shape),
            ) from err
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if baseline == "blur":
        return blur(x, sigma)
    if baseline == "min":
        return x.amin(dim=dims, keepdim=True).expand_as(x)
    if baseline == "mean":
        return x.mean(dim=dims, keepdim=True).expand_as(x)
    raise ArgumentError(f"`baseline` must be 'blur', 'min', 'mean', a number or a tensor, not {baseline!r}")


def voxel_order(heat: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rank of every voxel by heat, hottest first: ``[B, 1, *S]`` int64, 0 = hottest.

    Ties (flat regions, the zeros after a ReLU, a constant map) are broken in a random
    order drawn from ``generator``, not in raster order, which would favour one side of
    the image.
    """
    b = heat.shape[0]
    flat = heat.reshape(b, -1)
    n = flat.shape[1]
    device = heat.device if generator is None else generator.device
    noise = torch.rand(flat.shape, generator=generator, device=device)
    shuffle = torch.argsort(noise.to(heat.device), dim=1)
    by_heat = torch.argsort(torch.gather(flat, 1, shuffle), dim=1, descending=True, stable=True)
    order = torch.gather(shuffle, 1, by_heat)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=heat.device).expand(b, -1))
    return rank.reshape(heat.shape)


def resolve_score(target: TargetSpec, reference_output: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``output [B, K, *S] -> [B]`` for ``target``, bound to ``reference_output``.

    Uses the engine's targets (:func:`volcam.targets.resolve_targets`): ``None`` (per
    sample, the foreground class with the largest predicted volume), an int class,
    :class:`~volcam.SegmentationTarget`, :class:`~volcam.ClassifierTarget`, any callable
    ``output -> [B]``, or a list of those, one per sample. Built-in targets are bound to
    the output of the unperturbed image, so their predicted regions are frozen there.
    """
    scorer = resolve_targets(target, reference_output)
    return lambda output: scorer(output)


def _mode_sensitive(model: torch.nn.Module) -> bool:
    """Whether the model holds layers that act differently in training mode."""
    for m in model.modules():
        if not m.training:
            continue
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats:
            return True
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
    return False


def _check_inputs(x, heat, steps, batch_size):
    check_map(heat)
    if (
        not isinstance(x, torch.Tensor)
        or x.ndim != heat.ndim
        or x.shape[0] != heat.shape[0]
        or x.shape[2:] != heat.shape[2:]
    ):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(
            f"`x` must have shape [B, C, *S] with the batch and spatial size of `heat` {tuple(heat.shape)}, "
            f"not {shape}",
            expected=f"[{heat.shape[0]}, C, {', '.join(map(str, heat.shape[2:]))}]",
            actual_shape=shape if isinstance(shape, tuple) else None,
        )
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ArgumentError(f"`steps` must be a positive int, not {steps!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ArgumentError(f"`batch_size` must be a positive int, not {batch_size!r}")


def _run_curves(
    model, x, heat, target, kinds, *, steps, baseline, sigma, batch_size, model_output, generator
) -> dict[str, Curve]:
    _check_inputs(x, heat, steps, batch_size)
    if model.training and _mode_sensitive(model):
        warnings.warn(
            "the model is in training mode; deletion and insertion curves are meant for eval mode "
            "(batch norm and dropout act differently, and batch norm updates its running statistics)",
            stacklevel=3,
        )
    b = x.shape[0]
    n = heat[0].numel()
    fractions = torch.linspace(0, 1, steps + 1, device=x.device)
    counts = torch.round(fractions.double() * n).long()
    order = voxel_order(heat.detach(), generator)
    with torch.no_grad():
        base = make_baseline(x, baseline, sigma)
        reference_output = select(model(x), model_output, what="model output")
        score = resolve_score(target, reference_output)
        reference = score(reference_output).float()
        curves = {}
        for kind in kinds:
            # the unperturbed image is step 0 of deletion and the last step of insertion: its
            # score is the reference, so only the other steps run, step-major (t, sample),
            # scored once a step's B outputs are in
            todo = list(range(1, steps + 1)) if kind == "deletion" else list(range(steps))
            scores = torch.empty(steps + 1, b, device=x.device)
            scores[0 if kind == "deletion" else steps] = reference
            jobs = [(t, i) for t in todo for i in range(b)]
            pending: list[torch.Tensor] = []
            done = 0
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start : start + batch_size]
                t_idx = torch.tensor([t for t, _ in chunk], device=x.device)
                s_idx = torch.tensor([i for _, i in chunk], device=x.device)
                selected = order[s_idx] < counts[t_idx].reshape(-1, *([1] * (x.ndim - 1)))
                if kind == "deletion":
                    images = torch.where(selected, base[s_idx], x[s_idx])
                else:
                    images = torch.where(selected, x[s_idx], base[s_idx])
                pending.extend(select(model(images), model_output, what="model output").unbind(0))
                while len(pending) >= b:
                    scores[todo[done]] = score(torch.stack(pending[:b])).float()
                    pending = pending[b:]
                    done += 1
            scores = scores.T.contiguous()
            full = scores[:, -1] if kind == "deletion" else scores[:, 0]  # every voxel replaced
            span = reference - full
            relative = (scores - full[:, None]) / torch.where(span != 0, span, torch.nan)[:, None]
            curves[kind] = Curve(kind, fractions, scores, reference, full, relative, trapezoid_auc(relative, fractions))
    _warn_weak_baseline(reference, full)
    return curves


def _warn_weak_baseline(reference: torch.Tensor, full: torch.Tensor) -> None:
    """Warn when the baseline image keeps more than half of the image's score."""
    removed = (reference - full) / reference.abs().clamp_min(1e-12)  # the fraction of the score it removes
    weak = removed < 0.5
    if bool(weak.any()):
        said = []
        for b, r in zip(torch.nonzero(weak).flatten().tolist(), removed[weak].tolist()):
            what = f"raises the score by {-r:.0%}" if r < 0 else f"removes only {r:.0%} of the score"
            said.append(f"sample {b}: {what}")
        warnings.warn(
            f"the baseline image is weak ({'; '.join(said)}): the curves are rescaled by a small difference "
            "and can leave [0, 1]. A stronger baseline (a larger `sigma`, or 'min') helps.",
            stacklevel=4,
        )


def deletion_curve(
    model: torch.nn.Module,
    x: torch.Tensor,
    heat: torch.Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 20,
    baseline="blur",
    sigma: float = 5.0,
    batch_size: int = 8,
    model_output=None,
    generator: torch.Generator | None = None,
) -> Curve:
    """Deletion curve: remove the hottest voxels first, replacing them with ``baseline``.

    Args:
        model: the network (used as it is; put it in eval mode).
        x: ``[B, C, *S]`` image batch on the model's device.
        heat: ``[B, 1, *S]`` heat map of the same spatial size (all channels of a voxel go
            together).
        target: the score to follow, see :func:`resolve_score`; ints freeze the predicted
            region of the class on the unperturbed image.
        steps: number of steps; step ``t`` removes ``round(t / steps * N)`` voxels.
        baseline, sigma: see :func:`make_baseline`.
        batch_size: images per forward pass.
        model_output: selector (int, key, tuple path or callable) of the tensor in a
            tuple/dict model output.
        generator: random generator breaking ties in the map (CPU generator or one on
            the input's device).

    Returns:
        :class:`Curve` (low ``auc`` = faithful).
    """
    return _run_curves(
        model,
        x,
        heat,
        target,
        ("deletion",),
        steps=steps,
        baseline=baseline,
        sigma=sigma,
        batch_size=batch_size,
        model_output=model_output,
        generator=generator,
    )["deletion"]


def insertion_curve(
    model: torch.nn.Module,
    x: torch.Tensor,
    heat: torch.Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 20,
    baseline="blur",
    sigma: float = 5.0,
    batch_size: int = 8,
    model_output=None,
    generator: torch.Generator | None = None,
) -> Curve:
    """Insertion curve: reveal the hottest voxels first, starting from ``baseline``.

    Arguments as for :func:`deletion_curve`. Returns a :class:`Curve` (high ``auc`` = faithful).
    """
    return _run_curves(
        model,
        x,
        heat,
        target,
        ("insertion",),
        steps=steps,
        baseline=baseline,
        sigma=sigma,
        batch_size=batch_size,
        model_output=model_output,
        generator=generator,
    )["insertion"]


def faithfulness(
    model: torch.nn.Module,
    x: torch.Tensor,
    heat: torch.Tensor,
    target: TargetSpec = None,
    *,
    steps: int = 20,
    baseline="blur",
    sigma: float = 5.0,
    batch_size: int = 8,
    model_output=None,
    generator: torch.Generator | None = None,
) -> dict[str, Curve]:
    """Both curves with one reference forward pass: ``{"deletion": Curve, "insertion": Curve}``.

    Arguments as for :func:`deletion_curve`.
    """
    return _run_curves(
        model,
        x,
        heat,
        target,
        ("deletion", "insertion"),
        steps=steps,
        baseline=baseline,
        sigma=sigma,
        batch_size=batch_size,
        model_output=model_output,
        generator=generator,
    )
