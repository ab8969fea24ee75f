"""The Python snippets of docs/guide/viewer.md run as they are, and do what the page says."""

from __future__ import annotations

import re
from pathlib import Path

from test_viewer_data import read_page

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "viewer.md"


def test_guide_snippets_run(tmp_path, monkeypatch, capsys):
    text = GUIDE.read_text()
    snippets = re.findall(r"```python\n(.*?)```", text, re.S)
    assert snippets
    monkeypatch.chdir(tmp_path)
    for code in snippets:
        exec(compile(code, str(GUIDE), "exec"), {"__name__": "__guide__"})
    assert "anatomical-viewer.html" in capsys.readouterr().out
    meta, _ = read_page(tmp_path / "anatomical-viewer.html")
    assert [layer["name"] for layer in meta["layers"]] == ["lesion / gradcam", "lesion / hirescam"]
    assert meta["masks"][0]["name"] == "prediction: lesion" and meta["source"]["axcodes"] == "LAS"
    # the images the guide shows are there
    for image in re.findall(r"\]\((\.\./_static/[^)]+)\)", text):
        assert (GUIDE.parent / image).is_file(), image
