"""Targets: what score a CAM explains.

Two small protocols, both vectorised over the batch:

- a :class:`Target` is bound once to the model output of a forward pass,
  ``target.bind(output) -> Scorer``, fixing its category and mask (the predicted region
  is read from *that* output), so that perturbation methods (ScoreCAM, AblationCAM) and
  augmented views score every modified input against the same region;
- a :class:`Scorer` maps an output ``[N, classes, *S]`` (or ``[N, classes]``) to scores
  ``[N]``; ``rows[i]`` says which sample's category and mask apply to row ``i`` (default:
  row ``i`` is sample ``i``).

:class:`SegmentationTarget` and :class:`ClassifierTarget` are the usual targets. Any
callable ``output -> [B]`` works too (it is applied to whatever output it is given).

The predicted region of a class is ``label == c`` with ``label`` the class of the largest
logit (the first one on ties, as ``argmax``), found by one pass of channel comparisons
over the output: :func:`predicted_labels`. PyTorch's ``argmax`` over the channel axis is
several times slower on the CPU for volumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from volcam.errors import ShapeError, TargetError

__all__ = [
    "Target",
    "Scorer",
    "TargetSpec",
    "SegmentationTarget",
    "ClassifierTarget",
    "BoundTarget",
    "Prediction",
    "predicted_labels",
    "default_target",
    "resolve_targets",
    "bind_targets",
    "empty_rows",
]


@runtime_checkable
class Scorer(Protocol):
    """A target bound to one output: ``scorer(output, rows=None) -> [N]``."""

    def __call__(self, output: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class Target(Protocol):
    """Something that binds to a model output and gives a :class:`Scorer`."""

    def bind(self, output: torch.Tensor) -> Scorer: ...


#: what ``targets`` may be: None (the default target), an int class, a :class:`Target`, a
#: callable ``output -> [B]``, or a list of those with one entry per sample
TargetSpec = None | int | Target | Callable[[torch.Tensor], torch.Tensor] | Sequence[Any]


def _check_output(output: torch.Tensor, min_ndim: int, what: str) -> None:
    if output.ndim < min_ndim:
        expected = "[B, classes, *S]" if min_ndim > 2 else "[B, classes]"
        raise ShapeError(
            f"{what} needs a model output of shape {expected}, not {list(output.shape)}",
            expected=expected,
            actual_shape=tuple(output.shape),
        )


def _check_category(category: int, num_classes: int) -> None:
    if not 0 <= category < num_classes:
        hint = "; negative indices are not accepted, give the class index itself" if category < 0 else ""
        raise TargetError(
            f"`category` must be a class index in [0, {num_classes - 1}] for an output with "
            f"{num_classes} channel(s), not {category}{hint}"
        )


def _category(category: Any) -> int:
    if isinstance(category, bool) or not isinstance(category, int):
        raise TargetError(f"`category` must be an int, not {category!r}")
    if category < 0:
        raise TargetError(
            f"`category` must be a class index >= 0, not {category}; negative indices are not accepted, "
            "give the class index itself"
        )
    return category


def predicted_labels(output: torch.Tensor) -> torch.Tensor:
    """``[B, *S]``: the index of the largest channel of ``output`` ``[B, classes, *S]``, the
    first one on ties (equal to ``output.argmax(1)`` for finite values), by one pass of
    channel comparisons on the output's device."""
    classes = output.shape[1]
    dtype = torch.uint8 if classes <= 255 else torch.int32
    best = output[:, 0].clone()
    label = torch.zeros(best.shape, dtype=dtype, device=output.device)
    for c in range(1, classes):
        channel = output[:, c]
        larger = channel > best
        label.masked_fill_(larger, c)
        best = torch.maximum(best, channel)
    return label


class Prediction:
    """The predicted labels of one output, computed once and shared by all its targets."""

    def __init__(self, output: torch.Tensor):
        self.output = output
        self._labels: torch.Tensor | None = None

    @property
    def labels(self) -> torch.Tensor:
        """``[B, *S]`` the predicted class of each voxel (see :func:`predicted_labels`)."""
        if self._labels is None:
            with torch.no_grad():
                self._labels = predicted_labels(self.output.detach())
        return self._labels


