"""Sliding-window CAMs for volumes larger than the network's patch.

:func:`sliding_window_cam` runs :func:`monai.inferers.sliding_window_inference` with a
predictor that explains each window, so that everything is stitched with the same
blending as inference (``gaussian`` or ``constant`` importance weights, averaged where
windows overlap). Each window runs **one** forward pass for all its targets
(``classes=[...]`` explains several classes at once).

Two ways to stitch
------------------
*Whole-volume weights* (methods whose channel weights are averages over the layer:
Grad-CAM, Grad-CAM++, XGrad-CAM, EigenCAM, EigenGradCAM; ``cam.global_weights``): each
window returns its target layers' activations ``A`` and gradients ``dy/dA`` at the
layer's resolution, MONAI stitches them like the logits, and the method combines the
stitched ``A`` and ``dy/dA`` once, over the whole volume. Windows no longer get weights
of their own, so the map has no window-aligned tiles: where the network sees the same
features in every window (context within the overlap), the result equals the CAM of the
whole volume. It costs the memory of the stitched tensors, ``(1 + T) * K * |S_layer|``
float32 values per sample on ``device`` (``K`` channels, ``T`` targets): for a 16-channel
layer at half resolution of a 512x512x256 volume, 0.5 GB per tensor; stitch on the CPU
(``device="cpu"``) when the GPU cannot hold them. Windows whose position is not a
multiple of the layer's stride are placed on the nearest voxel of the layer's grid
(MONAI's rule); choose ``roi_size`` and ``overlap`` so that ``roi * (1 - overlap)`` is a
multiple of it for an exact placement.

*Per window* (element-wise methods HiResCAM and LayerCAM, perturbation methods, FullGrad,
attention rollout, and any method with ``aug_smooth``): each window's raw (unnormalised)
map, upsampled to the window, is stitched; the volume is normalised once at the end.

In both, the target of a window is the masked logit sum *within that window* (the voxels
the window's own logits predict as the class, or the part of a user mask that falls in
the window), and each window sees only its local context, as it does for inference.
When the ROI covers the whole volume there is one window and the result equals the plain
CAM.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from volcam.diagnostics import Evidence
from volcam.errors import ArgumentError, TargetError
from volcam.methods.engine import Collector, check, compute, compute_one, nonfinite, zero_rows
from volcam.postprocess import normalize
from volcam.result import CAMResult, LayerContext, MapNote
from volcam.selectors import select
from volcam.targets import SegmentationTarget, TargetSpec, default_target

__all__ = ["SlidingWindowCAM", "sliding_window_cam"]


@dataclass
class SlidingWindowCAM:
    """What :func:`sliding_window_cam` returns; it unpacks as ``heat, output = ...``.

    Attributes:
        heat: ``[B, T, *S]`` float32, the stitched maps (in [0, 1] if the method normalises),
            one per target (``T = 1`` without ``classes``).
        output: ``[B, classes, *S]`` the stitched (selected) model output, as
            :func:`~monai.inferers.sliding_window_inference` gives it.
        notes: one :class:`~volcam.result.MapNote` per (sample, target) whose map is all zero.
        layer_maps: with whole-volume weights, the raw maps ``[B, T, *S_layer]`` of each
            target layer; per window, empty.
        global_weights: whether the weights were computed over the whole volume.
    """

    heat: torch.Tensor
    output: torch.Tensor
    notes: list[MapNote] = field(default_factory=list)
    layer_maps: list[torch.Tensor] = field(default_factory=list)
    global_weights: bool = False

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.heat, self.output))


@dataclass
class _Plan:
    """Per target ``t`` and sample ``b``: the category, the mask kind (None: the region each
    window predicts; ``"all"``; ``"tensor"``: a user mask, carried as input channel
    ``channels[t]``) and the activation."""

    categories: list[list[int]]
    kinds: list[list[str | None]]
    activations: list[str]
    channels: list[int | None]
    masks: list[torch.Tensor]


def _per_sample(targets: TargetSpec, batch: int) -> list[SegmentationTarget | None]:
    items = list(targets) if isinstance(targets, (list, tuple)) else [targets] * batch
    if len(items) != batch:
        raise TargetError(f"`targets` as a list must have one entry per sample ({batch}), not {len(items)}")
    out: list[SegmentationTarget | None] = []
    for t in items:
        if t is None or isinstance(t, SegmentationTarget):
            out.append(t)
        elif isinstance(t, int) and not isinstance(t, bool):
            out.append(SegmentationTarget(t))
        else:
            raise TargetError(
                "`targets` of a sliding-window CAM must be None, an int class or a SegmentationTarget "
                f"(or a list of them, one per sample), not {t!r}"
            )
    return out


def _mask_channel(mask: Any, x: torch.Tensor, b: int) -> torch.Tensor:
    """A user mask of sample ``b`` (``[*S]``, ``[B, *S]`` or ``[B, 1, *S]``) as ``[*S]`` on x's device."""
    m = torch.as_tensor(mask, device=x.device).float()
    spatial = tuple(x.shape[2:])
    n = len(spatial)
    if m.ndim == n + 1:
        m = m[b if m.shape[0] > 1 else 0]
    elif m.ndim == n + 2:
        m = m[b if m.shape[0] > 1 else 0, 0] if m.shape[1] == 1 else m
    if tuple(m.shape) != spatial:
        raise TargetError(
            f"a sliding-window target mask must have the input's spatial shape {list(spatial)} "
            f"as [*S], [B, *S] or [B, 1, *S], not {list(torch.as_tensor(mask).shape)}"
        )
    return m


