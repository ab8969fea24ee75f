"""The engine's skeleton, shared by every method: one forward pass with the capture hooks,
the targets bound to its output, the gradients of all targets (in chunks, each chunk one
batched backward pass), the method's maps, and the checks after the computation.

Methods never copy this; they override the hooks of :class:`~volcam.methods.base.BaseCAM`.
Several methods of the same layers can share one pass (:func:`compute` with several CAM
objects): they differ only in how they combine ``A`` and ``dy/dA``.

Host synchronisation: none until the end, where :func:`volcam.diagnostics.read_evidence`
reads the checks (non-finite values, empty targets and maps) in one transfer.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from volcam.capture import Captured, capture, channels_last_convolutions
from volcam.diagnostics import Evidence, read_evidence, report
from volcam.errors import (
    LayerCallError,
    LayerCallWarning,
    LayerNotReachedError,
    ModelStateError,
    ShapeError,
    TrainingModeWarning,
)
from volcam.result import CAMResult, LayerContext
from volcam.selectors import select
from volcam.smoothing import as_settings, explain_augmented
from volcam.targets import Scorer, TargetSpec, bind_targets, empty_rows

__all__ = ["run", "compute", "check_input", "describe_target"]

#: a chunk of targets' gradients holds at most this many float32 values (512 MiB)
CHUNK_VALUES = 2**27

#: take the gradients of a chunk of targets with one vmap-batched backward pass
#: (``is_grads_batched``); False: one backward pass per target
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


def _warn_training(cam: Any, model: nn.Module, stacklevel: int) -> None:
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


def _select_calls(cam: Any, state: Captured, stacklevel: int) -> tuple[list[torch.Tensor | None], dict[str, int]]:
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


def _chunk_size(requested: int | None, targets: int, batch: int, wrt: list[torch.Tensor]) -> int:
    if requested is not None:
        return min(requested, targets)
    per_target = batch * sum(t[0].numel() if t.shape[0] == batch else t.numel() for t in wrt)
    return max(1, min(targets, CHUNK_VALUES // max(1, per_target)))


def _gradients(scores: torch.Tensor, wrt: list[torch.Tensor], retain: bool) -> list[torch.Tensor | None]:
    """Gradients ``[t * B, ...]`` (targets outer) of the ``t`` columns of ``scores`` ``[B, t]``."""
    t = scores.shape[1]
    if t == 1:
        return list(torch.autograd.grad(scores[:, 0].sum(), wrt, retain_graph=retain, allow_unused=True))
    if BATCHED_BACKWARD:
        eye = torch.eye(t, dtype=scores.dtype, device=scores.device).unsqueeze(1).expand(t, scores.shape[0], t)
        grads = torch.autograd.grad(
            scores, wrt, grad_outputs=eye, is_grads_batched=True, retain_graph=retain, allow_unused=True
        )
        return [None if g is None else g.flatten(0, 1) for g in grads]
    per_target = [
        torch.autograd.grad(scores[:, k].sum(), wrt, retain_graph=retain or k < t - 1, allow_unused=True)
        for k in range(t)
    ]
    out: list[torch.Tensor | None] = []
    for i in range(len(wrt)):
        column = [g[i] for g in per_target]
        out.append(None if any(g is None for g in column) else torch.cat([g for g in column if g is not None]))
    return out


def _score_fn(scorers: Sequence[Scorer]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def score(output: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        return torch.stack([_scores(s(output, samples), output.shape[0]) for s in scorers], 1)

    return score


def _scores(scores: Any, rows: int) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or scores.shape != (rows,):
        shape = list(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ShapeError(
            f"a target must give one score per sample, shape [{rows}], not {shape}",
            expected=f"[{rows}]",
            actual_shape=tuple(scores.shape) if isinstance(scores, torch.Tensor) else None,
        )
    return scores.float()


def _by_sample(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """``[T * B, ...] -> [B, T, ...]`` (rows are targets outer, samples inner)."""
    return rows.reshape(-1, batch, *rows.shape[1:]).transpose(0, 1)


def compute(
    cams: Sequence[Any],
    x: torch.Tensor,
    specs: Sequence[TargetSpec],
    *,
    eigen_smooth: bool,
    class_chunk: int | None,
    stacklevel: int = 2,
) -> list[tuple[CAMResult, Evidence]]:
    """One un-augmented computation of ``T = len(specs)`` targets for each of ``cams``
    (which share the model, layers and selectors of ``cams[0]``), from one forward pass.

    Returns, per CAM object, its :class:`CAMResult` (heat ``[B, T, *S]``, scores
    ``[B, T]``, no notes yet) and the :class:`~volcam.diagnostics.Evidence` to check.
    """
    lead = cams[0]
    model: nn.Module = lead.model
    check_input(x)
    need = any(c.needs_gradients for c in cams)
    input_grad = any(c.input_gradient for c in cams)
    if need and torch.is_inference_mode_enabled():
        raise ModelStateError(
            "gradient CAMs cannot be computed under torch.inference_mode(): call outside of it "
            "(torch.no_grad() around the call is fine)"
        )
    for c in cams:
        _warn_training(c, model, stacklevel + 1)
    batch, n_targets = x.shape[0], len(specs)
    record: dict[str, Any] = {}
    with ExitStack() as stack:
        for c in cams:
            stack.enter_context(c.extra_hooks(record))
        state = stack.enter_context(capture(model, lead.layers, layer_output=lead.layer_output, track_gradients=need))
        stack.enter_context(torch.enable_grad() if need else torch.no_grad())
        xin = x.detach().requires_grad_(True) if input_grad else x
        with channels_last_convolutions(model, need and lead.channels_last):
            output = select(model(xin), lead.model_output, what="model output")
        state.active = False
        activations, calls = _select_calls(lead, state, stacklevel + 1)
        record["calls"] = calls
        record["call_order"] = list(state.calls)
        scorers = bind_targets(specs, output)
        scores = torch.stack([_scores(s(output), batch) for s in scorers], 1)  # [B, T]
        evidence_base = {
            "empty_target": torch.stack([empty_rows(s, batch, x.device) for s in scorers], 1),
            "nonfinite_input": (~torch.isfinite(x.detach())).sum() if x.is_floating_point() else torch.zeros(()),
            "nonfinite_output": (~torch.isfinite(output.detach())).sum(),
        }
        reached = [a for a in activations if a is not None]
        wrt = ([xin] if input_grad else []) + reached
        if need and not scores.requires_grad:
            names = [n for n, _ in lead.layers]
            raise LayerNotReachedError(
                f"the target score does not depend on the output of target layer(s) {names}; "
                "choose a layer on the path to the selected model output"
            )
        chunk = _chunk_size(class_chunk, n_targets, batch, wrt) if need else n_targets

        def forward(batch_input: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return select(model(batch_input), lead.model_output, what="model output")

        per_cam: list[dict[str, list[torch.Tensor]]] = [{} for _ in cams]
        grad_zero: dict[str, list[torch.Tensor]] = {}
        weights_nonpos: list[dict[str, list[torch.Tensor]]] = [{} for _ in cams]
        for start in range(0, n_targets, chunk):
            stop = min(start + chunk, n_targets)
            t = stop - start
            layer_grads: list[torch.Tensor | None] = [None] * len(activations)
            input_g = None
            if need:
                grads = _gradients(scores[:, start:stop], wrt, retain=stop < n_targets)
                if input_grad:
                    input_g, grads = grads[0], grads[1:]
                it = iter(grads)
                layer_grads = [next(it) if a is not None else None for a in activations]
                unused = [
                    n for (n, _), a, g in zip(lead.layers, activations, layer_grads) if a is not None and g is None
                ]
                if unused and lead.all_layers_required:
                    raise LayerNotReachedError(
                        f"the target score does not depend on the output of target layer(s) {unused}; "
                        "choose a layer on the path to the selected model output"
                    )
                for (name, _), g in zip(lead.layers, layer_grads):
                    if g is not None:
                        zero = g.detach().flatten(1).abs().amax(1) == 0
                        grad_zero.setdefault(name, []).append(zero.reshape(t, batch))
            for i, c in enumerate(cams):
                agnostic = c.class_agnostic and t > 1
                rows_t = 1 if agnostic else t
                ctx = LayerContext(
                    name="",
                    x=x,
                    forward=forward,
                    score=_score_fn(scorers[start:stop]),
                    scores=scores[:, start:stop].detach(),
                    eigen_smooth=eigen_smooth,
                    batch=batch,
                    num_targets=rows_t,
                    extra={**record, "input_grad": input_g},
                )
                cam_grads = layer_grads if c.needs_gradients else [None] * len(activations)
                with torch.no_grad():
                    pairs = c.layer_maps([None if a is None else a.detach() for a in activations], cam_grads, ctx)
                for name, m in pairs:
                    m = m.float()
                    if agnostic:
                        m = m.repeat(t, *([1] * (m.ndim - 1)))
                    per_cam[i].setdefault(name, []).append(m)
                for name, w in ctx.extra.get("weights", {}).items():
                    nonpos = (w <= 0).flatten(1).all(1).reshape(rows_t, batch).expand(t, batch)
                    weights_nonpos[i].setdefault(name, []).append(nonpos)
    results = []
    for i, c in enumerate(cams):
        names = list(per_cam[i])
        raw = [
            _by_sample(torch.cat(per_cam[i][n]), batch).reshape(batch, n_targets, *per_cam[i][n][0].shape[2:])
            for n in names
        ]
        raw_max: list[torch.Tensor | None] = [r.flatten(2).amax(2) for r in raw]
        maps = [torch.relu(r) if c.relu else r for r in raw]
        with torch.no_grad():
            heat = c.combine_layers(maps, x).float()
        evidence = Evidence(
            empty_target=evidence_base["empty_target"],
            nonfinite_input=evidence_base["nonfinite_input"],
            nonfinite_output=evidence_base["nonfinite_output"],
            layers=names,
            grad_zero=[torch.cat(grad_zero[n]).T if n in grad_zero and c.needs_gradients else None for n in names],
            weights_nonpos=[torch.cat(weights_nonpos[i][n]).T if n in weights_nonpos[i] else None for n in names],
            raw_max=raw_max,
        )
        result = CAMResult(
            heat=heat,
            output=output.detach(),
            layer_maps=maps,
            scores=scores.detach(),
            layer_names=names,
        )
        results.append((result, evidence))
    return results


def run(
    cam: Any,
    x: torch.Tensor,
    specs: list[TargetSpec],
    *,
    aug_smooth: Any,
    eigen_smooth: bool | None,
    class_chunk: int | None,
    stacklevel: int = 2,
) -> CAMResult:
    """One :meth:`~volcam.BaseCAM.explain_targets` call of ``cam``: the computation (with
    ``aug_smooth`` if asked), then the checks, warnings and notes."""
    check_input(x)
    aug = cam.aug_smooth if aug_smooth is None else aug_smooth
    eigen = cam.eigen_smooth if eigen_smooth is None else bool(eigen_smooth)
    chunk = cam.class_chunk if class_chunk is None else class_chunk
    if aug:
        settings = as_settings(aug)

        def one(inputs: torch.Tensor, targets: list[Any]) -> tuple[CAMResult, Evidence]:
            return compute([cam], inputs, targets, eigen_smooth=eigen, class_chunk=chunk, stacklevel=stacklevel + 3)[0]

        result, evidence = explain_augmented(one, cam.combine_layers, x, specs, settings)
    else:
        result, evidence = compute([cam], x, specs, eigen_smooth=eigen, class_chunk=chunk, stacklevel=stacklevel + 1)[0]
    findings = read_evidence(evidence, result.heat)
    result.notes = report(
        findings,
        input_size=x.numel(),
        output_size=result.output.numel(),
        targets=[describe_target(s) for s in specs],
        stacklevel=stacklevel + 1,
    )
    return result
