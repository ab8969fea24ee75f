"""Leave the caller's world as it was: random state and train/eval mode.

A CAM computed from inside a training loop must not change what the loop does next.
The engine (:func:`volcam.capture.capture`) already restores hooks, ``requires_grad``
flags and batch-norm buffers; what is left is the random state (a forward pass in
training mode draws dropout masks) and the modules' train/eval flags.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

__all__ = ["preserved_state", "model_device"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextmanager
def preserved_state(model: nn.Module, *, eval_mode: bool = True) -> Iterator[None]:
    """Run a block with ``model`` in eval mode (if ``eval_mode``) and restore, in ``finally``,
    every module's train/eval flag and the torch (CPU and the model's CUDA device), numpy
    and Python random states."""
    device = model_device(model)
    cuda = [device] if device.type == "cuda" else []
    modes = [(m, m.training) for m in model.modules()]
    py_state = random.getstate()
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=cuda):
        try:
            if eval_mode:
                model.eval()
            yield
        finally:
            for m, flag in modes:
                m.training = flag
            random.setstate(py_state)
            np.random.set_state(np_state)