def _plain(t: Any) -> torch.Tensor:
    """A MONAI MetaTensor as a plain tensor (no copy)."""
    plain: torch.Tensor = t.as_tensor() if hasattr(t, "as_tensor") else t
    return plain


def _plan(per_target: list[list[SegmentationTarget]], x: torch.Tensor) -> _Plan:
    plan = _Plan([], [], [], [], [])
    for targets in per_target:
        kinds: list[str | None] = [
            "tensor" if t.mask is not None and not isinstance(t.mask, str) else t.mask for t in targets
        ]
        plan.categories.append([t.category for t in targets])
        plan.kinds.append(kinds)
        plan.activations.append(targets[0].activation)
        if "tensor" in kinds:
            plan.channels.append(x.shape[1] + len(plan.masks))
            plan.masks.append(
                torch.stack(
                    [
                        _mask_channel(t.mask, x, b) if k == "tensor" else torch.zeros(x.shape[2:], device=x.device)
                        for b, (t, k) in enumerate(zip(targets, kinds))
                    ]
                )
            )
        else:
            plan.channels.append(None)
    return plan


def _targets(
    cam: Any,
    x: torch.Tensor,
    targets: TargetSpec,
    classes: Sequence[int] | None,
    masks: Any,
    activation: str,
    sw: dict[str, Any],
) -> list[list[SegmentationTarget]]:
    """``[T][B]`` the target of each sample, for each of the ``T`` targets."""
    from monai.inferers import sliding_window_inference

    batch = x.shape[0]
    if classes is not None:
        if targets is not None:
            raise ArgumentError("give `targets` or `classes`, not both", name="classes")
        if isinstance(classes, int) or not isinstance(classes, Sequence) or not len(classes):
            raise ArgumentError(f"`classes` must be a non-empty list of class indices, not {classes!r}", name="classes")
        if isinstance(masks, dict):
            return [[SegmentationTarget(c, mask=masks.get(c), activation=activation)] * batch for c in classes]
        return [[SegmentationTarget(c, mask=masks, activation=activation)] * batch for c in classes]
    per_sample = _per_sample(targets, batch)
    if any(t is None for t in per_sample):
        # the default target needs the whole volume's prediction: one inference pass first
        def infer(window: torch.Tensor) -> torch.Tensor:
            return select(cam.model(window), cam.model_output, what="model output")

        with torch.no_grad():
            pred = _plain(sliding_window_inference(x, predictor=infer, **sw))
        cats = default_target(pred).categories.tolist()
        per_sample = [SegmentationTarget(int(cats[b])) if t is None else t for b, t in enumerate(per_sample)]
    return [[t for t in per_sample if t is not None]]


