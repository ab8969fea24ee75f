"""volcam.figures.viewer in a real browser: headless Chromium (Debian's ``chromium``) driven
through its DevTools protocol with real mouse, wheel and key events.

These tests fail, they do not skip, when Chromium is missing (``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import io
import re
import time

import numpy as np
import pytest
from chromium_cdp import Chromium, Page
from PIL import Image

from volcam import figures
from volcam.figures.viewer import write_viewer

# stored LPS-like (x and y flipped), anisotropic voxels, non-zero origin
AFFINE = np.array([[-0.9, 0, 0, 30.0], [0, -0.9, 0, 25.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
SHAPE = (64, 56, 24)
TUMOUR = (20, 35, 15)  # source voxels of the two blobs' peaks
LIVER = (45, 20, 8)
JET_TOP = np.array([128, 0, 0])


def blob(centre, sigma=3.0):
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    d2 = ((i - centre[0]) ** 2 + (j - centre[1]) ** 2) / sigma**2 + ((k - centre[2]) / (sigma / 2)) ** 2
    return np.exp(-d2).astype(np.float32)


def ct_image():
    rng = np.random.default_rng(0)
    i, j, _ = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    body = ((i - 32) / 28.0) ** 2 + ((j - 28) / 24.0) ** 2 <= 1
    image = np.where(body, 40, -1000) + rng.integers(-15, 16, SHAPE)
    image[(i - 32) ** 2 + (j - 44) ** 2 <= 9] = 700  # a bone-like disc
    return image.astype(np.float32)


def world(voxel) -> np.ndarray:
    return AFFINE[:3, :3] @ np.asarray(voxel, dtype=float) + AFFINE[:3, 3]


@pytest.fixture(scope="module")
def browser():
    with Chromium(1400, 900) as b:
        yield b


@pytest.fixture(scope="module")
def ct_case():
    image = ct_image()
    heats = {"tumour": blob(TUMOUR), "liver": blob(LIVER, 4.0)}
    masks = {"prediction: tumour": heats["tumour"] > 0.5}
    return image, heats, masks


def open_page(browser: Chromium, path) -> Page:
    page = browser.page()
    page.goto(path)
    page.evaluate("volcamViewer.ready.then(() => true)")
    return page


def cursor_world(page: Page) -> np.ndarray:
    text = page.evaluate("document.getElementById('cursor-world').textContent")
    match = re.fullmatch(r"x ([-+]\d+\.\d) +y ([-+]\d+\.\d) +z ([-+]\d+\.\d) mm", text.strip())
    assert match, text
    return np.array([float(v) for v in match.groups()])


def point(page: Page, plane: str, voxel) -> tuple[float, float]:
    p = page.evaluate(f"volcamViewer.screenPoint('{plane}', {list(map(int, voxel))})")
    return p["x"], p["y"]


def set_input(page: Page, element_id: str, value, event: str) -> None:
    page.evaluate(
        f"(() => {{ const e = document.getElementById('{element_id}'); e.value = {value!r};"
        f" e.dispatchEvent(new Event('{event}')); }})()"
    )


def grey(value: float, window) -> int:
    lo, hi = window
    return int(np.floor(np.clip((value - lo) * 255.0 / (hi - lo), 0, 255) + 0.5))


def no_network(page: Page, path) -> None:
    own = path.resolve().as_uri()
    assert [u for u in page.requests() if u != own and not u.startswith("blob:")] == []


def test_hottest_voxel_scroll_class_threshold_and_screenshot(browser, ct_case, tmp_path):
    image, heats, masks = ct_case
    path = write_viewer(image, heats, tmp_path / "case.html", affine=AFFINE, masks=masks, title="case 7")
    page = open_page(browser, path)
    meta = page.evaluate("volcamViewer.meta")
    canon = lambda v: [SHAPE[0] - 1 - v[0], SHAPE[1] - 1 - v[1], v[2]]  # LPS-like -> RAS+ order

    # a real click on the axial plane moves the crosshair there
    target = canon((40, 12, 15))
    page.click(*point(page, "axial", target))
    assert page.evaluate("volcamViewer.state().cursor")[:2] == target[:2]

    # "Hottest voxel" (a real click on the button) puts the crosshair on the tumour's peak
    page.click_element("#hottest")
    assert page.evaluate("volcamViewer.state().cursor") == canon(TUMOUR)
    np.testing.assert_allclose(cursor_world(page), world(TUMOUR), atol=0.051)  # the read-out's 0.1 mm
    assert page.evaluate("document.getElementById('cursor-voxel').textContent") == "20, 35, 15"
    assert page.evaluate("document.getElementById('cursor-heat').textContent") == "1.000"
    assert page.evaluate("document.getElementById('cursor-image').textContent").endswith(" HU")

    # one wheel notch over the axial plane: one slice down; the arrow key brings it back
    k = canon(TUMOUR)[2]
    page.wheel(*point(page, "axial", canon(TUMOUR)), 100)
    assert page.evaluate("volcamViewer.state().cursor[2]") == k - 1
    label = page.evaluate("document.querySelector('[data-plane=axial] .slice-label').textContent")
    assert label.startswith(f"{k - 1} / {SHAPE[2] - 1}")
    page.key("ArrowUp", 38)
    assert page.evaluate("volcamViewer.state().cursor[2]") == k

    # another class, its hottest voxel, a threshold and full opacity
    set_input(page, "layer", "1", "change")
    page.click_element("#hottest")
    np.testing.assert_allclose(cursor_world(page), world(LIVER), atol=0.051)
    set_input(page, "threshold", "0.5", "input")
    set_input(page, "alpha", "1", "input")
    state = page.evaluate("volcamViewer.state()")
    assert state["layer"] == 1 and state["threshold"] == pytest.approx(0.5, abs=1 / 255) and state["alpha"] == 1
    page.evaluate("document.getElementById('show-crosshair').click()")  # lines off for clean pixels

    shot = page.screenshot()
    peak = canon(LIVER)
    for plane in ("axial", "coronal", "sagittal"):
        x, y = point(page, plane, peak)
        np.testing.assert_allclose(shot[int(y), int(x)], JET_TOP, atol=2)
    # heat 0.3 (below the threshold) shows the plain grey image; so does the body far away
    lo, hi = meta["window"]
    near = list(LIVER)
    while blob(LIVER, 4.0)[tuple(near)] > 0.3:
        near[0] -= 1
    for voxel in (tuple(near), (10, 28, LIVER[2])):
        x, y = point(page, "axial", canon(voxel))
        expected = grey(image[voxel], (lo, hi))
        np.testing.assert_array_equal(shot[int(y), int(x)], [expected] * 3)

    assert page.errors() == []
    no_network(page, path)


@pytest.mark.parametrize("convention", ["radiological", "neurological"])
def test_slices_drawn_like_the_slice_pngs(browser, ct_case, tmp_path, convention):
    image, heats, masks = ct_case
    path = write_viewer(image, heats, tmp_path / "v.html", affine=AFFINE, masks=masks, convention=convention)
    page = open_page(browser, path)
    meta = page.evaluate("volcamViewer.meta")
    cursor = page.evaluate("volcamViewer.state().cursor")
    for plane, a in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
        got = page.evaluate(f"volcamViewer.slicePixels('{plane}')")
        rgb = np.asarray(got["rgba"], dtype=int).reshape(got["height"], got["width"], 4)[..., :3]
        expected = figures.overlay_slice(
            image,
            heats["tumour"],
            cursor[a],
            affine=AFFINE,
            axis=plane,
            window=tuple(meta["window"]),
            mask=masks["prediction: tumour"],
            outline_color="#00e5ff",  # the page's first outline colour
            convention=convention,
        ).astype(int)
        assert rgb.shape == expected.shape
        diff = np.abs(rgb - expected)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, plane
        assert (expected[..., 0] != expected[..., 2]).any()  # the slice does show heat
    assert page.errors() == []


def test_snapshot_button_saves_the_three_planes(browser, ct_case, tmp_path):
    image, heats, _ = ct_case
    path = write_viewer(image, heats, tmp_path / "v.html", affine=AFFINE)
    page = open_page(browser, path)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    page.click_element("#snapshot")
    deadline = time.monotonic() + 20
    while not [p for p in downloads.iterdir() if p.suffix == ".png"] and time.monotonic() < deadline:
        time.sleep(0.05)
    (saved,) = [p for p in downloads.iterdir() if p.suffix == ".png"]
    assert saved.name.startswith("v-tumour-")
    picture = np.asarray(Image.open(saved).convert("RGB"))
    widths = page.evaluate("[...document.querySelectorAll('.panel canvas')].map((c) => c.width)")
    assert picture.shape[1] == sum(widths) + 2 * (len(widths) - 1)
    # the data URL of the same composition shows the heat colours too
    data_url = page.evaluate("volcamViewer.snapshot()")
    again = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",")[1]))).convert("RGB"))
    assert again.shape == picture.shape and (again[..., 0].astype(int) - again[..., 2] > 60).any()
    assert page.errors() == []
    no_network(page, path)


def test_window_preset_and_outline_toggle(browser, ct_case, tmp_path):
    image, heats, masks = ct_case
    path = write_viewer(image, heats, tmp_path / "v.html", affine=AFFINE, masks=masks, alpha=0.0)
    page = open_page(browser, path)
    page.evaluate("document.getElementById('show-crosshair').click()")
    voxel = (10, 28, TUMOUR[2])  # soft tissue, no heat, no outline
    canon = [SHAPE[0] - 1 - voxel[0], SHAPE[1] - 1 - voxel[1], voxel[2]]
    set_input(page, "preset", "CT lung", "change")
    assert page.evaluate("volcamViewer.state().window") == [-1350.0, 150.0]
    x, y = point(page, "axial", canon)
    np.testing.assert_array_equal(page.screenshot()[int(y), int(x)], [grey(image[voxel], (-1350, 150))] * 3)
    assert page.evaluate("document.getElementById('level').value") == "-600"

    # the outline of the prediction is cyan where drawn, and gone when toggled off
    rgb_on = page.evaluate("volcamViewer.slicePixels('axial')")
    page.evaluate("document.getElementById('outline-0').click()")
    rgb_off = page.evaluate("volcamViewer.slicePixels('axial')")
    on = np.asarray(rgb_on["rgba"]).reshape(-1, 4)[:, :3]
    off = np.asarray(rgb_off["rgba"]).reshape(-1, 4)[:, :3]
    changed = np.any(on != off, axis=1)
    assert changed.sum() > 10 and (on[changed] == [0, 229, 255]).all()
    assert page.errors() == []


def test_lps_read_out_and_2d_page(browser, ct_case, tmp_path):
    image, heats, _ = ct_case
    path = write_viewer(image, heats["tumour"], tmp_path / "lps.html", affine=AFFINE, coordinates="LPS")
    page = open_page(browser, path)
    ras = world(TUMOUR)
    np.testing.assert_allclose(cursor_world(page), [-ras[0], -ras[1], ras[2]], atol=0.051)
    assert page.evaluate("document.getElementById('world-label').textContent") == "world (LPS)"

    flat = image[:, :, 5].T.copy()  # a plain 2D array [X, Y] without affine: pixel units
    heat2d = np.zeros_like(flat)
    heat2d[3, 7] = 1.0
    path2d = write_viewer(flat, heat2d, tmp_path / "flat.html")
    page2d = open_page(browser, path2d)
    assert page2d.evaluate("document.querySelectorAll('.panel').length") == 1
    assert page2d.evaluate("volcamViewer.state().cursor") == [3, flat.shape[1] - 1 - 7, 0]
    assert page2d.evaluate("document.getElementById('cursor-voxel').textContent") == "3, 7 px"
    got = page2d.evaluate("volcamViewer.slicePixels(2)")
    rgb = np.asarray(got["rgba"]).reshape(got["height"], got["width"], 4)[..., :3]
    lo, hi = page2d.evaluate("volcamViewer.meta.window")
    assert rgb.shape[:2] == (flat.shape[1], flat.shape[0])  # rows are y (downwards), columns x
    assert rgb[0, 0, 0] == grey(flat[0, 0], (lo, hi)) and rgb[0, 5, 0] == grey(flat[5, 0], (lo, hi))
    assert page.errors() == [] and page2d.errors() == []


def test_reduced_page_says_so_and_finds_the_peak(browser, tmp_path):
    rng = np.random.default_rng(5)
    shape = (150, 130, 30)  # noise: too much for 1 MB at full resolution
    image = rng.integers(-1000, 1000, shape).astype(np.int16)
    heat = np.zeros(shape, np.float32)
    heat[77, 41, 9] = 1.0
    affine = np.diag([0.7, 0.7, 3.0, 1.0])
    path = write_viewer(image, {"c": heat}, tmp_path / "big.html", affine=affine, max_bytes=1_000_000)
    page = open_page(browser, path)
    notice = page.evaluate(
        "(() => { const n = document.getElementById('notice'); return n.hidden ? '' : n.innerText; })()"
    )
    assert "reduced" in notice and "150 x 130 x 30" in notice
    fx, fy, _ = page.evaluate("volcamViewer.meta.factors")
    page.click_element("#hottest")
    peak_world = affine[:3, :3] @ np.array([77, 41, 9.0]) + affine[:3, 3]
    assert np.all(np.abs(cursor_world(page) - peak_world) <= [0.7 * fx / 2 + 0.05, 0.7 * fy / 2 + 0.05, 0.05])
    # the read-out names the source voxel at the centre of the block (rounded half up)
    centre = [int(np.floor(p // f * f + (f - 1) / 2 + 0.5)) for p, f in ((77, fx), (41, fy))] + [9]
    assert page.evaluate("document.getElementById('cursor-voxel').textContent") == ", ".join(map(str, centre))
    assert page.errors() == []
