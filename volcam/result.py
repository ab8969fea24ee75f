"""What a CAM computation returns, and what a method sees besides activations and gradients.

These types sit below the engine (:mod:`volcam.methods.base`) so that every module that
builds on the engine (smoothing, sliding windows, metrics, the runner) can use them
without importing the engine itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["CAMResult", "LayerContext", "MapNote", "NOTE_REASONS"]

#: why a map can be all zero, in the order the engine checks them
NOTE_REASONS = (
    "empty_target",
    "no_gradient",
    "non_positive_weights",
    "no_positive_evidence",
    "constant_map",
)


@dataclass(frozen=True)
class MapNote:
    """Why the map of one sample and target is all zero, and what to try.

    Attributes:
        sample: the sample's index in the batch.
        target: the target's index (0 for :meth:`~volcam.BaseCAM.explain`, the position in
            ``classes`` for :meth:`~volcam.BaseCAM.explain_classes`).
        reason: one of :data:`NOTE_REASONS`:

            - ``"empty_target"``: the target region is empty (the network predicts no voxel
              of the class, or the mask selects none);
            - ``"no_gradient"``: the score does not depend on the layer in the target region
              (the gradient is zero everywhere);
            - ``"non_positive_weights"``: every channel weight is <= 0 (methods that weight
              whole channels: Grad-CAM, Grad-CAM++, XGrad-CAM, Score-CAM, Ablation-CAM);
            - ``"no_positive_evidence"``: the map is <= 0 everywhere before the ReLU;
            - ``"constant_map"``: the map is constant (one voxel, or a flat map), which
              normalises to zero.
        message: one sentence for people, ending with what to try.
        layer: the layer the reason was found at (the first one, with several layers).
    """

    sample: int
    target: int
    reason: str
    message: str
    layer: str | None = None


@dataclass
class CAMResult:
    """What one :meth:`~volcam.BaseCAM.explain` (or ``explain_classes``) call returns.

    Attributes:
        heat: ``[B, T, *S]`` float32 on the input's device, one map per target (``T = 1``
            for :meth:`~volcam.BaseCAM.explain`); in [0, 1] when normalised, at the input's
            spatial size when upsampled.
        output: the selected model output of the same forward pass, detached
            (``[B, classes, *S]``): no second forward is needed for the prediction.
        layer_maps: one raw map ``[B, T, *S_layer]`` per target layer, at the layer's own
            resolution, ReLU applied if ``relu`` is on, not normalised.
        scores: the target scores that were explained, detached: ``[B]`` from
            :meth:`~volcam.BaseCAM.explain`, ``[B, T]`` from ``explain_classes``.
        layer_names: the dotted names of the target layers, in order.
        notes: one :class:`MapNote` per (sample, target) whose heat is all zero, saying why.
    """

    heat: torch.Tensor
    output: torch.Tensor
    layer_maps: list[torch.Tensor] = field(default_factory=list)
    scores: torch.Tensor | None = None
    layer_names: list[str] = field(default_factory=list)
    notes: list[MapNote] = field(default_factory=list)


@dataclass
class LayerContext:
    """What a method may use besides the activations ``A`` and gradients ``G`` of one layer.

    A method works on *rows*: row ``r`` is target ``r // B`` of sample ``r % B`` (targets
    outer, samples inner), so ``A`` and ``G`` are ``[T * B, K, *S]`` (the activations are
    the same for every target of a sample). With one target, rows are samples.

    Attributes:
        name: the layer's dotted name.
        x: the input ``[B, C, *S]``.
        forward: runs the model on a batch (capture paused, no gradients) and returns the
            selected output. Perturbation methods use it.
        score: ``score(output, samples) -> [N, T]``: the scores of every target of the rows'
            samples on a model output ``[N, classes, *S]``, where ``samples[i]`` is the sample
            whose categories and masks apply to row ``i`` of ``output``.
        scores: ``[B, T]`` the scores of the unperturbed input.
        eigen_smooth: whether :meth:`~volcam.BaseCAM.reduce_channels` takes the first
            principal component of the weighted channels instead of their sum.
        call: which call of the layer is explained (0-based), when it runs several times in
            one forward pass.
        batch: ``B``.
        num_targets: ``T``.
        extra: what the method's :meth:`~volcam.BaseCAM.extra_hooks` recorded during the
            forward pass, and the gradient with respect to the input under ``"input_grad"``
            (``[T * B, C, *S]``) for methods with ``input_gradient = True``.
        weights: the channel weights ``[T * B, K]`` the default
            :meth:`~volcam.BaseCAM.combine` used, kept to explain an all-zero map.
    """

    name: str
    x: torch.Tensor
    forward: Callable[[torch.Tensor], torch.Tensor]
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    scores: torch.Tensor
    eigen_smooth: bool = False
    call: int = 0
    batch: int = 1
    num_targets: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    weights: torch.Tensor | None = None

    @property
    def samples(self) -> torch.Tensor:
        """``[T * B]``: the sample index of each row."""
        return torch.arange(self.batch, device=self.x.device).repeat(self.num_targets)

    def per_sample(self, rows: torch.Tensor) -> torch.Tensor:
        """The first ``B`` rows of ``[T * B, ...]``: one row per sample (what does not depend
        on the target, such as the activations)."""
        return rows[: self.batch]

    def to_rows(self, per_sample: torch.Tensor) -> torch.Tensor:
        """``[B, ...] -> [T * B, ...]``: repeat a per-sample tensor for every target."""
        if self.num_targets == 1:
            return per_sample
        return per_sample.repeat(self.num_targets, *([1] * (per_sample.ndim - 1)))

    def by_target(self, per_sample_target: torch.Tensor) -> torch.Tensor:
        """``[B, T, ...] -> [T * B, ...]``: a per-sample, per-target tensor as rows."""
        return per_sample_target.transpose(0, 1).reshape(-1, *per_sample_target.shape[2:])
