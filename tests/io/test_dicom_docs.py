"""The DICOM guide's Python snippets run, in order, on a synthetic export folder."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
from dicom_helpers import SeriesSpec, blob, write_localizer, write_series, write_sr

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "dicom.md"


def test_guide_snippets_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) == 4
    export = tmp_path / "exports" / "case17"
    soft = SeriesSpec(slices=12, values=blob((0.0, -4.0, 44.0)), description="AX 2.5mm")
    write_series(export / "soft", soft)
    bone = dict(study_uid=soft.study_uid, frame_uid=soft.frame_uid, series_number=4, description="AX 2.5mm BONE")
    write_series(export / "bone", slices=8, **bone)
    write_localizer(export, soft)
    write_sr(export, soft)
    (export / "README.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), namespace)
    assert namespace["choice"].series.uid == soft.series_uid
    assert namespace["bone"].series.description == "AX 2.5mm BONE"
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "case17_heat.nii.gz",
        "case17_heat_pmap.dcm",
        "case17_heat_seg.dcm",
    ]
    pmap = pydicom.dcmread(out / "case17_heat_pmap.dcm")
    assert int(pmap.NumberOfFrames) == 12
    assert np.all((pmap.pixel_array >= 0) & (pmap.pixel_array <= 1))
