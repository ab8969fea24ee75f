"""Targets: what score a CAM explains.

A target maps the (selected) model output to one score per sample, ``[B, classes, *S]
-> [B]`` (or ``[B, classes] -> [B]`` for classifiers). Any callable of that shape works;
the two classes here cover the usual cases and can also *bind* to an output, fixing the
category and mask once so that perturbation methods (ScoreCAM) score every masked input
against the same region.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from volcam.errors import ShapeError, TargetError

__all__ = ["SegmentationTarget", "ClassifierTarget", "BoundTarget", "resolve_targets", "TargetSpec"]

TargetSpec = None | int | Callable[[torch.Tensor], torch.Tensor] | Sequence[Any]


def _check_output(output: torch.Tensor, min_ndim: int, what: str) -> None:
    if output.ndim < min_ndim:
        raise ShapeError(
            f"{what} needs a model output of shape {'[B, classes, *S]' if min_ndim > 2 else '[B, classes]'}, "
            f"not {list(output.shape)}",
            expected="[B, classes, *S]" if min_ndim > 2 else "[B, classes]",
            actual_shape=tuple(output.shape),
        )


def _check_category(category: int, num_classes: int) -> None:
    if not -num_classes <= category < num_classes:
        raise TargetError(
            f"`category` must be a class index in [0, {num_classes - 1}] for an output with "
            f"{num_classes} channel(s), not {category}"
        )


def _mask_to_batch(mask: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Bring a user mask to ``[B, *S]`` float on the output's device.

    Accepted: ``[*S]`` (shared by the batch), ``[B or 1, *S]`` or ``[B or 1, 1, *S]``.
    """
    batch, spatial = output.shape[0], tuple(output.shape[2:])
    n = len(spatial)
    m = torch.as_tensor(mask, device=output.device)
    if m.ndim == n:
        m = m.unsqueeze(0)
    elif m.ndim == n + 2:
        if m.shape[1] != 1:
            raise ShapeError(
                f"a mask of shape [B, C, *S] must have one channel, not {m.shape[1]} (shape {list(m.shape)})",
                expected="[B, 1, *S]",
                actual_shape=tuple(m.shape),
            )
        m = m[:, 0]
    if m.ndim != n + 1 or tuple(m.shape[1:]) != spatial or m.shape[0] not in (1, batch):
        raise ShapeError(
            f"the mask must have the output's spatial shape {list(spatial)} as [*S], [B, *S] or [B, 1, *S] "
            f"with B = {batch}, not {list(torch.as_tensor(mask).shape)}",
            expected=f"[{batch}, {', '.join(map(str, spatial))}]",
            actual_shape=tuple(torch.as_tensor(mask).shape),
        )
    return m.to(torch.float32).expand(batch, *spatial)