def sliding_window_cam(
    cam: Any,
    x: torch.Tensor,
    roi_size: Sequence[int] | int,
    sw_batch_size: int = 1,
    overlap: Sequence[float] | float = 0.25,
    mode: str = "gaussian",
    targets: TargetSpec = None,
    *,
    classes: Sequence[int] | None = None,
    masks: Any = None,
    activation: str = "softmax",
    global_weights: bool | None = None,
    class_chunk: int | None = None,
    sigma_scale: Sequence[float] | float = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> SlidingWindowCAM:
    """The CAM of a volume larger than the network's patch, window by window.

    Args:
        cam: a CAM method instance (:class:`volcam.GradCAM`, ...); its settings are kept.
        x: input ``[B, C, *S]``.
        roi_size: window size (an int for every axis; ``-1`` or None takes the image size).
        sw_batch_size: windows per forward pass.
        overlap: overlap of neighbouring windows, in [0, 1).
        mode: ``"gaussian"`` or ``"constant"`` blending (as in inference).
        targets: what to explain: an int class, a :class:`volcam.SegmentationTarget`
            (mask None = the region each window predicts as the class, ``"all"``, or a
            tensor ``[*S]``/``[B, *S]``/``[B, 1, *S]`` at the full volume's size, cut into
            windows with the input), a list of those (one per sample), or None: per sample
            the foreground class with the largest predicted volume, found by a first
            sliding-window inference pass without gradients.
        classes: several classes at once instead of ``targets`` (each window's forward
            pass serves all of them): the heat is ``[B, len(classes), *S]``.
        masks, activation: with ``classes``, as for :meth:`volcam.BaseCAM.explain_classes`.
        global_weights: compute the method's weights over the whole volume (see the module
            documentation). None: when the method's weights are global averages
            (``cam.global_weights``) and ``aug_smooth`` is off.
        class_chunk: targets per backward pass in a window (see ``explain_targets``).
        sigma_scale, padding_mode, cval, sw_device, device, progress: as for
            :func:`monai.inferers.sliding_window_inference`.

    Returns:
        :class:`SlidingWindowCAM` ``(heat [B, T, *S], output [B, classes, *S])`` on
        ``device`` (default: ``x``'s device), with a note for each empty map.

    Example:
        >>> res = sliding_window_cam(volcam.GradCAM(net, "model.1.submodule.2"), ct, 96,
        ...                          classes=[1, 2, 3], overlap=0.25)       # doctest: +SKIP
        >>> res.heat.shape    # [1, 3, *ct.shape[2:]]                         # doctest: +SKIP
    """
    from monai.inferers import sliding_window_inference

    batch, channels = x.shape[0], x.shape[1]
    sw: dict[str, Any] = dict(
        roi_size=roi_size,
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        mode=mode,
        sigma_scale=sigma_scale,
        padding_mode=padding_mode,
        cval=cval,
        sw_device=sw_device,
        device=device,
        progress=progress,
    )
    supported = not cam.input_gradient and not cam.attention and (cam.needs_gradients or cam.class_agnostic)
    whole = (cam.global_weights and not cam.aug_smooth) if global_weights is None else bool(global_weights)
    if whole and not supported:
        raise ArgumentError(
            f"`global_weights` must be False for {type(cam).__name__}, not True: it needs the whole volume's "
            "forward passes (perturbations, input gradients or attention), which a window cannot give",
            name="global_weights",
        )
    if whole and cam.aug_smooth:
        raise ArgumentError(
            "`global_weights` must be False with aug_smooth (the views are averaged per window), not True",
            name="global_weights",
        )
    per_target = _targets(cam, x, targets, classes, masks, activation, sw)
    n_targets = len(per_target)
    plan = _plan(per_target, x)
    inputs = x
    if plan.masks:
        # user masks travel as extra input channels (shifted by cval so that constant padding
        # gives a zero mask) and are split off inside the predictor
        inputs = torch.cat([x, torch.stack(plan.masks, 1).to(x.dtype) + cval], dim=1)
    window_cam = copy.copy(cam)
    window_cam.normalize = False
    window_cam.upsample = True
    nonempty = torch.zeros(batch, n_targets, dtype=torch.long, device=x.device)

    def predictor(window: torch.Tensor, coords: Any) -> tuple[torch.Tensor, ...]:
        rows = [int(c[0].start) for c in coords]
        win_x = window[:, :channels]
        specs: list[TargetSpec] = []
        for t in range(n_targets):
            row_targets = []
            for i, b in enumerate(rows):
                kind, channel = plan.kinds[t][b], plan.channels[t]
                mask = window[i : i + 1, channel] - cval if kind == "tensor" and channel is not None else kind
                row_targets.append(SegmentationTarget(plan.categories[t][b], mask=mask, activation=plan.activations[t]))
            specs.append(row_targets)
        if whole:
            done = compute(
                [window_cam], win_x, specs, eigen_smooth=cam.eigen_smooth, class_chunk=class_chunk, keep_tensors=True
            )[0]
            evidence = done.evidence
        else:
            result, evidence = compute_one(
                window_cam, win_x, specs, aug_smooth=None, eigen_smooth=None, class_chunk=class_chunk
            )
        index = torch.tensor(rows, device=nonempty.device)
        nonempty.index_add_(0, index, (~evidence.empty_target).long().to(nonempty.device))
        if not whole:
            return result.output, result.heat
        stitched = [done.result.output]
        n = win_x.shape[0]
        grads: list[torch.Tensor | None] = list(done.grads) or [None] * len(done.activations)
        for a, g in zip(done.activations, grads):
            stitched.append(a)
            if g is not None:  # [T * n, K, *S] -> [n, T * K, *S] for MONAI
                stitched.append(g.reshape(n_targets, n, *g.shape[1:]).transpose(0, 1).flatten(1, 2))
        return tuple(stitched)

    stitched = sliding_window_inference(inputs, predictor=predictor, with_coord=True, **sw)
    outputs = [_plain(o) for o in (stitched if isinstance(stitched, (tuple, list)) else [stitched])]
    output = outputs[0]
    base = {
        "empty_target": (nonempty == 0).to(output.device),
        "nonfinite_input": nonfinite(x),
        "nonfinite_output": nonfinite(output),
    }
    if whole:
        res, evidence = _combine_whole(cam, x, output, outputs[1:], n_targets, base)
    else:
        heat = outputs[1].float()
        evidence = Evidence(
            layers=["(windows)"],
            grad_zero=[None],
            weights_nonpos=[None],
            raw_max=[heat.flatten(2).amax(2)],
            **base,
        )
        res = SlidingWindowCAM(heat=normalize(heat) if cam.normalize else heat, output=output)
    holder = CAMResult(heat=res.heat, output=res.output)
    check(holder, evidence, x, [t[0] for t in per_target], stacklevel=2)
    res.notes = holder.notes
    return res


def _combine_whole(
    cam: Any,
    x: torch.Tensor,
    output: torch.Tensor,
    stitched: list[torch.Tensor],
    n_targets: int,
    base: dict[str, torch.Tensor],
) -> tuple[SlidingWindowCAM, Evidence]:
    """The method applied once to the stitched activations and gradients of the whole volume."""
    batch = x.shape[0]
    step = 2 if cam.needs_gradients else 1
    activations: list[torch.Tensor | None] = []
    grads: list[torch.Tensor | None] = []
    for i in range(0, len(stitched), step):
        a = stitched[i].to(x.device)
        activations.append(a)
        if cam.needs_gradients:  # [B, T * K, *S] -> [T * B, K, *S]
            g = stitched[i + 1].to(x.device)
            g = g.reshape(batch, n_targets, a.shape[1], *g.shape[2:]).transpose(0, 1).flatten(0, 1)
            grads.append(g)
        else:
            grads.append(None)
    volume_cam = copy.copy(cam)
    volume_cam.reshape = None  # the stitched tensors are [B, K, *S] already

    def no_forward(_: torch.Tensor) -> torch.Tensor:
        raise ArgumentError("a whole-volume combination has no forward pass", name="global_weights")

    ctx = LayerContext(
        name="",
        x=x,
        forward=no_forward,
        score=lambda out, samples: no_forward(out),
        scores=torch.zeros(batch, n_targets, device=x.device),
        eigen_smooth=cam.eigen_smooth,
        batch=batch,
        num_targets=1 if cam.class_agnostic else n_targets,
        extra={"calls": {}, "call_order": [n for n, _ in cam.layers], "input_grad": None},
    )
    collector = Collector(volume_cam, batch, n_targets)
    collector.add(activations, grads, ctx, n_targets, zero_rows(grads))
    result, evidence = collector.finish(x, output, None, base)
    res = SlidingWindowCAM(heat=result.heat, output=output, layer_maps=result.layer_maps, global_weights=True)
    return res, evidence
