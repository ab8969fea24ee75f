"""From the network's grid back onto the scan, as nnU-Net takes its logits back.

nnU-Net exports a prediction by resampling the logits from the configuration's spacing to the
cropped region's spacing (``resampling_fn_probabilities``), putting them into the uncropped shape
(``insert_crop_into_image``) and transposing back (``transpose_backward``); its reader-writer then
writes the array with the source image's geometry. The segmentation here is nnU-Net's own
(``convert_predicted_logits_to_segmentation_with_correct_shape``); the heat takes the same steps,
is normalised once per class to [0, 1], and is then brought into the voxel order of the source
file (as nibabel reads it: ``[x, y, z]``), undoing the reorientation of the ``...WithReorient``
readers, so that it lies on the file's own grid with the file's own affine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volcam.errors import ArgumentError, ShapeError
from volcam.io import NIFTI_SUFFIXES, atomic_write, save_heat

__all__ = ["SourceGrid", "segmentation_from_logits", "heat_to_native", "read_file_order"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _nib_image(path: Path) -> Any:
    """A NIfTI file's image (header and lazy data)."""
    import nibabel as nib

    return nib.load(str(path))


def _sitk_affine(spacing, origin, direction) -> np.ndarray:
    """The RAS voxel-to-world affine of a SimpleITK geometry (LPS), 2D or 3D, as a 4x4."""
    n = len(spacing)
    a = np.eye(4)
    d = np.asarray(direction, dtype=np.float64).reshape(n, n) @ np.diag(np.asarray(spacing, dtype=np.float64))
    a[:n, :n] = d
    a[:n, 3] = np.asarray(origin, dtype=np.float64)
    a[:3, :] = _LPS_TO_RAS @ a[:3, :]
    return a


@dataclass
class SourceGrid:
    """The grid of a case's source image, and the way from nnU-Net's array order to it.

    Attributes:
        reference: the first channel file (the grid every channel shares).
        kind: how nnU-Net read it: ``"sitk"``, ``"sitk-reorient"``, ``"nibabel"`` or ``"nibabel-reorient"``.
        shape: the spatial shape in the file's voxel order (nibabel's ``[x, y, z]``).
        affine: the file's 4x4 voxel-to-world (RAS) matrix (nibabel's, for NIfTI files).
        sitk_geometry: ``(spacing, origin, direction)`` of the file as SimpleITK reads it, for
            files written back with SimpleITK; None for nibabel readers.
    """

    reference: Path
    kind: str
    shape: tuple[int, ...]
    affine: np.ndarray
    properties: dict = field(repr=False)
    sitk_geometry: tuple | None = field(default=None, repr=False)

    @classmethod
    def of(cls, reference: str | os.PathLike[str], properties: dict) -> SourceGrid:
        """The grid of ``reference`` read by the reader that made ``properties``.

        Raises:
            ArgumentError: the reader is not one that volcam can map back (SimpleITK and
                nibabel readers, with or without reorientation).
        """
        import SimpleITK as sitk

        reference = Path(reference)
        if "sitk_stuff" in properties:
            stuff = properties["sitk_stuff"]
            kind = "sitk-reorient" if "original_orientation" in stuff else "sitk"
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(reference))
            reader.ReadImageInformation()
            geometry = (reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
            shape = tuple(int(s) for s in reader.GetSize())
            if _is_nifti(reference):
                affine = np.asarray(_nib_image(reference).affine, dtype=np.float64)
            else:
                affine = _sitk_affine(*geometry)
            return cls(reference, kind, shape, affine, properties, geometry)
        if "nibabel_stuff" in properties:
            stuff = properties["nibabel_stuff"]
            kind = "nibabel-reorient" if "reoriented_affine" in stuff else "nibabel"
            shape = tuple(int(s) for s in _nib_image(reference).shape[:3])
            return cls(reference, kind, shape, np.asarray(stuff["original_affine"], dtype=np.float64), properties)
        raise ArgumentError(
            f"heat volumes can be taken back to files read by nnU-Net's SimpleITK and nibabel readers, not by the "
            f"reader of this model (properties {sorted(properties)}); '{reference}'",
            name="image_files",
        )

    def to_file_order(self, native: np.ndarray) -> np.ndarray:
        """An array ``[*lead, *native]`` in nnU-Net's order (after ``transpose_backward``) as
        ``[*lead, *shape]`` in the file's voxel order. Only permutes and flips voxels."""
        native = np.asarray(native)
        spatial = 3
        lead = native.shape[: native.ndim - spatial]
        flat = native.reshape(-1, *native.shape[-spatial:])
        out = np.stack([self._one(a) for a in flat]) if len(flat) else flat
        out = out.reshape(*lead, *out.shape[1:])
        if tuple(out.shape[len(lead) :]) != self.shape:
            raise ShapeError(
                f"an array taken back to '{self.reference}' must have its shape {self.shape}, not "
                f"{tuple(out.shape[len(lead) :])}",
                expected=str(self.shape),
                actual_shape=tuple(out.shape),
            )
        return out

    def _one(self, a: np.ndarray) -> np.ndarray:
        if self.kind == "sitk":
            return a[0].T if len(self.shape) == 2 else a.T
        if self.kind == "sitk-reorient":
            import SimpleITK as sitk

            stuff = self.properties["sitk_stuff"]
            img = sitk.GetImageFromArray(a[0] if len(stuff["spacing"]) == 2 else a)
            img.SetSpacing(stuff["spacing"])
            img.SetOrigin(stuff["origin"])
            img.SetDirection(stuff["direction"])
            img = sitk.DICOMOrient(img, stuff["original_orientation"])
            return sitk.GetArrayFromImage(img).T
        import nibabel as nib

        xyz = a.transpose(2, 1, 0)
        if self.kind == "nibabel":
            return xyz
        stuff = self.properties["nibabel_stuff"]
        from_canonical = nib.orientations.ornt_transform(
            nib.orientations.axcodes2ornt("RAS"), nib.orientations.io_orientation(stuff["original_affine"])
        )
        return nib.orientations.apply_orientation(xyz, from_canonical)

    # ------------------------------------------------------------------ files
    @property
    def file_ending(self) -> str:
        name = self.reference.name
        for ending in (*NIFTI_SUFFIXES, ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl"):
            if name.lower().endswith(ending):
                return name[len(name) - len(ending) :]
        return self.reference.suffix

    def write_heat(self, heat: np.ndarray, path: str | os.PathLike[str]) -> Path:
        """Write one heat volume (file order, values in [0, 1]) as float32 with the source's
        geometry: NIfTI with the source file's header (:func:`volcam.io.save_heat`), other
        formats with SimpleITK (spacing, origin, direction of the source)."""
        path = Path(path)
        if _is_nifti(path):
            return save_heat(
                heat,
                path,
                reference=self.reference if _is_nifti(self.reference) else None,
                affine=None if _is_nifti(self.reference) else self.affine,
            )
        import SimpleITK as sitk

        if self.sitk_geometry is None:
            raise ArgumentError(f"a heat volume of '{self.reference}' can be written as NIfTI only, not '{path}'")
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(heat, dtype=np.float32).T))
        spacing, origin, direction = self.sitk_geometry
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
        img.SetDirection(direction)
        return atomic_write(path, lambda tmp: sitk.WriteImage(img, str(tmp), True))


