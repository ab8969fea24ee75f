"""volcam.figures.viewer: the data embedded in a written page, decoded here the way the page's
script decodes it (base64, zlib, byte planes, ``offset + scale * code``), compared with the
volumes that were given: shape, orientation (RAS+ voxel order), geometry, quantisation error.
"""

from __future__ import annotations

import base64
import json
import math
import re
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.testing import data_path

from volcam.demo import demo_affine
from volcam.errors import ArgumentError, ShapeError, ValueRangeError
from volcam.figures import WINDOWS
from volcam.figures.viewer import write_viewer
from volcam.geometry import Canonical
from volcam.io import load_image

ANATOMICAL = Path(data_path) / "anatomical.nii"
LAS = np.diag([-2.0, 2.0, 3.0, 1.0])
X, Y, Z = 12, 14, 10


# --------------------------------------------------------------------------- the page's decoder


def read_page(path: Path) -> tuple[dict, dict]:
    text = Path(path).read_text(encoding="utf-8")
    meta = json.loads(re.search(r'<script type="application/json" id="volcam-meta">(.*?)</script>', text, re.S)[1])
    chunks = dict(re.findall(r'<script type="application/octet-stream" id="([^"]+)">([^<]*)</script>', text))
    return meta, chunks


def decode(meta: dict, chunks: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, codes) of one embedded volume, ``[X, Y, Z]`` on the display grid."""
    desc = meta["volumes"][name]
    nx, ny, nz = meta["shape"]
    wide = desc["dtype"] == "uint16"
    codes = np.zeros(nx * ny * nz, np.uint16 if wide else np.uint8)
    covered = 0
    for chunk in desc["chunks"]:
        raw = np.frombuffer(zlib.decompress(base64.b64decode(chunks[chunk["id"]])), np.uint8)
        count, start = chunk["nk"] * nx * ny, chunk["k0"] * nx * ny
        assert raw.size == count * (2 if wide else 1)
        if wide:
            codes[start : start + count] = raw[:count].astype(np.uint16) | (raw[count:].astype(np.uint16) << 8)
        else:
            codes[start : start + count] = raw
        covered += chunk["nk"]
    assert covered == nz
    codes = codes.reshape((nx, ny, nz), order="F")  # i fastest
    return desc["offset"] + desc["scale"] * codes.astype(np.float64), codes


def world(affine, voxel) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    return a[:3, :3] @ np.asarray(voxel, dtype=np.float64) + a[:3, 3]


@pytest.fixture
def case():
    """A CT-like integer image (HU), a heat blob peaking at source voxel (3, 9, 6), a mask."""
    rng = np.random.default_rng(0)
    i, j, k = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij")
    image = np.where((i - 6) ** 2 + (j - 7) ** 2 < 30, 40, -1000) + rng.integers(-20, 21, (X, Y, Z))
    image = image.astype(np.float32)
    heat = np.exp(-((i - 3) ** 2 + (j - 9) ** 2 + (k - 6) ** 2) / 6.0).astype(np.float32)
    mask = heat > 0.4
    return image, heat, mask


# --------------------------------------------------------------------------- values and orientation


def test_image_and_heat_decode_to_the_given_volumes_in_ras_order(case, tmp_path):
    image, heat, mask = case
    path = write_viewer(image, {"tumour": heat}, tmp_path / "v.html", affine=LAS, masks={"prediction": mask})
    meta, chunks = read_page(path)
    assert meta["shape"] == [X, Y, Z] and meta["factors"] == [1, 1, 1] and meta["notice"] == ""
    img, img_codes = decode(meta, chunks, "image")
    # integer HU spanning more than 256 levels: 16 bits, exact
    assert meta["volumes"]["image"]["dtype"] == "uint16" and meta["volumes"]["image"]["exact"]
    # LAS on disk: RAS+ index x = X - 1 - i, y and z unchanged
    np.testing.assert_array_equal(img, image[::-1])
    hm, codes = decode(meta, chunks, "heat0")
    step = meta["volumes"]["heat0"]["scale"]
    assert step == pytest.approx(1 / 255)
    assert np.abs(hm - heat[::-1]).max() <= step / 2 + 1e-9
    np.testing.assert_array_equal(codes, np.rint(heat[::-1] * 255).astype(np.uint8))
    masks, _ = decode(meta, chunks, "mask0")
    np.testing.assert_array_equal(masks.astype(np.uint8) & 1, mask[::-1].astype(np.uint8))
    # the display grid's affine puts every voxel at the world point of its source voxel
    np.testing.assert_allclose(world(meta["affine"], (X - 1 - 3, 9, 6)), world(LAS, (3, 9, 6)), atol=1e-6)
    peak = meta["layers"][0]["peak"]
    assert peak["voxel"] == [X - 1 - 3, 9, 6] and peak["source_voxel"] == [3, 9, 6]
    np.testing.assert_allclose(peak["world"], world(LAS, (3, 9, 6)), atol=1e-4)
    assert peak["value"] == pytest.approx(1.0)


def test_oblique_affine_reoriented_without_resampling(case, tmp_path):
    image, heat, _ = case
    affine = demo_affine((1.5, 1.5, 2.5))  # x, y flipped and rotated (oblique), non-zero origin
    path = write_viewer(image, heat, tmp_path / "v.html", affine=affine)
    meta, chunks = read_page(path)
    canon = Canonical.of(affine, image.shape)
    img, _ = decode(meta, chunks, "image")
    np.testing.assert_array_equal(img, canon.apply(image))
    np.testing.assert_allclose(meta["affine"], canon.affine, atol=1e-5)
    assert meta["layers"][0]["name"] == "heat"  # one volume: one layer named "heat"
    np.testing.assert_allclose(meta["layers"][0]["peak"]["world"], world(affine, (3, 9, 6)), atol=1e-3)
    np.testing.assert_allclose(meta["source"]["affine"], affine, atol=1e-5)


def test_float_image_quantised_to_16_bits_within_half_a_step(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.normal(2.0, 1.5, (9, 8, 7)).astype(np.float32)  # an MR-like normalised image
    heat = rng.uniform(0.0, 1.0, image.shape).astype(np.float32)
    meta, chunks = read_page(write_viewer(image, heat, tmp_path / "v.html", affine=np.eye(4)))
    desc = meta["volumes"]["image"]
    assert desc["dtype"] == "uint16" and not desc["exact"]
    assert desc["scale"] == pytest.approx((image.max() - image.min()) / 65535, rel=1e-6)
    img, _ = decode(meta, chunks, "image")
    assert np.abs(img - image).max() <= desc["scale"] / 2 * (1 + 1e-6)
    hm, _ = decode(meta, chunks, "heat0")
    assert np.abs(hm - heat).max() <= 0.5 / 255 + 1e-9
    assert meta["modality"] is None and [p[0] for p in meta["presets"]][0] == "0.5-99.5 percentiles"


def test_small_integer_image_takes_8_bits_exactly(tmp_path):
    image = np.arange(6 * 5 * 4).reshape(6, 5, 4) % 200 + 17  # 200 levels
    meta, chunks = read_page(write_viewer(image, np.zeros(image.shape), tmp_path / "v.html", affine=np.eye(4)))
    assert meta["volumes"]["image"]["dtype"] == "uint8" and meta["volumes"]["image"]["exact"]
    img, _ = decode(meta, chunks, "image")
    np.testing.assert_array_equal(img, image)
    assert meta["layers"][0]["peak"] is None  # a flat map has no hottest voxel


def test_raw_heat_outside_unit_interval_uses_its_own_range(case, tmp_path):
    image, heat, _ = case
    raw = heat * 40.0 - 3.0
    meta, chunks = read_page(write_viewer(image, {"raw": raw}, tmp_path / "v.html", affine=LAS))
    layer = meta["layers"][0]
    assert layer["range"] == pytest.approx([raw.min(), raw.max()])
    hm, _ = decode(meta, chunks, "heat0")
    assert np.abs(hm - raw[::-1]).max() <= meta["volumes"]["heat0"]["scale"] / 2 + 1e-6


def test_nine_masks_take_two_bit_field_volumes(case, tmp_path):
    image, heat, _ = case
    masks = {f"m{b}": heat > b / 10 for b in range(9)}
    meta, chunks = read_page(write_viewer(image, heat, tmp_path / "v.html", affine=LAS, masks=masks))
    assert [(m["volume"], m["bit"]) for m in meta["masks"]] == [("mask0", b) for b in range(8)] + [("mask1", 0)]
    bits0, _ = decode(meta, chunks, "mask0")
    bits1, _ = decode(meta, chunks, "mask1")
    for b in range(8):
        np.testing.assert_array_equal((bits0.astype(int) >> b) & 1, masks[f"m{b}"][::-1])
    np.testing.assert_array_equal(bits1.astype(int) & 1, masks["m8"][::-1])


def test_metatensor_inputs_from_a_real_las_scan(tmp_path):
    scan = load_image(ANATOMICAL)  # MetaTensor [1, 33, 41, 25], LAS, int16 values
    data = np.asanyarray(nib.load(ANATOMICAL).dataobj).astype(np.float64)
    heat = torch.zeros_like(scan)
    heat[0, 5, 30, 12] = 1.0
    meta, chunks = read_page(write_viewer(scan, {"c": heat}, tmp_path / "v.html", coordinates="LPS"))
    img, _ = decode(meta, chunks, "image")
    np.testing.assert_array_equal(img, data[::-1])  # LAS -> RAS: x reversed
    assert meta["source"]["axcodes"] == "LAS" and meta["coordinates"] == "LPS"
    peak = meta["layers"][0]["peak"]
    assert peak["source_voxel"] == [5, 30, 12] and peak["voxel"] == [33 - 1 - 5, 30, 12]
    np.testing.assert_allclose(peak["world"], world(nib.load(ANATOMICAL).affine, (5, 30, 12)), atol=1e-4)


# --------------------------------------------------------------------------- reduced in-plane


def test_over_budget_volume_reduced_in_plane_by_block_means(tmp_path):
    rng = np.random.default_rng(2)
    shape = (150, 130, 24)  # noise: about 2 bytes per voxel compressed, too much for 1 MB
    image = rng.integers(-1000, 1000, shape).astype(np.int16)
    heat = rng.uniform(0, 1, shape).astype(np.float32)
    affine = np.diag([0.7, 0.7, 3.0, 1.0])
    path = write_viewer(image, heat, tmp_path / "v.html", affine=affine, max_bytes=1_000_000)
    assert path.stat().st_size <= 1_000_000
    meta, chunks = read_page(path)
    fx, fy, fz = meta["factors"]
    assert fx == fy > 1 and fz == 1  # only in-plane: the 3 mm axis is kept
    assert meta["shape"] == [math.ceil(150 / fx), math.ceil(130 / fy), 24]
    assert meta["full_shape"] == list(shape) and "reduced" in meta["notice"]
    img, _ = decode(meta, chunks, "image")
    pad = [(0, -n % f) for n, f in zip(shape, (fx, fy, 1))]
    blocks = np.pad(image.astype(np.float64), pad, mode="edge")
    expected = blocks.reshape(blocks.shape[0] // fx, fx, blocks.shape[1] // fy, fy, 24).mean(axis=(1, 3))
    assert np.abs(img - expected).max() <= meta["volumes"]["image"]["scale"] / 2 + 1e-9
    # display voxel (0, 0, k) sits at the centre of its source block
    np.testing.assert_allclose(world(meta["affine"], (0, 0, 5)), world(affine, ((fx - 1) / 2, (fy - 1) / 2, 5)))
    # the hottest voxel is found at full resolution, then located in its block
    peak = np.unravel_index(np.argmax(heat), shape)
    layer = meta["layers"][0]
    assert layer["peak"]["source_voxel"] == [int(v) for v in peak]
    assert layer["peak"]["voxel"] == [peak[0] // fx, peak[1] // fy, peak[2]]


def test_coronal_acquisition_reduced_across_its_own_plane(tmp_path):
    rng = np.random.default_rng(3)
    shape = (200, 20, 200)  # x, y (slices, 4 mm), z: a coronal series stored (x, y, z)
    image = rng.integers(0, 3000, shape).astype(np.int16)
    affine = np.diag([0.8, 4.0, 0.8, 1.0])
    meta, _ = read_page(write_viewer(image, np.zeros(shape), tmp_path / "v.html", affine=affine, max_bytes=1_000_000))
    fx, fy, fz = meta["factors"]
    assert fy == 1 and fx == fz > 1


@pytest.mark.slow
def test_512_ct_with_one_class_fits_25_mb(tmp_path):
    rng = np.random.default_rng(4)
    x = np.linspace(-1, 1, 512, dtype=np.float32)
    body = ((x[:, None] / 0.8) ** 2 + (x[None, :] / 0.55) ** 2 <= 1)[..., None]
    image = np.where(body, np.int16(40), np.int16(-1000)) + rng.integers(-20, 21, (512, 512, 300), dtype=np.int16)
    gauss = lambda v, c, s: np.exp(-(((v - c) / s) ** 2)).astype(np.float32)
    z = np.linspace(-1, 1, 300, dtype=np.float32)
    heat = gauss(x, 0.2, 0.15)[:, None, None] * gauss(x, 0.0, 0.15)[None, :, None] * gauss(z, 0.0, 0.3)[None, None, :]
    affine = np.diag([0.7, 0.7, 1.5, 1])
    path = write_viewer(image, {"liver": heat}, tmp_path / "ct.html", affine=affine)
    assert path.stat().st_size <= 25_000_000
    meta, _ = read_page(path)
    assert meta["factors"] == [2, 2, 1] and meta["modality"] == "CT" and meta["volumes"]["image"]["exact"]


# --------------------------------------------------------------------------- 2D


def test_2d_array_without_affine_in_pixel_units(tmp_path):
    image = np.arange(7 * 5, dtype=np.float32).reshape(7, 5)  # [X, Y]
    heat = np.zeros((7, 5), np.float32)
    heat[2, 1] = 1.0
    meta, chunks = read_page(write_viewer(image, heat, tmp_path / "v.html"))
    assert meta["anatomical"] is False and meta["planes"] == [2] and meta["shape"] == [7, 5, 1]
    img, _ = decode(meta, chunks, "image")
    # x to the right, y downwards: the canonical y axis runs upwards, so it is y reversed
    np.testing.assert_array_equal(img[:, ::-1, 0], image)
    assert meta["layers"][0]["peak"]["source_voxel"][:2] == [2, 1]


def test_2d_image_with_affine_shows_its_own_plane(tmp_path):
    image = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    coronal = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])  # array axes x, z
    meta, _ = read_page(write_viewer(image, np.zeros((6, 4)), tmp_path / "v.html", affine=coronal))
    assert meta["planes"] == [1] and meta["shape"] == [6, 1, 4]


# --------------------------------------------------------------------------- page contents


def test_window_presets_stats_and_display_settings(case, tmp_path):
    image, heat, mask = case
    row = {  # a summary.csv row, as read back (strings)
        "case": "c1",
        "class": "1",
        "class_name": "tumour",
        "predicted_volume_ml": "12.3456",
        "energy_in_prediction": "0.8312",
        "energy_in_label": "",
        "note": "the predicted region is empty",
        "heat_nifti": "c1/tumour/heat.nii.gz",
        "dice": 0.5,
    }
    path = write_viewer(
        image,
        {"tumour": heat, "other": heat[::-1]},
        tmp_path / "v.html",
        affine=LAS,
        stats={"tumour": row},
        window="lung",
        cmap="inferno",
        alpha=0.7,
        threshold=0.2,
        blend="constant",
    )
    meta, _ = read_page(path)
    assert meta["modality"] == "CT" and meta["units"] == "HU"
    assert meta["window"] == list(WINDOWS["lung"])
    names = [p[0] for p in meta["presets"]]
    assert names[:4] == ["CT soft tissue", "CT lung", "CT bone", "CT brain"] and "full range" in names
    assert meta["presets"][0][1:] == list(WINDOWS["soft_tissue"])
    assert meta["layers"][0]["stats"] == [
        ["predicted volume", "12.35 ml"],
        ["energy in prediction", "83.1 %"],
        ["note", "the predicted region is empty"],
        ["dice", "0.5"],
    ]
    assert meta["layers"][1]["stats"] == []
    assert meta["display"] == {"cmap": "inferno", "alpha": 0.7, "threshold": 0.2, "blend": "constant"}
    assert len(meta["cmaps"]["inferno"]) == 3 * 256


def test_page_is_self_contained_and_escapes_text(case, tmp_path):
    image, heat, _ = case
    title = '</script><script>alert("x")</script> & co'
    path = write_viewer(image, {"<b>liver</b>": heat}, tmp_path / "v.html", affine=LAS, title=title)
    text = path.read_text()
    for needle in ("http:", "https:", "src=", "@import", "url(", "<link", "fetch("):
        assert needle not in text, needle
    assert "<script>alert" not in text and "&lt;/script&gt;" in text
    meta, _ = read_page(path)
    assert meta["title"] == title and meta["layers"][0]["name"] == "<b>liver</b>"


def test_existing_page_kept_when_writing_fails(case, tmp_path, monkeypatch):
    import volcam.figures.viewer as viewer_module
    from volcam.io import atomic_write

    image, heat, _ = case
    path = write_viewer(image, heat, tmp_path / "v.html", affine=LAS)
    before = path.read_bytes()

    def failing(target, write):
        def half(tmp):
            tmp.write_text("<!DOCTYPE html><html><body>")
            raise OSError("disk full")

        return atomic_write(target, half)

    monkeypatch.setattr(viewer_module, "atomic_write", failing)
    with pytest.raises(OSError, match="disk full"):
        write_viewer(image, heat[::-1], path, affine=LAS)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.html"]


def test_page_that_cannot_fit_its_budget_refused(case, tmp_path):
    image, heat, _ = case
    with pytest.raises(ValueRangeError, match="`max_bytes` must leave room for the volumes"):
        write_viewer(image, heat, tmp_path / "v.html", affine=LAS, title="x" * 1_100_000, max_bytes=1_000_000)
    assert not (tmp_path / "v.html").exists()


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"path": "v.png"}, ArgumentError, r"`path` must end in \.html, not '.*v\.png'"),
        ({"heats": {}}, ArgumentError, "`heats` must hold at least one heat volume"),
        ({"heats": {"": 0}}, ArgumentError, "`heats` names must be non-empty strings"),
        ({"convention": "radiologic"}, ArgumentError, "did you mean 'radiological'"),
        ({"coordinates": "ras"}, ArgumentError, r"`coordinates` must be one of \['RAS', 'LPS'\], not 'ras'"),
        ({"modality": "PET"}, ArgumentError, "`modality` must be one of"),
        ({"alpha": 1.5}, ArgumentError, r"`alpha` must be a number in \[0, 1\], not 1\.5"),
        ({"threshold": float("nan")}, ArgumentError, r"`threshold` must be a number in \(-inf, inf\), not nan"),
        ({"max_bytes": 1000}, ArgumentError, "`max_bytes` must be an int of at least 1000000, not 1000"),
        ({"stats": {"tumor": {}}}, ArgumentError, "did you mean 'tumour'"),
        ({"affine": None}, ArgumentError, "`affine` is needed to show a 3D image"),
        ({"heats": {"tumour": np.zeros((3, 3, 3))}}, ShapeError, "heat 'tumour' must have the spatial shape"),
        ({"masks": {"m": np.zeros((X, Y))}}, ShapeError, "mask 'm' must have the spatial shape"),
    ],
)
def test_bad_arguments(case, tmp_path, kwargs, error, message):
    image, heat, _ = case
    args = {"heats": {"tumour": heat}, "path": "v.html", "affine": LAS, **kwargs}
    path = tmp_path / args.pop("path")
    heats = args.pop("heats")
    with pytest.raises(error, match=message):
        write_viewer(image, heats, path, **args)
    assert not path.exists()


def test_heat_on_another_grid_refused(case, tmp_path):
    from monai.data import MetaTensor

    image, heat, _ = case
    scan = MetaTensor(torch.as_tensor(image)[None], affine=torch.as_tensor(LAS))
    shifted = LAS.copy()
    shifted[0, 3] = 5.0
    moved = MetaTensor(torch.as_tensor(heat)[None], affine=torch.as_tensor(shifted))
    with pytest.raises(ShapeError, match="heat 'h' must lie on the image's grid"):
        write_viewer(scan, {"h": moved}, tmp_path / "v.html")
