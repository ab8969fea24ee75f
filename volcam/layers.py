"""Find target layers by dotted name or by module, list a model's layers with the shapes of
their outputs, and find the usual candidates of an encoder-decoder (the bottleneck and each
decoder stage) to help choose a target layer."""

from __future__ import annotations

import difflib
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from volcam.errors import LayerNotFoundError, VolcamError
from volcam.selectors import describe

LayerSpec = str | nn.Module

__all__ = ["LayerInfo", "LayerCandidate", "find_layer", "resolve_layers", "list_layers", "candidate_layers"]


@dataclass(frozen=True)
class LayerInfo:
    """One module of a model: its dotted name, class name and output shape (or structure)."""

    name: str
    type_name: str
    output_shape: str
    num_parameters: int


def find_layer(model: nn.Module, layer: LayerSpec) -> tuple[str, nn.Module]:
    """Return ``(dotted_name, module)`` for a dotted name or a module of ``model``.

    Raises:
        LayerNotFoundError: the name is not a module of ``model`` (the message lists the
            closest names), or the module given is not part of ``model``.
    """
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise LayerNotFoundError(
            f"`target_layers` must be modules of the model, not a {type(layer).__name__} that is not part of it",
            name=None,
        )
    if not isinstance(layer, str):
        raise LayerNotFoundError(
            f"`target_layers` must be dotted module names or modules, not {layer!r} ({type(layer).__name__})"
        )
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return layer, modules[layer]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
    if not close:  # fall back to the names sharing the longest prefix
        prefix = layer.rsplit(".", 1)[0]
        close = [n for n in names if n.startswith(prefix)][:3]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; `volcam layers` lists them"
    raise LayerNotFoundError(
        f"`target_layers` must name a module of the model, not {layer!r}{hint}",
        name=layer,
        suggestions=tuple(close),
    )


def resolve_layers(model: nn.Module, target_layers: LayerSpec | Sequence[LayerSpec]) -> list[tuple[str, nn.Module]]:
    """Normalise ``target_layers`` (one or a list of names/modules) to ``[(name, module), ...]``."""
    if isinstance(target_layers, (str, nn.Module)):
        target_layers = [target_layers]
    layers = [find_layer(model, t) for t in target_layers]
    if not layers:
        raise LayerNotFoundError("`target_layers` must name at least one module, not an empty list")
    names = [n for n, _ in layers]
    if len(set(names)) != len(names):
        raise LayerNotFoundError(f"`target_layers` must not repeat a layer, not {names}")
    return layers


def list_layers(model: nn.Module, example_input: torch.Tensor, **forward_kwargs: Any) -> list[LayerInfo]:
    """Run ``model`` once on ``example_input`` (no gradients) and list every module in
    execution order with the shape of its output.

    The model's mode, parameters and buffers are left as they were.
    """
    records: dict[str, str] = {}
    order: list[str] = []
    modules = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        name = modules[module]
        if name not in records:
            order.append(name)
        records[name] = describe(output)

    _probe(model, example_input, [m.register_forward_hook(hook) for m in modules], forward_kwargs)
    by_name = dict(model.named_modules())
    return [
        LayerInfo(
            name=n or "(model)",
            type_name=type(by_name[n]).__name__,
            output_shape=records[n],
            num_parameters=sum(p.numel() for p in by_name[n].parameters()),
        )
        for n in order
    ]


@dataclass(frozen=True)
class LayerCandidate:
    """A layer that usually makes a good target layer of an encoder-decoder.

    Attributes:
        name: the dotted module name.
        role: ``"bottleneck"`` (the coarsest features of the encoder) or ``"decoder"`` (the
            last module of a decoder stage, at that stage's resolution).
        output_shape: ``(B, C, *S)`` of its output on the example input.
        scale: its output's size per spatial axis divided by the input's (0.5: half resolution).
    """

    name: str
    role: str
    output_shape: tuple[int, ...]
    scale: tuple[float, ...] = field(default=())


@dataclass
class _Event:
    name: str
    start: int
    end: int = -1
    in_voxels: int = 0
    out_voxels: int = 0
    out_shape: tuple[int, ...] = ()
    concat: bool = False
    output: Any = None


def _spatial(t: Any, ndim: int) -> bool:
    return isinstance(t, torch.Tensor) and t.ndim == ndim and t.is_floating_point()


