"""Why a map is empty, and non-finite inputs: what the engine checks after each computation.

The engine collects small device tensors while it works (an :class:`Evidence`): which
targets are empty, whether each layer's gradient is zero, whether all channel weights
are non-positive, the largest value of each raw map before the ReLU, and how many values
of the input and output are not finite. :func:`read_evidence` brings all of them to the
host in **one** transfer (the only host synchronisation of a CAM computation), and
:func:`report` turns them into errors (:class:`~volcam.errors.ValueRangeError` for a
non-finite input or output), warnings (:class:`~volcam.errors.EmptyTargetWarning`,
:class:`~volcam.errors.EmptyMapWarning`) and :class:`~volcam.result.MapNote` entries.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from volcam.errors import EmptyMapWarning, EmptyTargetWarning, ValueRangeError
from volcam.result import MapNote

__all__ = ["Evidence", "Findings", "read_evidence", "report", "merge_views"]

_ADVICE = {
    "no_gradient": "choose a layer on the path to the output in the target region",
    "non_positive_weights": "try an element-wise method ('hirescam', 'layercam'), another layer, or relu=False",
    "no_positive_evidence": "try another layer, another method, or relu=False to see the negative evidence",
    "constant_map": "choose a layer with a finer grid, or upsample=False to read the raw value",
}

_WHY = {
    "no_gradient": "the score does not depend on layer {layer!r} in the target region (its gradient is zero)",
    "non_positive_weights": "every channel weight at layer {layer!r} is <= 0, so the ReLU removes the whole map",
    "no_positive_evidence": "the map at layer {layer!r} is <= 0 everywhere before the ReLU",
    "constant_map": "the map at layer {layer!r} is constant (a single voxel or a flat map), which normalises to zero",
}


@dataclass
class Evidence:
    """Device tensors gathered during one computation (``B`` samples, ``T`` targets).

    Attributes:
        empty_target: ``[B, T]`` bool.
        nonfinite_input, nonfinite_output: scalar counts of NaN/inf values.
        layers: layer names, in order; the per-layer lists below follow it (None where
            the method gives no such information).
        grad_zero: per layer ``[B, T]`` bool: the gradient is zero everywhere.
        weights_nonpos: per layer ``[B, T]`` bool: every channel weight is <= 0.
        raw_max: per layer ``[B, T]`` the largest value of the map before the ReLU.
    """

    empty_target: torch.Tensor
    nonfinite_input: torch.Tensor
    nonfinite_output: torch.Tensor
    layers: list[str] = field(default_factory=list)
    grad_zero: list[torch.Tensor | None] = field(default_factory=list)
    weights_nonpos: list[torch.Tensor | None] = field(default_factory=list)
    raw_max: list[torch.Tensor | None] = field(default_factory=list)


@dataclass
class Findings:
    """:class:`Evidence` and the heat's emptiness, on the host."""

    empty_target: list[list[bool]]
    heat_zero: list[list[bool]]
    nonfinite_input: int
    nonfinite_output: int
    layers: list[str]
    grad_zero: list[list[list[bool]] | None]
    weights_nonpos: list[list[list[bool]] | None]
    raw_max: list[list[list[float]] | None]


def merge_views(parts: list[Evidence], views: int, batch: int) -> Evidence:
    """Evidence of ``views`` augmented copies (rows ``[V * B, T]``, views outer) as the
    evidence of the ``B`` samples: a condition holds when it holds in every view; the raw
    maximum is the largest over the views."""

    def fold(t: torch.Tensor | None, how: str) -> torch.Tensor | None:
        if t is None:
            return None
        t = t.reshape(-1, batch, *t.shape[1:])
        return t.all(0) if how == "all" else t.amax(0)

    def per_layer(lists: list[list[torch.Tensor | None]], how: str) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = []
        for items in zip(*lists):
            if any(i is None for i in items):
                out.append(None)
            else:
                out.append(fold(torch.cat([i for i in items if i is not None]), how))
        return out

    empty = torch.cat([p.empty_target for p in parts])
    return Evidence(
        empty_target=empty.reshape(-1, batch, *empty.shape[1:]).all(0),
        nonfinite_input=sum((p.nonfinite_input for p in parts), torch.zeros((), dtype=torch.long)),
        nonfinite_output=sum((p.nonfinite_output for p in parts), torch.zeros((), dtype=torch.long)),
        layers=parts[0].layers,
        grad_zero=per_layer([p.grad_zero for p in parts], "all"),
        weights_nonpos=per_layer([p.weights_nonpos for p in parts], "all"),
        raw_max=per_layer([p.raw_max for p in parts], "max"),
    )


