"""Capture target-layer activations for one CAM computation, and leave the model as it was.

``capture(model, layers, ...)`` is a context manager that

- installs one forward hook per target layer. The hook picks the tensor to explain out of
  the layer's output (a *selector* handles tuple, list and dict outputs), keeps it, and
  hands the rest of the network a clone in the same place of the same structure, so
  in-place operations downstream (``ReLU(inplace=True)``) neither corrupt the kept
  tensor nor break the backward pass. A layer that runs several times in one forward pass
  (weight sharing, recurrence) has every call kept, in order;
- when gradients are needed, sets every parameter to ``requires_grad=False`` and turns
  the captured activation into a fresh leaf that requires grad: everything before the
  target layer runs like inference (no graph, no saved tensors) and the backward pass
  stops at the layer. For a layer with a structured output (a selector is given), the
  graph starts at the layer's inputs instead, so that paths from the selected tensor to
  the layer's other outputs count too;
- in ``finally`` (errors included) removes its hooks, restores every ``requires_grad``
  flag and, for a model in training mode, the buffers (batch-norm running statistics)
  that the forward pass updated.

A model whose parameters were created under ``torch.inference_mode()`` cannot take part
in a gradient computation; :func:`capture` refuses it before changing anything.

:func:`channels_last_convolutions` is the context the engine runs its forward pass in on
the CPU: convolution modules whose input requires grad (the part of the network after the
target layer) run in channels-last memory format, where PyTorch's CPU kernels, above all the
backward of 3D convolutions with few channels, are several times faster. The values are
those of the contiguous computation up to float rounding.

Captured tensors live in the :class:`Captured` object of that call, never on the method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from volcam.errors import ModelStateError
from volcam.selectors import Selector, replace, select

__all__ = ["Captured", "capture", "channels_last_convolutions", "check_parameters"]

Hook = Callable[[nn.Module, Any, Any], Any]
PreHook = Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]


class Captured:
    """What one forward pass captured: every call of every target layer, in order.

    ``active`` switches capturing off for extra forward passes (perturbation methods).
    """

    def __init__(self) -> None:
        self.calls: dict[str, list[torch.Tensor]] = {}
        self.active = True

    @property
    def activations(self) -> dict[str, torch.Tensor]:
        """The last call of each layer that ran."""
        return {name: calls[-1] for name, calls in self.calls.items()}

    def count(self, name: str) -> int:
        """How many times layer ``name`` ran in the forward pass."""
        return len(self.calls.get(name, []))


def _make_hook(state: Captured, name: str, selector: Selector, track_gradients: bool) -> Hook:
    what = f"layer {name!r} output"

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not state.active:
            return None
        tensor = select(output, selector, what=what)
        if track_gradients:
            # Already part of a graph (an earlier target layer or call feeds it, or the input
            # requires grad): keep it as it is. Otherwise start the graph here with a fresh leaf.
            kept = tensor if tensor.requires_grad else tensor.detach().requires_grad_(True)
        else:
            kept = tensor.detach()
        state.calls.setdefault(name, []).append(kept)
        return replace(output, selector, kept.clone(), old=tensor)

    return hook


def _make_pre_hook(state: Captured) -> PreHook:
    """Start the graph at the layer's *inputs* (used for layers with structured outputs).

    When a layer returns several tensors, the selected one may also feed the others
    inside the layer (an encoder returning ``(pool(skip), [skip])``). Starting the graph at
    the layer's inputs keeps those paths, so the gradient with respect to the selected
    tensor is the total derivative; the cost is the graph of that one layer.
    """

    def pre_hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
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


def check_parameters(model: nn.Module) -> None:
    """Refuse a model whose parameters are inference tensors (created under
    ``torch.inference_mode()``): they can take no part in a gradient computation.

    Raises:
        ModelStateError: naming the first such parameters and what to do.
    """
    frozen = [n for n, p in model.named_parameters() if p.is_inference()]
    if frozen:
        shown = ", ".join(repr(n) for n in frozen[:3]) + (f" and {len(frozen) - 3} more" if len(frozen) > 3 else "")
        raise ModelStateError(
            f"the model's parameters must be ordinary tensors, not inference tensors created under "
            f"torch.inference_mode() ({shown}); gradient methods cannot use them. Build or load the model "
            "outside inference mode, or replace them by clones made outside it: "
            "`model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)`"
        )


@contextmanager
def capture(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    *,
    layer_output: Selector = None,
    track_gradients: bool = True,
) -> Iterator[Captured]:
    """Install the capture hooks for one computation; see the module docstring.

    Raises:
        ModelStateError: gradients are needed and the parameters are inference tensors
            (nothing is changed then).
    """
    if track_gradients:
        check_parameters(model)
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
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        state.active = False


def _channels_last_pre_hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    x = args[0] if args else None
    if not (isinstance(x, torch.Tensor) and x.requires_grad and x.device.type == "cpu" and x.dtype == torch.float32):
        return None
    if x.ndim == 5:
        return (x.contiguous(memory_format=torch.channels_last_3d), *args[1:])
    if x.ndim == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


@contextmanager
def channels_last_convolutions(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """See the module docstring: a forward pre-hook on each 2D/3D convolution of ``model``
    for the duration of the context (a no-op when ``enabled`` is False)."""
    handles = []
    try:
        if enabled:
            for m in model.modules():
                if isinstance(m, nn.modules.conv._ConvNd) and len(m.kernel_size) in (2, 3):
                    handles.append(m.register_forward_pre_hook(_channels_last_pre_hook))
        yield
    finally:
        for h in handles:
            h.remove()
