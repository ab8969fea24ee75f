"""`volcam view CASE_DIR`: a case's viewer rebuilt from the files of a real run, checked by
decoding the page against the scan, the heat NIfTIs and the label."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from test_viewer_data import decode, read_page

from volcam import cli
from volcam.errors import ArgumentError
from volcam.figures.viewer_case import write_case_viewer
from volcam.geometry import Canonical


def test_view_rebuilds_a_case_viewer_from_its_files(run_outputs, capsys):
    data, out = run_outputs
    assert cli.main(["view", str(out / "case1"), "--coordinates", "LPS"]) == 0
    page = out / "case1" / "viewer.html"
    assert capsys.readouterr().out.startswith(f"{page}  (")
    meta, chunks = read_page(page)
    record = json.loads((out / "case1" / "volcam-case.json").read_text())
    assert [layer["name"] for layer in meta["layers"]] == ["bright", "dark"]
    assert [m["name"] for m in meta["masks"]] == ["reference: bright", "reference: dark"]
    assert meta["coordinates"] == "LPS" and meta["title"] == "case1: case1.nii.gz"
    scan = nib.load(data / "images" / "case1.nii.gz")
    canon = Canonical.of(scan.affine, scan.shape)
    image, _ = decode(meta, chunks, "image")
    step = meta["volumes"]["image"]["scale"]
    assert np.abs(image - canon.apply(np.asarray(scan.dataobj, dtype=np.float64))).max() <= step / 2 + 1e-7
    for i, row in enumerate(record["rows"]):
        heat = np.asarray(nib.load(out / row["heat_nifti"]).dataobj)
        decoded, _ = decode(meta, chunks, f"heat{i}")
        assert np.abs(decoded - canon.apply(heat)).max() <= 0.5 / 255 + 1e-7
        peak = [int(v) for v in row["peak_voxel"].split()]
        assert meta["layers"][i]["peak"]["source_voxel"] == peak  # the page's peak is the summary's
        assert ["predicted volume", f"{row['predicted_volume_ml']:.2f} ml"] in meta["layers"][i]["stats"]
    label = np.asarray(nib.load(data / "labels" / "case1.nii.gz").dataobj)
    bits, _ = decode(meta, chunks, "mask0")
    np.testing.assert_array_equal(bits.astype(int) & 1, canon.apply(label == 1))
    np.testing.assert_array_equal((bits.astype(int) >> 1) & 1, canon.apply(label == 2))


def test_view_of_a_run_folder_writes_every_case_and_the_index(run_outputs, capsys):
    _, out = run_outputs
    assert cli.main(["view", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == str(out / "index.html")
    assert sorted(p.parent.name for p in out.glob("*/viewer.html")) == ["case0", "case1"]
    assert 'href="case0/viewer.html"' in (out / "index.html").read_text()


def test_moved_scan_found_with_image_option(run_outputs, tmp_path, capsys):
    data, out = run_outputs
    moved = tmp_path / "elsewhere.nii.gz"
    shutil.copy(data / "images" / "case0.nii.gz", moved)
    record = out / "case0" / "volcam-case.json"
    text = json.loads(record.read_text())
    text["image"] = str(tmp_path / "gone.nii.gz")
    text["label"] = None
    record.write_text(json.dumps(text))
    assert cli.main(["view", str(out / "case0")]) == 2
    error = capsys.readouterr().err
    assert "gone.nii.gz' recorded in" in error and "must exist" in error and "--image" in error
    path = write_case_viewer(out / "case0", tmp_path / "v.html", image=moved)
    meta, _ = read_page(path)
    assert meta["masks"] == [] and len(meta["layers"]) == 2


def test_bad_folders(run_outputs, tmp_path, capsys):
    _, out = run_outputs
    assert cli.main(["view", str(tmp_path / "nothing")]) == 2
    assert "CASE_DIR must be a case folder" in capsys.readouterr().err
    assert cli.main(["view", str(out / "case0"), str(out / "case1"), "--output", str(tmp_path / "x.html")]) == 2
    assert "need exactly one case folder, not 2" in capsys.readouterr().err
    for heat in out.glob("case0/*/heat.nii.gz"):
        heat.unlink()
    with pytest.raises(ArgumentError, match="must hold at least one heat NIfTI"):
        write_case_viewer(out / "case0")
