"""Steps of the engine's skeleton that do not depend on the method: input checks, the
training-mode warning, the choice of a layer's call, the gradients of a chunk of targets."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from volcam.capture import Captured
from volcam.errors import LayerCallError, LayerCallWarning, LayerNotReachedError, ShapeError, TrainingModeWarning
from volcam.targets import BoundTarget, Scorer, TargetSpec

__all__ = [
    "CHUNK_VALUES",
    "check_input",
    "describe_target",
    "warn_training",
    "select_calls",
    "chunk_size",
    "gradients",
    "output_seed",
    "score_fn",
    "as_scores",
    "by_sample",
]


#: a chunk of targets' gradients holds at most this many float32 values (512 MiB)
CHUNK_VALUES = 2**27

#: take the gradients of a chunk of targets with one vmap-batched backward pass
#: (``is_grads_batched``) instead of one backward pass per target. Off: on the CPU the
#: batched pass was 1.6x slower than the loop (13 classes of a 96^3 UNet, 1 thread)
BATCHED_BACKWARD = False

_TRAINING_MODULES = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def check_input(x: Any) -> None:
    """Refuse what cannot be an input ``[B, C, *S]``."""
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


def describe_target(spec: TargetSpec) -> str:
    """A short description of a target specification, for messages."""
    if spec is None:
        return "the default target"
    if isinstance(spec, int) and not isinstance(spec, bool):
        return f"class {spec}"
    if isinstance(spec, (list, tuple)):
        return "per-sample targets"
    name = getattr(spec, "__name__", None)
    return f"target {name}" if name and name != "<lambda>" else repr(spec)


def warn_training(cam: Any, model: nn.Module, stacklevel: int) -> None:
    if cam._warned_training:
        return
    if model.training or any(m.training for m in model.modules() if isinstance(m, _TRAINING_MODULES)):
        cam._warned_training = True
        warnings.warn(
            f"the model is in training mode: dropout and batch statistics can make its maps change from call "
            f"to call; call model.eval() before explaining (warned once per {type(cam).__name__} object)",
            TrainingModeWarning,
            stacklevel=stacklevel,
        )


def select_calls(cam: Any, state: Captured, stacklevel: int) -> tuple[list[torch.Tensor | None], dict[str, int]]:
    """The captured tensor of each target layer (the call ``layer_call`` chooses)."""
    chosen: list[torch.Tensor | None] = []
    indices: dict[str, int] = {}
    missing = []
    for name, _ in cam.layers:
        calls = state.calls.get(name, [])
        n = len(calls)
        if n == 0:
            missing.append(name)
            chosen.append(None)
            continue
        if cam.layer_call is None:
            index = n - 1
            if n > 1:
                warnings.warn(
                    f"target layer {name!r} ran {n} times in one forward pass (a shared or recurrent module); "
                    "the map explains its last call. Pass `layer_call=` (0-based, negative counts from the end) "
                    "to choose a call, or layer_call='error' to refuse such layers",
                    LayerCallWarning,
                    stacklevel=stacklevel,
                )
        elif cam.layer_call == "error":
            if n > 1:
                raise LayerCallError(
                    f"target layer {name!r} must run once per forward pass (layer_call='error'), not {n} times; "
                    "pass `layer_call=` with the call to explain, or choose another layer"
                )
            index = 0
        else:
            index = cam.layer_call if cam.layer_call >= 0 else n + cam.layer_call
            if not 0 <= index < n:
                raise LayerCallError(
                    f"`layer_call` must name a call of target layer {name!r}, which ran {n} time(s) "
                    f"(calls 0 to {n - 1}, or -1 to -{n}), not {cam.layer_call}"
                )
        indices[name] = index
        chosen.append(calls[index])
    if missing and cam.all_layers_required:
        raise LayerNotReachedError(cam.describe_missing(missing))
    return chosen, indices


def chunk_size(requested: int | None, targets: int, batch: int, wrt: list[torch.Tensor]) -> int:
    if requested is not None:
        return min(requested, targets)
    per_target = batch * sum(t[0].numel() if t.shape[0] == batch else t.numel() for t in wrt)
    return max(1, min(targets, CHUNK_VALUES // max(1, per_target)))


def output_seed(scorer: Scorer, output: torch.Tensor) -> torch.Tensor | None:
    """``d score / d output`` of a built-in target (the mask, in the target's channel), or
    None for a target whose gradient only autograd knows."""
    if not isinstance(scorer, BoundTarget):
        return None
    seed = torch.zeros_like(output)
    cats = scorer.categories
    if scorer.masks is None:  # classifier [B, classes]
        return seed.scatter_(1, cats.view(-1, 1), 1.0)
    index = cats.view(-1, 1, *([1] * (output.ndim - 2))).expand(-1, 1, *output.shape[2:])
    return seed.scatter_(1, index, scorer.masks.unsqueeze(1).to(seed.dtype))


def gradients(
    output: torch.Tensor, scorers: Sequence[Scorer], wrt: list[torch.Tensor], retain: bool
) -> list[torch.Tensor | None]:
    """Gradients ``[t * B, ...]`` (targets outer) of the scores of ``t`` targets with respect
    to ``wrt``, one backward pass per target.

    A built-in target's score is a masked sum of one output channel: its gradient with
    respect to the output is known (:func:`output_seed`), so the backward pass starts at the
    output with it, and the other targets' scores take no part in it. Other targets are
    scored again with autograd. With ``BATCHED_BACKWARD`` the passes of built-in targets
    run as one vmap-batched pass.
    """
    batch, t = output.shape[0], len(scorers)
    seeds = [output_seed(s, output) for s in scorers]
    if BATCHED_BACKWARD and t > 1 and all(seed is not None for seed in seeds):
        grads = torch.autograd.grad(
            output,
            wrt,
            grad_outputs=torch.stack([seed for seed in seeds if seed is not None]),
            is_grads_batched=True,
            retain_graph=retain,
            allow_unused=True,
        )
        return [None if g is None else g.flatten(0, 1) for g in grads]
    per_target = []
    for k, (scorer, seed) in enumerate(zip(scorers, seeds)):
        keep = retain or k < t - 1
        if seed is not None:
            per_target.append(torch.autograd.grad(output, wrt, grad_outputs=seed, retain_graph=keep, allow_unused=True))
            continue
        score = as_scores(scorer(output), batch)
        if not score.requires_grad:
            raise LayerNotReachedError(
                "the target score does not depend on the output of the target layers; "
                "choose a layer on the path to the selected model output"
            )
        per_target.append(torch.autograd.grad(score.sum(), wrt, retain_graph=keep, allow_unused=True))
    out: list[torch.Tensor | None] = []
    for i in range(len(wrt)):
        column = [g[i] for g in per_target]
        out.append(None if any(g is None for g in column) else torch.cat([g for g in column if g is not None]))
    return out


def score_fn(scorers: Sequence[Scorer]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def score(output: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        return torch.stack([as_scores(s(output, samples), output.shape[0]) for s in scorers], 1)

    return score


def as_scores(scores: Any, rows: int) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or scores.shape != (rows,):
        shape = list(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ShapeError(
            f"a target must give one score per sample, shape [{rows}], not {shape}",
            expected=f"[{rows}]",
            actual_shape=tuple(scores.shape) if isinstance(scores, torch.Tensor) else None,
        )
    return scores.float()


def by_sample(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """``[T * B, ...] -> [B, T, ...]`` (rows are targets outer, samples inner)."""
    return rows.reshape(-1, batch, *rows.shape[1:]).transpose(0, 1)