def candidate_layers(model: nn.Module, example_input: torch.Tensor, **forward_kwargs: Any) -> list[LayerCandidate]:
    """The bottleneck and the decoder stages of an encoder-decoder, found by running it once.

    Every module's output resolution is recorded in execution order. The *bottleneck* is
    the outermost module at the coarsest resolution (not inside an upsampling module, and
    not a skip connection that concatenates its input to its output); a *decoder stage*
    is, for each finer resolution reached after the bottleneck, the last module at that
    resolution that started after the bottleneck (so containers that also hold encoder
    layers, skip connections and the output block are left out). This is the rule
    "modules whose output resolution goes down, then up"; it finds the usual layers of
    MONAI's ``UNet``, ``BasicUNet``, ``SegResNet`` and ``DynUNet``.

    Args:
        model: the network (its mode, parameters and buffers are left as they were).
        example_input: ``[B, C, *S]``, as the network expects (small sizes are enough).
        forward_kwargs: passed to the model's forward.

    Returns:
        The bottleneck first, then the decoder stages from coarse to fine; empty when the
        network has no encoder-decoder shape (its resolution never goes down and up).

    Example:
        >>> net = monai.networks.nets.UNet(3, 1, 3, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2)
        >>> [(c.role, c.name) for c in candidate_layers(net.eval(), torch.zeros(1, 1, 64, 64, 64))]
        [('bottleneck', 'model.1.submodule.1.submodule.1.submodule.1.submodule'),
         ('decoder', 'model.1.submodule.1.submodule.1.submodule.2'),
         ('decoder', 'model.1.submodule.1.submodule.2'),
         ('decoder', 'model.1.submodule.2')]
    """
    ndim = example_input.ndim
    in_voxels = math.prod(example_input.shape[2:])
    names = {m: n for n, m in model.named_modules()}
    events: dict[str, _Event] = {}
    counter = [0]

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        name = names[module]
        if name not in events:
            events[name] = _Event(name, counter[0])
        counter[0] += 1

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        event = events.get(names[module])
        if event is None or event.end >= 0:
            return
        event.end = counter[0]
        counter[0] += 1
        inputs = [a for a in args if _spatial(a, ndim)]
        if not _spatial(output, ndim) or not inputs:
            return
        first = inputs[0]
        event.in_voxels = math.prod(first.shape[2:])
        event.out_voxels = math.prod(output.shape[2:])
        event.out_shape = tuple(output.shape)
        event.output = weakref.ref(output)
        c = first.shape[1]
        if output.shape[1] > c and output.shape[2:] == first.shape[2:]:  # a concatenating skip?
            event.concat = bool(torch.equal(output[:, :c], first) or torch.equal(output[:, -c:], first))

    handles = [m.register_forward_pre_hook(pre_hook) for m in names] + [m.register_forward_hook(hook) for m in names]
    final = _probe(model, example_input, handles, forward_kwargs)
    spatial = [e for e in events.values() if e.name and e.output is not None and e.end >= 0]
    modules = dict(model.named_modules())

    def inside(names_of: list[str]) -> set[int]:
        """ids of the modules strictly inside the named ones (module objects, not names:
        a module registered twice has one name)."""
        return {id(m) for n in names_of for m in modules[n].modules() if m is not modules[n]}

    # the output block: the outermost module whose output is the model's output, among those
    # that do not hold the whole network; it and what it holds are no candidates, nor are
    # the containers around it
    finals = [e for e in spatial if e.output() is final]
    entry = id(modules[min(spatial, key=lambda e: e.start).name]) if spatial else None
    blocks = [e for e in finals if entry not in {id(m) for m in modules[e.name].modules()}]
    head = [min(blocks, key=lambda e: e.start).name] if blocks else []
    held = inside(head)
    spatial = [e for e in spatial if e not in finals and id(modules[e.name]) not in held]
    if not spatial:
        return []
    coarsest = min(e.out_voxels for e in spatial)
    if coarsest >= in_voxels:
        return []
    # modules inside an upsampling module belong to it (its convolution before the upsampling)
    within_up = inside([e.name for e in spatial if e.out_voxels > e.in_voxels])
    usable = [e for e in spatial if not e.concat and id(modules[e.name]) not in within_up]
    bottom = [e for e in usable if e.out_voxels == coarsest]
    if not bottom:
        return []
    bottleneck = max(bottom, key=lambda e: e.end)

    def candidate(e: _Event, role: str) -> LayerCandidate:
        scale = tuple(o / i for o, i in zip(e.out_shape[2:], example_input.shape[2:]))
        return LayerCandidate(e.name, role, e.out_shape, scale)

    stages: dict[int, _Event] = {}
    first: dict[int, int] = {}
    for e in sorted(usable, key=lambda e: e.end):
        if e.start > bottleneck.end and e.out_voxels > coarsest:
            stages[e.out_voxels] = e  # the last one at each resolution
            first.setdefault(e.out_voxels, e.end)
    order = sorted(stages.values(), key=lambda e: first[e.out_voxels])
    return [candidate(bottleneck, "bottleneck")] + [candidate(e, "decoder") for e in order]


def _probe(model: nn.Module, example_input: torch.Tensor, handles: list[Any], forward_kwargs: dict[str, Any]) -> Any:
    """One forward pass of ``model`` on ``example_input`` without gradients, with the hooks of
    ``handles`` removed afterwards and, for a model in training mode, its buffers (batch-norm
    statistics) put back; returns the output."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()] if model.training else []
    try:
        with torch.no_grad():
            return model(example_input, **forward_kwargs)
    except Exception as err:
        raise VolcamError(f"the model failed on an example input of shape {list(example_input.shape)}: {err}") from err
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
