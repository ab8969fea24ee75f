"""FullGrad.

Srinivas & Fleuret, "Full-Gradient Representation for Neural Network Visualization",
NeurIPS 2019.

For a network that is piecewise linear in its input, the score decomposes exactly into
an input-gradient term and one bias-gradient term per layer with a bias:

    y = sum(x * dy/dx) + sum_l sum(b_l * dy/dz_l)

where ``z_l`` is the output of layer l and ``b_l`` its bias, broadcast over the spatial
axes. The saliency map sums every term after the post-processing psi (absolute value,
min-max rescaling per sample over channels and space, N-linear upsampling to the input)
and a sum over channels:

    map = sum_c psi(x * dy/dx)_c + sum_l sum_c psi(b_l * dy/dz_l)_c

Layers with a bias: convolutions (``Conv1d/2d/3d``, transposed ones) with ``bias``, and
normalisation layers, whose *implicit* bias is the constant of the affine map they
apply, ``beta - gamma * mu / sqrt(var + eps)``: running statistics for batch norm in
eval mode (as in the paper), the statistics of the current input for batch norm in
training mode, instance norm and group norm (per sample). Layers whose output does not
have the input's spatial axes (linear heads, token layers) are left out, as in the
paper's code. The decomposition is exact only with fixed statistics (eval-mode batch
norm); with input statistics the map is the same formula, not a completeness identity.

``target_layers`` is optional: None takes every such layer of the model; given, only
the layers inside those modules (the input term is always included). The engine takes
the gradients from the score to the input (``input_gradient``) and to every layer
output in one backward pass; the whole network is in the graph (FullGrad needs the
input gradient). The biases are recorded by :meth:`FullGrad.extra_hooks` during the same
forward pass, and :meth:`FullGrad.layer_maps` builds every term.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from volcam.errors import ArgumentError, LayerNotFoundError
from volcam.layers import LayerSpec, resolve_layers
from volcam.methods.base import BaseCAM, LayerContext
from volcam.postprocess import normalize, upsample
from volcam.selectors import Selector

INPUT_TERM = "(input)"


def has_bias(module: nn.Module) -> bool:
    """Whether FullGrad takes a bias-gradient term from ``module``."""
    if isinstance(module, _ConvNd):
        return module.bias is not None
    return isinstance(module, (_BatchNorm, _InstanceNorm, nn.GroupNorm))


def implicit_bias(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """The bias ``[1 or B, C]`` of the affine map ``module`` applies to ``inp`` ``[B, C, *S]``."""
    if isinstance(module, _ConvNd):
        if module.bias is None:
            raise ArgumentError(f"a convolution without bias has no FullGrad term, not {module!r}", name="module")
        return module.bias.detach().view(1, -1)
    channels = inp.shape[1]
    x = inp.detach().float()
    dims = tuple(range(2, x.ndim))
    running_mean = getattr(module, "running_mean", None)
    running_var = getattr(module, "running_var", None)
    if isinstance(module, nn.GroupNorm):
        grouped = x.reshape(x.shape[0], module.num_groups, -1)
        mu = grouped.mean(-1).repeat_interleave(channels // module.num_groups, 1)
        var = grouped.var(-1, unbiased=False).repeat_interleave(channels // module.num_groups, 1)
    elif isinstance(running_mean, torch.Tensor) and isinstance(running_var, torch.Tensor) and not module.training:
        mu, var = running_mean.view(1, -1).float(), running_var.view(1, -1).float()  # eval mode, running statistics
    elif isinstance(module, _BatchNorm):  # batch statistics
        mu, var = x.mean((0, *dims)).view(1, -1), x.var((0, *dims), unbiased=False).view(1, -1)
    else:  # instance statistics
        mu, var = x.mean(dims), x.var(dims, unbiased=False)
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    gamma = weight.detach().float().view(1, -1) if isinstance(weight, torch.Tensor) else torch.ones_like(mu[:1])
    beta = bias.detach().float().view(1, -1) if isinstance(bias, torch.Tensor) else torch.zeros_like(mu[:1])
    eps = float(getattr(module, "eps", 1e-5))
    return beta - gamma * mu / torch.sqrt(var + eps)


def rescale(t: torch.Tensor) -> torch.Tensor:
    """psi without the upsampling: ``|t|`` min-max rescaled per sample over all other axes."""
    t = t.abs()
    dims = tuple(range(1, t.ndim))
    lo = t.amin(dim=dims, keepdim=True)
    span = t.amax(dim=dims, keepdim=True) - lo
    return torch.where(span > 0, (t - lo) / span.clamp_min(1e-30), torch.zeros_like(t))


class FullGrad(BaseCAM):
    """FullGrad: input-gradient and bias-gradient maps of every layer, summed.

    Args:
        model: the network.
        target_layers: None (every convolution and normalisation layer), or modules
            (names) whose convolution and normalisation layers are used.
        model_output: selector for the model's output.
        normalize: min-max normalise the summed map per sample.
        upsample: must be True (the terms are summed at the input's size).
        relu: ignored (every term is an absolute value).
        aug_smooth, layer_call, class_chunk: as :class:`~volcam.methods.base.BaseCAM`.
        eigen_smooth: not applicable (warns).
    """

    name = "fullgrad"
    input_gradient = True
    all_layers_required = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        model_output: Selector = None,
        normalize: bool = True,
        upsample: bool = True,
        relu: bool = True,
        aug_smooth: Any = False,
        eigen_smooth: bool = False,
        layer_output: Selector = None,
        reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
        layer_call: int | str | None = None,
        class_chunk: int | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, not {type(model).__name__}")
        if layer_output is not None or reshape is not None:
            raise ArgumentError(
                "FullGrad uses the tensor outputs of convolution and normalisation layers; `layer_output` and "
                f"`reshape` must be None, not {layer_output!r} and {reshape!r}",
                name="layer_output" if layer_output is not None else "reshape",
            )
        if not upsample:
            raise ArgumentError(
                "FullGrad sums maps of layers at several resolutions; `upsample` must be True, not False",
                name="upsample",
            )
        roots = [model] if target_layers is None else [m for _, m in resolve_layers(model, target_layers)]
        inside = {id(m) for r in roots for m in r.modules()}
        layers = [m for m in model.modules() if id(m) in inside and has_bias(m)]
        if not layers:
            where = "the model" if target_layers is None else f"target_layers {target_layers!r}"
            raise LayerNotFoundError(
                f"FullGrad needs convolution or normalisation layers with a bias in {where}, not none; "
                "pass modules that contain some, or None for the whole model"
            )
        super().__init__(
            model,
            layers,
            model_output=model_output,
            normalize=normalize,
            upsample=True,
            aug_smooth=aug_smooth,
            layer_call=layer_call,
            class_chunk=class_chunk,
        )
        if eigen_smooth:
            warnings.warn("FullGrad has no weighted channels; `eigen_smooth` is ignored", UserWarning, stacklevel=2)

    @contextmanager
    def _bias_hooks(self, biases: dict[str, torch.Tensor]) -> Iterator[None]:
        handles = []

        def make(name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
            def hook(module: nn.Module, inputs: tuple[Any, ...], _output: Any) -> None:
                biases[name] = implicit_bias(module, inputs[0])

            return hook

        try:
            for name, module in self.layers:
                handles.append(module.register_forward_hook(make(name)))
            yield
        finally:
            for h in handles:
                h.remove()

    def extra_hooks(self, record: dict[str, Any]) -> AbstractContextManager[None]:
        """Record each layer's (implicit) bias during the forward pass, in ``record["biases"]``."""
        return self._bias_hooks(record.setdefault("biases", {}))

    def layer_maps(
        self, activations: list[torch.Tensor | None], grads: list[torch.Tensor | None], ctx: LayerContext
    ) -> list[tuple[str, torch.Tensor]]:
        """The input term and one bias term per layer that ran with spatial output."""
        x = ctx.x
        input_grad = ctx.extra["input_grad"]
        terms = [(INPUT_TERM, input_grad.float() * ctx.to_rows(x.float()))]
        biases = ctx.extra["biases"]
        for (name, _), a, g in zip(self.layers, activations, grads):
            if a is None or g is None or a.ndim != x.ndim or name not in biases:
                continue
            bias = biases[name]  # [1 or B, C]
            if bias.shape[0] != 1:
                bias = ctx.to_rows(bias)
            terms.append((name, bias.view(*bias.shape, *([1] * (g.ndim - 2))) * g.float()))
        return [(name, rescale(term).sum(1, keepdim=True)) for name, term in terms]

    def combine_layers(self, maps: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The sum of the terms upsampled to ``x``'s size, normalised if ``normalize``."""
        heat = torch.stack([upsample(m, x.shape[2:]) for m in maps]).sum(0)
        return normalize(heat) if self.normalize else heat
