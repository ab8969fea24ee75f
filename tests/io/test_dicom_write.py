"""volcam.io.dicom: the heat written as a Parametric Map and a SEG on the source series.

Geometry is checked with a bright blob at a known patient (LPS) coordinate: it must come
back there in the NIfTI heat and in the Parametric Map read back with highdicom. Every
written object must pass dicom3tools' ``dciodvfy`` without errors.
"""

from __future__ import annotations

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from dicom_helpers import SAGITTAL, SeriesSpec, blob, dciodvfy_report, oblique, write_series
from monai.data import MetaTensor

from volcam.errors import ArgumentError, ShapeError, ValueRangeError
from volcam.geometry import spacing
from volcam.io import dicom, save_heat

BLOB_LPS = (6.0, -4.0, 44.0)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """An oblique, anisotropic CT series with a blob, loaded, and a heat volume on its grid."""
    folder = tmp_path_factory.mktemp("ct")
    spec = SeriesSpec(orientation=oblique(25, 12), values=blob(BLOB_LPS, sigma=5.0), shuffle_names=True)
    written = write_series(folder / "series", spec)
    image = dicom.load_series(folder / "series")
    heat = (image - image.min()) / (image.max() - image.min())  # a stand-in for a CAM on the series' grid
    return folder, written, image, heat


def _slice_headers(image):
    return dicom.source_geometry(image).headers


def _within_a_voxel(found_lps, affine) -> bool:
    return float(np.linalg.norm(np.asarray(found_lps) - np.array(BLOB_LPS))) <= float(np.linalg.norm(spacing(affine)))


def test_nifti_heat_from_a_series_puts_the_blob_at_its_patient_coordinate(case):
    folder, _, image, heat = case
    path = save_heat(heat, folder / "heat.nii.gz")
    nii = nib.load(path)
    np.testing.assert_allclose(nii.affine, image.affine.numpy(), atol=1e-5)
    data = np.asarray(nii.dataobj)
    index = np.unravel_index(int(np.argmax(data)), data.shape)
    x, y, z = nii.affine[:3, :3] @ np.array(index, dtype=float) + nii.affine[:3, 3]
    assert _within_a_voxel((-x, -y, z), nii.affine)


def test_parametric_map_geometry_values_and_references(case):
    folder, written, image, heat = case
    path = dicom.save_parametric_map(heat, image, folder / "pmap.dcm")
    errors, _ = dciodvfy_report(path)
    assert errors == []
    ds = pydicom.dcmread(path)
    headers = _slice_headers(image)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and int(ds.NumberOfFrames) == len(headers)
    # one frame per source slice (highdicom orders them its way): each frame references one
    # slice, lies at that slice's position and holds the heat of that slice, in float32
    slice_of = {h.SOPInstanceUID: k for k, h in enumerate(headers)}
    frames = np.transpose(heat[0].numpy(), (2, 1, 0))  # (slices, rows, columns)
    assert ds.pixel_array.dtype == np.float32
    seen = []
    for i, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        k = slice_of[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_allclose(
            [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in headers[k].ImagePositionPatient],
            atol=1e-4,
        )
        np.testing.assert_allclose(ds.pixel_array[i], frames[k], rtol=0, atol=1e-7)
        seen.append(k)
    assert sorted(seen) == list(range(len(headers)))
    shared = ds.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
        [float(v) for v in headers[0].ImageOrientationPatient],
        atol=1e-6,
    )
    assert ds.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    referenced = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {h.SOPInstanceUID for h in headers}
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == written.uid
    # real-world value mapping: "class activation", no unit
    mapping = shared.RealWorldValueMappingSequence[0]
    assert mapping.LUTExplanation == "class activation"
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "130402"
    # the blob is where it was, read back through highdicom's own volume
    volume = hd.imread(path).get_volume()
    index = np.unravel_index(int(np.argmax(volume.array)), volume.array.shape)
    assert _within_a_voxel((volume.affine @ np.r_[index, 1.0])[:3], image.affine.numpy())


def test_parametric_map_copies_patient_and_study_and_nothing_else(case):
    folder, written, image, heat = case
    a = pydicom.dcmread(dicom.save_parametric_map(heat, image, folder / "a.dcm"))
    b = pydicom.dcmread(dicom.save_parametric_map(heat, image, folder / "b.dcm", series_number=77))
    source = pydicom.dcmread(written.files[0])
    for name in ("PatientID", "PatientName", "PatientBirthDate", "StudyInstanceUID", "StudyDate", "AccessionNumber"):
        assert a[name].value == source[name].value, name
    for name in ("InstitutionName", "BodyPartExamined", "KVP", "SeriesDescription"):
        assert a.get(name) != source.get(name), name  # equipment and acquisition are not copied
    assert a.SeriesInstanceUID not in {source.SeriesInstanceUID, b.SeriesInstanceUID}
    assert a.SOPInstanceUID not in {source.SOPInstanceUID, b.SOPInstanceUID}
    assert int(a.SeriesNumber) == 1003 and int(b.SeriesNumber) == 77
    assert a.Manufacturer == "volcam" and a.SeriesDescription == "volcam class activation"


def test_seg_of_the_thresholded_heat_and_the_predicted_classes(case):
    folder, _, image, heat = case
    label = torch.zeros_like(heat, dtype=torch.int64)
    label[heat > 0.2] = 2
    path = dicom.save_seg(heat, image, folder / "seg.dcm", threshold=0.6, segmentation=label, labels={2: "tumour"})
    errors, _ = dciodvfy_report(path)
    assert errors == []
    seg = hd.seg.segread(path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["class activation >= 0.6", "tumour"]
    headers = _slice_headers(image)
    uids = [h.SOPInstanceUID for h in headers]
    mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2])
    expected_heat = np.transpose((heat[0] >= 0.6).numpy(), (2, 1, 0))
    expected_label = np.transpose((label[0] == 2).numpy(), (2, 1, 0))
    np.testing.assert_array_equal(mask[..., 0].astype(bool), expected_heat)
    np.testing.assert_array_equal(mask[..., 1].astype(bool), expected_label)
    assert expected_heat.sum() > 0 and expected_label.sum() > expected_heat.sum()


