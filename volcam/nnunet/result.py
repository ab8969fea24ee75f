"""What explaining one case gives: heat per class and nnU-Net's segmentation on the scan's own
grid, per-class numbers, and a way to write them (NIfTI or the source's format, slice PNGs, a
figure, a record of what made them)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volcam.io import atomic_write
from volcam.nnunet.labels import ClassInfo
from volcam.nnunet.mapback import SourceGrid, read_file_order

__all__ = ["NnUNetResult", "RECORD_NAME", "class_region", "case_stats"]

#: the record of a written case (same name as ``volcam run`` uses)
RECORD_NAME = "volcam-case.json"


def class_region(
    labels: np.ndarray, info: ClassInfo, regions: list[ClassInfo], *, ground_truth: bool = False
) -> np.ndarray:
    """Where a label map has class ``info``: nnU-Net's segmentation, or with ``ground_truth`` a
    label file in the dataset's labels (``labelsTr``).

    Label models: ``labels == value``. Region-based models: a label file holds the dataset's labels,
    so the region is where it holds one of the region's labels; the segmentation holds, per voxel,
    the value ``regions_class_order`` gives the last region predicted there, so the region is where
    it holds the value of a region contained in it.
    """
    if info.region is None:
        return labels == info.value
    if ground_truth:
        return np.isin(labels, info.region)
    inside = [r.value for r in regions if r.region is not None and set(r.region) <= set(info.region)]
    return np.isin(labels, inside)


def _fraction(heat: np.ndarray, region: np.ndarray) -> float | None:
    total = float(heat.sum(dtype=np.float64))
    return float(heat[region].sum(dtype=np.float64)) / total if total > 0 else None


def case_stats(
    heat: np.ndarray, region: np.ndarray, affine: np.ndarray, label_region: np.ndarray | None = None
) -> dict:
    """Numbers of one class of one case, on the scan's grid (keys as in ``volcam run``'s summary)."""
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    n = int(region.sum())
    row: dict[str, Any] = {
        "predicted_voxels": n,
        "predicted_volume_ml": round(n * voxel_ml, 4),
        "energy_in_prediction": _fraction(heat, region),
        "energy_in_label": _fraction(heat, label_region) if label_region is not None else None,
    }
    if heat.size and float(heat.max()) > float(heat.min()):
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        index = [float(i) for i in peak] + [0.0] * (3 - len(peak))
        world = affine[:3, :3] @ np.asarray(index) + affine[:3, 3]
        row.update(
            peak_x=round(float(world[0]), 3),
            peak_y=round(float(world[1]), 3),
            peak_z=round(float(world[2]), 3),
            peak_voxel=" ".join(str(int(i)) for i in peak),
        )
    return row


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "size": stat.st_size, "mtime": stat.st_mtime, "sha256": digest.hexdigest()}


@dataclass
class NnUNetResult:
    """The heat of each explained class of one case, and nnU-Net's segmentation of it.

    Arrays are on the grid of the case's source image, in its file's voxel order (as nibabel
    reads it, ``[x, y, z]``), with :attr:`affine`; they overlay the scan voxel for voxel.

    Attributes:
        case: the case identifier.
        image_files: the channel files.
        classes: the explained classes, in order.
        heat: ``{label value: [x, y, z] float32 in [0, 1]}``, normalised once per class.
        segmentation: ``[x, y, z]`` the labels ``nnUNetv2_predict`` writes for this case with
            the same folds, mirroring and step size.
        grid: the source grid (reference file, reader kind, shape, affine).
        stats: ``{label value: {...}}`` predicted voxels and volume, energy of the heat inside
            the predicted region (and the given mask), hottest voxel, raw maximum, windows.
        settings: what made the maps (model, folds, method, layer, options).
        probabilities: ``[heads, x, y, z]`` nnU-Net's probabilities, when asked for.
        logits: ``[heads, *S]`` float16 on the network's grid, when asked for.
    """

    case: str
    image_files: list[Path]
    classes: list[ClassInfo]
    heat: dict[int, np.ndarray]
    segmentation: np.ndarray
    grid: SourceGrid
    stats: dict[int, dict]
    settings: dict
    probabilities: np.ndarray | None = None
    logits: torch.Tensor | None = None
    native_segmentation: np.ndarray | None = field(default=None, repr=False)
    writer: Any = field(default=None, repr=False)

    @property
    def affine(self) -> np.ndarray:
        """The source file's 4x4 voxel-to-world (RAS) matrix."""
        return self.grid.affine

    def class_info(self, c: int | str) -> ClassInfo:
        """The explained class with label value or name ``c``."""
        for info in self.classes:
            if c in (info.value, info.name):
                return info
        from volcam.errors import ArgumentError

        raise ArgumentError(
            f"`c` must be an explained class {[(i.value, i.name) for i in self.classes]}, not {c!r}", name="c"
        )

    def summary_rows(self) -> list[dict]:
        """One row per class: ``case``, ``class``, ``class_name`` and the :attr:`stats`."""
        return [
            {"case": self.case, "class": i.value, "class_name": i.name, **self.stats[i.value]} for i in self.classes
        ]

    # ------------------------------------------------------------------ writing
    def save(
        self,
        folder: str | os.PathLike[str],
        *,
        segmentation: bool = True,
        pngs: bool = True,
        figure: bool = True,
        axes: tuple[str, ...] = ("axial",),
        cmap: str = "jet",
        alpha: float = 0.5,
        window: Any = None,
        convention: str = "radiological",
    ) -> list[Path]:
        """Write the case's files into ``folder``::

            segmentation<ending>          nnU-Net's segmentation, written by its own writer
            <class>/heat<ending>          the heat, float32, with the source's geometry
            <class>/<axis>/<axis>_NNN.png one overlay per slice (``pngs``)
            <class>/figure.png            axial, coronal and sagittal views through the peak (``figure``)
            volcam-case.json              what made them (model, folds, checkpoint hashes, method,
                                          layer, options, the images' size, mtime and sha256)

        ``<ending>`` is the source's (``.nii.gz``, ``.nrrd`` ...). Every file is written
        atomically. Returns the written paths.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        ending = self.grid.file_ending
        written: list[Path] = []
        if segmentation:
            written.append(self.save_segmentation(folder / f"segmentation{ending}"))
        image = None
        if pngs or figure:
            from volcam import figures

            image = read_file_order(self.image_files[0]).astype(np.float32)
            window = window if window is not None else figures.window_for(image)
        for info in self.classes:
            heat = self.heat[info.value]
            cdir = folder / info.slug
            written.append(self.grid.write_heat(heat, cdir / f"heat{ending}"))
            style = dict(affine=self.affine, window=window, cmap=cmap, alpha=alpha, convention=convention)
            if pngs:
                for axis in axes:
                    written.extend(figures.save_slice_pngs(image, heat, cdir / axis, axis=axis, **style))
            if figure:
                stats = self.stats[info.value]
                point = (stats["peak_x"], stats["peak_y"], stats["peak_z"]) if "peak_x" in stats else None
                fig = figures.orthogonal_views(image, heat, point=point, title=f"{self.case}: {info.name}", **style)
                written.append(figures.save_figure(fig, cdir / "figure.png"))
        record = {
            "case": self.case,
            "images": [_file_identity(Path(f)) for f in self.image_files],
            "classes": [{"value": i.value, "name": i.name, "channel": i.channel} for i in self.classes],
            "settings": self.settings,
            "summary": self.summary_rows(),
            "files": [str(p.relative_to(folder)) for p in written],
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        text = json.dumps(record, indent=1, default=str)
        written.append(atomic_write(folder / RECORD_NAME, lambda tmp: tmp.write_text(text)))
        return written

    def save_segmentation(self, path: str | os.PathLike[str]) -> Path:
        """Write the segmentation with nnU-Net's own writer (the file ``nnUNetv2_predict`` writes)."""
        if self.native_segmentation is None or self.writer is None:
            from volcam.errors import ArgumentError

            raise ArgumentError("this result has no segmentation in nnU-Net's order to write", name="segmentation")
        return atomic_write(
            path, lambda tmp: self.writer.write_seg(self.native_segmentation, str(tmp), self.grid.properties)
        )
