"""volcam.io: loading, inverting the preprocessing onto the scan's grid, atomic NIfTI writes.

Geometry is checked on the real scans nibabel ships: ``anatomical.nii`` (a T1 stored LAS)
and the first volume of ``example4d.nii.gz`` (an EPI with an oblique affine).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    CenterSpatialCrop,
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    LoadImaged,
    Orientation,
    Orientationd,
    ScaleIntensityRange,
    ScaleIntensityRanged,
    Spacing,
    Spacingd,
    SpatialPad,
    SpatialPadd,
)
from nibabel.testing import data_path

from volcam import io
from volcam.errors import ConfigError, ImageReadError, ShapeError, ValueRangeError

ANATOMICAL = Path(data_path) / "anatomical.nii"
EXAMPLE4D = Path(data_path) / "example4d.nii.gz"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def oblique_3d(tmp_path_factory) -> Path:
    """First volume of example4d.nii.gz (oblique affine, qform/sform code 1) as a 3D file."""
    src = nib.load(EXAMPLE4D)
    path = tmp_path_factory.mktemp("oblique") / "example3d.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj)[..., 0], src.affine, src.header), path)
    return path


def world_grid(affine, shape) -> np.ndarray:
    """World (mm) coordinates of every voxel centre, [*shape, 3]."""
    affine = np.asarray(affine, dtype=np.float64)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(np.float64)
    n = len(shape)
    return idx @ affine[:n, :n].T + affine[:n, 3]  # 2D: in-plane part of the affine


def blob(affine, shape, centre, sigma) -> torch.Tensor:
    """A Gaussian of the world distance to ``centre``, [1, *shape] float32 in (0, 1]."""
    d2 = ((world_grid(affine, shape) - np.asarray(centre)) ** 2).sum(-1)
    return torch.as_tensor(np.exp(-d2 / (2.0 * sigma**2))[None], dtype=torch.float32)


def peak_world(img: nib.Nifti1Image) -> np.ndarray:
    data = np.asarray(img.dataobj)
    idx = np.unravel_index(int(np.argmax(data)), data.shape)
    n = data.ndim
    return img.affine[:n, :n] @ np.asarray(idx, dtype=np.float64) + img.affine[:n, 3]


def chain_3d():
    return Compose(
        [
            Orientation("RAS", labels=None),
            Spacing((3.0, 2.5, 1.7), mode="bilinear"),
            ScaleIntensityRange(0.0, 2000.0, 0.0, 1.0, clip=True),
            SpatialPad((30, 40, 40)),
            CenterSpatialCrop((24, 36, 36)),
        ]
    )


# --------------------------------------------------------------------------- loading


def test_load_image_is_channel_first_metatensor_with_the_files_affine():
    x = io.load_image(ANATOMICAL)
    src = nib.load(ANATOMICAL)
    assert isinstance(x, MetaTensor)
    assert tuple(x.shape) == (1, 33, 41, 25)
    np.testing.assert_array_equal(x.affine.numpy(), src.affine)
    np.testing.assert_array_equal(x[0].numpy(), src.get_fdata().astype(np.float32))
    assert int(x.meta["qform_code"]) == 2 and int(x.meta["sform_code"]) == 2


def test_load_image_applies_the_transform():
    t = Compose([Orientation("RAS", labels=None)])
    x = io.load_image(ANATOMICAL, t)
    raw = nib.load(ANATOMICAL).get_fdata().astype(np.float32)
    # LAS -> RAS flips the first axis, nothing else
    np.testing.assert_array_equal(x[0].numpy(), raw[::-1])
    assert x.affine[0, 0] == 2.0 and x.affine[0, 3] == 32.0 - 2.0 * 32


# --------------------------------------------------------------------------- inversion


def test_orientation_inverse_is_the_exact_flip():
    """Hand-checkable: for LAS data, the RAS heat comes back flipped along x, voxel for voxel."""
    t = Compose([Orientation("RAS", labels=None)])
    x = io.load_image(ANATOMICAL, t)
    heat = torch.rand(1, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    back = io.invert_to_source(heat, x, t)
    assert tuple(back.shape) == (1, 33, 41, 25)
    np.testing.assert_array_equal(back[0].numpy(), heat[0].numpy()[::-1])
    np.testing.assert_array_equal(back.affine.numpy(), nib.load(ANATOMICAL).affine)


@pytest.mark.parametrize("case", ["anatomical", "oblique"])
def test_blob_at_a_world_point_comes_back_to_that_point(case, oblique_3d, tmp_path):
    source = ANATOMICAL if case == "anatomical" else oblique_3d
    src = nib.load(source)
    t = chain_3d()
    x = io.load_image(source, t)
    shape = tuple(x.shape[1:])
    # the chosen world point: a voxel of the preprocessed grid, off-centre, off the grid lines
    pre_affine = x.affine.numpy()
    point = pre_affine[:3, :3] @ (np.asarray(shape) * np.array([0.4, 0.55, 0.45]) + 0.3) + pre_affine[:3, 3]
    heat = blob(pre_affine, shape, point, sigma=7.0)

    back = io.invert_to_source(heat[None], x, t)  # the engine's [B, 1, *S] shape
    out = io.save_heat(back, tmp_path / "heat.nii.gz", reference=source)

    saved = nib.load(out)
    assert saved.shape == src.shape[:3]
    np.testing.assert_array_equal(saved.affine, src.affine)
    assert int(saved.header["qform_code"]) == int(src.header["qform_code"])
    assert int(saved.header["sform_code"]) == int(src.header["sform_code"])
    np.testing.assert_array_equal(saved.header.get_qform(), src.header.get_qform())
    np.testing.assert_array_equal(saved.header.get_sform(), src.header.get_sform())
    assert saved.get_data_dtype() == np.float32
    data = saved.get_fdata()
    assert 0.0 <= data.min() and data.max() <= 1.0 and data.max() > 0.9
    zooms = np.asarray(src.header.get_zooms()[:3])
    assert np.linalg.norm(peak_world(saved) - point) <= zooms.max()
    assert sorted(os.listdir(tmp_path)) == ["heat.nii.gz"]


def test_2d_image_round_trip(tmp_path):
    affine = np.diag([-0.8, -1.2, 1.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, 5.0]
    rng = np.random.default_rng(1)
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((30, 40)).astype(np.float32), affine), path)
    t = Compose([Orientation("RA", labels=None), Spacing((1.0, 1.5))])
    x = io.load_image(path, t)
    assert tuple(x.shape) == (1, 24, 32)  # 30*0.8/1.0, 40*1.2/1.5
    pre = x.affine.numpy()
    point = pre[:2, :2] @ np.array([9.3, 20.6]) + pre[:2, 3]
    heat = blob(pre, x.shape[1:], point, sigma=3.0)
    back = io.invert_to_source(heat, x, t)
    out = io.save_heat(back, tmp_path / "slice_heat.nii.gz", reference=path)
    saved = nib.load(out)
    assert saved.shape == (30, 40)
    np.testing.assert_array_equal(saved.affine, nib.load(path).affine)
    assert np.linalg.norm(peak_world(saved) - point) <= 1.2


def test_dictionary_pipeline_with_crop_foreground(tmp_path):
    src = nib.load(ANATOMICAL)
    t = Compose(
        [
            LoadImaged(["image", "label"]),
            EnsureChannelFirstd(["image", "label"]),
            Orientationd(["image", "label"], "RAS", labels=None),
            Spacingd(["image", "label"], (3.0, 2.5, 1.7), mode=("bilinear", "nearest")),
            ScaleIntensityRanged("image", 0.0, 2000.0, 0.0, 1.0, clip=True),
            CropForegroundd(["image", "label"], source_key="image", margin=1),
            SpatialPadd(["image", "label"], (32, 40, 32)),
        ]
    )
    d = t({"image": str(ANATOMICAL), "label": str(ANATOMICAL)})
    pre = d["image"].affine.numpy()
    shape = tuple(d["image"].shape[1:])
    point = pre[:3, :3] @ (np.asarray(shape) * 0.5 + 0.2) + pre[:3, 3]
    back = io.invert_to_source(blob(pre, shape, point, 7.0), d, t, key="image")
    assert tuple(back.shape) == (1, *src.shape)
    np.testing.assert_array_equal(back.affine.numpy(), src.affine)
    data = back[0].numpy()
    idx = np.unravel_index(int(np.argmax(data)), data.shape)
    assert np.linalg.norm(src.affine[:3, :3] @ idx + src.affine[:3, 3] - point) <= 2.0


def test_nearest_keeps_label_values():
    t = chain_3d()
    x = io.load_image(ANATOMICAL, t)
    label = torch.zeros(x.shape)
    label[0, 8:16, 10:20, 12:22] = 1.0
    back = io.invert_to_source(label, x, t, nearest=True)
    values = set(np.unique(back.numpy()).tolist())
    assert values == {0.0, 1.0}
    linear = io.invert_to_source(label, x, t)
    assert len(np.unique(linear.numpy())) > 2  # without nearest, edges are interpolated


def test_save_heat_preprocessed_keeps_that_grid(tmp_path):
    t = chain_3d()
    x = io.load_image(ANATOMICAL, t)
    heat = torch.linspace(0, 1, x[0].numel()).reshape(x.shape)
    out = io.save_heat_preprocessed(heat, x, tmp_path / "heat_preprocessed.nii.gz")
    saved = nib.load(out)
    assert saved.shape == tuple(x.shape[1:])
    np.testing.assert_allclose(saved.affine, x.affine.numpy(), atol=1e-5)
    assert saved.header["descrip"].tobytes().rstrip(b"\0") == b"volcam heat, preprocessed grid"
    np.testing.assert_array_equal(saved.get_fdata(dtype=np.float32), heat[0].numpy())


def test_save_heat_header_and_values(tmp_path):
    src = nib.load(ANATOMICAL)
    heat = np.zeros(src.shape, dtype=np.float64)
    heat[3, 4, 5] = 1.0
    heat[0, 0, 0] = 1.02  # interpolation overshoot: clipped
    out = io.save_heat(heat, tmp_path / "h.nii.gz", reference=ANATOMICAL)
    saved = nib.load(out)
    assert out.suffix == ".gz" and saved.get_data_dtype() == np.float32
    data = saved.get_fdata()
    assert data[3, 4, 5] == 1.0 and data[0, 0, 0] == 1.0 and data.sum() == 2.0
    assert (float(saved.header["cal_min"]), float(saved.header["cal_max"])) == (0.0, 1.0)
    assert saved.header["descrip"].tobytes().rstrip(b"\0") == b"volcam heat, source grid"
    assert saved.header["xyzt_units"] == src.header["xyzt_units"]


def test_save_heat_raw_keeps_values(tmp_path):
    heat = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 5.0
    out = io.save_heat(heat, tmp_path / "raw.nii", affine=np.diag([2.0, 2.0, 3.0, 1.0]), raw=True)
    saved = nib.load(out)
    np.testing.assert_array_equal(saved.get_fdata(dtype=np.float32), heat)
    np.testing.assert_array_equal(saved.affine, np.diag([2.0, 2.0, 3.0, 1.0]))
    assert (float(saved.header["cal_min"]), float(saved.header["cal_max"])) == (-5.0, 18.0)


def test_save_nifti_label_dtype(tmp_path):
    labels = np.array([[[0.0, 1.0], [2.4, 2.6]]])
    out = io.save_nifti(labels, tmp_path / "lab.nii.gz", affine=np.eye(4), dtype="uint8")
    saved = nib.load(out)
    assert saved.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(saved.dataobj), [[[0, 1], [2, 3]]])


# --------------------------------------------------------------------------- bad input


def test_path_that_is_not_nifti(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError, match=r"must be a NIfTI file .*scan\.png") as info:
        io.load_image(path)
    assert info.value.path == path


def test_nifti_name_but_not_nifti_content(tmp_path):
    path = tmp_path / "fake.nii.gz"
    path.write_bytes(b"hello" * 100)
    with pytest.raises(ImageReadError, match=r"'.*fake\.nii\.gz' cannot be read as NIfTI"):
        io.load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match=r"'.*nothere\.nii\.gz' must exist"):
        io.load_image(tmp_path / "nothere.nii.gz")


def test_truncated_nii_gz(oblique_3d, tmp_path):
    data = oblique_3d.read_bytes()
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"'.*truncated\.nii\.gz' cannot be read as NIfTI") as info:
        io.load_image(path)
    assert info.value.path == path
    assert isinstance(info.value, OSError)


def test_nan_in_image(tmp_path):
    data = np.ones((5, 6, 7), dtype=np.float32)
    data[1, 2, 3] = np.nan
    data[2, 2, 2] = np.inf
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(ImageReadError, match=r"'.*nan\.nii\.gz' must contain only finite values, not 1 NaN and 1 "):
        io.load_image(path)
    x = io.load_image(path, allow_nonfinite=True)
    assert torch.isnan(x).sum() == 1


def test_heat_shape_not_matching_the_reference(tmp_path):
    heat = np.zeros((33, 41, 24), dtype=np.float32)
    with pytest.raises(ShapeError, match=r"anatomical\.nii', \(33, 41, 25\), not \(33, 41, 24\)") as info:
        io.save_heat(heat, tmp_path / "out" / "h.nii.gz", reference=ANATOMICAL)
    assert info.value.actual_shape == (33, 41, 24)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_heat_shape_not_matching_the_preprocessed_image():
    t = Compose([Orientation("RAS", labels=None)])
    x = io.load_image(ANATOMICAL, t)
    with pytest.raises(ShapeError, match=r"anatomical\.nii', \(33, 41, 25\) .*not \(1, 33, 41, 26\)"):
        io.invert_to_source(torch.zeros(1, 33, 41, 26), x, t)


def test_preprocessed_grid_saved_against_the_source_is_refused(tmp_path):
    t = Compose([Orientation("RAS", labels=None)])
    x = io.load_image(ANATOMICAL, t)  # same shape as the source, flipped grid
    heat = MetaTensor(torch.zeros(x.shape), meta=dict(x.meta))
    with pytest.raises(ShapeError, match="(?s)different grid than .*anatomical.nii.*invert_to_source"):
        io.save_heat(heat, tmp_path / "h.nii.gz", reference=ANATOMICAL)
    assert list(tmp_path.iterdir()) == []


def test_nan_or_out_of_range_heat_is_refused(tmp_path):
    heat = np.zeros((4, 5, 6), dtype=np.float32)
    heat[1, 1, 1] = np.nan
    with pytest.raises(ValueRangeError, match="heat must be finite, not hold 1 NaN"):
        io.save_heat(heat, tmp_path / "h.nii.gz", affine=np.eye(4))
    with pytest.raises(ValueRangeError, match=r"must lie in \[0, 1\], not \[0, 3\.5\].*raw=True") as info:
        io.save_heat(np.linspace(0.0, 3.5, 120).reshape(4, 5, 6), tmp_path / "h.nii.gz", affine=np.eye(4))
    assert info.value.value_range == (0.0, 3.5)
    assert list(tmp_path.iterdir()) == []


def test_output_must_be_nifti_and_geometry_known(tmp_path):
    with pytest.raises(ConfigError, match=r"must be a NIfTI file .*heat\.png"):
        io.save_nifti(np.zeros((2, 2, 2)), tmp_path / "heat.png", affine=np.eye(4))
    with pytest.raises(ConfigError, match="geometry is unknown"):
        io.save_nifti(np.zeros((2, 2, 2)), tmp_path / "heat.nii.gz")
    with pytest.raises(ConfigError, match="either `reference` or `affine`"):
        io.save_nifti(np.zeros((33, 41, 25)), tmp_path / "heat.nii.gz", reference=ANATOMICAL, affine=np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_dictionary_needs_the_image_key():
    with pytest.raises(ConfigError, match=r"`key` must name the image entry .*\['image'\], not None"):
        io.invert_to_source(
            torch.zeros(1, 2, 2, 2),
            {"image": MetaTensor(torch.zeros(1, 2, 2, 2))},
            Compose([Orientation("RAS", labels=None)]),
        )


def test_plain_tensor_is_not_a_preprocessed_image():
    with pytest.raises(ConfigError, match="must be the MetaTensor .* not Tensor"):
        io.invert_to_source(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), Compose([]))


# --------------------------------------------------------------------------- atomic writes


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    dest = tmp_path / "heat.nii.gz"
    dest.write_bytes(b"previous content")

    def broken_save(img, filename):
        with gzip.open(filename, "wb") as f:  # half a file, then the disk "fills up"
            f.write(b"\0" * 100)
        raise OSError("No space left on device")

    monkeypatch.setattr(io.nifti.nib, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        io.save_heat(np.zeros((2, 3, 4)), dest, affine=np.eye(4))
    assert dest.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.nii.gz"]


def test_atomic_write_replaces_on_success(tmp_path):
    dest = tmp_path / "sub" / "x.nii.gz"
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert tmp.parent == dest.parent and tmp.name.endswith(".nii.gz") and tmp != dest
        tmp.write_bytes(b"new")

    assert io.atomic_write(dest, write) == dest
    assert dest.read_bytes() == b"new" and not seen[0].exists()
