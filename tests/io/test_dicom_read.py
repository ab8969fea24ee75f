"""volcam.io.dicom: loading series with an exact affine, refusing series that are not volumes,
and MONAI pipelines over DICOM input (LoadImaged, Orientationd, Spacingd, invert_to_source)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dicom_helpers import AXIAL, SAGITTAL, SeriesSpec, blob, oblique, slice_positions, write_series
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

from volcam.errors import ImageReadError
from volcam.geometry import spacing, voxel_to_world
from volcam.io import dicom, invert_to_source

BLOB_LPS = (4.0, -3.0, 41.0)


def expected_affine(spec: SeriesSpec) -> np.ndarray:
    """RAS+ affine of voxel (column, row, slice), written out from the DICOM definitions."""
    row_dir = np.asarray(spec.orientation[0], dtype=float)
    col_dir = np.asarray(spec.orientation[1], dtype=float)
    normal = np.cross(row_dir, col_dir)
    dr, dc = spec.pixel_spacing
    positions = slice_positions(spec)
    first = positions[np.argmin(positions @ normal)]
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * dc, col_dir * dr, normal * spec.slice_spacing, first
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def hottest_lps(image) -> np.ndarray:
    index = np.unravel_index(int(torch.argmax(image[0])), tuple(image.shape[1:]))
    x, y, z = voxel_to_world(image.affine, index)
    return np.array([-x, -y, z])


@pytest.mark.parametrize(
    "changes",
    [
        dict(modality="CT", shuffle_names=True),
        dict(modality="MR", orientation=oblique(20, 15), pixel_spacing=(0.7, 1.1), slice_spacing=3.0),
        dict(modality="CT", orientation=SAGITTAL, origin=(15.0, -10.0, 55.0), instance_order="descending"),
    ],
    ids=["ct-axial-shuffled", "mr-oblique", "ct-sagittal-descending"],
)
def test_loaded_series_has_the_exact_affine_and_the_blob_where_it_was(tmp_path, changes):
    spec = SeriesSpec(values=blob(BLOB_LPS, sigma=5.0), **changes)
    written = write_series(tmp_path, spec)
    image = dicom.load_series(tmp_path)
    assert tuple(image.shape) == (1, spec.columns, spec.rows, spec.slices)
    assert image.dtype == torch.float32
    np.testing.assert_allclose(image.affine.numpy(), expected_affine(spec), atol=1e-5)
    np.testing.assert_allclose(image.meta["original_affine"], expected_affine(spec), atol=1e-5)
    # the voxels are the stored slices (stacked along the normal), column-major in-plane
    order = np.argsort(written.positions @ written.normal)
    np.testing.assert_array_equal(image[0].numpy(), np.transpose(written.volume[order], (2, 1, 0)))
    # a bright blob at a known patient coordinate comes back there, within a voxel
    found = hottest_lps(image)
    assert np.linalg.norm(found - np.array(BLOB_LPS)) <= float(np.linalg.norm(spacing(image.affine)))
    assert image.meta["dicom_series_uid"] == spec.series_uid
    assert image.meta["filename_or_obj"] == str(tmp_path)
    assert image.meta["dicom_case_name"] == "P001_20240102_3"


@pytest.mark.parametrize("orientation", [oblique(20, 15), SAGITTAL], ids=["oblique", "sagittal"])
def test_parity_with_monai_pydicomreader_on_a_well_ordered_series(tmp_path, orientation):
    """MONAI's PydicomReader stacks by InstanceNumber and takes the affine from the first and
    last positions: on a series numbered along its normal it must agree with volcam's loader."""
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    write_series(tmp_path, orientation=orientation, pixel_spacing=(0.7, 1.1), values=blob(BLOB_LPS))
    ours = dicom.load_series(tmp_path)
    theirs = LoadImage(reader=PydicomReader(), ensure_channel_first=True)(str(tmp_path))
    np.testing.assert_allclose(ours.affine.numpy(), theirs.affine.numpy(), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.as_tensor(), theirs.as_tensor().to(torch.float32), rtol=0, atol=0)


