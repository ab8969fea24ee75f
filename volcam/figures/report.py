"""The run's ``index.html``: the summary table with a thumbnail per case and class, the
failures with their reasons, and links to every case's viewer and files.

The page is one file with its style, script and thumbnails inside (PNG data URIs); it
links to the files of the run by relative paths, so the run folder can be copied or
served as it is. The table sorts by any column (click its header).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from volcam.checks import positive_int
from volcam.errors import ArgumentError
from volcam.figures.render import _make_case
from volcam.io.nifti import atomic_write

__all__ = ["write_index", "thumbnail_png", "write_thumbnail", "THUMBNAIL_NAME", "VIEWER_NAME"]

logger = logging.getLogger(__name__)

#: file name of a class's thumbnail in its folder (``<case>/<class_name>/thumbnail.png``)
THUMBNAIL_NAME = "thumbnail.png"
#: file name of a case's viewer in its folder (``<case>/viewer.html``)
VIEWER_NAME = "viewer.html"


# --------------------------------------------------------------------------- thumbnails


def thumbnail_png(
    image: Any,
    heat: Any,
    *,
    affine: Any = None,
    size: int = 128,
    window: Any = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    convention: str = "radiological",
) -> bytes:
    """PNG bytes of a small overlay: the axial slice through the hottest voxel (a 2D image:
    its own plane), drawn as the slice PNGs are, scaled to fit ``size`` pixels with the
    voxel aspect corrected.

    Args:
        image, heat, affine, window, cmap, alpha, convention: as in
            :func:`volcam.figures.overlay_slice`.
        size: the longer side in pixels.
    """
    from PIL import Image

    size = positive_int(size, "size")
    case = _make_case(
        image,
        heat,
        None,
        affine,
        window=window,
        cmap=cmap,
        alpha=alpha,
        threshold=0.0,
        blend="scaled",
        heat_range=(0.0, 1.0),
        outline_color="white",
        convention=convention,
    )
    a = case.axis_index(None)
    rgb = case.rgb(a, case.hottest_voxel()[a])
    r, c = case.in_plane_axes(a)
    height_mm, width_mm = rgb.shape[0] * case.zooms[r], rgb.shape[1] * case.zooms[c]
    scale = size / max(height_mm, width_mm)
    shape = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    picture = Image.fromarray(rgb).resize(shape, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_thumbnail(image: Any, heat: Any, path: str | os.PathLike[str], **kwargs) -> Path:
    """Write :func:`thumbnail_png` to ``path`` atomically (e.g. ``<case>/<class>/thumbnail.png``,
    where :func:`write_index` finds it). Keyword arguments as for :func:`thumbnail_png`."""
    data = thumbnail_png(image, heat, **kwargs)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


class _Thumbnails:
    """Thumbnails of a run: the written ``thumbnail.png`` files, else built from the case's
    image and heat NIfTI (the image loaded once per case)."""

    def __init__(self, run_dir: Path, build: bool, style: dict):
        self.run_dir = run_dir
        self.build = build
        self.style = style
        self._image_key: str | None = None
        self._image = None

    def _find(self, name: str) -> Path | None:
        if not name:
            return None
        p = Path(name)
        for candidate in (p, self.run_dir / p):
            if candidate.is_file():
                return candidate
        return None

    def __call__(self, row: Mapping) -> bytes | None:
        case, cls = str(row.get("case", "")), str(row.get("class_name", ""))
        written = self.run_dir / case / cls / THUMBNAIL_NAME
        if case and cls and written.is_file():
            return written.read_bytes()
        heat_path = self._find(str(row.get("heat_nifti") or ""))
        image_path = self._find(str(row.get("image") or ""))
        if not self.build or heat_path is None or image_path is None:
            return None
        from volcam.io import load_image

        try:
            if self._image_key != str(image_path):
                self._image_key, self._image = str(image_path), load_image(image_path)
            heat = load_image(heat_path)
            return thumbnail_png(self._image, heat, **self.style)
        except Exception as err:  # a missing thumbnail never stops the report
            logger.warning("no thumbnail for %s / %s: %s", case, cls, err)
            return None


# --------------------------------------------------------------------------- the table


def _read_rows(run_dir: Path) -> list[dict]:
    summary = run_dir / "summary.csv"
    if not summary.is_file():
        raise ArgumentError(
            f"`rows` must be given, or `run_dir` must hold a summary.csv, not '{run_dir}' without one",
            name="rows",
        )
    with open(summary, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _number(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _cell(text: str, sort: Any = None, cls: str = "") -> str:
    key = "" if sort is None else f' data-sort="{html.escape(str(sort))}"'
    klass = f' class="{cls}"' if cls else ""
    return f"<td{klass}{key}>{text}</td>"


def _link(href: str, text: str) -> str:
    return f'<a href="{html.escape(href)}">{html.escape(text)}</a>'


def _percent(value: Any) -> str:
    x = _number(value)
    return "" if x is None else f"{100 * x:.1f} %"


def _row_html(row: Mapping, rel: str, run_dir: Path, thumbs: _Thumbnails) -> str:
    case = str(row.get("case", ""))
    name = str(row.get("class_name", "") or row.get("class", ""))
    status = str(row.get("status", "") or "")
    failed = status == "failed"
    thumb = None if failed else thumbs(row)
    viewer = rel + quote(case) + "/" + VIEWER_NAME if case and (run_dir / case / VIEWER_NAME).is_file() else ""
    cells = []
    if thumb is not None:
        uri = "data:image/png;base64," + base64.b64encode(thumb).decode("ascii")
        img = f'<img src="{uri}" alt="{html.escape(case)} {html.escape(name)}">'
        cells.append(_cell(f'<a href="{html.escape(viewer)}">{img}</a>' if viewer else img))
    else:
        cells.append(_cell(""))
    case_text = _link(viewer, case) if viewer else html.escape(case)
    cells.append(_cell(case_text, case))
    cells.append(_cell(html.escape(f"{name} ({row.get('class', '')})" if row.get("class", "") != "" else name), name))
    cells.append(_cell(f'<span class="status {html.escape(status)}">{html.escape(status)}</span>', status))
    volume = _number(row.get("predicted_volume_ml"))
    cells.append(_cell("" if volume is None else f"{volume:.2f}", volume, "num"))
    peak = [_number(row.get(k)) for k in ("peak_x", "peak_y", "peak_z")]
    peak_text = "" if None in peak else ", ".join(f"{v:.1f}" for v in peak)
    cells.append(_cell(peak_text, None if None in peak else peak[2], "num"))
    for key in ("energy_in_prediction", "energy_in_label"):
        cells.append(_cell(_percent(row.get(key)), _number(row.get(key)), "num"))
    seconds = _number(row.get("seconds"))
    cells.append(_cell("" if seconds is None else f"{seconds:.1f}", seconds, "num"))
    reason = str(row.get("error") or "") if failed else str(row.get("note") or "")
    cells.append(_cell(html.escape(reason), reason, "reason"))
    files = []
    heat = str(row.get("heat_nifti") or "")
    if heat:
        files.append(_link(rel + quote(heat), "heat NIfTI"))
    figure = str(row.get("figure") or "")
    if figure:
        files.append(_link(rel + quote(figure), "figure"))
    pngs = _number(row.get("pngs"))
    if pngs:
        files.append(f"{int(pngs)} PNGs")
    cells.append(_cell(" \u00b7 ".join(files)))
    return f'<tr class="{"failed" if failed else ""}">{"".join(cells)}</tr>'


def _template() -> str:
    folder = resources.files("volcam.figures") / "html"
    return (folder / "report.html").read_text(encoding="utf-8")


def write_index(
    run_dir: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]] | None = None,
    path: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    thumbnails: bool = True,
    thumbnail_size: int = 128,
    window: Any = None,
    cmap: Any = "jet",
    alpha: float = 0.5,
    convention: str = "radiological",
) -> Path:
    """Write the report page of a run, atomically.

    Args:
        run_dir: the run's output folder (the case folders and ``summary.csv``).
        rows: the summary rows (dictionaries with the ``summary.csv`` columns); None reads
            ``run_dir/summary.csv``.
        path: destination (default ``run_dir/index.html``); links are relative to it.
        title: page title (default: the run folder's name).
        thumbnails: show a thumbnail per case and class: ``<case>/<class_name>/thumbnail.png``
            when written (:func:`write_thumbnail`), else drawn from the row's ``image`` and
            ``heat_nifti`` files when ``thumbnails`` is true.
        thumbnail_size: longer side of the thumbnails drawn here, in pixels.
        window, cmap, alpha, convention: drawing of those thumbnails, as for the slice PNGs.

    Returns:
        The written ``Path``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArgumentError(f"`run_dir` must be an existing folder, not '{run_dir}'", name="run_dir")
    rows = _read_rows(run_dir) if rows is None else [dict(r) for r in rows]
    path = Path(path) if path is not None else run_dir / "index.html"
    if path.suffix.lower() not in (".html", ".htm"):
        raise ArgumentError(f"`path` must end in .html, not '{path}'", name="path")
    positive_int(thumbnail_size, "thumbnail_size")
    rel = os.path.relpath(run_dir.resolve(), path.resolve().parent).replace(os.sep, "/")
    rel = "" if rel == "." else quote(rel) + "/"
    style = dict(size=thumbnail_size, window=window, cmap=cmap, alpha=alpha, convention=convention)
    thumbs = _Thumbnails(run_dir, thumbnails, style)
    body = "\n".join(_row_html(r, rel, run_dir, thumbs) for r in rows)

    cases: dict[str, str] = {}
    for r in rows:
        status = str(r.get("status", ""))
        if cases.get(str(r.get("case", ""))) != "failed":
            cases[str(r.get("case", ""))] = status
    counts = {s: sum(1 for v in cases.values() if v == s) for s in ("ok", "skipped", "failed")}
    failures: dict[str, str] = {}
    for r in rows:
        if r.get("status") == "failed":
            failures.setdefault(str(r.get("case", "")), str(r.get("error") or "no reason recorded"))
    seconds = sum(_number(r.get("seconds")) or 0.0 for r in rows)
    summary = (
        f"{len(cases)} case{'s' if len(cases) != 1 else ''}: {counts['ok']} done, {counts['skipped']} complete "
        f"from an earlier run, {counts['failed']} failed; {len(rows)} rows; {seconds:.0f} s of computation"
    )
    failure_html = ""
    if failures:
        items = "".join(f"<li><b>{html.escape(c)}</b>: {html.escape(reason)}</li>" for c, reason in failures.items())
        failure_html = f'<section id="failures"><h2>Failed cases</h2><ul>{items}</ul></section>'
    from volcam import __version__

    title = title or run_dir.resolve().name
    values = {
        "TITLE": html.escape(title),
        "SUMMARY": html.escape(summary),
        "GENERATOR": html.escape(f"volcam {__version__}, {np.datetime64('now', 's')} UTC"),
        "FAILURES": failure_html,
        "ROWS": body,
    }
    page = re.sub(r"\{\{([A-Z]+)\}\}", lambda m: values[m[1]], _template())
    return atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
