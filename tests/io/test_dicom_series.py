"""volcam.io.dicom: finding series in a folder, choosing one, naming the case after it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dicom_helpers import SeriesSpec, write_localizer, write_series, write_sr

from volcam.errors import ArgumentError, ImageReadError
from volcam.io import dicom
from volcam.io.dicom_series import Series


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> tuple[Path, dict]:
    """One study: a CT of 12 slices, a CT of 8 (other kernel), an MR of 6, a localiser, a
    report and a text file, spread over nested folders."""
    root = tmp_path_factory.mktemp("mixed")
    main = SeriesSpec(slices=12, series_number=3, description="AX 2.5mm SOFT")
    bone = SeriesSpec(
        slices=8, series_number=4, description="AX 2.5mm BONE", study_uid=main.study_uid, frame_uid=main.frame_uid
    )
    mr = SeriesSpec(slices=6, series_number=7, modality="MR", description="T1 AX", study_uid=main.study_uid)
    written = {
        "soft": write_series(root / "a" / "soft", main),
        "bone": write_series(root / "a" / "bone", bone),
        "mr": write_series(root / "b", mr),
        "loc": write_localizer(root, main),
    }
    write_sr(root / "b", main)
    (root / "README.txt").write_text("exported by a PACS\n")
    return root, written


def test_find_series_groups_by_uid_and_counts_what_it_skips(mixed_folder):
    root, written = mixed_folder
    found = dicom.find_series(root)
    assert {s.uid for s in found} == {w.uid for w in written.values()}
    by_uid = {s.uid: s for s in found}
    assert by_uid[written["soft"].uid].n_images == 12
    assert by_uid[written["bone"].uid].n_images == 8
    assert by_uid[written["mr"].uid].modality == "MR"
    assert by_uid[written["loc"].uid].is_localizer
    assert set(by_uid[written["soft"].uid].files) == set(written["soft"].files)
    assert found.skipped == {
        "not DICOM": 1,
        "DICOM without image pixels (report, structure set, key object, DICOMDIR, ...)": 1,
    }
    assert found.n_skipped == 2
    assert [s.number for s in found] == [1, 3, 4, 7]  # ordered by series number within the study


def test_default_choice_is_the_series_with_most_images(mixed_folder):
    root, written = mixed_folder
    choice = dicom.select_series(dicom.find_series(root))
    assert choice.series.uid == written["soft"].uid
    assert choice.rule == "most images"
    assert "the series with the most images of 4" in choice.reason
    assert "not chosen" in choice.reason and "'Topogram'" in choice.reason and "localiser" in choice.reason
    record = json.loads(json.dumps(choice.as_dict()))  # goes into case records as JSON
    assert record["series_instance_uid"] == written["soft"].uid
    assert record["images"] == 12 and record["rule"] == "most images"
    assert {o["series_number"] for o in record["not_chosen"]} == {1, 4, 7}


def test_choice_by_modality(mixed_folder):
    root, written = mixed_folder
    choice = dicom.select_series(dicom.find_series(root), modality="mr")
    assert choice.series.uid == written["mr"].uid
    assert "with modality MR" in choice.reason


def test_choice_by_uid(mixed_folder):
    root, written = mixed_folder
    choice = dicom.select_series(dicom.find_series(root), uid=written["bone"].uid)
    assert choice.series.uid == written["bone"].uid and choice.rule == "uid"
    assert written["bone"].uid in choice.reason


def test_unknown_uid_lists_the_series_there(mixed_folder):
    root, written = mixed_folder
    wrong = written["bone"].uid[:-1] + ("9" if written["bone"].uid[-1] != "9" else "8")
    with pytest.raises(ImageReadError) as info:
        dicom.select_series(dicom.find_series(root), uid=wrong)
    message = str(info.value)
    assert f"not {wrong!r}" in message and f"did you mean '{written['bone'].uid}'" in message
    assert "AX 2.5mm SOFT" in message and "T1 AX" in message
    assert info.value.path == root


def test_choice_by_description_pattern(mixed_folder):
    root, written = mixed_folder
    choice = dicom.select_series(dicom.find_series(root), description="bone")
    assert choice.series.uid == written["bone"].uid and choice.rule == "description"
    with pytest.raises(ImageReadError, match=r"with modality MR and description matching 'bone', but none fits"):
        dicom.select_series(dicom.find_series(root), description="bone", modality="MR")
    with pytest.raises(ArgumentError, match=r"`description` must be a regular expression, not '\(unclosed'"):
        dicom.select_series(dicom.find_series(root), description="(unclosed")


def test_tie_is_broken_by_the_lower_series_number_and_said(tmp_path):
    a = SeriesSpec(slices=5, series_number=9, description="recon B")
    b = SeriesSpec(slices=5, series_number=2, description="recon A", study_uid=a.study_uid)
    write_series(tmp_path / "x", a)
    write_series(tmp_path / "y", b)
    choice = dicom.select_series(dicom.find_series(tmp_path))
    assert choice.series.description == "recon A"
    assert "tied with 1 other, chosen by the lower series number" in choice.reason


def test_a_folder_with_only_a_localiser_gives_the_localiser(tmp_path):
    loc = write_localizer(tmp_path, SeriesSpec())
    choice = dicom.select_series(dicom.find_series(tmp_path))
    assert choice.series.uid == loc.uid and choice.rule == "only series"


def test_folder_without_series(tmp_path):
    write_sr(tmp_path, SeriesSpec())
    (tmp_path / "notes.txt").write_text("x")
    found = dicom.find_series(tmp_path)
    assert list(found) == [] and found.n_skipped == 2
    with pytest.raises(ImageReadError, match=r"must hold a DICOM image series, but it holds none \(2 files skipped"):
        dicom.select_series(found)
    with pytest.raises(ImageReadError, match=r"DICOM folder '.*nowhere' must be an existing folder"):
        dicom.find_series(tmp_path / "nowhere")


# --------------------------------------------------------------------------- case names


def _series(**fields) -> Series:
    base = dict(uid="1.2.3.4", folder=Path("/data"), files=(), patient_id="P001", study_date="20240102", number=3)
    base.update(fields)
    return Series(**base)


def test_case_name_from_patient_date_and_series_number():
    assert dicom.case_name(_series()) == "P001_20240102_3"


@pytest.mark.parametrize(
    "patient_id",
    ["../../x", "/etc", "..", ".", "a/b\\c", "x\x00y", "~root", "C:\\Windows", " ", "é" * 5, "p" * 300],
)
def test_case_name_cannot_leave_the_output_folder(tmp_path, patient_id):
    name = dicom.case_name(_series(patient_id=patient_id))
    assert name and name not in {".", ".."} and not name.startswith((".", "-", "~"))
    assert "/" not in name and "\\" not in name and "\x00" not in name and ":" not in name
    assert len(name) <= 64 + 1 + 8 + 1 + 8 + 1 + 10 + 9
    out = (tmp_path / "out").resolve()
    assert (out / name).resolve().parent == out
    # a changed or missing part makes the name carry the series uid's hash
    assert name != dicom.case_name(_series(patient_id=patient_id, uid="1.2.3.5"))


def test_case_name_without_any_part_is_still_unique():
    a = dicom.case_name(_series(patient_id="", study_date="", number=None))
    b = dicom.case_name(_series(patient_id="", study_date="", number=None, uid="9.9"))
    assert a.startswith("series_") and b.startswith("series_") and a != b