def _mask_to_batch(mask: Any, output: torch.Tensor) -> torch.Tensor:
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
        shape = tuple(torch.as_tensor(mask).shape)
        raise ShapeError(
            f"the mask must have the output's spatial shape {list(spatial)} as [*S], [B, *S] or [B, 1, *S] "
            f"with B = {batch}, not {list(shape)}",
            expected=f"[{batch}, {', '.join(map(str, spatial))}]",
            actual_shape=shape,
        )
    return m.to(torch.float32).expand(batch, *spatial)


class BoundTarget:
    """A target fixed to one output: a category and (for segmentation) a mask per sample.

    ``score = sum over voxels of output[b, categories[b]] * masks[b]``; without masks
    (classifier outputs) the score is ``output[b, categories[b]]``.

    Args:
        categories: ``[B]`` long tensor.
        masks: ``[B, *S]`` bool or float tensor, or None.
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
        return ~(self.masks != 0).flatten(1).any(1)


class SegmentationTarget:
    """The summed, masked logits of one class.

    ``score[b] = sum over voxels of logits[b, category] * mask[b]``.

    Args:
        category: class (channel) index of the model output ``[B, classes, *S]``, >= 0.
        mask: which voxels count. None (default): the region the network predicts as
            ``category`` (the largest logit, see :func:`predicted_labels`; for a
            single-channel or ``activation="sigmoid"`` output, ``logit > 0``). A bool or float
            tensor ``[*S]`` (shared by the batch), ``[B, *S]`` or ``[B, 1, *S]``: a
            ground-truth label, a box, one lesion. The string ``"all"``: every voxel.
        activation: ``"softmax"`` (classes are exclusive; default) or ``"sigmoid"``
            (multi-label outputs); only used to derive the mask from the prediction.

    Example:
        >>> target = SegmentationTarget(2, mask=label == 2)   # doctest: +SKIP
        >>> cam.explain(x, targets=target)                    # doctest: +SKIP
    """

    def __init__(self, category: int, mask: torch.Tensor | str | None = None, activation: str = "softmax"):
        self.category = _category(category)
        if activation not in ("softmax", "sigmoid"):
            raise TargetError(f"`activation` must be 'softmax' or 'sigmoid', not {activation!r}")
        if isinstance(mask, str) and mask != "all":
            raise TargetError(f"`mask` must be a tensor, None or 'all', not {mask!r}")
        self.mask = mask
        self.activation = activation

    def __repr__(self) -> str:
        mask = "predicted" if self.mask is None else ("all" if isinstance(self.mask, str) else "given")
        return f"SegmentationTarget(category={self.category}, mask={mask})"

    def bind(self, output: torch.Tensor) -> BoundTarget:
        return self.bind_prediction(Prediction(output))

    def bind_prediction(self, prediction: Prediction) -> BoundTarget:
        """:meth:`bind` with the predicted labels shared between targets of one output."""
        output = prediction.output
        _check_output(output, 3, "SegmentationTarget")
        num_classes = output.shape[1]
        _check_category(self.category, num_classes)
        batch = output.shape[0]
        masks: torch.Tensor
        if self.mask is None:
            with torch.no_grad():
                if num_classes == 1 or self.activation == "sigmoid":
                    masks = output[:, self.category].detach() > 0
                else:
                    masks = prediction.labels == self.category
        elif isinstance(self.mask, str):
            masks = torch.ones((batch, *output.shape[2:]), dtype=torch.bool, device=output.device)
        else:
            masks = _mask_to_batch(self.mask, output)
        cats = torch.full((batch,), self.category, dtype=torch.long, device=output.device)
        return BoundTarget(cats, masks)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.bind(output)(output)


class ClassifierTarget:
    """The logit of one class of a classifier output ``[B, classes]``."""

    def __init__(self, category: int):
        self.category = _category(category)

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
        cats = torch.full((output.shape[0],), self.category, dtype=torch.long, device=output.device)
        return BoundTarget(cats, None)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.bind(output)(output)


def default_target(output: torch.Tensor, prediction: Prediction | None = None) -> BoundTarget:
    """The default when ``targets`` is None.

    Segmentation ``[B, classes, *S]``: per sample, the foreground class (index >= 1) with
    the largest predicted volume, masked to its predicted region; a single-channel output
    uses class 0 with ``logit > 0``. If a sample predicts no foreground at all, class 1 is
    used with an empty mask (its map is all zero). Classifier ``[B, classes]``: the
    predicted class. Everything stays on the device; no host synchronisation.
    """
    with torch.no_grad():
        if output.ndim == 2:
            return BoundTarget(output.detach().argmax(1), None)
        _check_output(output, 3, "the default target")
        num_classes = output.shape[1]
        if num_classes == 1:
            cats = torch.zeros(output.shape[0], dtype=torch.long, device=output.device)
            return BoundTarget(cats, output[:, 0].detach() > 0)
        labels = (prediction or Prediction(output)).labels  # [B, *S]
        volumes = torch.stack([(labels == c).flatten(1).sum(1) for c in range(1, num_classes)], 1)
        cats = volumes.argmax(1) + 1  # [B]
        masks = labels == cats.view(-1, *([1] * (labels.ndim - 1))).to(labels.dtype)
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


class _Callable:
    """A user callable ``output -> [N]``, applied to whatever output it is given."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def __call__(self, output: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        return _as_scores(self.fn(output), output.shape[0])