def test_empty_seg_is_still_a_valid_object(case):
    folder, _, image, heat = case
    path = dicom.save_seg(heat * 0.5, image, folder / "empty_seg.dcm", threshold=0.9)
    errors, _ = dciodvfy_report(path)
    assert errors == []
    assert int(pydicom.dcmread(path).NumberOfFrames) == len(_slice_headers(image))


def test_heat_after_invert_to_source_is_written_with_the_series_found_from_its_meta(case):
    folder, _, image, heat = case
    heat_meta = MetaTensor(heat.as_tensor(), meta=dict(image.meta))
    path = dicom.save_parametric_map(heat_meta, heat_meta, folder / "from_meta.dcm")
    assert int(pydicom.dcmread(path).NumberOfFrames) == image.shape[-1]


def test_writers_refuse_a_heat_off_the_series_grid(case):
    folder, _, image, heat = case
    shifted = MetaTensor(heat.as_tensor(), meta=dict(image.meta))
    shifted.affine = image.affine.clone()
    shifted.affine[0, 3] += 5.0
    with pytest.raises(ShapeError, match="must lie on the grid of CT series 3"):
        dicom.save_parametric_map(shifted, image, folder / "x.dcm")
    with pytest.raises(ShapeError, match=r"heat must have the spatial shape of CT series 3 .*\(24, 20, 12\)"):
        dicom.save_seg(heat[:, :, :, :-1], image, folder / "x.dcm")
    with pytest.raises(ValueRangeError, match=r"heat values must lie in \[0, 1\], not \[0, 2\]"):
        dicom.save_parametric_map(heat * 2, image, folder / "x.dcm")
    with pytest.raises(ArgumentError, match=r"`threshold` must be a number in \(0, 1\], not 0"):
        dicom.save_seg(heat, image, folder / "x.dcm", threshold=0)
    with pytest.raises(ArgumentError, match="`source` must be the DICOM series the heat lies on"):
        dicom.save_parametric_map(heat, "not a series", folder / "x.dcm")
    assert not (folder / "x.dcm").exists()


def test_raw_values_are_written_unchanged_with_their_range(case):
    folder, _, image, heat = case
    path = dicom.save_parametric_map(heat * 7.0 - 1.0, image, folder / "raw.dcm", raw=True)
    ds = pydicom.dcmread(path)
    volume = hd.imread(path).get_volume()  # highdicom's own reading: values and grid
    np.testing.assert_allclose(
        np.sort(volume.array.ravel()), np.sort((heat[0].numpy() * 7.0 - 1.0).ravel()), rtol=0, atol=1e-6
    )
    assert float(volume.array.min()) == pytest.approx(-1.0) and float(volume.array.max()) == pytest.approx(6.0)
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping[0x0040, 0x9214].value == pytest.approx(-1.0)  # Double Float Real World Value First
    assert mapping[0x0040, 0x9213].value == pytest.approx(6.0)  # ... Last


def test_a_failed_write_leaves_nothing_behind(case, monkeypatch):
    folder, _, image, heat = case
    target = folder / "atomic" / "pmap.dcm"

    def broken(self, filename, *args, **kwargs):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(hd.pm.ParametricMap, "save_as", broken)
    with pytest.raises(OSError, match="disk full"):
        dicom.save_parametric_map(heat, image, target)
    assert list(target.parent.iterdir()) == []


def test_laterality_and_region_come_from_the_source(tmp_path):
    spec = SeriesSpec(slices=4, values=blob((0.0, 0.0, 32.0)))
    written = write_series(tmp_path / "s", spec)
    for path in written.files:
        ds = pydicom.dcmread(path)
        ds.Laterality, ds.BodyPartExamined = "L", "KNEE"
        ds.save_as(path)
    image = dicom.load_series(tmp_path / "s")
    heat = (image - image.min()) / (image.max() - image.min())
    out = dicom.save_parametric_map(heat, image, tmp_path / "pm.dcm")
    errors, _ = dciodvfy_report(out)
    assert errors == []
    ds = pydicom.dcmread(out)
    anatomy = ds.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0]
    assert anatomy.FrameLaterality == "L" and "Laterality" not in ds  # frame laterality stands for it
    assert anatomy.AnatomicRegionSequence[0].CodeMeaning.lower() == "knee"


def test_objects_from_a_sagittal_mr_series_are_valid_and_in_place(tmp_path):
    spec = SeriesSpec(modality="MR", orientation=SAGITTAL, origin=(20.0, -10.0, 60.0), values=blob(BLOB_LPS, 5.0))
    write_series(tmp_path / "mr", spec)
    image = dicom.load_series(tmp_path / "mr")
    heat = (image - image.min()) / (image.max() - image.min())
    for path in (
        dicom.save_parametric_map(heat, image, tmp_path / "pm.dcm"),
        dicom.save_seg(heat, image, tmp_path / "seg.dcm", threshold=0.7),
    ):
        errors, _ = dciodvfy_report(path)
        assert errors == [], path.name
    volume = hd.imread(tmp_path / "pm.dcm").get_volume()
    index = np.unravel_index(int(np.argmax(volume.array)), volume.array.shape)
    assert _within_a_voxel((volume.affine @ np.r_[index, 1.0])[:3], image.affine.numpy())