def test_shuffled_files_and_instance_numbers_give_the_same_volume(tmp_path):
    spec = dict(values=blob(BLOB_LPS), orientation=oblique(-30, 10))
    write_series(tmp_path / "a", **spec)
    write_series(tmp_path / "b", shuffle_names=True, instance_order="descending", **spec)
    a, b = dicom.load_series(tmp_path / "a"), dicom.load_series(tmp_path / "b")
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-9)


def test_series_is_chosen_in_a_folder_of_several(tmp_path):
    ct = write_series(tmp_path / "ct", slices=10, values=blob(BLOB_LPS))
    mr = write_series(tmp_path / "mr", slices=6, modality="MR", study_uid=ct.spec.study_uid, series_number=8)
    image = dicom.load_series(tmp_path)
    assert image.meta["dicom_series_uid"] == ct.uid and "most images" in image.meta["dicom_selection"]
    image = dicom.load_series(tmp_path, modality="MR")
    assert image.meta["dicom_series_uid"] == mr.uid and image.shape[-1] == 6
    assert image.meta["dicom_folder"] == str(tmp_path / "mr") and image.meta["filename_or_obj"] == str(tmp_path)
    found = dicom.find_series(tmp_path)
    image = dicom.load_series(dicom.select_series(found, uid=mr.uid))
    assert image.meta["dicom_series_uid"] == mr.uid


def test_sub_pixel_jitter_of_positions_is_not_taken_for_a_tilt(tmp_path):
    jitter = [0.015 * (-1) ** k for k in range(8)]  # mm sideways; pixels are 0.8 mm, slices 0.5 mm apart
    write_series(
        tmp_path, slices=8, slice_spacing=0.5, positions=[(j, 0.0, 30.0 + 0.5 * k) for k, j in enumerate(jitter)]
    )
    image = dicom.load_series(tmp_path)
    assert image.shape[-1] == 8
    np.testing.assert_allclose(spacing(image.affine), [0.8, 0.9, 0.5], atol=1e-6)


def test_rle_compressed_series_loads_like_the_uncompressed_one(tmp_path):
    import pydicom
    from pydicom.uid import RLELossless

    spec = dict(values=blob(BLOB_LPS), study_uid="1.2.3", frame_uid="1.2.4", series_uid="1.2.5")
    written = write_series(tmp_path / "rle", **spec)
    for path in written.files:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    write_series(tmp_path / "plain", **spec)
    rle, plain = dicom.load_series(tmp_path / "rle"), dicom.load_series(tmp_path / "plain")
    torch.testing.assert_close(rle.as_tensor(), plain.as_tensor(), rtol=0, atol=0)


# --------------------------------------------------------------------------- bad series


def _refused(folder, *fragments):
    with pytest.raises(ImageReadError) as info:
        dicom.load_series(folder)
    message = str(info.value)
    assert info.value.path == folder
    assert str(folder) in message and "uid " in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_slice_is_refused_with_its_position(tmp_path):
    write_series(tmp_path, skip=[5], slice_spacing=2.5, origin=(0.0, 0.0, 30.0))
    _refused(tmp_path, "has 1 missing slice (slices are 2.5 mm apart)", "between slice positions 40.00 and 45.00 mm")


def test_uneven_spacing_is_refused_with_its_positions(tmp_path):
    z = [30.0, 32.5, 35.0, 38.0, 40.5, 43.0]
    write_series(tmp_path, slices=len(z), positions=[(0.0, 0.0, v) for v in z])
    _refused(tmp_path, "uneven slice spacing", "3 mm between slice positions 35.00 and 38.00 mm")


def test_duplicate_positions_are_refused(tmp_path):
    z = [30.0, 32.5, 32.5, 35.0]
    write_series(tmp_path, slices=len(z), positions=[(0.0, 0.0, v) for v in z])
    _refused(tmp_path, "at the same slice position as another: 32.50 mm", "phases, echoes or time points")