def _as_scores(scores: Any, batch: int) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise TargetError(f"a target must return a tensor of scores [B], not {type(scores).__name__}")
    out: torch.Tensor = scores.reshape(1) if scores.ndim == 0 and batch == 1 else scores
    if out.shape != (batch,):
        raise ShapeError(
            f"a target must return one score per sample, shape [{batch}], not {list(out.shape)}",
            expected=f"[{batch}]",
            actual_shape=tuple(out.shape),
        )
    return out.float()


def _bind_one(spec: Any, output: torch.Tensor, prediction: Prediction) -> Scorer:
    if spec is None:
        return default_target(output, prediction)
    if isinstance(spec, bool):
        raise TargetError(f"a target must be an int, a callable or None, not {spec!r}")
    if isinstance(spec, int):
        if output.ndim >= 2:
            _check_category(spec, output.shape[1])
        spec = ClassifierTarget(spec) if output.ndim == 2 else SegmentationTarget(spec)
    if isinstance(spec, SegmentationTarget) and type(spec).bind is SegmentationTarget.bind:
        return spec.bind_prediction(prediction)  # a subclass that binds its own way keeps its bind
    if isinstance(spec, Target):
        return spec.bind(output)
    if callable(spec):
        return _Callable(spec)
    raise TargetError(
        f"`targets` must be None, an int, a target callable or a list of them (one per sample), not {spec!r}"
    )


def resolve_targets(targets: TargetSpec, output: torch.Tensor, prediction: Prediction | None = None) -> Scorer:
    """Turn ``targets`` into a :class:`Scorer` bound to ``output``.

    Built-in targets become a :class:`BoundTarget` (category and mask fixed on the device);
    a list gives one target per sample.
    """
    prediction = prediction if prediction is not None and prediction.output is output else Prediction(output)
    if isinstance(targets, (list, tuple)):
        batch = output.shape[0]
        if len(targets) != batch:
            raise TargetError(f"`targets` as a list must have one entry per sample ({batch}), not {len(targets)}")
        bound = [_bind_one(t, output[b : b + 1], Prediction(output[b : b + 1])) for b, t in enumerate(targets)]
        if all(isinstance(b, BoundTarget) for b in bound):
            built = [b for b in bound if isinstance(b, BoundTarget)]
            cats = torch.cat([b.categories for b in built])
            if all(b.masks is None for b in built):
                return BoundTarget(cats, None)
            if any(b.masks is None for b in built):
                raise TargetError("`targets` must not mix classifier and segmentation targets in one batch")
            return BoundTarget(cats, torch.cat([b.masks.float() for b in built if b.masks is not None]))
        return _PerSample([_single(b) for b in bound])
    return _bind_one(targets, output, prediction)


def _single(scorer: Scorer) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda out: scorer(out)


def bind_targets(specs: Sequence[TargetSpec], output: torch.Tensor) -> list[Scorer]:
    """One :class:`Scorer` per entry of ``specs``, all bound to ``output`` (the predicted
    labels are computed once for all of them)."""
    prediction = Prediction(output)
    return [resolve_targets(spec, output, prediction) for spec in specs]


def empty_rows(scorer: Scorer, batch: int, device: torch.device) -> torch.Tensor:
    """``[B]`` bool: the samples whose target region is empty (False when the scorer cannot
    tell, as for user callables)."""
    empty = getattr(scorer, "empty", None)
    if callable(empty):
        flags = empty()
        if isinstance(flags, torch.Tensor) and flags.shape == (batch,):
            return flags.to(device=device, dtype=torch.bool)
    return torch.zeros(batch, dtype=torch.bool, device=device)