def read_evidence(evidence: Evidence, heat: torch.Tensor) -> Findings:
    """Bring ``evidence`` and whether each map of ``heat`` ``[B, T, *S]`` is all zero to
    the host, in one transfer."""
    batch, targets = heat.shape[:2]
    device = heat.device
    dims = tuple(range(2, heat.ndim))
    heat_zero = (heat.amax(dim=dims) == 0) & (heat.amin(dim=dims) == 0)
    parts: list[torch.Tensor] = [
        evidence.nonfinite_input.to(device).reshape(1).double(),
        evidence.nonfinite_output.to(device).reshape(1).double(),
        evidence.empty_target.to(device).reshape(-1).double(),
        heat_zero.reshape(-1).double(),
    ]
    layout: list[tuple[str, int]] = []
    for kind in ("grad_zero", "weights_nonpos", "raw_max"):
        for t in getattr(evidence, kind):
            if t is not None:
                parts.append(t.to(device).reshape(-1).double())
                layout.append((kind, 1))
            else:
                layout.append((kind, 0))
    values = torch.cat(parts).tolist()  # the one host read

    def grid(start: int) -> list[list[float]]:
        return [values[start + b * targets : start + (b + 1) * targets] for b in range(batch)]

    n = batch * targets
    pos = 2
    empty = [[bool(v) for v in row] for row in grid(pos)]
    pos += n
    zero = [[bool(v) for v in row] for row in grid(pos)]
    pos += n
    lists: dict[str, list[list[list[float]] | None]] = {"grad_zero": [], "weights_nonpos": [], "raw_max": []}
    for kind, present in layout:
        if present:
            lists[kind].append(grid(pos))
            pos += n
        else:
            lists[kind].append(None)

    def as_bool(items: list[list[list[float]] | None]) -> list[list[list[bool]] | None]:
        return [None if g is None else [[bool(v) for v in row] for row in g] for g in items]

    return Findings(
        empty_target=empty,
        heat_zero=zero,
        nonfinite_input=int(values[0]),
        nonfinite_output=int(values[1]),
        layers=evidence.layers,
        grad_zero=as_bool(lists["grad_zero"]),
        weights_nonpos=as_bool(lists["weights_nonpos"]),
        raw_max=lists["raw_max"],
    )


def _reason(f: Findings, b: int, t: int) -> tuple[str, str | None]:
    if f.empty_target[b][t]:
        return "empty_target", None
    for kind in ("grad_zero", "weights_nonpos"):
        per_layer = getattr(f, kind)
        for i, g in enumerate(per_layer):
            if g is not None and g[b][t]:
                return ("no_gradient" if kind == "grad_zero" else "non_positive_weights"), f.layers[i]
    for i, m in enumerate(f.raw_max):
        if m is not None and m[b][t] <= 0:
            return "no_positive_evidence", f.layers[i]
    return "constant_map", f.layers[0] if f.layers else None


def _who(samples: list[int], target: int, targets: int) -> str:
    where = f"sample(s) {samples}"
    return where if targets == 1 else f"{where} for target {target}"


def report(
    findings: Findings,
    *,
    input_size: int,
    output_size: int,
    targets: list[str],
    stacklevel: int = 2,
) -> list[MapNote]:
    """Raise for non-finite values, warn about empty maps, and return their notes.

    Args:
        findings: from :func:`read_evidence`.
        input_size, output_size: number of values of the input and of the model output.
        targets: a description of each target, for the messages.
        stacklevel: of the warnings, as ``warnings.warn`` counts it from this function.

    Raises:
        ValueRangeError: the input (or, for a finite input, the model output) holds NaN or
            infinite values; nothing is explained then.
    """
    if findings.nonfinite_input:
        raise ValueRangeError(
            f"the input must hold finite values, not {findings.nonfinite_input} NaN or infinite value(s) "
            f"out of {input_size}; replace them first (e.g. torch.nan_to_num, or mask the region and fill it)"
        )
    if findings.nonfinite_output:
        raise ValueRangeError(
            f"the model output must be finite, not hold {findings.nonfinite_output} NaN or infinite value(s) "
            f"out of {output_size} for a finite input; check the model's weights and the input's intensity range"
        )
    notes: list[MapNote] = []
    n_targets = len(targets)
    for b, row in enumerate(findings.heat_zero):
        for t, zero in enumerate(row):
            if not zero:
                continue
            reason, layer = _reason(findings, b, t)
            if reason == "empty_target":
                message = (
                    f"the target region of sample {b} ({targets[t]}) is empty (the network predicts no voxel "
                    "of the class, or the mask selects none): the map is all zero; pass a mask or another category"
                )
            else:
                message = (
                    f"the map of sample {b} ({targets[t]}) is empty (all zero): {_WHY[reason].format(layer=layer)}"
                )
                message += f"; {_ADVICE[reason]}"
            notes.append(MapNote(sample=b, target=t, reason=reason, message=message, layer=layer))
    for t in range(n_targets):
        empty = [n.sample for n in notes if n.target == t and n.reason == "empty_target"]
        if empty:
            warnings.warn(
                f"the target mask of {_who(empty, t, n_targets)} is empty (the network predicts no voxel of the "
                "class, or the mask selects none); their CAM is all zero. Pass a mask or another category to "
                "explain them.",
                EmptyTargetWarning,
                stacklevel=stacklevel,
            )
    others = [n for n in notes if n.reason != "empty_target"]
    for reason in _WHY:
        group = [n for n in others if n.reason == reason]
        for t in sorted({n.target for n in group}):
            samples = [n.sample for n in group if n.target == t]
            layer = next(n.layer for n in group if n.target == t)
            warnings.warn(
                f"the map of {_who(samples, t, n_targets)} is empty (all zero): "
                f"{_WHY[reason].format(layer=layer)}; {_ADVICE[reason]}",
                EmptyMapWarning,
                stacklevel=stacklevel,
            )
    return notes
