"""The engine's skeleton, shared by every method: one forward pass with the capture hooks,
the targets bound to its output, the gradients of all targets (one backward pass each, from
the kept graph, in chunks of targets), the method's maps, and the checks after the
computation.

Methods never copy this; they override the hooks of :class:`~volcam.methods.base.BaseCAM`.
Several methods of the same layers can share one pass (:func:`compute` with several CAM
objects): they differ only in how they combine ``A`` and ``dy/dA``.

Host synchronisation: none until the end, where :func:`volcam.diagnostics.read_evidence`
reads the checks (non-finite values, empty targets and maps) in one transfer.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from volcam.capture import capture, channels_last_convolutions
from volcam.diagnostics import Evidence, read_evidence, report
from volcam.errors import LayerNotReachedError, ModelStateError
from volcam.methods._steps import (
    as_scores,
    by_sample,
    check_input,
    chunk_size,
    describe_target,
    gradients,
    score_fn,
    select_calls,
    warn_training,
)
from volcam.result import CAMResult, LayerContext
from volcam.selectors import select
from volcam.smoothing import as_settings, explain_augmented
from volcam.targets import TargetSpec, bind_targets, empty_rows

__all__ = [
    "run",
    "compute",
    "compute_one",
    "check",
    "Computed",
    "Collector",
    "check_input",
    "describe_target",
    "nonfinite",
    "zero_rows",
]


class Collector:
    """One CAM object's raw layer maps and checks, gathered chunk of targets by chunk.

    ``add`` runs the method's :meth:`~volcam.methods.base.BaseCAM.layer_maps` on one chunk
    (repeating a class-agnostic map for every target of the chunk); ``finish`` applies the
    ReLU, combines the layers into the heat ``[B, T, *S]`` and returns the evidence.
    """

    def __init__(self, cam: Any, batch: int, n_targets: int):
        self.cam = cam
        self.batch = batch
        self.n_targets = n_targets
        self.maps: dict[str, list[torch.Tensor]] = {}
        self.grad_zero: dict[str, list[torch.Tensor]] = {}
        self.weights_nonpos: dict[str, list[torch.Tensor]] = {}

    def add(
        self,
        activations: list[torch.Tensor | None],
        grads: list[torch.Tensor | None],
        ctx: LayerContext,
        targets: int,
        zeros: list[torch.Tensor | None],
    ) -> None:
        """Maps of one chunk of ``targets`` targets (``ctx.num_targets`` is 1 for a
        class-agnostic method, the chunk's size otherwise); ``zeros`` from :func:`zero_rows`."""
        cam, batch = self.cam, self.batch
        if cam.needs_gradients:
            for (name, _), zero in zip(cam.layers, zeros):
                if zero is not None:
                    self.grad_zero.setdefault(name, []).append(zero.reshape(targets, batch))
        with torch.no_grad():
            pairs = cam.layer_maps(
                [None if a is None else a.detach() for a in activations],
                grads if cam.needs_gradients else [None] * len(activations),
                ctx,
            )
        repeat = targets // ctx.num_targets
        for name, m in pairs:
            m = m.float()
            if repeat > 1:
                m = m.repeat(repeat, *([1] * (m.ndim - 1)))
            self.maps.setdefault(name, []).append(m)
        for name, w in ctx.extra.get("weights", {}).items():
            nonpos = (w <= 0).flatten(1).all(1).reshape(ctx.num_targets, batch).expand(targets, batch)
            self.weights_nonpos.setdefault(name, []).append(nonpos)

    def finish(
        self, x: torch.Tensor, output: torch.Tensor, scores: torch.Tensor | None, base: dict[str, torch.Tensor]
    ) -> tuple[CAMResult, Evidence]:
        cam, batch = self.cam, self.batch
        names = list(self.maps)
        raw = [
            by_sample(torch.cat(self.maps[n]), batch).reshape(batch, self.n_targets, *self.maps[n][0].shape[2:])
            for n in names
        ]
        raw_max: list[torch.Tensor | None] = [r.flatten(2).amax(2) for r in raw]
        maps = [torch.relu(r) if cam.relu else r for r in raw]
        with torch.no_grad():
            heat = cam.combine_layers(maps, x).float()
        evidence = Evidence(
            empty_target=base["empty_target"],
            nonfinite_input=base["nonfinite_input"],
            nonfinite_output=base["nonfinite_output"],
            layers=names,
            grad_zero=[torch.cat(self.grad_zero[n]).T if n in self.grad_zero else None for n in names],
            weights_nonpos=[torch.cat(self.weights_nonpos[n]).T if n in self.weights_nonpos else None for n in names],
            raw_max=raw_max,
        )
        result = CAMResult(
            heat=heat,
            output=output if not output.requires_grad else output.detach(),
            layer_maps=maps,
            scores=None if scores is None else scores.detach(),
            layer_names=names,
        )
        return result, evidence


def zero_rows(grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Per layer, ``[N]`` bool: the rows of the gradient ``[N, ...]`` that are zero everywhere
    (reduced in place, whatever the memory format: no copy)."""
    with torch.no_grad():
        out: list[torch.Tensor | None] = []
        for g in grads:
            if g is None:
                out.append(None)
                continue
            dims = tuple(range(1, g.ndim))
            out.append((g.amax(dim=dims) == 0) & (g.amin(dim=dims) == 0))
        return out


@dataclass
class Computed:
    """What :func:`compute` gives per CAM object: the result (no notes yet), the evidence to
    check, and with ``keep_tensors`` the target layers' activations ``[B, K, *S_layer]``
    (after ``reshape``) and gradients ``[T * B, K, *S_layer]`` (targets outer)."""

    result: CAMResult
    evidence: Evidence
    activations: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)


def nonfinite(t: torch.Tensor) -> torch.Tensor:
    """The number of NaN and infinite values of ``t`` (a device scalar)."""
    if not t.is_floating_point():
        return torch.zeros((), dtype=torch.long, device=t.device)
    return (~torch.isfinite(t.detach())).sum()


def compute(
    cams: Sequence[Any],
    x: torch.Tensor,
    specs: Sequence[TargetSpec],
    *,
    eigen_smooth: bool,
    class_chunk: int | None,
    stacklevel: int = 2,
    keep_tensors: bool = False,
) -> list[Computed]:
    """One un-augmented computation of ``T = len(specs)`` targets for each of ``cams``
    (which share the model, layers and selectors of ``cams[0]``), from one forward pass
    and, for gradient methods, one backward pass per chunk of targets.

    Returns, per CAM object, a :class:`Computed`.
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
        warn_training(c, model, stacklevel + 1)
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
        activations, calls = select_calls(lead, state, stacklevel + 1)
        record["calls"] = calls
        record["call_order"] = list(state.calls)
        scorers = bind_targets(specs, output)
        with torch.no_grad():
            scores = torch.stack([as_scores(s(output.detach()), batch) for s in scorers], 1)  # [B, T]
        base = {
            "empty_target": torch.stack([empty_rows(s, batch, x.device) for s in scorers], 1),
            "nonfinite_input": nonfinite(x),
            "nonfinite_output": nonfinite(output),
        }
        reached = [a for a in activations if a is not None]
        wrt = ([xin] if input_grad else []) + reached
        if need and not output.requires_grad:
            names = [n for n, _ in lead.layers]
            raise LayerNotReachedError(
                f"the target score does not depend on the output of target layer(s) {names}; "
                "choose a layer on the path to the selected model output"
            )
        chunk = chunk_size(class_chunk, n_targets, batch, wrt) if need else n_targets

        def forward(batch_input: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return select(model(batch_input), lead.model_output, what="model output")

        collectors = [Collector(c, batch, n_targets) for c in cams]
        kept: list[list[torch.Tensor]] = [[] for _ in activations]
        for start in range(0, n_targets, chunk):
            stop = min(start + chunk, n_targets)
            layer_grads: list[torch.Tensor | None] = [None] * len(activations)
            zeros: list[torch.Tensor | None] = [None] * len(activations)
            input_g = None
            if need:
                grads = gradients(output, scorers[start:stop], wrt, retain=stop < n_targets)
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
                zeros = zero_rows(layer_grads)
                if keep_tensors:
                    for i, ((name, _), g) in enumerate(zip(lead.layers, layer_grads)):
                        if g is not None:
                            kept[i].append(lead.to_spatial(name, g.detach(), x).float())
            for c, collector in zip(cams, collectors):
                rows = 1 if c.class_agnostic else stop - start
                ctx = LayerContext(
                    name="",
                    x=x,
                    forward=forward,
                    score=score_fn(scorers[start:stop]),
                    scores=scores[:, start:stop].detach(),
                    eigen_smooth=eigen_smooth,
                    batch=batch,
                    num_targets=rows,
                    extra={**record, "input_grad": input_g},
                )
                collector.add(activations, layer_grads, ctx, stop - start, zeros)
    out = []
    detached = output.detach()
    for collector in collectors:
        result, evidence = collector.finish(x, detached, scores, base)
        computed = Computed(result, evidence)
        if keep_tensors:
            computed.activations = [
                lead.to_spatial(name, a.detach(), x).float()
                for (name, _), a in zip(lead.layers, activations)
                if a is not None
            ]
            computed.grads = [torch.cat(g) for g in kept if g]
        out.append(computed)
    return out


def compute_one(
    cam: Any,
    x: torch.Tensor,
    specs: list[TargetSpec],
    *,
    aug_smooth: Any,
    eigen_smooth: bool | None,
    class_chunk: int | None,
    stacklevel: int = 2,
) -> tuple[CAMResult, Evidence]:
    """The computation of one CAM object for ``specs``, with ``aug_smooth`` if asked (None:
    the object's settings), without the checks."""
    check_input(x)
    aug = cam.aug_smooth if aug_smooth is None else aug_smooth
    eigen = cam.eigen_smooth if eigen_smooth is None else bool(eigen_smooth)
    chunk = cam.class_chunk if class_chunk is None else class_chunk
    if aug:
        settings = as_settings(aug)

        def one(inputs: torch.Tensor, targets: list[Any]) -> tuple[CAMResult, Evidence]:
            done = compute([cam], inputs, targets, eigen_smooth=eigen, class_chunk=chunk, stacklevel=stacklevel + 3)[0]
            return done.result, done.evidence

        return explain_augmented(one, cam.combine_layers, x, specs, settings)
    done = compute([cam], x, specs, eigen_smooth=eigen, class_chunk=chunk, stacklevel=stacklevel + 1)[0]
    return done.result, done.evidence


def check(result: CAMResult, evidence: Evidence, x: torch.Tensor, specs: Sequence[TargetSpec], stacklevel: int) -> None:
    """Read the evidence (the one host read), raise for non-finite values, warn about empty
    maps, and put their notes on ``result``."""
    findings = read_evidence(evidence, result.heat)
    result.notes = report(
        findings,
        input_size=x.numel(),
        output_size=result.output.numel(),
        targets=[describe_target(s) for s in specs],
        stacklevel=stacklevel + 1,
    )


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
    result, evidence = compute_one(
        cam,
        x,
        specs,
        aug_smooth=aug_smooth,
        eigen_smooth=eigen_smooth,
        class_chunk=class_chunk,
        stacklevel=stacklevel + 1,
    )
    check(result, evidence, x, specs, stacklevel + 1)
    return result
