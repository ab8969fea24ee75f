"""The handler's files: one case of a batch taken back to its scan's grid and written exactly as
``volcam run`` writes a case (:class:`volcam.run.export.CaseExporter`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volcam.monai._cases import plain

__all__ = ["SourceCase", "to_source", "on_source_grid", "is_dict_transform", "write_case"]


class SourceCase:
    """One case on its scan's grid: ``image`` ``[C, *S]``, ``heat`` ``[1, *S]`` MetaTensors,
    ``label`` ``[L, *S]`` (or None), the scan's file (``path``, or None), and whether it lies
    on the scan's own grid (``on_source``; False when the preprocessing could not be undone)."""

    def __init__(self, image: Any, heat: Any, label: Any, path: Path | None, on_source: bool, predicted: Any = None):
        self.image = image
        self.heat = heat
        self.label = label
        self.path = path
        self.on_source = on_source
        shape = tuple(heat.shape[1:])
        self.predicted = (predicted if predicted is not None else torch.zeros(heat.shape[0], *shape)) > 0.5


def on_source_grid(image: Any) -> bool:
    """Whether a case lies on its source scan's grid: same spatial shape and affine as
    recorded by the loader (``spatial_shape``, ``original_affine``); True when unknown."""
    meta = image.meta
    shape, original = meta.get("spatial_shape"), meta.get("original_affine")
    if shape is not None and tuple(int(s) for s in np.asarray(shape).reshape(-1)) != tuple(image.shape[1:]):
        return False
    if original is not None:
        original = np.asarray(plain(torch.as_tensor(original)).cpu(), dtype=np.float64)
        current = np.asarray(plain(image.affine).cpu(), dtype=np.float64)
        if original.shape != current.shape or not np.allclose(original, current, atol=1e-4):
            return False
    return True


def is_dict_transform(transform: Any) -> bool:
    from monai.transforms import Compose, MapTransform

    if isinstance(transform, Compose):
        return any(isinstance(t, MapTransform) for t in transform.flatten().transforms)
    return isinstance(transform, MapTransform)


def _with_meta(volume: torch.Tensor, image: Any) -> Any:
    from monai.data import MetaTensor

    return MetaTensor(volume, meta=deepcopy(image.meta), applied_operations=deepcopy(image.applied_operations))


def _invert(volume: torch.Tensor, image: Any, transform: Any, key: str, nearest: bool) -> Any:
    from volcam.io import invert_to_source

    if is_dict_transform(transform):
        return invert_to_source(volume, {key: image}, transform, key=key, nearest=nearest)
    return invert_to_source(volume, image, transform, nearest=nearest)


def _scan_file(image: Any) -> Path | None:
    name = image.meta.get("filename_or_obj") if hasattr(image, "meta") else None
    if isinstance(name, (list, tuple)):
        name = name[0] if len(name) == 1 else None
    if not isinstance(name, (str, Path)) or not str(name):
        return None
    path = Path(str(name))
    return path if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")) else None


def _original_scan(path: Path | None, like: Any) -> Any:
    """The scan as stored (its own intensities, e.g. Hounsfield units) when it lies on ``like``'s grid."""
    if path is None:
        return None
    from volcam.geometry import same_grid
    from volcam.io import load_image

    try:
        scan = load_image(path)
    except Exception:  # an unreadable file: draw the preprocessed image instead
        return None
    if tuple(scan.shape[1:]) != tuple(like.shape[1:]) or not same_grid(scan.affine, like.affine):
        return None
    return scan


