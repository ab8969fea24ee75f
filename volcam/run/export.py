"""The files of one case: heat volumes on the scan's grid, slice PNGs and a figure per class.

Used by ``volcam run`` and by :class:`volcam.monai.CAMHandler`, so that both write the same
files for the same case::

    <case>/<class>/heat.nii.gz          float32, the scan's shape, affine and header geometry
    <case>/<class>/<axis>/<axis>_k.png   one overlay per slice (k in RAS+ order)
    <case>/<class>/figure.png           orthogonal views through the hottest voxel (or a mosaic)

For a 2D raster input (PNG, ...), ``<class>/heat.png`` (16-bit grey, the input's pixel grid)
and ``<class>/overlay.png`` (the heat over the image, in the image's own layout) take the
place of the NIfTI and the slice PNGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from volcam.run.outcome import CaseOutput, ClassOutput
from volcam.run.outputs import OutputSettings

__all__ = ["CaseExporter", "display_image"]


def display_image(source: Any, raster: bool) -> Any:
    """The channel drawn under the heat: the scan's first channel, or the grey level of an RGB image."""
    if source.shape[0] == 1:
        return source
    if raster and source.shape[0] in (3, 4):
        grey = source[:3].float().mean(0, keepdim=True)
        return grey
    return source[:1]


