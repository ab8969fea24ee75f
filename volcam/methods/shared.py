"""Several methods of one layer from one forward and one backward pass.

The gradient methods differ only in how they combine the activations ``A`` and the
gradients ``dy/dA`` of the target layer, and EigenCAM uses the same ``A``:
:func:`explain_methods` captures ``A``, takes ``dy/dA`` once, and hands both to every
method. Perturbation methods (Score-CAM, Ablation-CAM) may be asked for too; they reuse
``A`` and run their own forward passes. FullGrad (input and bias gradients of every
layer) and attention rollout (attention matrices) need other captures and are refused.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from volcam.errors import ArgumentError
from volcam.layers import LayerSpec
from volcam.methods.base import BaseCAM
from volcam.methods.engine import check, compute
from volcam.methods.registry import get_method
from volcam.result import CAMResult
from volcam.targets import TargetSpec

__all__ = ["explain_methods", "SHARED_METHODS"]

#: the methods :func:`explain_methods` computes by default: every method that needs only the
#: target layers' activations and gradients
SHARED_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "eigengradcam")


def _method(spec: str | type[BaseCAM]) -> type[BaseCAM]:
    cls = get_method(spec) if isinstance(spec, str) else spec
    if not (isinstance(cls, type) and issubclass(cls, BaseCAM)):
        raise ArgumentError(f"`methods` must hold registry names or BaseCAM subclasses, not {spec!r}", name="methods")
    if cls.input_gradient or cls.attention:
        raise ArgumentError(
            f"`methods` must be methods of the target layers' activations and gradients, not {cls.name!r} "
            "(it captures other tensors); call it on its own",
            name="methods",
        )
    return cls


def _settings(cls: type[BaseCAM]) -> set[str]:
    """The keyword arguments the class's constructor takes (BaseCAM's through ``**kwargs``)."""
    params = inspect.signature(cls).parameters
    names = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        names |= set(inspect.signature(BaseCAM).parameters)
    return names - {"model", "target_layers"}


def explain_methods(
    model: nn.Module,
    x: torch.Tensor,
    target_layers: LayerSpec | Sequence[LayerSpec],
    methods: Sequence[str | type[BaseCAM]] = SHARED_METHODS,
    targets: TargetSpec = None,
    *,
    eigen_smooth: bool = False,
    **options: Any,
) -> dict[str, CAMResult]:
    """The maps of several methods at the same layers from **one** forward and **one**
    backward pass.

    Args:
        model: the network.
        x: input ``[B, C, *S]``.
        target_layers: as for :class:`~volcam.BaseCAM`.
        methods: registry names (or classes) of the methods; default :data:`SHARED_METHODS`.
        targets: as for :meth:`~volcam.BaseCAM.explain`.
        eigen_smooth: as for :meth:`~volcam.BaseCAM.explain`.
        options: the other settings of every method (``layer_output``, ``model_output``,
            ``reshape``, ``relu``, ``normalize``, ``upsample``, ``layer_call``, and
            ``batch_size``/``ratio`` for perturbation methods).

    Returns:
        ``{name: CAMResult}`` in the order of ``methods``; each result equals what that
        method's own :meth:`~volcam.BaseCAM.explain` gives (heat ``[B, 1, *S]``, scores
        ``[B]``, notes), and all share the same ``output``.

    Example:
        >>> maps = volcam.explain_methods(model, x, "model.1.submodule.2", targets=1)  # doctest: +SKIP
        >>> {name: float(res.heat.mean()) for name, res in maps.items()}              # doctest: +SKIP
    """
    if "aug_smooth" in options:
        raise ArgumentError(
            "`aug_smooth` is not shared between methods; explain each method on its own", name="aug_smooth"
        )
    if isinstance(methods, str) or not len(methods):
        raise ArgumentError(f"`methods` must be a non-empty list of method names, not {methods!r}", name="methods")
    classes = [_method(m) for m in methods]
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ArgumentError(f"`methods` must not repeat a method, not {names}", name="methods")
    accepted = [_settings(cls) for cls in classes]
    unknown = sorted(set(options) - set().union(*accepted))
    if unknown:
        raise ArgumentError(f"`options` must be settings of the methods, not {unknown}", name=unknown[0])
    cams = [
        cls(model, target_layers, **{k: v for k, v in options.items() if k in names_})
        for cls, names_ in zip(classes, accepted)
    ]
    done = compute(cams, x, [targets], eigen_smooth=eigen_smooth, class_chunk=None, stacklevel=3)
    out: dict[str, CAMResult] = {}
    for name, item in zip(names, done):
        check(item.result, item.evidence, x, [targets], stacklevel=3)
        if item.result.scores is not None:
            item.result.scores = item.result.scores[:, 0]
        out[name] = item.result
    return out