def to_source(
    image: Any, heat: torch.Tensor, label: torch.Tensor | None, transform: Any, key: str, *, predicted: Any = None
) -> SourceCase:
    """Take one case (``image`` ``[C, *S]`` MetaTensor as the network saw it, its ``heat``
    ``[1, *S]`` and ``label``) back onto its scan's grid, through ``transform``'s inverse when the
    preprocessing moved voxels. Without ``transform`` such a case stays on the network's grid
    (``on_source`` False)."""
    path = _scan_file(image)
    pred = None if predicted is None else plain(predicted).float()
    if on_source_grid(image):
        source = _original_scan(path, image)
        return SourceCase(image if source is None else source, _with_meta(heat, image), label, path, True, pred)
    if transform is None:
        return SourceCase(image, _with_meta(heat, image), label, None, False, pred)
    heat_src = _invert(heat, image, transform, key, nearest=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = _original_scan(path, heat_src)
        if source is None:
            source = _invert(plain(image)[:1].float(), image, transform, key, nearest=False)
        label_src = None if label is None else _invert(label.float(), image, transform, key, nearest=True)
        pred_src = None if pred is None else plain(_invert(pred, image, transform, key, nearest=True))
    return SourceCase(source, heat_src, None if label_src is None else plain(label_src), path, True, pred_src)


def _dicom_series(src: SourceCase) -> Any:
    """The DICOM series a case was read from (volcam's DICOM reader records its folder and
    SeriesInstanceUID in the image's metadata), as a ``SeriesChoice``; None for other inputs."""
    for tensor in (src.heat, src.image):
        meta = getattr(tensor, "meta", None) or {}
        uid, folder = meta.get("dicom_series_uid"), meta.get("dicom_folder")
        if isinstance(uid, (list, tuple)) and isinstance(folder, (list, tuple)):  # collated
            uid, folder = uid[0], folder[0]
        if uid and folder:
            from volcam.io.dicom import find_series, select_series

            return select_series(find_series(str(folder)), uid=str(uid))
    return None


def write_case(
    src: SourceCase,
    name: str,
    case_dir: Path,
    folders: list[tuple[int, str]],
    settings: Any,
    method: str,
    layer: str,
) -> dict[str, Any]:
    """Write one case of the handler with :class:`volcam.run.export.CaseExporter`, as ``volcam run``
    writes it: map ``k`` of ``src.heat`` into ``case_dir/<folders[k] name>/``; a case left on the
    network's grid gets ``heat_preprocessed.nii.gz`` instead of ``heat.nii.gz``; a case read from
    a DICOM series also gets ``heat_pmap.dcm`` and ``heat_seg.dcm`` when ``settings.dicom`` asks
    for them. Returns the written files by kind (the first class's, for one class)."""
    from dataclasses import replace

    from volcam.run.cases import Case
    from volcam.run.export import CaseExporter
    from volcam.run.outcome import CaseOutput, ClassOutput

    outline = None if src.label is None else _foreground(src.label)
    classes = [
        ClassOutput(c, folder, src.heat[k : k + 1], src.predicted[min(k, len(src.predicted) - 1)], {})
        for k, (c, folder) in enumerate(folders)
    ]
    series = _dicom_series(src) if settings.dicom and src.on_source else None
    out = CaseOutput(Case(name, src.path or Path(name), None, series), src.image, outline, False, classes)
    outputs = settings if src.on_source else replace(settings, heat_nifti=False)  # not the scan's grid
    exporter = CaseExporter(outputs, method=method, layer=layer)
    files = exporter.write(out, case_dir, label_region=lambda lbl, c: lbl[0] > 0)
    if not src.on_source and settings.heat_nifti:
        from volcam.io import save_heat_preprocessed

        for k, (_, folder) in enumerate(folders):
            path = case_dir / folder / "heat_preprocessed.nii.gz"
            save_heat_preprocessed(src.heat[k : k + 1], src.image, path, raw=settings.raw_heat)
            files.append(path.relative_to(case_dir).as_posix())
    paths = [case_dir / f for f in files]
    written: dict[str, Any] = {"png": [p for p in paths if p.parent.name in ("axial", "coronal", "sagittal")]}
    nifti = [p for p in paths if p.name.startswith("heat")]
    if nifti:
        written["nifti"] = nifti[0]
    figure = [p for p in paths if p.name == "figure.png"]
    if figure:
        written["figure"] = figure[0]
    return written


def _foreground(label: torch.Tensor) -> torch.Tensor:
    """``[1, *S]``: the labelled voxels (any class) of a label map or a one-hot label."""
    label = plain(label)
    return (label[:1] > 0) if label.shape[0] == 1 else (label[1:] > 0).any(0, keepdim=True)


def output_settings(exports: Any, png_args: dict[str, Any], figure_args: dict[str, Any], normalize: bool) -> Any:
    """The :class:`~volcam.run.outputs.OutputSettings` of the handler's ``exports``,
    ``png_args`` and ``figure_args`` (``normalize``: the CAM's own setting)."""
    from volcam.run.outputs import OutputSettings

    axis = png_args.get("axis") or figure_args.get("axis") or "axial"
    figure = "mosaic" if figure_args.get("select") or figure_args.get("n") else "orthogonal"
    return OutputSettings.from_raw(
        {
            **OutputSettings().__dict__,
            "axes": [axis],
            "heat_nifti": "nifti" in exports,
            "pngs": "png" in exports,
            "figure": figure if "figure" in exports else None,
            "viewer": "viewer" in exports,
            "dicom": ["pmap", "seg"] if "dicom" in exports else [],
            "raw_heat": not normalize,
            "window": png_args.get("window", figure_args.get("window")),
            "cmap": png_args.get("cmap", "jet"),
            "alpha": png_args.get("alpha", 0.5),
            "convention": png_args.get("convention", "radiological"),
        }
    )


def predicted_regions(output: torch.Tensor, classes: Sequence[int] | None, targets: Any) -> torch.Tensor:
    """``[B, K, *S]``: the region the network predicts as each explained class (``classes``,
    else the class of an int ``targets``, else any foreground class), from one pass of channel
    comparisons (:func:`volcam.targets.predicted_labels`: ``argmax`` with its tie rule)."""
    from volcam.targets import predicted_labels

    if output.ndim < 3:
        return torch.zeros(output.shape[0], 1)
    if output.shape[1] == 1:  # one sigmoid channel: its foreground
        return output[:, :1] > 0
    winner = predicted_labels(output)[:, None]
    if classes is not None:
        return torch.cat([winner == c for c in classes], 1)
    c = targets if isinstance(targets, int) and not isinstance(targets, bool) else None
    return winner == c if c is not None else winner > 0


def layer_names(layers: Any) -> str:
    """The target layers as the case records hold them (names joined by ``;``)."""
    if isinstance(layers, (list, tuple)):
        return ";".join(str(x) if isinstance(x, str) else type(x).__name__ for x in layers)
    return str(layers) if isinstance(layers, str) else type(layers).__name__
