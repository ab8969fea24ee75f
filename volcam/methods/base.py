"""The CAM engine: hooks, targets, gradients, upsampling, normalisation and multi-layer
aggregation, shared by every method. A method is a small subclass overriding one of

- :meth:`BaseCAM.weights` ``(A, G) -> [B, K]``: channel weights (Grad-CAM family), or
- :meth:`BaseCAM.combine` ``(A, G, ctx) -> [B, 1, *S]``: the whole per-layer map
  (per-voxel methods, gradient-free methods with ``needs_gradients = False``).

``A`` are the activations ``[B, K, *S]`` and ``G = d score / dA`` the gradients of the
same shape, both float32; ``*S`` is one, two or three spatial axes, and every reduction
runs over ``range(2, A.ndim)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from volcam.capture import capture
from volcam.errors import LayerNotReachedError, ShapeError, VolcamError
from volcam.layers import LayerSpec, resolve_layers
from volcam.postprocess import aggregate, spatial_dims
from volcam.selectors import Selector, select
from volcam.targets import TargetSpec, resolve_targets, warn_empty

__all__ = ["BaseCAM", "CAMResult", "LayerContext"]


@dataclass
class CAMResult:
    """What one :meth:`BaseCAM.explain` call returns.

    Attributes:
        heat: ``[B, 1, *S]`` float32 on the input's device; in [0, 1] when normalised,
            at the input's spatial size when upsampled.
        output: the selected model output of the same forward pass, detached
            (``[B, classes, *S]``): no second forward is needed for the prediction.
        layer_maps: one raw map ``[B, 1, *S_layer]`` per target layer, at the layer's own
            resolution, ReLU applied if ``relu`` is on, not normalised.
        scores: ``[B]`` the target scores that were explained, detached.
        layer_names: the dotted names of the target layers, in order.
    """

    heat: torch.Tensor
    output: torch.Tensor
    layer_maps: list[torch.Tensor] = field(default_factory=list)
    scores: torch.Tensor | None = None
    layer_names: list[str] = field(default_factory=list)


@dataclass
class LayerContext:
    """What a method may use besides ``A`` and ``G`` (perturbation methods).

    Attributes:
        name: the layer's dotted name.
        x: the input ``[B, C, *S]``.
        forward: runs the model on a batch (hooks paused, no gradients) and returns the
            selected output.
        scorer: the bound target: ``scorer(output, rows) -> [N]`` where ``rows[i]`` is the
            sample whose category/mask applies to row ``i``.
        scores: ``[B]`` the scores of the unperturbed input.
        eigen_smooth: whether :meth:`BaseCAM.reduce_channels` takes the first principal
            component of the weighted channels instead of their sum.
    """

    name: str
    x: torch.Tensor
    forward: Callable[[torch.Tensor], torch.Tensor]
    scorer: Any
    scores: torch.Tensor
    eigen_smooth: bool = False


class BaseCAM:
    """Class activation maps for a network with N spatial axes (1, 2 or 3).

    Args:
        model: the network. It is never modified: its hooks, train/eval mode,
            ``requires_grad`` and ``inplace`` flags, parameters and buffers are the same
            after every call, successful or not.
        target_layers: a dotted module name (``"model.2.0.conv"``), a module, or a list of
            them. With several layers the maps are upsampled, normalised and averaged.
        layer_output: selector for layers whose output is a tuple, list or dict (an index,
            a key, a tuple path of them, or a callable returning one of its tensors).
        model_output: selector for the model's output (deep supervision, dict outputs), or
            a callable mapping it to ``[B, classes, *S]``.
        reshape: callable mapping the layer's selected tensor to ``[B, K, *S]`` (e.g. UNETR
            tokens ``[B, N, K]``); it must only rearrange elements (view, permute, drop a
            class token), since the same function is applied to the gradients.
        relu: apply ReLU to each layer's map (the CAM convention: keep positive evidence).
        normalize: min-max normalise each sample to [0, 1].
        upsample: resize to the input's spatial size (N-linear, ``align_corners=False``).
        aug_smooth: default of :meth:`explain`'s ``aug_smooth``: False, True, or a
            :class:`volcam.smoothing.AugSmooth` with the flips and zooms to average over.
        eigen_smooth: default of :meth:`explain`'s ``eigen_smooth``.
    """

    #: whether the method needs gradients of the score with respect to the activations
    needs_gradients: bool = True
    #: the registry name
    name: str = "base"

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        layer_output: Selector = None,
        model_output: Selector = None,
        reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
        relu: bool = True,
        normalize: bool = True,
        upsample: bool = True,
        aug_smooth: Any = False,
        eigen_smooth: bool = False,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, not {type(model).__name__}")
        if reshape is not None and not callable(reshape):
            raise TypeError(f"`reshape` must be a callable [B, N, K] -> [B, K, *S] or None, not {reshape!r}")
        self.model = model
        self.layers = resolve_layers(model, target_layers)
        self.layer_output = layer_output
        self.model_output = model_output
        self.reshape = reshape
        self.relu = relu
        self.normalize = normalize
        self.upsample = upsample
        self.aug_smooth = aug_smooth
        self.eigen_smooth = bool(eigen_smooth)

    def __repr__(self) -> str:
        names = [n for n, _ in self.layers]
        return f"{type(self).__name__}(target_layers={names})"

    # ------------------------------------------------------------------ method hooks
    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Channel weights ``[B, K]`` from activations and gradients ``[B, K, *S]``."""
        raise NotImplementedError(f"{type(self).__name__} must override weights() or combine()")

    def combine(self, activations: torch.Tensor, grads: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """The raw map ``[B, 1, *S]`` of one layer (before ReLU). Default: the weighted
        sum of the activation channels with :meth:`weights`."""
        w = self.weights(activations, grads)
        w = w.reshape(*w.shape, *([1] * (activations.ndim - 2)))
        return self.reduce_channels(w * activations, ctx)

    def reduce_channels(self, weighted: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        """``[B, K, *S] -> [B, 1, *S]``: the sum of the weighted channels or, with
        ``ctx.eigen_smooth``, their first principal component (sign following the sum)."""
        if ctx.eigen_smooth:
            from volcam.methods.eigencam import first_principal_component  # eigencam builds on this module

            return first_principal_component(weighted)
        return weighted.sum(1, keepdim=True)

    def combine_layers(self, maps: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The heat ``[B, 1, *S]`` from the raw per-layer maps: upsampled to ``x``'s size,
        normalised and averaged (as set by ``upsample`` and ``normalize``)."""
        return aggregate(maps, x.shape[2:] if self.upsample else None, normalize_maps=self.normalize)

    # ------------------------------------------------------------------ engine
    def __call__(
        self, x: torch.Tensor, targets: TargetSpec = None, *, aug_smooth: Any = None, eigen_smooth: bool | None = None
    ) -> torch.Tensor:
        """The heat map ``[B, 1, *S]`` of ``x`` (``[B, C, *S]``); see :meth:`explain`."""
        return self.explain(x, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth).heat

    def _check_input(self, x: Any) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"the input must be a torch.Tensor [B, C, *S], not {type(x).__name__}")
        if not 3 <= x.ndim <= 5:
            raise ShapeError(
                f"the input must be [B, C, *S] with 1 to 3 spatial axes (3 to 5 dimensions), "
                f"not {x.ndim} dimensions (shape {list(x.shape)}); add the batch/channel axes with "
                "x[None] or x[None, None]",
                expected="[B, C, *S]",
                actual_shape=tuple(x.shape),
            )
        if torch.is_inference_mode_enabled():
            raise VolcamError("CAMs cannot be computed under torch.inference_mode(); call outside of it")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return select(self.model(x), self.model_output, what="model output")

    def _to_spatial(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.reshape is not None:
            t = self.reshape(t)
        if t.ndim != x.ndim:
            hint = "; pass `reshape` to turn tokens [B, N, K] into [B, K, *S]" if t.ndim == 3 else ""
            raise ShapeError(
                f"layer {name!r} must give activations [B, K, *S] with the input's {x.ndim - 2} spatial axes, "
                f"not shape {list(t.shape)}{hint}",
                expected=f"{x.ndim} dimensions",
                actual_shape=tuple(t.shape),
            )
        return t

    def explain(
        self, x: torch.Tensor, targets: TargetSpec = None, *, aug_smooth: Any = None, eigen_smooth: bool | None = None
    ) -> CAMResult:
        """Compute the CAM of ``x`` for ``targets`` with one forward (and one partial backward) pass.

        Args:
            x: input ``[B, C, *S]`` on the model's device.
            targets: None (per sample, the foreground class with the largest predicted
                volume), an int class, a target callable ``output -> [B]``
                (:class:`~volcam.SegmentationTarget`, :class:`~volcam.ClassifierTarget`, ...),
                or a list of those, one per sample.
            aug_smooth: average the maps of flipped and zoomed copies of ``x``, each taken
                back through the inverse transform (True, or a :class:`volcam.smoothing.AugSmooth`);
                all copies go through one batched call. None: the constructor's setting.
            eigen_smooth: replace the sum of the weighted channels by their first principal
                component. None: the constructor's setting.

        Returns:
            :class:`CAMResult` with ``heat`` ``[B, 1, *S]`` on ``x.device``.
        """
        self._check_input(x)
        aug_smooth = self.aug_smooth if aug_smooth is None else aug_smooth
        eigen_smooth = self.eigen_smooth if eigen_smooth is None else bool(eigen_smooth)
        if aug_smooth:
            from volcam.smoothing import explain_augmented  # smoothing builds on this module

            return explain_augmented(self, x, targets, aug_smooth, eigen_smooth=eigen_smooth)
        return self._explain(x, targets, eigen_smooth)

    def _explain(self, x: torch.Tensor, targets: TargetSpec, eigen_smooth: bool) -> CAMResult:
        """One un-augmented computation (what :meth:`explain` runs)."""
        grad_mode = torch.enable_grad() if self.needs_gradients else torch.no_grad()
        with (
            capture(
                self.model, self.layers, layer_output=self.layer_output, track_gradients=self.needs_gradients
            ) as state,
            grad_mode,
        ):
            output = self._forward(x)
            missing = [n for n, _ in self.layers if n not in state.activations]
            if missing:
                raise LayerNotReachedError(
                    f"target layer(s) {missing} were not run by the forward pass; choose layers the model "
                    "uses for this input (`volcam layers` lists the modules that run)"
                )
            scorer = resolve_targets(targets, output)
            scores = scorer(output)
            activations = [state.activations[n] for n, _ in self.layers]
            if self.needs_gradients:
                grads = self._gradients(scores, activations)
            else:
                grads = [None] * len(activations)
            state.active = False

            def forward(batch: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return self._forward(batch)

            maps = []
            with torch.no_grad():
                for (name, _), a, g in zip(self.layers, activations, grads):
                    a = self._to_spatial(name, a.detach(), x).float()
                    g = self._to_spatial(name, g, x).float() if g is not None else None
                    ctx = LayerContext(
                        name=name,
                        x=x,
                        forward=forward,
                        scorer=scorer,
                        scores=scores.detach(),
                        eigen_smooth=eigen_smooth,
                    )
                    m = self.combine(a, g, ctx).float()
                    maps.append(F.relu(m) if self.relu else m)
        with torch.no_grad():
            heat = self.combine_layers(maps, x)
        warn_empty(scorer)
        return CAMResult(
            heat=heat,
            output=output.detach(),
            layer_maps=maps,
            scores=scores.detach(),
            layer_names=[n for n, _ in self.layers],
        )

    def _gradients(self, scores: torch.Tensor, activations: list[torch.Tensor]) -> list[torch.Tensor]:
        names = [n for n, _ in self.layers]
        if not scores.requires_grad:
            raise LayerNotReachedError(
                f"the target score does not depend on the output of target layer(s) {names}; "
                "choose a layer on the path to the selected model output"
            )
        grads = torch.autograd.grad(scores.sum(), activations, allow_unused=True)
        unused = [n for n, g in zip(names, grads) if g is None]
        if unused:
            raise LayerNotReachedError(
                f"the target score does not depend on the output of target layer(s) {unused}; "
                "choose a layer on the path to the selected model output"
            )
        return list(grads)


def channel_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over the spatial axes of ``[B, K, *S]`` -> ``[B, K]``."""
    return t.mean(dim=spatial_dims(t))