class BoundTarget:
    """A target fixed to one output: a category and (for segmentation) a mask per sample.

    ``score = sum over voxels of output[b, categories[b]] * masks[b]``; without masks
    (classifier outputs) the score is ``output[b, categories[b]]``.

    Args:
        categories: ``[B]`` long tensor.
        masks: ``[B, *S]`` float tensor, or None.
    """

    def __init__(self, categories: torch.Tensor, masks: torch.Tensor | None):
        self.categories = categories
        self.masks = masks

    def __call__(self, output: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[N]`` of ``output`` (``[N, classes, *S]``); ``rows[i]`` says which sample's
        category and mask apply to row ``i`` (default: row i is sample i)."""
        cats = self.categories if rows is None else self.categories[rows]
        index = cats.view(-1, 1, *([1] * (output.ndim - 2))).expand(-1, 1, *output.shape[2:])
        picked = output.gather(1, index)[:, 0].float()
        if self.masks is None:
            return picked
        masks = self.masks if rows is None else self.masks[rows]
        return (picked * masks).flatten(1).sum(1)

    def empty(self) -> torch.Tensor:
        """``[B]`` bool: samples whose mask selects no voxel (their CAM is all zero)."""
        if self.masks is None:
            return torch.zeros_like(self.categories, dtype=torch.bool)
        return self.masks.flatten(1).abs().sum(1) == 0


class SegmentationTarget:
    """The summed, masked logits of one class.

    ``score[b] = sum over voxels of logits[b, category] * mask[b]``.

    Args:
        category: class (channel) index of the model output ``[B, classes, *S]``.
        mask: which voxels count. None (default): the region the network predicts as
            ``category`` (argmax over classes; for a single-channel or ``activation="sigmoid"``
            output, ``logit > 0``). A bool or float tensor ``[*S]`` (shared by the batch),
            ``[B, *S]`` or ``[B, 1, *S]``: a ground-truth label, a box, one lesion. The string
            ``"all"``: every voxel.
        activation: ``"softmax"`` (classes are exclusive; default) or ``"sigmoid"``
            (multi-label outputs); only used to derive the mask from the prediction.
    """

    def __init__(self, category: int, mask: torch.Tensor | str | None = None, activation: str = "softmax"):
        if isinstance(category, bool) or not isinstance(category, int):
            raise TargetError(f"`category` must be an int, not {category!r}")
        if activation not in ("softmax", "sigmoid"):
            raise TargetError(f"`activation` must be 'softmax' or 'sigmoid', not {activation!r}")
        if isinstance(mask, str) and mask != "all":
            raise TargetError(f"`mask` must be a tensor, None or 'all', not {mask!r}")
        self.category = category
        self.mask = mask
        self.activation = activation

    def __repr__(self) -> str:
        mask = "predicted" if self.mask is None else ("all" if isinstance(self.mask, str) else "given")
        return f"SegmentationTarget(category={self.category}, mask={mask})"

    def bind(self, output: torch.Tensor) -> BoundTarget:
        _check_output(output, 3, "SegmentationTarget")
        num_classes = output.shape[1]
        _check_category(self.category, num_classes)
        category = self.category % num_classes
        batch = output.shape[0]
        if self.mask is None:
            with torch.no_grad():
                if num_classes == 1 or self.activation == "sigmoid":
                    masks = (output[:, category] > 0).float()
                else:
                    masks = (output.argmax(1) == category).float()
        elif isinstance(self.mask, str):
            masks = torch.ones((batch, *output.shape[2:]), device=output.device)
        else:
            masks = _mask_to_batch(self.mask, output)
        cats = torch.full((batch,), category, dtype=torch.long, device=output.device)
        return BoundTarget(cats, masks)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.bind(output)(output)


class ClassifierTarget:
    """The logit of one class of a classifier output ``[B, classes]``."""

    def __init__(self, category: int):
        if isinstance(category, bool) or not isinstance(category, int):
            raise TargetError(f"`category` must be an int, not {category!r}")
        self.category = category

    def __repr__(self) -> str:
        return f"ClassifierTarget(category={self.category})"

    def bind(self, output: torch.Tensor) -> BoundTarget:
        if output.ndim != 2:
            raise ShapeError(
                f"ClassifierTarget needs a model output of shape [B, classes], not {list(output.shape)}; "
                "use SegmentationTarget for dense outputs",
                expected="[B, classes]",
                actual_shape=tuple(output.shape),
            )
        _check_category(self.category, output.shape[1])
        cats = torch.full((output.shape[0],), self.category % output.shape[1], dtype=torch.long, device=output.device)
        return BoundTarget(cats, None)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.bind(output)(output)


def default_target(output: torch.Tensor) -> BoundTarget:
    """The default when ``targets`` is None.

    Segmentation ``[B, classes, *S]``: per sample, the foreground class (index >= 1) with
    the largest predicted volume, masked to its predicted region; a single-channel output
    uses class 0 with ``logit > 0``. If a sample predicts no foreground at all, class 1 is
    used with an empty mask (its map is all zero). Classifier ``[B, classes]``: the
    predicted class. Everything stays on the device; no host synchronisation.
    """
    with torch.no_grad():
        if output.ndim == 2:
            return BoundTarget(output.argmax(1), None)
        _check_output(output, 3, "the default target")
        num_classes = output.shape[1]
        if num_classes == 1:
            cats = torch.zeros(output.shape[0], dtype=torch.long, device=output.device)
            return BoundTarget(cats, (output[:, 0] > 0).float())
        pred = output.argmax(1)  # [B, *S]
        volumes = torch.stack([(pred == c).flatten(1).sum(1) for c in range(1, num_classes)], 1)  # [B, classes-1]
        cats = volumes.argmax(1) + 1
        masks = (pred == cats.view(-1, *([1] * (pred.ndim - 1)))).float()
        return BoundTarget(cats, masks)


class _PerSample:
    """Generic per-sample callables (a list of user functions): one call per sample."""

    def __init__(self, fns: list[Callable[[torch.Tensor], torch.Tensor]]):
        self.fns = fns

    def __call__(self, output: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        if rows is None:
            return torch.cat([_as_scores(fn(output[b : b + 1]), 1) for b, fn in enumerate(self.fns)])
        rows_host = rows.tolist()  # rows are built on the host by the caller
        out = torch.empty(len(rows_host), device=output.device, dtype=torch.float32)
        for b in sorted(set(rows_host)):
            idx = [i for i, r in enumerate(rows_host) if r == b]
            out[idx] = _as_scores(self.fns[b](output[idx]), len(idx))
        return out

    def empty(self) -> torch.Tensor:
        return torch.zeros(len(self.fns), dtype=torch.bool)


class _Callable:
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def __call__(self, output: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        if rows is None:
            return _as_scores(self.fn(output), output.shape[0])
        return _PerSample([self.fn] * (int(rows.max()) + 1))(output, rows)

    def empty(self) -> torch.Tensor:
        return torch.zeros(1, dtype=torch.bool)


def _as_scores(scores: Any, batch: int) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise TargetError(f"a target must return a tensor of scores [B], not {type(scores).__name__}")
    if scores.ndim == 0 and batch == 1:
        scores = scores.reshape(1)
    if scores.shape != (batch,):
        raise ShapeError(
            f"a target must return one score per sample, shape [{batch}], not {list(scores.shape)}",
            expected=f"[{batch}]",
            actual_shape=tuple(scores.shape),
        )
    return scores.float()


def _bind_one(spec: Any, output: torch.Tensor) -> Any:
    if spec is None:
        return default_target(output)
    if isinstance(spec, bool):
        raise TargetError(f"a target must be an int, a callable or None, not {spec!r}")
    if isinstance(spec, int):
        spec = ClassifierTarget(spec) if output.ndim == 2 else SegmentationTarget(spec)
    if isinstance(spec, (SegmentationTarget, ClassifierTarget)):
        return spec.bind(output)
    if callable(spec):
        return _Callable(spec)
    raise TargetError(
        f"`targets` must be None, an int, a target callable or a list of them (one per sample), not {spec!r}"
    )


def resolve_targets(targets: TargetSpec, output: torch.Tensor):
    """Turn ``targets`` into a scorer ``(output, rows=None) -> [N]`` bound to ``output``.

    Built-in targets become a :class:`BoundTarget` (category and mask fixed on the device);
    a list gives one target per sample.
    """
    if isinstance(targets, (list, tuple)):
        batch = output.shape[0]
        if len(targets) != batch:
            raise TargetError(f"`targets` as a list must have one entry per sample ({batch}), not {len(targets)}")
        bound = [_bind_one(t, output[b : b + 1]) for b, t in enumerate(targets)]
        if all(isinstance(b, BoundTarget) for b in bound):
            cats = torch.cat([b.categories for b in bound])
            if all(b.masks is None for b in bound):
                return BoundTarget(cats, None)
            if any(b.masks is None for b in bound):
                raise TargetError("`targets` must not mix classifier and segmentation targets in one batch")
            return BoundTarget(cats, torch.cat([b.masks for b in bound]))
        fns = [b if not isinstance(b, BoundTarget) else (lambda o, _b=b: _b(o)) for b in bound]
        return _PerSample(fns)
    return _bind_one(targets, output)


def warn_empty(scorer: Any) -> None:
    """Warn once if any sample's mask is empty (its map is all zero, not NaN)."""
    empty = scorer.empty()
    if bool(empty.any()):
        idx = torch.nonzero(empty).flatten().tolist()
        warnings.warn(
            f"the target mask of sample(s) {idx} is empty (the network predicts no voxel of the class); "
            "their CAM is all zero. Pass a mask or another category to explain them.",
            RuntimeWarning,
            stacklevel=3,
        )