class CaseExporter:
    """Writes the files of one case as ``outputs`` asks (see the module docstring).

    Args:
        outputs: the ``outputs`` section.
        method: the CAM method's name, and ``layer`` its target layer(s), for the figure titles.
    """

    def __init__(self, outputs: OutputSettings, *, method: str = "", layer: str = ""):
        self.outputs = outputs
        self.method = method
        self.layer = layer

    def figures(self, out: CaseOutput) -> Any:
        from volcam.figures import CaseFigures

        o = self.outputs
        return CaseFigures(
            display_image(out.source, out.raster),
            raster=out.raster,
            window=o.window,
            cmap=o.cmap,
            alpha=o.alpha,
            convention=o.convention,
        )

    def outline(self, out: CaseOutput, cls: ClassOutput, label_region: Any) -> torch.Tensor | None:
        """The region whose outline is drawn (``outputs.outline``), on the scan's grid."""
        if self.outputs.outline == "prediction":
            return cls.prediction
        if self.outputs.outline == "label" and out.label is not None:
            label = out.label.as_tensor() if hasattr(out.label, "as_tensor") else out.label
            return label_region(label, cls.category)
        return None

    def write(self, out: CaseOutput, folder: Path, *, label_region: Any = None) -> list[str]:
        """Write every class of ``out`` into ``folder`` (the case's staging folder) and fill in
        the file fields of each class's summary row. Returns the written files, relative to
        ``folder``."""
        files: list[str] = []
        figs = self.figures(out) if (self.outputs.pngs or self.outputs.figure) else None
        for cls in out.classes:
            cdir = folder / cls.name
            cdir.mkdir(parents=True, exist_ok=True)
            mask = None if label_region is None else self.outline(out, cls, label_region)
            fields = self._write_class(out, cls, cdir, figs, mask, folder)
            files.extend(fields.pop("_files"))
            if out.case.series is not None:
                files.extend(self._write_dicom(out, cls, cdir, folder))
                cls.row["series"] = out.case.series.series.label()
            cls.row.update(
                {k: (f"{out.case.id}/{v}" if k in ("heat_nifti", "figure") and v else v) for k, v in fields.items()}
            )
        if self.outputs.viewer:
            files.extend(self._write_viewer(out, folder, label_region))
        return files

    def _write_dicom(self, out: CaseOutput, cls: ClassOutput, cdir: Path, root: Path) -> list[str]:
        """The heat as a DICOM Parametric Map and SEG on the source series (``outputs.dicom``)."""
        from volcam.io import dicom

        written = []
        if "pmap" in self.outputs.dicom:
            path = dicom.save_parametric_map(
                cls.heat,
                out.case.series,
                cdir / "heat_pmap.dcm",
                raw=self.outputs.raw_heat,
                series_description=f"volcam {self.method} {cls.name}"[:64],
            )
            written.append(path.relative_to(root).as_posix())
        if "seg" in self.outputs.dicom:
            path = dicom.save_seg(
                cls.heat,
                out.case.series,
                cdir / "heat_seg.dcm",
                threshold=self.outputs.dicom_threshold,
                segmentation=cls.prediction.to(torch.uint8),
                labels={1: f"predicted {cls.name}"},
                series_description=f"volcam {self.method} {cls.name} regions"[:64],
            )
            written.append(path.relative_to(root).as_posix())
        return written

    def _write_viewer(self, out: CaseOutput, folder: Path, label_region: Any) -> list[str]:
        """``viewer.html`` of the case (every class a layer) and a thumbnail per class."""
        from volcam.figures.report import write_thumbnail
        from volcam.figures.viewer import write_viewer

        o = self.outputs
        image = display_image(out.source, out.raster)
        masks: dict[str, Any] = {}
        for cls in out.classes:
            masks[f"prediction: {cls.name}"] = cls.prediction
            if out.label is not None and label_region is not None:
                label = out.label.as_tensor() if hasattr(out.label, "as_tensor") else out.label
                masks[f"reference: {cls.name}"] = label_region(label, cls.category)
        heats = {cls.name: cls.heat for cls in out.classes}
        stats = {cls.name: cls.row for cls in out.classes}
        style: dict[str, Any] = {"window": o.window, "cmap": o.cmap, "alpha": o.alpha, "convention": o.convention}
        if out.case.series is not None:  # DICOM: its own patient coordinates (LPS) and modality
            from volcam.figures.viewer import dicom_style

            style.update(dicom_style(out.case.series.series.modality))
        if out.raster:  # pixel units, the image's own layout
            image = image.as_tensor()[0].numpy() if hasattr(image, "as_tensor") else image
            heats = {k: v.as_tensor()[0].numpy() if hasattr(v, "as_tensor") else v for k, v in heats.items()}
            masks = {k: v.numpy() if hasattr(v, "numpy") else v for k, v in masks.items()}
        title = f"{out.case.id} · {self.method} at {self.layer}" if self.method else out.case.id
        written = [write_viewer(image, heats, folder / "viewer.html", masks=masks, stats=stats, title=title, **style)]
        for cls in out.classes:
            path = folder / cls.name / "thumbnail.png"
            if out.raster:
                written.append(_raster_thumbnail(self.figures(out), cls.heat, path))
            else:
                thumb = display_image(out.source, out.raster)
                written.append(write_thumbnail(thumb, cls.heat, path, window=o.window, cmap=o.cmap, alpha=o.alpha))
        return [Path(p).relative_to(folder).as_posix() for p in written]

    def _write_class(
        self, out: CaseOutput, cls: ClassOutput, cdir: Path, figs: Any, mask: Any, root: Path
    ) -> dict[str, Any]:
        from volcam import io as vio
        from volcam.figures import save_figure

        o = self.outputs
        rel = lambda p: Path(p).relative_to(root).as_posix()
        fields: dict[str, Any] = {"heat_nifti": "", "pngs": 0, "figure": "", "_files": []}
        if out.raster:
            if o.heat_nifti:
                path = _write_heat_png(cls.heat, cdir / "heat.png", raw=o.raw_heat)
                fields["_files"].append(rel(path))
                fields["heat_nifti"] = rel(path)
            if o.pngs and figs is not None:
                from volcam.figures.slices import _write_png

                rgb = figs.scene.with_heat(cls.heat, mask).rgb(2, 0)
                path = _write_png(cdir / "overlay.png", rgb, 1)
                fields["_files"].append(rel(path))
                fields["pngs"] = 1
        else:
            if o.heat_nifti:
                reference = out.case.image if str(out.case.image).lower().endswith((".nii", ".nii.gz")) else out.source
                path = vio.save_heat(cls.heat, cdir / "heat.nii.gz", reference=reference, raw=o.raw_heat)
                fields["_files"].append(rel(path))
                fields["heat_nifti"] = rel(path)
            if o.pngs and figs is not None:
                for axis in o.axes:
                    paths = figs.slice_pngs(
                        cls.heat,
                        cdir / axis,
                        axis=axis,
                        mask=mask,
                        square_pixels=o.square_pixels,
                        min_size=o.min_png_size,
                        colorbar=o.colorbar,
                        letters=o.letters,
                    )
                    fields["_files"].extend(rel(p) for p in paths)
                    fields["pngs"] += len(paths)
        if o.figure and figs is not None:
            title = f"{out.case.id} · {cls.name} · {self.method} at {self.layer}" if self.method else out.case.id
            if o.figure == "mosaic" and not out.raster:
                fig = figs.mosaic(cls.heat, mask=mask, axis=o.axes[0], select="hottest", title=title)
            else:
                fig = figs.orthogonal_views(cls.heat, mask=mask, title=title)
            path = save_figure(fig, cdir / "figure.png")
            fields["_files"].append(rel(path))
            fields["figure"] = rel(path)
        return fields


def _write_heat_png(heat: Any, path: Path, *, raw: bool) -> Path:
    """A heat map of a 2D raster image as a 16-bit grey PNG on the image's pixel grid
    (value / 65535 = heat in [0, 1]; with ``raw``, min-max scaled)."""
    from PIL import Image

    from volcam.io import atomic_write

    h = heat.as_tensor()[0] if hasattr(heat, "as_tensor") else torch.as_tensor(heat)[0]
    arr = h.float().numpy().T  # MONAI's [W, H] -> rows, columns
    if raw:
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    data = np.rint(np.clip(arr, 0.0, 1.0) * 65535).astype(np.uint16)
    picture = Image.fromarray(data)
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def _raster_thumbnail(figs: Any, heat: Any, path: Path, size: int = 128) -> Path:
    """A small overlay of a 2D raster image in its own layout (longer side ``size`` pixels)."""
    from PIL import Image

    from volcam.io import atomic_write

    rgb = figs.scene.with_heat(heat).rgb(2, 0)
    picture = Image.fromarray(rgb)
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
