"""Find target layers by dotted name or by module, and list a model's layers with the
shapes of their outputs (to help choose a target layer)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from volcam.errors import LayerNotFoundError, VolcamError
from volcam.selectors import describe

LayerSpec = str | nn.Module

__all__ = ["LayerInfo", "find_layer", "resolve_layers", "list_layers"]


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

    handles = [m.register_forward_hook(hook) for m in modules]
    buffers = [(b, b.detach().clone()) for b in model.buffers()] if model.training else []
    try:
        with torch.no_grad():
            model(example_input, **forward_kwargs)
    except Exception as err:
        raise VolcamError(f"the model failed on an example input of shape {list(example_input.shape)}: {err}") from err
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
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