def test_mixed_orientations_are_refused(tmp_path):
    write_series(tmp_path, slices=6, orientations=[AXIAL] * 3 + [oblique(0, 10)] * 3)
    _refused(tmp_path, "mixes 2 slice orientations", "(3 images)")


def test_gantry_tilt_is_refused_and_said_plainly(tmp_path):
    write_series(tmp_path, tilt_deg=15.0)
    _refused(tmp_path, "is tilted", "15.00 degrees off their normal", "GantryDetectorTilt is 15", "refuses")


def test_undecodable_compression_names_the_package_to_install(tmp_path):
    htj2k = "1.2.840.10008.1.2.4.201"
    assert dicom.decoder_problem(htj2k), "this test needs an environment without pylibjpeg-openjpeg"
    write_series(tmp_path, transfer_syntax=htj2k, slices=3)
    _refused(tmp_path, "High-Throughput JPEG 2000", "no installed decoder", "pip install pylibjpeg pylibjpeg-openjpeg")
    assert dicom.decoder_problem("1.2.840.10008.1.2.1") is None  # explicit VR little endian: always readable


def test_image_without_position_is_refused(tmp_path):
    import pydicom

    written = write_series(tmp_path, slices=3)
    ds = pydicom.dcmread(written.files[1])
    del ds.ImagePositionPatient
    ds.save_as(written.files[1])
    _refused(tmp_path, "is not a volume: 1 of its images have no ImagePositionPatient", written.files[1].name)


# --------------------------------------------------------------------------- MONAI pipelines


def test_loadimaged_with_the_reader_and_back_through_invert_to_source(tmp_path):
    write_series(tmp_path, orientation=oblique(25, 10), values=blob(BLOB_LPS, sigma=5.0))
    source = dicom.load_series(tmp_path)
    preprocess = Compose(
        [
            LoadImaged("image", reader=dicom.DicomSeriesReader(modality="CT")),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(1.5, 1.5, 1.5)),
        ]
    )
    data = preprocess({"image": str(tmp_path)})
    x = data["image"]
    assert x.shape[1:] != source.shape[1:]  # resampled onto another grid
    assert x.meta["dicom_series_uid"] == source.meta["dicom_series_uid"]
    heat = (x - x.min()) / (x.max() - x.min())  # a stand-in for a CAM on the preprocessed grid
    back = invert_to_source(heat, data, preprocess, key="image")
    assert tuple(back.shape) == tuple(source.shape)
    np.testing.assert_allclose(back.affine.numpy(), source.affine.numpy(), atol=1e-6)
    found = hottest_lps(back)
    assert np.linalg.norm(found - np.array(BLOB_LPS)) <= float(np.linalg.norm(spacing(source.affine)))
    expected = (source - source.min()) / (source.max() - source.min())
    inside = expected[0] > 0.05
    assert float((back[0][inside] - expected[0][inside]).abs().max()) < 0.2  # interpolated twice


def test_orientation_alone_round_trips_the_values_exactly(tmp_path):
    write_series(tmp_path, orientation=SAGITTAL, values=blob(BLOB_LPS))
    source = dicom.load_series(tmp_path)
    preprocess = Compose([Orientationd("image", axcodes="RAS")])
    data = preprocess({"image": source})
    assert data["image"].shape != source.shape  # sagittal slices reordered to RAS
    back = invert_to_source(data["image"], data, preprocess, key="image")
    torch.testing.assert_close(back.as_tensor(), source.as_tensor(), rtol=0, atol=0)


def test_loadimaged_raises_the_reader_error_instead_of_trying_another_reader(tmp_path):
    write_series(tmp_path, skip=[3])
    with pytest.raises(ImageReadError, match="missing slice"):
        LoadImaged("image", reader=dicom.DicomSeriesReader())({"image": str(tmp_path)})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageReadError, match="must hold a DICOM image series"):
        LoadImaged("image", reader=dicom.DicomSeriesReader())({"image": str(empty)})
