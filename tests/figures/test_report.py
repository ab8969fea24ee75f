"""volcam.figures.report: the run's index.html from a real run (two cases done, one failed):
rows, failures, thumbnails (read back as pictures), links, sorting in headless Chromium."""

from __future__ import annotations

import base64
import csv
import html
import io
import re
from pathlib import Path

import numpy as np
import pytest
from chromium_cdp import Chromium
from PIL import Image

from volcam.errors import ArgumentError
from volcam.figures.report import thumbnail_png, write_index, write_thumbnail


def rows_of(page: str) -> list[str]:
    return re.findall(r"<tr class=\"(?:failed|)\">.*?</tr>", page, re.S)


def thumbnails_of(page: str) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB"))
        for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    ]


def test_index_of_a_run_with_a_failed_case(run_outputs):
    _, out = run_outputs
    path = write_index(out)
    assert path == out / "index.html"
    page = path.read_text()
    summary = list(csv.DictReader(open(out / "summary.csv")))
    rows = rows_of(page)
    assert len(rows) == len(summary) == 6
    failed = [r for r in rows if r.startswith('<tr class="failed">')]
    assert len(failed) == 2 and all(">broken<" in r for r in failed)
    reason = next(r["error"] for r in summary if r["case"] == "broken")
    assert html.escape(reason) in failed[0]
    assert re.search(r'<section id="failures">.*<b>broken</b>: ' + re.escape(html.escape(reason)), page, re.S)
    assert "3 cases: 2 done, 0 complete from an earlier run, 1 failed; 6 rows" in page
    # one thumbnail per class of the cases done, drawn with the heat colours; none for failures
    pictures = thumbnails_of(page)
    assert len(pictures) == 4
    for picture in pictures:
        assert max(picture.shape[:2]) == 128
        red = (picture[..., 0].astype(int) - picture[..., 2]) > 80
        assert red.any() and not red.all()
    # figures of the summary, formatted; no viewer link yet (no viewer written)
    ok = next(r for r in summary if r["case"] == "case0" and r["class_name"] == "bright")
    row = next(r for r in rows if ">case0<" in r and "bright (1)" in r)
    assert f"{float(ok['predicted_volume_ml']):.2f}" in row
    assert f"{100 * float(ok['energy_in_prediction']):.1f} %" in row
    assert f'<a href="{ok["heat_nifti"]}">heat NIfTI</a>' in row
    assert "viewer.html" not in page


def test_written_thumbnails_and_viewer_links_used(run_outputs, tmp_path):
    _, out = run_outputs
    marker = Image.new("RGB", (7, 5), (1, 2, 3))
    buffer = io.BytesIO()
    marker.save(buffer, format="PNG")
    (out / "case0" / "bright" / "thumbnail.png").write_bytes(buffer.getvalue())
    (out / "case1" / "viewer.html").write_text("<!DOCTYPE html>")
    # written elsewhere, from rows given: links lead back into the run folder
    rows = list(csv.DictReader(open(out / "summary.csv")))
    path = write_index(out, rows, tmp_path / "reports" / "run.html", thumbnails=False, title="<run>")
    page = path.read_text()
    pictures = thumbnails_of(page)
    assert len(pictures) == 1 and pictures[0].shape == (5, 7, 3) and (pictures[0] == [1, 2, 3]).all()
    assert page.count('href="../run/out/case1/viewer.html"') == 2  # no thumbnails: the case name, per class
    assert '<a href="../run/out/case0/bright/heat.nii.gz">' in page
    assert "<title>&lt;run&gt;</title>" in page


def test_index_sorts_by_column_in_a_browser(run_outputs):
    _, out = run_outputs
    path = write_index(out, thumbnails=False)
    with Chromium(1200, 800) as browser:
        page = browser.page()
        page.goto(path)
        volumes = "[...document.querySelectorAll('#summary tbody tr')].map((tr) => tr.cells[4].textContent)"
        header = "#summary th:nth-child(5)"
        page.click_element(header)
        ascending = page.evaluate(volumes)
        page.click_element(header)
        descending = page.evaluate(volumes)
        numbers = sorted(float(v) for v in ascending if v)
        assert [float(v) for v in ascending[:4]] == numbers and ascending[4:] == ["", ""]  # empty cells last
        assert [float(v) for v in descending[:4]] == numbers[::-1]
        page.click_element("#summary th:nth-child(2)")
        cases = page.evaluate(
            "[...document.querySelectorAll('#summary tbody tr')].map((tr) => tr.cells[1].textContent)"
        )
        assert cases == sorted(cases)
        assert page.errors() == []
        assert page.requests() == [path.resolve().as_uri()]


def test_thumbnail_corrects_the_voxel_aspect(tmp_path):
    heat = np.zeros((10, 20, 3), np.float32)
    heat[2, 15, 1] = 1.0
    image = np.zeros((10, 20, 3), np.float32)
    image[:, :, :] = np.arange(10)[:, None, None]
    picture = np.asarray(
        Image.open(io.BytesIO(thumbnail_png(image, heat, affine=np.diag([3.0, 1.0, 1.0, 1.0]), size=60)))
    )
    # 10 voxels of 3 mm across, 20 of 1 mm down (anterior up): 60 x 40 pixels
    assert picture.shape[:2] == (40, 60)
    path = write_thumbnail(image, heat, tmp_path / "t.png", affine=np.diag([3.0, 1.0, 1.0, 1.0]), size=60)
    assert path.read_bytes() == thumbnail_png(image, heat, affine=np.diag([3.0, 1.0, 1.0, 1.0]), size=60)
    # the hottest voxel (2, 15) lies at row 20 - 1 - 15 = 4 of 20, column 10 - 1 - 2 = 7 of 10 (radiological)
    y, x = int((4 + 0.5) * 2), int((7 + 0.5) * 6)
    r, g, b = picture[y, x, :3].astype(int)
    assert r > b + 40


def test_bad_arguments(tmp_path):
    with pytest.raises(ArgumentError, match="`run_dir` must be an existing folder"):
        write_index(tmp_path / "missing")
    with pytest.raises(ArgumentError, match="must hold a summary.csv"):
        write_index(tmp_path)
    with pytest.raises(ArgumentError, match=r"`path` must end in \.html"):
        write_index(tmp_path, [], tmp_path / "index.txt")
    with pytest.raises(ArgumentError, match="`thumbnail_size` must be a positive int"):
        write_index(tmp_path, [], thumbnail_size=0)
    assert sorted(Path(tmp_path).iterdir()) == []
