"""The CAM engine: hooks, targets, gradients, upsampling, normalisation and multi-layer
aggregation, shared by every method. A method is a small subclass overriding one of

- :meth:`BaseCAM.weights` ``(A, G) -> [N, K]``: channel weights (Grad-CAM family), or
- :meth:`BaseCAM.combine` ``(A, G, ctx) -> [N, 1, *S]``: the whole per-layer map
  (per-voxel methods, gradient-free methods with ``needs_gradients = False``).

``A`` are the activations ``[N, K, *S]`` and ``G = d score / dA`` the gradients of the
same shape, both float32; ``*S`` is one, two or three spatial axes, and every reduction
runs over ``range(2, A.ndim)``. Row ``r`` of ``A`` and ``G`` is target ``r // B`` of
sample ``r % B`` (:class:`~volcam.result.LayerContext`); with one target, rows are samples.

Methods that need more than one layer's ``A`` and ``G`` override two template hooks:
:meth:`BaseCAM.extra_hooks` (what else to record during the forward pass) and
:meth:`BaseCAM.layer_maps` (all layers' maps at once); ``input_gradient = True`` adds
the gradient with respect to the input. The engine itself (:mod:`volcam.methods.engine`)
runs the forward pass, the gradients and the checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from volcam.errors import ArgumentError, ShapeError
from volcam.layers import LayerSpec, resolve_layers
from volcam.methods.engine import run
from volcam.pca import first_principal_component
from volcam.postprocess import aggregate, spatial_dims
from volcam.result import CAMResult, LayerContext
from volcam.selectors import Selector
from volcam.targets import SegmentationTarget, TargetSpec

__all__ = ["BaseCAM", "CAMResult", "LayerContext", "channel_mean"]

Reshape = Callable[[torch.Tensor], torch.Tensor]


def _layer_call(value: object) -> int | str | None:
    if value is None or value == "error":
        return "error" if value == "error" else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ArgumentError(
        f"`layer_call` must be None (the last call, with a warning), an int (0-based; negative counts from "
        f"the end) or 'error', not {value!r}",
        name="layer_call",
    )


def _class_chunk(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ArgumentError(f"`class_chunk` must be a positive int or None, not {value!r}", name="class_chunk")


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
        normalize: min-max normalise each map to [0, 1].
        upsample: resize to the input's spatial size (N-linear, ``align_corners=False``).
        aug_smooth: default of :meth:`explain`'s ``aug_smooth``: False, True, or a
            :class:`volcam.smoothing.AugSmooth` with the flips and zooms to average over.
        eigen_smooth: default of :meth:`explain`'s ``eigen_smooth``.
        layer_call: which call to explain when a target layer runs more than once in one
            forward pass (a module used twice, a recurrent block): None (default) explains
            the last call and warns (:class:`~volcam.errors.LayerCallWarning`); an int picks
            the call (0-based, negative counts from the end), without a warning; ``"error"``
            raises :class:`~volcam.errors.LayerCallError` instead.
        class_chunk: default of :meth:`explain_classes`'s ``class_chunk``.

    A model in training mode (dropout, batch statistics) gives maps that can change from
    call to call: the first call of each CAM object on such a model warns
    (:class:`~volcam.errors.TrainingModeWarning`). ``volcam run`` and the MONAI handler
    always explain in eval mode.
    """

    #: whether the method needs gradients of the score with respect to the activations
    needs_gradients: bool = True
    #: whether the gradient with respect to the input is taken too (``ctx.extra["input_grad"]``)
    input_gradient: bool = False
    #: whether every target layer must run in the forward pass (else: unreached layers are None)
    all_layers_required: bool = True
    #: whether the map is the same for every target (computed once, repeated)
    class_agnostic: bool = False
    #: whether the channel weights are global averages over the layer (sliding windows then
    #: compute them over the whole volume)
    global_weights: bool = False
    #: whether the method reads attention matrices (its registry is ``ATTENTION_METHODS``)
    attention: bool = False
    #: the registry name, and other names :func:`volcam.get_method` accepts
    name: str = "base"
    aliases: tuple[str, ...] = ()
    #: run CPU convolutions after the target layer in channels-last format (faster backward)
    channels_last: bool = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        *,
        layer_output: Selector = None,
        model_output: Selector = None,
        reshape: Reshape | None = None,
        relu: bool = True,
        normalize: bool = True,
        upsample: bool = True,
        aug_smooth: Any = False,
        eigen_smooth: bool = False,
        layer_call: int | str | None = None,
        class_chunk: int | None = None,
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
        self.layer_call = _layer_call(layer_call)
        self.class_chunk = _class_chunk(class_chunk)
        self._warned_training = False

    def __repr__(self) -> str:
        names = [n for n, _ in self.layers]
        return f"{type(self).__name__}(target_layers={names})"

    # ------------------------------------------------------------------ method hooks
    def weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Channel weights ``[N, K]`` from activations and gradients ``[N, K, *S]``."""
        raise NotImplementedError(f"{type(self).__name__} must override weights() or combine()")

    def combine(self, activations: torch.Tensor, grads: torch.Tensor | None, ctx: LayerContext) -> torch.Tensor:
        """The raw map ``[N, 1, *S]`` of one layer (before ReLU). Default: the weighted
        sum of the activation channels with :meth:`weights` (kept in ``ctx.weights``)."""
        if grads is None:
            raise NotImplementedError(f"{type(self).__name__} needs gradients for weights(); override combine()")
        w = self.weights(activations, grads)
        ctx.weights = w
        w = w.reshape(*w.shape, *([1] * (activations.ndim - 2)))
        return self.reduce_channels(w * activations, ctx)

    def reduce_channels(self, weighted: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        """``[N, K, *S] -> [N, 1, *S]``: the sum of the weighted channels or, with
        ``ctx.eigen_smooth``, their first principal component (sign following the sum)."""
        if ctx.eigen_smooth:
            return first_principal_component(weighted)
        return weighted.sum(1, keepdim=True)

    def extra_hooks(self, record: dict[str, Any]) -> AbstractContextManager[None]:
        """A context entered around the forward pass for what the method records besides
        the target layers' outputs (into ``record``, later ``ctx.extra``). Default: none."""
        return nullcontext()

    def layer_maps(
        self, activations: list[torch.Tensor | None], grads: list[torch.Tensor | None], ctx: LayerContext
    ) -> list[tuple[str, torch.Tensor]]:
        """The raw maps ``[N, 1, *S_layer]`` (before ReLU) of all target layers, with their
        names. ``activations[i]`` is layer i's captured tensor ``[B, ...]`` (None if it did
        not run and ``all_layers_required`` is off), ``grads[i]`` its gradient
        ``[T * B, ...]`` (None without gradients). Default: :meth:`combine` per layer."""
        maps = []
        for (name, _), a, g in zip(self.layers, activations, grads):
            if a is None:
                continue
            a_rows = ctx.to_rows(self.to_spatial(name, a, ctx.x).float())
            g_rows = self.to_spatial(name, g, ctx.x).float() if g is not None else None
            layer_ctx = replace(ctx, name=name, call=ctx.extra.get("calls", {}).get(name, 0), weights=None)
            m = self.combine(a_rows, g_rows, layer_ctx).float()
            if layer_ctx.weights is not None:
                ctx.extra.setdefault("weights", {})[name] = layer_ctx.weights
            maps.append((name, m))
        return maps

    def describe_missing(self, missing: list[str]) -> str:
        """The message when target layers did not run in the forward pass."""
        return (
            f"target layer(s) {missing} were not run by the forward pass; choose layers the model uses for "
            "this input (`volcam layers` lists the modules that run)"
        )

    def combine_layers(self, maps: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The heat ``[B, T, *S]`` from the raw per-layer maps ``[B, T, *S_layer]``: upsampled
        to ``x``'s size, normalised and averaged (as set by ``upsample`` and ``normalize``)."""
        return aggregate(maps, x.shape[2:] if self.upsample else None, normalize_maps=self.normalize)

    def to_spatial(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A layer's captured tensor (or its gradient) as ``[N, K, *S]``, through ``reshape``."""
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

    # ------------------------------------------------------------------ public calls
    def __call__(
        self, x: torch.Tensor, targets: TargetSpec = None, *, aug_smooth: Any = None, eigen_smooth: bool | None = None
    ) -> torch.Tensor:
        """The heat map ``[B, 1, *S]`` of ``x`` (``[B, C, *S]``); see :meth:`explain`."""
        return self._explain_one(x, targets, aug_smooth, eigen_smooth, stacklevel=3).heat

    def explain(
        self, x: torch.Tensor, targets: TargetSpec = None, *, aug_smooth: Any = None, eigen_smooth: bool | None = None
    ) -> CAMResult:
        """Compute the CAM of ``x`` for ``targets`` with one forward (and one partial backward) pass.

        Args:
            x: input ``[B, C, *S]`` on the model's device.
            targets: None (per sample, the foreground class with the largest predicted
                volume), an int class, a target (:class:`~volcam.SegmentationTarget`,
                :class:`~volcam.ClassifierTarget`, anything with ``bind(output)``), a callable
                ``output -> [B]``, or a list of those, one per sample.
            aug_smooth: average the maps of flipped and zoomed copies of ``x``, each taken
                back through the inverse transform (True, or a :class:`volcam.smoothing.AugSmooth`);
                all copies go through one batched call. None: the constructor's setting.
            eigen_smooth: replace the sum of the weighted channels by their first principal
                component. None: the constructor's setting.

        Returns:
            :class:`~volcam.result.CAMResult` with ``heat`` ``[B, 1, *S]`` on ``x.device`` and
            ``scores`` ``[B]``.

        Raises:
            ValueRangeError: ``x`` (or the model output) holds NaN or infinite values.

        Example:
            >>> cam = volcam.GradCAM(model, "model.1.submodule.2")          # doctest: +SKIP
            >>> res = cam.explain(x, targets=volcam.SegmentationTarget(1))  # doctest: +SKIP
            >>> res.heat.shape, res.notes                                   # doctest: +SKIP
        """
        return self._explain_one(x, targets, aug_smooth, eigen_smooth, stacklevel=3)

    def _explain_one(
        self, x: torch.Tensor, targets: TargetSpec, aug_smooth: Any, eigen_smooth: bool | None, *, stacklevel: int
    ) -> CAMResult:
        res = run(
            self,
            x,
            [targets],
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
            class_chunk=None,
            stacklevel=stacklevel + 1,
        )
        if res.scores is not None:
            res.scores = res.scores[:, 0]
        return res

    def explain_targets(
        self,
        x: torch.Tensor,
        targets: Sequence[TargetSpec],
        *,
        class_chunk: int | None = None,
        aug_smooth: Any = None,
        eigen_smooth: bool | None = None,
    ) -> CAMResult:
        """The maps of several targets of each sample from **one** forward pass.

        The forward pass runs once; its graph (from the target layers on) is kept while the
        gradient of each target is taken by a backward pass of its own, which starts at the
        output with the target's mask (the other targets take no part in it), and the maps
        are formed ``class_chunk`` targets at a time. Perturbation methods score every target
        on the same perturbed inputs. Each map equals the one :meth:`explain` gives for that
        target alone (up to float rounding).

        Args:
            x: input ``[B, C, *S]``.
            targets: ``T`` target specifications, each as ``targets`` of :meth:`explain`
                (an int class, a target, a callable, a per-sample list, None).
            class_chunk: targets per backward pass. None: the constructor's setting, else
                the largest number whose gradients hold at most ``2**27`` float32 values
                (512 MiB): ``max(1, 2**27 // (B * (sum of the layers' activation sizes +
                the input's size with input gradients)))``, and all of them for
                gradient-free methods.
            aug_smooth, eigen_smooth: as for :meth:`explain`.

        Returns:
            :class:`~volcam.result.CAMResult` with ``heat`` ``[B, T, *S]``, ``layer_maps``
            ``[B, T, *S_layer]`` and ``scores`` ``[B, T]``.

        Example:
            >>> res = cam.explain_targets(x, [1, 2, volcam.SegmentationTarget(3, mask="all")])  # doctest: +SKIP
            >>> res.heat.shape   # [B, 3, *S]                                                # doctest: +SKIP
        """
        return self._explain_many(x, targets, class_chunk, aug_smooth, eigen_smooth, stacklevel=3)

    def _explain_many(
        self,
        x: torch.Tensor,
        targets: Sequence[TargetSpec],
        class_chunk: int | None,
        aug_smooth: Any,
        eigen_smooth: bool | None,
        *,
        stacklevel: int,
    ) -> CAMResult:
        if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence) or not len(targets):
            raise ArgumentError(
                f"`targets` must be a non-empty list of target specifications, not {targets!r}", name="targets"
            )
        return run(
            self,
            x,
            list(targets),
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
            class_chunk=_class_chunk(class_chunk),
            stacklevel=stacklevel + 1,
        )

    def explain_classes(
        self,
        x: torch.Tensor,
        classes: Sequence[int],
        *,
        masks: Any = None,
        activation: str = "softmax",
        class_chunk: int | None = None,
        aug_smooth: Any = None,
        eigen_smooth: bool | None = None,
    ) -> CAMResult:
        """The maps of several classes of a segmentation output from **one** forward pass.

        Args:
            x: input ``[B, C, *S]``.
            classes: ``T`` class indices of the model output.
            masks: the region each class is explained over: None (the region the network
                predicts as the class), ``"all"`` (every voxel), one tensor for every class
                (``[*S]``, ``[B, *S]`` or ``[B, 1, *S]``), or a dict ``{class: mask}`` (a class
                missing from it uses its predicted region; a value may be ``"all"``).
            activation: ``"softmax"`` or ``"sigmoid"``, as for :class:`~volcam.SegmentationTarget`.
            class_chunk, aug_smooth, eigen_smooth: as for :meth:`explain_targets`.

        Returns:
            :class:`~volcam.result.CAMResult` with ``heat`` ``[B, T, *S]`` (map ``t`` is class
            ``classes[t]``), ``scores`` ``[B, T]`` and a note per empty map.

        Example:
            >>> cam = volcam.GradCAM(model, "model.1.submodule.2")   # doctest: +SKIP
            >>> res = cam.explain_classes(x, [1, 2, 3])              # doctest: +SKIP
            >>> liver, tumour, vessels = res.heat.unbind(1)          # doctest: +SKIP
        """
        if isinstance(classes, int) or not isinstance(classes, Sequence) or not len(classes):
            raise ArgumentError(f"`classes` must be a non-empty list of class indices, not {classes!r}", name="classes")
        if isinstance(masks, dict):
            unknown = [c for c in masks if c not in classes]
            if unknown:
                raise ArgumentError(
                    f"`masks` must only name classes of `classes` {list(classes)}, not {unknown}", name="masks"
                )
            specs: list[TargetSpec] = [SegmentationTarget(c, mask=masks.get(c), activation=activation) for c in classes]
        else:
            specs = [SegmentationTarget(c, mask=masks, activation=activation) for c in classes]
        return self._explain_many(x, specs, class_chunk, aug_smooth, eigen_smooth, stacklevel=3)


def channel_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over the spatial axes of ``[N, K, *S]`` -> ``[N, K]``."""
    return t.mean(dim=spatial_dims(t))