def read_file_order(path: str | os.PathLike[str]) -> np.ndarray:
    """A single-channel image (or label map) as an array in its file's voxel order (``[x, y, z]``)."""
    path = Path(path)
    if _is_nifti(path):
        return np.asanyarray(_nib_image(path).dataobj)
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).T


def segmentation_from_logits(
    logits: torch.Tensor,
    plans_manager: Any,
    configuration_manager: Any,
    label_manager: Any,
    properties: dict,
    *,
    probabilities: bool = False,
):
    """nnU-Net's segmentation (and probabilities) of the logits on the source grid, in nnU-Net's
    array order: ``convert_predicted_logits_to_segmentation_with_correct_shape``."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    return convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, plans_manager, configuration_manager, label_manager, properties, return_probabilities=probabilities
    )


def heat_to_native(
    heat: torch.Tensor, plans_manager: Any, configuration_manager: Any, properties: dict
) -> tuple[np.ndarray, np.ndarray]:
    """Raw heat ``[K, *S]`` on the network's grid -> ``([K, *native] in [0, 1], raw maxima [K])``.

    The steps of nnU-Net's export of logits: resample with the configuration's
    ``resampling_fn_probabilities`` to the cropped region, normalise each class over it (min-max,
    once), put it into the uncropped shape (zero outside the crop) and transpose back.
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    transpose_forward = plans_manager.transpose_forward
    spacing_transposed = [properties["spacing"][i] for i in transpose_forward]
    cropped_shape = properties["shape_after_cropping_and_before_resampling"]
    current_spacing = (
        configuration_manager.spacing
        if len(configuration_manager.spacing) == len(cropped_shape)
        else [spacing_transposed[0], *configuration_manager.spacing]
    )
    raw_max = heat.flatten(1).amax(1).numpy() if heat.numel() else np.zeros(len(heat))
    resampled = configuration_manager.resampling_fn_probabilities(
        heat, cropped_shape, current_spacing, spacing_transposed
    )
    resampled = torch.as_tensor(resampled).float().numpy()
    lo = resampled.reshape(len(resampled), -1).min(1).reshape(-1, *[1] * (resampled.ndim - 1))
    hi = resampled.reshape(len(resampled), -1).max(1).reshape(-1, *[1] * (resampled.ndim - 1))
    span = hi - lo
    normalised = np.where(span > 1e-12, (resampled - lo) / np.maximum(span, 1e-12), 0.0).astype(np.float32)
    full = np.zeros((len(heat), *properties["shape_before_cropping"]), dtype=np.float32)
    full = insert_crop_into_image(full, normalised, properties["bbox_used_for_cropping"])
    full = full.transpose([0, *[i + 1 for i in plans_manager.transpose_backward]])
    return np.ascontiguousarray(full), raw_max
