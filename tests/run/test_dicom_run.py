"""``volcam run`` on DICOM studies: series chosen and recorded, geometry exact through the
preprocessing and back, Parametric Maps and SEGs that dciodvfy accepts, bad series fail alone."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from dicom_helpers import SeriesSpec, blob, dciodvfy_report, oblique, write_localizer, write_series

from volcam import cli

BLOB = (2.0, -4.0, 42.0)  # LPS mm


def rows_of(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def studies(tmp_path):
    root = tmp_path / "dicom"
    ct = SeriesSpec(values=blob(BLOB, sigma=4.0, peak=1000.0, base=-100.0), description="AX 2.5mm", patient_id="P1")
    write_series(root / "P1" / "ax", ct)
    write_localizer(root / "P1" / "loc", ct)
    write_series(  # a thicker reconstruction of the same study: fewer images, not chosen
        root / "P1" / "thick",
        SeriesSpec(slices=4, slice_spacing=7.5, study_uid=ct.study_uid, series_number=4, description="AX 7.5mm"),
    )
    row, col = oblique()
    mr = SeriesSpec(
        modality="MR",
        orientation=(row, col),
        origin=(-8.0, -10.0, 30.0),
        values=blob(BLOB, sigma=4.0, peak=800.0, base=50.0),
        patient_id="P2",
        description="T1 obl",
        shuffle_names=True,
    )
    write_series(root / "P2", mr)
    write_series(root / "P3", SeriesSpec(patient_id="P3", skip=[5], description="gap"))  # a missing slice
    return tmp_path


def run_config(tmp_path: Path) -> Path:
    cfg = {
        "network_def": {"_target_": "pipeline_helpers.BrightnessNet"},
        "checkpoint": "none",
        "device": "cpu",
        "cam": {"method": "hirescam", "target_layers": "feat"},
        "targets": {"classes": [1], "names": {1: "bright"}, "mask": "whole"},
        "preprocessing": [
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0]},
            {"_target_": "ScaleIntensityd", "keys": "image"},
        ],
        "data": {"dicom": str(tmp_path / "dicom"), "num_workers": 0},
        "outputs": {"dir": str(tmp_path / "out"), "pngs": False, "dicom": ["pmap", "seg"], "viewer": False},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_dicom_studies_through_volcam_run(studies, capsys):
    import highdicom as hd
    import nibabel as nib

    status = cli.main(["run", str(run_config(studies)), "--no-supervise", "--quiet"])
    captured = capsys.readouterr()
    assert status == 1, captured.err  # the series with a missing slice fails alone
    out = studies / "out"
    rows = {r["case"]: r for r in rows_of(out / "summary.csv")}
    assert set(rows) == {"P1_20240102_3", "P2_20240102_3", "P3_20240102_3"}
    bad = rows["P3_20240102_3"]
    assert bad["status"] == "failed" and "missing" in bad["error"].lower()
    assert not (out / "P3_20240102_3").exists()  # nothing partial
    ct = rows["P1_20240102_3"]
    assert ct["status"] == "ok" and ct["series"] == "CT series 3 'AX 2.5mm' (12 images)"
    record = json.loads((out / "P1_20240102_3" / "volcam-case.json").read_text())
    assert record["series"]["rule"] == "most images"
    assert {s["series_description"] for s in record["series"]["not_chosen"]} == {"Topogram", "AX 7.5mm"}
    for case in ("P1_20240102_3", "P2_20240102_3"):
        folder = out / case / "bright"
        # the NIfTI heat: its hottest voxel at the blob's patient coordinate (RAS -> LPS), within a voxel
        img = nib.load(folder / "heat.nii.gz")
        heat = np.asarray(img.dataobj)
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        ras = img.affine @ np.array([*peak, 1.0])
        lps = np.array([-ras[0], -ras[1], ras[2]])
        spacing = np.linalg.norm(img.affine[:3, :3], axis=0)
        assert np.all(np.abs(lps - BLOB) <= spacing.max()), (case, lps)
        # the Parametric Map, read back with highdicom: the same values on the same points
        pmap = hd.imread(str(folder / "heat_pmap.dcm"))
        volume = pmap.get_volume()
        values = np.asarray(volume.array, dtype=np.float32)
        vpeak = np.unravel_index(int(np.argmax(values)), values.shape)
        point = volume.map_indices_to_reference(np.array([vpeak]))[0]
        assert np.all(np.abs(point - BLOB) <= spacing.max()), (case, point)
        assert float(values.max()) == pytest.approx(float(heat.max()), abs=1e-3)
        for obj in ("heat_pmap.dcm", "heat_seg.dcm"):
            errors, _ = dciodvfy_report(folder / obj)
            assert errors == [], (case, obj, errors)


def test_two_studies_with_one_name_get_their_series_hash_and_both_run(tmp_path, capsys):
    # a re-scan the same day, or anonymised exports: one PatientID, StudyDate and SeriesNumber twice
    import hashlib

    first = write_series(tmp_path / "dicom" / "a", SeriesSpec(patient_id="P1", values=blob(BLOB, peak=900.0)))
    second = write_series(tmp_path / "dicom" / "b", SeriesSpec(patient_id="P1", values=blob(BLOB, peak=900.0)))
    path = run_config(tmp_path)
    assert cli.main(["run", str(path), "--no-supervise", "--quiet"]) == 0
    rows = rows_of(tmp_path / "out" / "summary.csv")
    expected = sorted(f"P1_20240102_3_{hashlib.sha1(s.uid.encode()).hexdigest()[:8]}" for s in (first, second))
    assert sorted(r["case"] for r in rows) == expected
    assert [r["status"] for r in rows] == ["ok", "ok"]
    uids = {
        json.loads((tmp_path / "out" / r["case"] / "volcam-case.json").read_text())["series"]["series_instance_uid"]
        for r in rows
    }
    assert uids == {first.uid, second.uid}  # each case holds its own series


def test_volcam_view_rebuilds_the_viewer_of_a_dicom_case(tmp_path, capsys):
    import re

    written = write_series(tmp_path / "dicom" / "P1", SeriesSpec(patient_id="P1", values=blob(BLOB, peak=900.0)))
    path = run_config(tmp_path)
    assert cli.main(["run", str(path), "--no-supervise", "--quiet"]) == 0
    case = tmp_path / "out" / "P1_20240102_3"
    assert not (case / "viewer.html").exists()  # outputs.viewer: false in this config
    capsys.readouterr()
    assert cli.main(["view", str(case)]) == 0, capsys.readouterr().err
    page = (case / "viewer.html").read_text()
    meta = json.loads(re.search(r'<script type="application/json" id="volcam-meta">(.*?)</script>', page, re.S)[1])
    assert [layer["name"] for layer in meta["layers"]] == ["bright"]
    # the scan is the recorded series: 12 slices of 20 x 24, as the heat NIfTI
    heat = nib.load(case / "bright" / "heat.nii.gz")
    assert sorted(heat.shape) == sorted((written.spec.rows, written.spec.columns, written.spec.slices))
    assert meta["title"].startswith("P1_20240102_3")
    assert meta["coordinates"] == "LPS" and meta["modality"] == "CT"  # DICOM's own patient coordinates
