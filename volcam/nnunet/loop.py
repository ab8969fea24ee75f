"""The CAM of a whole preprocessed case, computed the way nnU-Net predicts it.

nnU-Net's prediction (``nnUNetPredictor.predict_logits_from_preprocessed_data``) runs under
``torch.inference_mode()``, so no gradient can flow through it. This loop reproduces it step for
step with CAM forwards in place of its forwards:

- the volume is padded to at least the patch size (``pad_nd_image``, zeros) and cut into the
  windows nnU-Net uses (``tile_step_size``; 2D configurations slide over every slice);
- each window is run as nnU-Net runs it: once as it is, then mirrored along every combination of
  the allowed axes, each output flipped back and added in the same order, the sum divided by the
  number of views (one view per forward, as nnU-Net: its logits are then the same bit for bit);
- window logits are weighted with nnU-Net's Gaussian importance map (``compute_gaussian``, half
  precision) and accumulated in half precision with the same operations, then divided by the
  accumulated weights; folds are averaged the same way;
- deep supervision is off (the network is built with ``enable_deep_supervision=False``), so the
  explained output is the full-resolution head.

The heat of a class follows the logits: in each view of each window, the CAM of the class (raw:
ReLU'd, upsampled to the patch, not normalised) is flipped back, averaged over the views,
weighted with the same Gaussian, stitched and divided by the same accumulated weights, then
averaged over folds. It is normalised once, later, on the scan's grid.

What a view explains is the summed logit of the class over its target region in that window:
by default the voxels the un-mirrored view of the window predicts as the class (argmax for label
models, logit > 0 for region-based models), carried into the mirrored views by the same flip,
so every view explains the same voxels; or the part of a given mask that falls in the window.
The plain view is explained first for one class; its forward also gives the predicted regions of
the other classes. Classes whose region is empty in a window are not explained there (zero heat);
a view with no class to explain still runs a plain forward for its logits.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import cast

import torch

from volcam.targets import BoundTarget, SegmentationTarget

__all__ = ["LoopOutput", "mirror_views", "explain_volume"]


@dataclass
class LoopOutput:
    """What :func:`explain_volume` returns, on the CPU and on the preprocessed grid.

    Attributes:
        logits: ``[heads, *S]`` float16, what ``nnUNetPredictor.predict_logits_from_preprocessed_data``
            returns for the same data, folds, mirroring and step size.
        heat: ``[K, *S]`` float32, the raw stitched heat of each explained class.
        windows: ``[K]`` how many windows (per fold) had a non-empty target region per class.
    """

    logits: torch.Tensor
    heat: torch.Tensor
    windows: list[int]


class _RowTarget(SegmentationTarget):
    """The target of one batch of views: per row an output channel and a region ``[N, *S]``."""

    def __init__(self, channels: list[int], masks: torch.Tensor):
        super().__init__(0)
        self.channels = channels
        self.masks = masks

    def __repr__(self) -> str:
        return f"_RowTarget(channels={self.channels})"

    def bind(self, output: torch.Tensor) -> BoundTarget:
        cats = torch.tensor(self.channels, dtype=torch.long, device=output.device)
        return BoundTarget(cats, self.masks.to(device=output.device, dtype=torch.float32))


def mirror_views(mirror_axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """The views nnU-Net predicts, as tensor dims to flip of ``[B, C, *S]``: first the plain one,
    then every combination of the mirror axes (spatial, 0-based), in nnU-Net's order."""
    if mirror_axes is None:
        return [()]
    axes = [int(m) + 2 for m in mirror_axes]
    return [()] + [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]


