"""Capture target-layer activations for one CAM computation, and leave the model as it was.

``capture(model, layers, ...)`` is a context manager that

- installs one forward hook per target layer. The hook picks the tensor to explain out of
  the layer's output (a *selector* handles tuple, list and dict outputs), keeps it, and
  hands the rest of the network a clone in the same place of the same structure, so
  in-place operations downstream (``ReLU(inplace=True)``) neither corrupt the kept
  tensor nor break the backward pass;
- when gradients are needed, sets every parameter to ``requires_grad=False`` and turns
  the first captured activation into a fresh leaf that requires grad: everything before
  the target layer runs like inference (no graph, no saved tensors) and the backward
  pass stops at the layer. For a layer with a structured output (a selector is given),
  the graph starts at the layer's inputs instead, so that paths from the selected tensor
  to the layer's other outputs count too;
- in ``finally`` (errors included) removes its hooks, restores every ``requires_grad``
  flag and, for a model in training mode, the buffers (batch-norm running statistics)
  that the forward pass updated.

Captured tensors live in the :class:`Captured` object of that call, never on the method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from volcam.selectors import Selector, replace, select

__all__ = ["Captured", "capture"]


class Captured:
    """What one forward pass captured: ``activations[name]`` per target layer.

    ``active`` switches capturing off for extra forward passes (perturbation methods).
    """

    def __init__(self) -> None:
        self.activations: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self.active = True


def _make_hook(state: Captured, name: str, selector: Selector, track_gradients: bool) -> Callable:
    what = f"layer {name!r} output"

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not state.active:
            return None
        tensor = select(output, selector, what=what)
        if track_gradients:
            # Already part of a graph (an earlier target layer feeds it, or the input requires
            # grad): keep it as it is. Otherwise start the graph here with a fresh leaf.
            kept = tensor if tensor.requires_grad else tensor.detach().requires_grad_(True)
        else:
            kept = tensor.detach()
        state.activations[name] = kept
        state.calls[name] = state.calls.get(name, 0) + 1
        return replace(output, selector, kept.clone(), old=tensor)

    return hook


def _make_pre_hook(state: Captured) -> Callable:
    """Start the graph at the layer's *inputs* (used for layers with structured outputs).

    When a layer returns several tensors, the selected one may also feed the others
    inside the layer (an encoder returning ``(pool(skip), [skip])``). Starting the graph at
    the layer's inputs keeps those paths, so the gradient with respect to the selected
    tensor is the total derivative; the cost is the graph of that one layer.
    """

    def pre_hook(_module: nn.Module, args: tuple) -> tuple | None:
        if not state.active:
            return None
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if any(t.requires_grad for t in tensors):
            return None  # the graph started upstream already
        return tuple(
            a.detach().requires_grad_(True).clone() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args
        )

    return pre_hook


@contextmanager
def capture(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    *,
    layer_output: Selector = None,
    track_gradients: bool = True,
) -> Iterator[Captured]:
    """Install the capture hooks for one computation; see the module docstring."""
    state = Captured()
    handles = []
    flags = [(p, p.requires_grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()] if model.training else []
    try:
        if track_gradients:
            for p, _ in flags:
                p.requires_grad_(False)
        for name, module in layers:
            if track_gradients and layer_output is not None:
                handles.append(module.register_forward_pre_hook(_make_pre_hook(state)))
            handles.append(module.register_forward_hook(_make_hook(state, name, layer_output, track_gradients)))
        yield state
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        state.active = False
