"""Sliding-window CAMs for volumes larger than the network's patch.

:func:`sliding_window_cam` runs :func:`monai.inferers.sliding_window_inference` with a
predictor that explains each window: it returns the window's logits *and* its raw
(unnormalised) CAM, so both are stitched with the same blending as inference (``gaussian``
or ``constant`` importance weights, averaged where windows overlap). The stitched map is
normalised once, over the whole volume, at the end.

The approximation
-----------------
A sliding-window CAM is not the CAM of the network applied to the whole volume:

- the target of each window is the masked logit sum *within that window* (voxels of the
  window predicted as the class by that window's own logits, or the part of a user mask
  that falls in the window), so the gradients, and for Grad-CAM-style methods the channel
  weights (a mean over the window), are computed per window;
- each window sees only its local context, as it does for inference;
- a window whose part of the target is empty contributes a zero map, which the blending
  averages with the maps of the windows that do contain the target.

So the result depends on ``roi_size``, ``overlap`` and ``mode``. When the ROI covers the
whole volume there is one window and the result equals the plain CAM.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from volcam.errors import TargetError
from volcam.postprocess import normalize
from volcam.targets import SegmentationTarget

__all__ = ["SlidingWindowCAM", "sliding_window_cam"]


class SlidingWindowCAM(NamedTuple):
    """What :func:`sliding_window_cam` returns.

    Attributes:
        heat: ``[B, 1, *S]`` float32, the stitched map (in [0, 1] if the method normalises).
        output: ``[B, classes, *S]`` the stitched (selected) model output, as
            :func:`~monai.inferers.sliding_window_inference` gives it.
    """

    heat: torch.Tensor
    output: torch.Tensor


def _per_sample(targets, batch: int) -> list[SegmentationTarget | None]:
    items = list(targets) if isinstance(targets, (list, tuple)) else [targets] * batch
    if len(items) != batch:
        raise TargetError(f"`targets` as a list must have one entry per sample ({batch}), not {len(items)}")
    out = []
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
    """A user mask of sample ``b`` (``[*S]``, ``[B, *S]`` or ``[B, 1, *S]``) as ``[1, *S]`` on x's device."""
    m = torch.as_tensor(mask, device=x.device).float()
    spatial = tuple(x.shape[2:])
    n = len(spatial)
    if m.ndim == n:
        m = m[None]
    elif m.ndim == n + 1:
        m = m[b if m.shape[0] > 1 else 0][None]
    elif m.ndim == n + 2:
        m = m[b if m.shape[0] > 1 else 0]
    if tuple(m.shape) != (1, *spatial):
        raise TargetError(
            f"a sliding-window target mask must have the input's spatial shape {list(spatial)} "
            f"as [*S], [B, *S] or [B, 1, *S], not {list(torch.as_tensor(mask).shape)}"
        )
    return m


def _plain(t) -> torch.Tensor:
    """A MONAI MetaTensor as a plain tensor (no copy)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def sliding_window_cam(
    cam,
    x: torch.Tensor,
    roi_size: Sequence[int] | int,
    sw_batch_size: int = 1,
    overlap: Sequence[float] | float = 0.25,
    mode: str = "gaussian",
    targets=None,
    *,
    sigma_scale: Sequence[float] | float = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> SlidingWindowCAM:
    """The CAM of a volume larger than the network's patch, window by window.

    Args:
        cam: a CAM method instance (:class:`volcam.GradCAM`, ...). Each window is explained
            with a copy of it that does not normalise; its other settings are kept.
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
        sigma_scale, padding_mode, cval, sw_device, device, progress: as for
            :func:`monai.inferers.sliding_window_inference`.

    Returns:
        :class:`SlidingWindowCAM` ``(heat [B, 1, *S], output [B, classes, *S])`` on
        ``device`` (default: ``x``'s device).

    See the module documentation for the approximation this makes.
    """
    from monai.inferers import sliding_window_inference

    batch, channels = x.shape[0], x.shape[1]
    window_cam = copy.copy(cam)
    window_cam.normalize = False
    window_cam.upsample = True
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

    per_sample = _per_sample(targets, batch)
    if any(t is None for t in per_sample):
        # the default target needs the whole volume's prediction: one inference pass first
        from volcam.selectors import select
        from volcam.targets import default_target

        def infer(window: torch.Tensor) -> torch.Tensor:
            return select(cam.model(window), cam.model_output, what="model output")

        with torch.no_grad():
            pred = sliding_window_inference(x, predictor=infer, **sw)
        cats = default_target(_plain(pred)).categories.tolist()
        per_sample = [SegmentationTarget(int(cats[b])) if t is None else t for b, t in enumerate(per_sample)]

    chosen = [t for t in per_sample if t is not None]
    categories = [t.category for t in chosen]
    # per sample: None (the region each window predicts), "all", or "tensor" (a user mask)
    kinds = ["tensor" if t.mask is not None and not isinstance(t.mask, str) else t.mask for t in chosen]
    activations = [t.activation for t in chosen]
    inputs = x
    if any(k == "tensor" for k in kinds):
        # user masks travel as one extra input channel (shifted by cval so that constant
        # padding gives a zero mask) and are split off inside the predictor
        chans = [
            _mask_channel(t.mask, x, b) if k == "tensor" else torch.zeros((1, *x.shape[2:]), device=x.device)
            for b, (t, k) in enumerate(zip(chosen, kinds))
        ]
        inputs = torch.cat([x, torch.stack(chans).to(x.dtype) + cval], dim=1)

    def predictor(window: torch.Tensor, coords) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [int(c[0].start) for c in coords]
        win_x = window[:, :channels]
        win_targets = []
        for i, b in enumerate(rows):
            mask: torch.Tensor | str | None
            if kinds[b] == "tensor":
                mask = window[i : i + 1, channels] - cval
            else:
                mask = kinds[b]  # None (predicted region) or "all"
            win_targets.append(SegmentationTarget(categories[b], mask=mask, activation=activations[b]))
        with warnings.catch_warnings():
            # windows that hold no part of the target give zero maps by design
            warnings.filterwarnings("ignore", message="the target mask of sample", category=RuntimeWarning)
            res = window_cam.explain(win_x, targets=win_targets)
        return res.output, res.heat

    output, heat = sliding_window_inference(inputs, predictor=predictor, with_coord=True, **sw)
    output, heat = _plain(output), _plain(heat).float()
    if not bool((heat > 0).any()):
        warnings.warn(
            "the sliding-window CAM is zero everywhere: the target mask is empty in every window, "
            "or no window has positive evidence at the target layer",
            RuntimeWarning,
            stacklevel=2,
        )
    if cam.normalize:
        heat = normalize(heat)
    return SlidingWindowCAM(heat=heat, output=output)
