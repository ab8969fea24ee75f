"""volcam run says why a map is all zero, in the per-case line and in the summary's note column,
and a figure of an all-zero map says so in its title."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import yaml

from volcam import cli


def test_an_all_zero_map_is_explained_in_the_line_and_the_summary(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):  # positive 2D scans: TinySeg's class 1 (= -relu(2x)) has only negative evidence
        nib.save(nib.Nifti1Image((rng.random((12, 10)) + 0.5).astype(np.float32), np.eye(4)), images / f"c{i}.nii.gz")
    cfg = {
        "network_def": {"_target_": "helpers.TinySeg", "dims": 2},
        "checkpoint": "none",
        "spatial_dims": 2,
        "device": "cpu",
        "cam": {"method": "gradcam", "target_layers": "feat"},
        "targets": {"classes": [0, 1], "mask": "whole"},
        "data": {"folder": str(images), "num_workers": 0},
        "outputs": {"dir": str(tmp_path / "out"), "pngs": False, "figure": "orthogonal"},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["run", str(path), "--no-supervise"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    line = "class1: 0 vox, empty map: every channel weight at layer 'feat' is <= 0, so the ReLU removes the whole map"
    assert printed.count(line) == 2  # one per case; what to try is in the summary
    assert "staging" not in printed + captured.err  # no per-file log line naming the run's internal folder
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    notes = {(r["case"], r["class"]): r["note"] for r in rows}
    assert notes[("c0", "0")] == "" and notes[("c1", "0")] == ""  # class 0 has positive evidence
    for case in ("c0", "c1"):
        assert notes[(case, "1")].startswith("empty map: every channel weight at layer 'feat' is <= 0")
        assert "try an element-wise method ('hirescam', 'layercam')" in notes[(case, "1")]
    heat = nib.load(tmp_path / "out" / "c0" / "class1" / "heat.nii.gz").get_fdata()
    assert heat.max() == 0
