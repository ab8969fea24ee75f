"""Geometry of scans: voxel-to-world affines, world and voxel coordinates, orientation.

An affine maps a voxel index ``(i, j, k, 1)`` to world millimetres ``(x, y, z, 1)`` in
NIfTI's RAS+ convention: x increases towards the patient's Right, y towards Anterior and z
towards Superior. DICOM's LPS+ differs by the sign of x and y.

2D images carry a 3x3 affine (or a 4x4 whose third axis is a 1 mm slice); both become 4x4.
The functions here are plain numpy: the I/O, figure and viewer modules share them, so a
voxel index, a world point and an anatomical axis name mean the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from volcam.arrays import to_numpy
from volcam.errors import ArgumentError, ShapeError, ValueRangeError

__all__ = [
    "AXES",
    "AFFINE_ATOL",
    "as_affine",
    "same_grid",
    "voxel_to_world",
    "world_to_voxel",
    "voxel_volume_ml",
    "spacing",
    "axis_codes",
    "slice_axis",
    "Canonical",
]

#: Anatomical slice names -> the RAS+ world axis they are perpendicular to.
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}

#: mm; affines that differ by less describe the same grid
AFFINE_ATOL = 1e-3


def as_affine(affine: Any, name: str = "affine") -> np.ndarray:
    """A 4x4 float64 affine from a 3x3 (2D) or 4x4 array, tensor or MetaTensor affine.

    Raises:
        ShapeError: not 3x3 or 4x4.
        ValueRangeError: not finite, or singular.
    """
    a = to_numpy(affine).astype(np.float64)
    if a.shape == (3, 3):  # a 2D affine: embed it, the third axis keeps a 1 mm spacing
        full = np.eye(4)
        full[:2, :2] = a[:2, :2]
        full[:2, 3] = a[:2, 2]
        a = full
    if a.shape != (4, 4):
        raise ShapeError(
            f"`{name}` must be a 4x4 (or 3x3 for 2D) matrix, not shape {tuple(a.shape)}",
            expected="(4, 4)",
            actual_shape=a.shape,
        )
    if not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueRangeError(f"`{name}` must be a finite invertible matrix, not\n{a}")
    return a


def same_grid(a: Any, b: Any, atol: float = AFFINE_ATOL) -> bool:
    """Whether two affines describe the same grid (equal within ``atol`` mm)."""
    return bool(np.allclose(to_numpy(a), to_numpy(b), rtol=0.0, atol=atol))


def voxel_to_world(affine: Any, index: Sequence[float]) -> list[float]:
    """World coordinates ``[x, y, z]`` in mm of a voxel index (a 2D index lies in its slice, k = 0)."""
    a = to_numpy(affine).astype(np.float64)
    n = a.shape[0] - 1
    idx = [float(i) for i in index][:n] + [0.0] * max(0, n - len(index))
    world = (a @ np.array([*idx, 1.0]))[:n].tolist()
    return world + [0.0] * (3 - len(world))


def world_to_voxel(affine: Any, point: Sequence[float]) -> np.ndarray:
    """Continuous voxel index ``[i, j, k]`` of a world point ``(x, y, z)`` in mm."""
    a = as_affine(affine)
    p = np.asarray(point, dtype=np.float64).reshape(-1)
    if p.size == 2:
        p = np.r_[p, a[2, 3]]
    if p.size != 3 or not np.all(np.isfinite(p)):
        raise ArgumentError(f"`point` must be a finite world position (x, y, z) in mm, not {point!r}")
    return np.linalg.solve(a[:3, :3], p - a[:3, 3])


def voxel_volume_ml(affine: Any) -> float:
    """Volume of one voxel in ml; for a 2D image with a 4x4 affine, a pixel times the slice thickness."""
    a = to_numpy(affine).astype(np.float64)
    n = a.shape[0] - 1
    return abs(float(np.linalg.det(a[:n, :n]))) / 1000.0


def spacing(affine: Any) -> np.ndarray:
    """Voxel size in mm along each array axis (the column norms of the affine's 3x3 part)."""
    a = as_affine(affine)
    return np.sqrt((a[:3, :3] ** 2).sum(axis=0))


def axis_codes(affine: Any) -> str:
    """The world direction each array axis points to, e.g. ``"LAS"`` (nibabel's ``aff2axcodes``)."""
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(as_affine(affine)))


def slice_axis(affine: Any, axis: str) -> int:
    """The array axis that an anatomical axis name cuts across, for an image with ``affine``.

    ``slice_axis(affine, "axial")`` is the voxel axis closest to the inferior-superior
    world axis (nibabel ``io_orientation``); e.g. 2 for RAS/LAS/LPS volumes, 1 for a
    volume stored as (x, z, y).
    """
    import nibabel as nib

    if axis not in AXES:
        raise ArgumentError(f"`axis` must be one of {list(AXES)}, not {axis!r}")
    ornt = nib.orientations.io_orientation(as_affine(affine))
    return int(np.flatnonzero(ornt[:, 0] == AXES[axis])[0])


@dataclass(frozen=True)
class Canonical:
    """How a volume's array maps to RAS+ voxel order (flips and transposes, no resampling).

    Attributes:
        source_affine: the volume's own 4x4 affine.
        source_shape: its spatial shape (3 axes; 2D images get a trailing axis of 1).
        ornt: nibabel orientation array from the source axes to RAS+.
        affine: the affine of the reoriented array (the same world points).
        shape: the reoriented shape.
    """

    source_affine: np.ndarray
    source_shape: tuple[int, ...]
    ornt: np.ndarray
    affine: np.ndarray
    shape: tuple[int, ...]

    @classmethod
    def of(cls, affine: Any, shape: Sequence[int]) -> Canonical:
        """The reorientation of an array of spatial ``shape`` (2 or 3 axes) with ``affine``."""
        import nibabel as nib

        aff = as_affine(affine)
        shape3 = tuple(int(s) for s in shape) + (1,) * (3 - len(shape))
        ornt = nib.orientations.io_orientation(aff)
        new_affine = aff @ nib.orientations.inv_ornt_aff(ornt, shape3)
        new_shape = tuple(int(shape3[int(i)]) for i in np.argsort(ornt[:, 0]))
        return cls(aff, shape3, ornt, new_affine, new_shape)

    @property
    def zooms(self) -> np.ndarray:
        """Voxel size in mm along the RAS+ axes."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    def apply(self, volume: np.ndarray) -> np.ndarray:
        """The array of a volume on the source grid, in RAS+ voxel order (a view where possible)."""
        import nibabel as nib

        arr = np.asarray(volume)
        if arr.ndim == 2:
            arr = arr[..., None]
        return nib.orientations.apply_orientation(arr, self.ornt)

    def to_canonical_index(self, index: Sequence[float]) -> np.ndarray:
        """The RAS+ voxel index of a source array index (2D indices get k = 0)."""
        idx = np.zeros(3)
        idx[: len(index)] = np.asarray(index, dtype=np.float64)[:3]
        world = self.source_affine[:3, :3] @ idx + self.source_affine[:3, 3]
        return np.linalg.solve(self.affine[:3, :3], world - self.affine[:3, 3])

    def to_source_index(self, voxel: Sequence[float]) -> np.ndarray:
        """The source array index of a RAS+ voxel index."""
        world = self.affine[:3, :3] @ np.asarray(voxel, dtype=np.float64) + self.affine[:3, 3]
        return np.linalg.solve(self.source_affine[:3, :3], world - self.source_affine[:3, 3])
