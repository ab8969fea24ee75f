"""Which output channel a class is, for label models (softmax over classes) and region-based
models (one sigmoid per region, ``regions_class_order``), as nnU-Net's label manager defines them.

A class is named the way users meet it: by the value ``nnUNetv2_predict`` writes into the
segmentation (``1``, ``2``; for a region, its entry of ``regions_class_order``) or by its name in
``dataset.json``'s ``labels`` (``"liver"``, ``"tumor core"``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from volcam.checks import did_you_mean
from volcam.errors import ArgumentError

__all__ = ["ClassInfo", "all_classes", "resolve_classes"]


@dataclass(frozen=True)
class ClassInfo:
    """One class (or region) a model segments.

    Attributes:
        value: the label value written into the segmentation for it.
        name: its name in ``dataset.json``'s ``labels``.
        channel: the network output channel whose logits are explained.
        region: for region-based models, the labels the region is made of; None otherwise.
    """

    value: int
    name: str
    channel: int
    region: tuple[int, ...] | None = None

    @property
    def slug(self) -> str:
        """The name as a file or folder name (``"tumor core"`` -> ``"tumor_core"``)."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.name).strip("_") or f"class_{self.value}"


def _as_region(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


def all_classes(label_manager, dataset_json: dict) -> list[ClassInfo]:
    """Every class a model has an output channel for, background included (label models), in
    channel order."""
    labels = {k: v for k, v in dataset_json["labels"].items() if k != "ignore"}
    if label_manager.has_regions:
        names = {_as_region(v): k for k, v in labels.items()}
        return [
            ClassInfo(int(value), names.get(_as_region(region), f"region_{i}"), i, _as_region(region))
            for i, (region, value) in enumerate(
                zip(label_manager.foreground_regions, label_manager.regions_class_order)
            )
        ]
    label_names = {int(v): k for k, v in labels.items() if not isinstance(v, (list, tuple))}
    return [ClassInfo(int(v), label_names.get(int(v), f"label_{v}"), i) for i, v in enumerate(label_manager.all_labels)]


def resolve_classes(
    label_manager, dataset_json: dict, classes: Any, *, source: str = "dataset.json"
) -> list[ClassInfo]:
    """The classes to explain.

    Args:
        classes: None (every foreground class or region), or an int / name, or a list of them.
        source: where the labels come from, for messages.

    Raises:
        ArgumentError: a class is not among the model's labels (the message lists them), is
            the ignore label, or is repeated.
    """
    known = all_classes(label_manager, dataset_json)
    if classes is None:
        return [c for c in known if c.value != 0 or c.region is not None]
    items: Iterable[Any] = [classes] if isinstance(classes, (int, str)) else classes
    by_value = {c.value: c for c in known}
    by_name = {c.name: c for c in known}
    listing = ", ".join(f"{c.value} ({c.name})" for c in known)
    ignore = label_manager.ignore_label
    out: list[ClassInfo] = []
    for item in items:
        if isinstance(item, str) and item.strip().lstrip("-").isdigit():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ArgumentError(f"`classes` must be label values or names, not {item!r}", name="classes")
        if isinstance(item, int) and ignore is not None and item == ignore:
            raise ArgumentError(
                f"`classes` must not hold the ignore label {ignore}: the model has no output for it; "
                f"its classes are {listing}",
                name="classes",
            )
        found = by_value.get(item) if isinstance(item, int) else by_name.get(item)
        if found is None:
            options = list(by_name) if isinstance(item, str) else [c.value for c in known]
            raise ArgumentError(
                f"`classes` must name classes of the model's {source} labels ({listing}), not {item!r}"
                f"{did_you_mean(item, options)}",
                name="classes",
            )
        if found in out:
            raise ArgumentError(f"`classes` must not repeat a class, not {list(items)}", name="classes")
        out.append(found)
    if not out:
        raise ArgumentError("`classes` must name at least one class, not an empty list", name="classes")
    return out