def _flip(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return torch.flip(t, dims) if dims else t


def _predicted_masks(out: torch.Tensor, channels: list[int], activation: str) -> torch.Tensor:
    """``[K, *S]`` regions of ``out`` (``[heads, *S]``) predicted as each channel."""
    if activation == "sigmoid":
        return torch.stack([out[c] > 0 for c in channels]).float()
    pred = out.argmax(0)
    return torch.stack([pred == c for c in channels]).float()


class _PredictedTarget(SegmentationTarget):
    """The target of the plain view of a window for the first class: its region is what that
    view predicts; binding also keeps the predicted regions of every class (:attr:`masks`), so
    that the other classes and the mirrored views explain the same voxels without another forward."""

    def __init__(self, channels: list[int], activation: str):
        super().__init__(0)
        self.channels = channels
        self.activation = activation
        self.masks: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"_PredictedTarget(channels={self.channels})"

    def bind(self, output: torch.Tensor) -> BoundTarget:
        with torch.no_grad():
            self.masks = _predicted_masks(output[0].detach(), self.channels, self.activation)
        cats = torch.tensor(self.channels[:1], dtype=torch.long, device=output.device)
        return BoundTarget(cats, self.masks[:1])


def _explain_window(
    cam,
    window: torch.Tensor,
    views: list[tuple[int, ...]],
    channels: list[int],
    activation: str,
    masks: torch.Tensor | None,
    batch_size: int,
    counts: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prediction [1, heads, *p], heat [K, *p])`` of one window ``[1, C, *p]``."""
    outputs: dict[int, torch.Tensor] = {}
    heat = torch.zeros((len(channels), *window.shape[2:]), dtype=torch.float32, device=window.device)
    done: set[tuple[int, int]] = set()
    if masks is None:  # the target regions: what the plain view predicts, found by the first CAM forward
        first = _PredictedTarget(channels, activation)
        res = cam.explain(window, targets=first)
        outputs[0] = res.output
        masks = cast(torch.Tensor, first.masks)  # set when the target was bound
        heat[0] += res.heat[0, 0].float()
        done.add((0, 0))
    active = [k for k in range(len(channels)) if bool(masks[k].any())]
    for k in active:
        counts[k] += 1
    rows = [(v, k) for v in range(len(views)) for k in active if (v, k) not in done]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        x = torch.cat([_flip(window, views[v]) for v, _ in chunk])
        row_masks = torch.cat([_flip(masks[k][None, None], views[v])[:, 0] for v, k in chunk])
        res = cam.explain(x, targets=_RowTarget([channels[k] for _, k in chunk], row_masks))
        for i, (v, k) in enumerate(chunk):
            if v not in outputs:
                outputs[v] = res.output[i : i + 1]
            heat[k] += _flip(res.heat[i : i + 1], views[v])[0, 0].float()
    for v in range(len(views)):
        if v not in outputs:  # no class to explain in this view: a plain forward for its logits
            with torch.no_grad():
                outputs[v] = cam.model(_flip(window, views[v]))
    # nnU-Net's _internal_maybe_mirror_and_predict, operation for operation
    prediction = outputs[0].clone()
    if len(views) > 1:
        for v in range(1, len(views)):
            prediction += torch.flip(outputs[v], views[v])
        prediction /= len(views)
        heat /= len(views)
    return prediction, heat


def _sliding_window(
    cam,
    data: torch.Tensor,
    slicers: list[tuple],
    patch_size: Sequence[int],
    num_heads: int,
    channels: list[int],
    activation: str,
    masks: torch.Tensor | None,
    views: list[tuple[int, ...]],
    use_gaussian: bool,
    batch_size: int,
    counts: list[int],
    step: Callable[[], None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fold over the padded volume: nnU-Net's ``_internal_predict_sliding_window_return_logits``
    with heat stitched beside the logits."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    device = data.device
    predicted_logits = torch.zeros((num_heads, *data.shape[1:]), dtype=torch.half, device=device)
    n_predictions = torch.zeros(data.shape[1:], dtype=torch.half, device=device)
    heat = torch.zeros((len(channels), *data.shape[1:]), dtype=torch.float32, device=device)
    gaussian = (
        compute_gaussian(tuple(patch_size), sigma_scale=1.0 / 8, value_scaling_factor=10, device=device)
        if use_gaussian
        else 1
    )
    for sl in slicers:
        window = torch.clone(data[sl][None], memory_format=torch.contiguous_format)
        window_masks = masks[(slice(None), *sl[1:])] if masks is not None else None
        prediction, window_heat = _explain_window(
            cam, window, views, channels, activation, window_masks, batch_size, counts
        )
        prediction = prediction[0].to(device)
        if use_gaussian:
            prediction *= gaussian
            window_heat *= gaussian
        predicted_logits[sl] += prediction
        n_predictions[sl[1:]] += gaussian
        heat[sl] += window_heat
        step()
    torch.div(predicted_logits, n_predictions, out=predicted_logits)
    if torch.any(torch.isinf(predicted_logits)):
        raise RuntimeError(
            "the stitched logits hold infinite values (half precision overflow, as in nnU-Net's own prediction)"
        )
    heat /= n_predictions.float()
    return predicted_logits, heat


def explain_volume(
    cam,
    parameters: Sequence[dict],
    data: torch.Tensor,
    channels: list[int],
    *,
    num_heads: int,
    activation: str,
    patch_size: Sequence[int],
    slicers: Callable[[tuple[int, ...]], list[tuple]],
    mirror_axes: Sequence[int] | None,
    masks: torch.Tensor | None = None,
    use_gaussian: bool = True,
    batch_size: int = 1,
    device: torch.device | None = None,
    progress: bool = False,
) -> LoopOutput:
    """Logits and raw heat of a preprocessed case, over every fold; see the module docstring.

    Args:
        cam: a CAM method instance on the network (``normalize=False``, ``upsample=True``).
        parameters: one state dict per fold; each is loaded into ``cam.model`` in turn and the
            first one is loaded again at the end (exceptions included).
        data: ``[C, *S]`` the preprocessed case.
        channels: the output channel of each explained class.
        num_heads: the network's number of output channels.
        activation: ``"softmax"`` (label models) or ``"sigmoid"`` (region-based models).
        patch_size: the configuration's patch size (2 or 3 entries).
        slicers: padded shape -> nnU-Net's window slicers.
        mirror_axes: spatial axes to mirror over, or None.
        masks: ``[K, *S]`` the target region of each class (None: the predicted region).
        use_gaussian: Gaussian importance weighting (nnU-Net's default) or a constant.
        batch_size: views per forward. 1 (default) runs every view alone, as nnU-Net does.
        device: where the network runs and the results accumulate (default: the CPU).
        progress: show a progress bar over windows.

    Returns:
        :class:`LoopOutput` on the CPU.
    """
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.configuration import default_num_processes
    from tqdm import tqdm

    network = cam.model
    device = device if device is not None else torch.device("cpu")
    views = mirror_views(mirror_axes)
    threads = torch.get_num_threads()
    counts = [0] * len(channels)
    autocast = torch.autocast(device.type, enabled=True) if device.type == "cuda" else nullcontext()
    total: list[torch.Tensor] = []  # the sums over folds of the logits and the heat
    try:
        torch.set_num_threads(min(default_num_processes, threads))  # as nnU-Net's prediction does
        padded, revert = pad_nd_image(data, list(patch_size), "constant", {"value": 0}, True, None)
        padded = padded.to(device)
        padded_masks = None
        if masks is not None:
            padded_masks, _ = pad_nd_image(masks, list(patch_size), "constant", {"value": 0}, True, None)
            padded_masks = padded_masks.to(device)
        window_slicers = slicers(tuple(padded.shape[1:]))
        unpad = (slice(None), *revert[1:])
        with (
            tqdm(total=len(window_slicers) * len(parameters), disable=not progress, desc="windows") as bar,
            autocast,
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", message="the target mask of sample", category=RuntimeWarning)
            for params in parameters:
                network.load_state_dict(params)
                logits, heat = _sliding_window(
                    cam,
                    padded,
                    window_slicers,
                    patch_size,
                    num_heads,
                    channels,
                    activation,
                    padded_masks,
                    views,
                    use_gaussian,
                    batch_size,
                    counts,
                    bar.update,
                )
                logits, heat = logits[unpad].to("cpu"), heat[unpad].to("cpu")
                if not total:
                    total = [logits, heat]
                else:
                    total[0] += logits
                    total[1] += heat
        if len(parameters) > 1:
            total[0] /= len(parameters)
            total[1] /= len(parameters)
    finally:
        torch.set_num_threads(threads)
        network.load_state_dict(parameters[0])
    return LoopOutput(logits=total[0], heat=total[1], windows=[c // len(parameters) for c in counts])
