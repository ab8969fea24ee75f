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
the layers inside those modules (the input term is always included). Gradients are
taken with one ``torch.autograd.grad`` from the score to the input and to every layer
output; the whole network is in the graph (FullGrad needs the input gradient).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from volcam.capture import capture
from volcam.errors import LayerNotFoundError, LayerNotReachedError, VolcamError
from volcam.layers import LayerSpec, resolve_layers
from volcam.methods.base import BaseCAM, CAMResult
from volcam.postprocess import normalize, upsample
from volcam.selectors import Selector
from volcam.targets import TargetSpec, resolve_targets, warn_empty

INPUT_TERM = "(input)"


def has_bias(module: nn.Module) -> bool:
    """Whether FullGrad takes a bias-gradient term from ``module``."""
    if isinstance(module, _ConvNd):
        return module.bias is not None
    return isinstance(module, (_BatchNorm, _InstanceNorm, nn.GroupNorm))


def implicit_bias(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """The bias ``[1 or B, C]`` of the affine map ``module`` applies to ``inp`` ``[B, C, *S]``."""
    if isinstance(module, _ConvNd):
        return module.bias.detach().view(1, -1)
    channels = inp.shape[1]
    x = inp.detach().float()
    dims = tuple(range(2, x.ndim))
    if isinstance(module, nn.GroupNorm):
        grouped = x.reshape(x.shape[0], module.num_groups, -1)
        mu = grouped.mean(-1).repeat_interleave(channels // module.num_groups, 1)
        var = grouped.var(-1, unbiased=False).repeat_interleave(channels // module.num_groups, 1)
    elif module.running_mean is not None and not module.training:  # eval mode with running statistics
        mu, var = module.running_mean.view(1, -1).float(), module.running_var.view(1, -1).float()
    elif isinstance(module, _BatchNorm):  # batch statistics
        mu, var = x.mean((0, *dims)).view(1, -1), x.var((0, *dims), unbiased=False).view(1, -1)
    else:  # instance statistics
        mu, var = x.mean(dims), x.var(dims, unbiased=False)
    gamma = module.weight.detach().float().view(1, -1) if module.weight is not None else torch.ones_like(mu[:1])
    beta = module.bias.detach().float().view(1, -1) if module.bias is not None else torch.zeros_like(mu[:1])
    return beta - gamma * mu / torch.sqrt(var + module.eps)


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
        aug_smooth: as :class:`~volcam.methods.base.BaseCAM`.
        eigen_smooth: not applicable (warns).
    """

    name = "fullgrad"

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec] | None = None,
        *,
        model_output: Selector = None,
        normalize: bool = True,
        upsample: bool = True,
        relu: bool = True,
        aug_smooth=False,
        eigen_smooth: bool = False,
        layer_output: Selector = None,
        reshape=None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, not {type(model).__name__}")
        if layer_output is not None or reshape is not None:
            raise VolcamError(
                "FullGrad uses the tensor outputs of convolution and normalisation layers; `layer_output` and "
                f"`reshape` must be None, not {layer_output!r} and {reshape!r}"
            )
        if not upsample:
            raise VolcamError("FullGrad sums maps of layers at several resolutions; `upsample` must be True, not False")
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
            model, layers, model_output=model_output, normalize=normalize, upsample=True, aug_smooth=aug_smooth
        )
        if eigen_smooth:
            warnings.warn("FullGrad has no weighted channels; `eigen_smooth` is ignored", UserWarning, stacklevel=2)

    @contextmanager
    def _bias_hooks(self, biases: dict) -> Iterator[None]:
        handles = []

        def make(name):
            def hook(module, inputs, _output):
                biases[name] = implicit_bias(module, inputs[0])

            return hook

        try:
            for name, module in self.layers:
                handles.append(module.register_forward_hook(make(name)))
            yield
        finally:
            for h in handles:
                h.remove()

    def combine_layers(self, maps: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The sum of the terms upsampled to ``x``'s size, normalised if ``normalize``."""
        heat = sum(upsample(m, x.shape[2:]) for m in maps)
        return normalize(heat) if self.normalize else heat

    def _explain(self, x: torch.Tensor, targets: TargetSpec, eigen_smooth: bool) -> CAMResult:
        xin = x.detach().requires_grad_(True)
        biases: dict = {}
        with (
            capture(self.model, self.layers, track_gradients=True) as state,
            self._bias_hooks(biases),
            torch.enable_grad(),
        ):
            output = self._forward(xin)
            scorer = resolve_targets(targets, output)
            scores = scorer(output)
            if not scores.requires_grad:
                raise LayerNotReachedError("the target score does not depend on the input; check `model_output`")
            names = [n for n, _ in self.layers if n in state.activations and state.activations[n].ndim == x.ndim]
            grads = torch.autograd.grad(scores.sum(), [xin] + [state.activations[n] for n in names], allow_unused=True)
            state.active = False
        with torch.no_grad():
            maps, layer_names = [], []
            terms = [(INPUT_TERM, grads[0], None)] + list(zip(names, grads[1:], [biases.get(n) for n in names]))
            for name, g, bias in terms:
                if g is None:
                    continue
                if bias is None:
                    term = g.float() * x.float()
                else:
                    term = bias.view(*bias.shape, *([1] * (g.ndim - 2))) * g.float()
                maps.append(rescale(term).sum(1, keepdim=True))
                layer_names.append(name)
            heat = self.combine_layers(maps, x)
        warn_empty(scorer)
        return CAMResult(
            heat=heat, output=output.detach(), layer_maps=maps, scores=scores.detach(), layer_names=layer_names
        )
