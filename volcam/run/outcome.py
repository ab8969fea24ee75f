"""What explaining one case gives, before anything is written: per class, the heat on the scan's
own grid, the predicted region there, and the statistics of its summary row. Made by
:class:`volcam.run.runner.Runner` (and the nnU-Net runner), written by
:mod:`volcam.run.export`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from volcam.run.cases import Case

__all__ = ["CaseOutput", "ClassOutput", "fallback_note"]


@dataclass
class ClassOutput:
    """One class of one case.

    Attributes:
        category: the output channel.
        name: its file-safe name.
        heat: ``MetaTensor [1, *S_src]`` float32 on the CPU, on the scan's own grid (in [0, 1]
            unless ``outputs.raw_heat``).
        prediction: ``[*S_src]`` bool, the region the network predicts as the class, on the
            scan's grid.
        row: the summary row (statistics; the output files are added by the exporter).
    """

    category: int
    name: str
    heat: Any
    prediction: torch.Tensor
    row: dict[str, Any]


@dataclass
class CaseOutput:
    """Everything computed for one case; see :class:`ClassOutput`.

    Attributes:
        source: ``MetaTensor [C, *S_src]`` the scan as loaded.
        label: ``[L, *S_src]`` the case's label as loaded, or None.
        raster: whether the scan is a 2D raster image (pixel layout, no orientation).
    """

    case: Case
    source: Any
    label: torch.Tensor | None
    raster: bool
    classes: list[ClassOutput] = field(default_factory=list)


def fallback_note(fallback: str, method: str, why: str, again: str = "") -> str:
    """The note of a class explained with ``cam.fallback``: why ``method``'s map was empty
    (``why``), and what is wrong with the fallback's map too (``again``), if anything."""
    text = f"{fallback} in place of {method} ({method}: {why or 'its map is all zero'})"
    return f"{text}; {fallback}: {again}" if again else text
