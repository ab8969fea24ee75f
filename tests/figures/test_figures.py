"""volcam.figures: slice PNGs read back pixel by pixel, anatomical axis naming, figures, browser.

The small synthetic volume is stored LAS (affine diag(-2, 2, 3)), like ``anatomical.nii``:
its RAS+ x index is ``X - 1 - i``, so in the radiological convention (patient's right on
the viewer's left) display column == source ``i``, and display row == ``Y - 1 - j``
(anterior at the top) for axial slices.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mimage
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.testing import data_path

from volcam import figures
from volcam.errors import ArgumentError, ShapeError, ValueRangeError

ANATOMICAL = Path(data_path) / "anatomical.nii"
LAS = np.diag([-2.0, 2.0, 3.0, 1.0])
X, Y, Z = 6, 7, 5
JET_TOP = np.rint(np.asarray(matplotlib.colormaps["jet"](1.0)[:3]) * 255).astype(int)  # (128, 0, 0)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def volume():
    """image[i, j, k] = 10 i + j + 3 k (with window (0, 255), the grey level is the value),
    heat 1 at voxel (1, 2, 3) and 0 elsewhere."""
    i, j, k = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij")
    image = (10.0 * i + j + 3.0 * k).astype(np.float32)
    heat = np.zeros((X, Y, Z), dtype=np.float32)
    heat[1, 2, 3] = 1.0
    return image, heat


def grey(value: float) -> int:
    """Grey level of an image value under the window (0, 255) the tests use: itself."""
    return int(value)


def read_png(path) -> np.ndarray:
    return np.rint(mimage.imread(path)[..., :3] * 255).astype(int)


# --------------------------------------------------------------------------- slice PNGs


def test_axial_png_peak_colour_and_background_grey(volume, tmp_path):
    image, heat = volume
    paths = figures.save_slice_pngs(image, heat, tmp_path, affine=LAS, window=(0, 255), alpha=1.0)
    assert [p.name for p in paths] == [f"axial_{k:03d}.png" for k in range(Z)]
    png = read_png(paths[3])
    assert png.shape == (Y, X, 3)
    # heat peak at voxel (1, 2, 3): row Y-1-2 = 4, column i = 1, the colormap's hottest colour
    np.testing.assert_array_equal(png[4, 1], JET_TOP)
    # background shows the windowed image: pixel (row 0, col 5) is voxel (5, 6, 3) = 50 + 6 + 9
    np.testing.assert_array_equal(png[0, 5], [grey(65)] * 3)
    np.testing.assert_array_equal(png[6, 0], [grey(0 + 0 + 9)] * 3)
    # slices without heat are the plain grey image
    other = read_png(paths[0])
    expected = image[:, ::-1, 0].T
    np.testing.assert_array_equal(other[..., 0], expected)
    assert (other[..., 0] == other[..., 1]).all() and (other[..., 0] == other[..., 2]).all()


def test_neurological_convention_mirrors_left_and_right(volume, tmp_path):
    image, heat = volume
    paths = figures.save_slice_pngs(
        image, heat, tmp_path, affine=LAS, window=(0, 255), alpha=1.0, convention="neurological", slices=[3]
    )
    png = read_png(paths[0])
    np.testing.assert_array_equal(png[4, X - 1 - 1], JET_TOP)  # patient's right now on the viewer's right


def test_coronal_and_sagittal_pngs(volume, tmp_path):
    image, heat = volume
    cor = figures.save_slice_pngs(image, heat, tmp_path, affine=LAS, axis="coronal", window=(0, 255), alpha=1.0)
    sag = figures.save_slice_pngs(image, heat, tmp_path, affine=LAS, axis="sagittal", window=(0, 255), alpha=1.0)
    assert len(cor) == Y and len(sag) == X
    png = read_png(cor[2])  # coronal slice = y index 2 (A axis not flipped)
    assert png.shape == (Z, X, 3)
    np.testing.assert_array_equal(png[Z - 1 - 3, 1], JET_TOP)  # superior at the top
    png = read_png(sag[X - 1 - 1])  # sagittal index counts from the patient's left: RAS x = X-1-i
    assert png.shape == (Z, Y, 3)
    np.testing.assert_array_equal(png[Z - 1 - 3, Y - 1 - 2], JET_TOP)  # anterior on the left
    np.testing.assert_array_equal(png[0, 0], [grey(10 * 1 + 6 + 3 * 4)] * 3)  # voxel (1, 6, 4)


def test_axis_names_follow_the_affine_not_the_array_index(volume, tmp_path):
    image, heat = volume
    ref = figures.save_slice_pngs(image, heat, tmp_path / "a", affine=LAS, window=(0, 255))
    # the same scan stored as (x, z, y): the axial slices are cut across array axis 1 now
    perm = np.transpose(image, (0, 2, 1))
    perm_heat = np.transpose(heat, (0, 2, 1))
    perm_affine = LAS[:, [0, 2, 1, 3]]
    assert figures.slice_axis(perm_affine, "axial") == 1
    got = figures.save_slice_pngs(perm, perm_heat, tmp_path / "b", affine=perm_affine, window=(0, 255))
    assert len(got) == len(ref) == Z
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(read_png(a), read_png(b))


def test_oblique_scan_axes():
    affine = nib.load(Path(data_path) / "example4d.nii.gz").affine
    assert [figures.slice_axis(affine, name) for name in ("sagittal", "coronal", "axial")] == [0, 1, 2]


def test_alpha_blend_matches_the_colormap(volume):
    """The lookup-table blend equals the formula evaluated with matplotlib per value."""
    image, _ = volume
    heat = np.linspace(0.0, 1.0, X * Y * Z, dtype=np.float32).reshape(X, Y, Z)
    cmap = matplotlib.colormaps["viridis"]
    for blend in ("scaled", "constant"):
        got = figures.overlay_slice(
            image, heat, 2, affine=LAS, window=(0, 255), cmap="viridis", alpha=0.6, blend=blend, threshold=-1.0
        ).astype(float)
        h = heat[:, ::-1, 2].T
        g = np.clip(image[:, ::-1, 2].T / 255.0, 0, 1)[..., None]
        w = (0.6 * h if blend == "scaled" else np.full_like(h, 0.6))[..., None]
        expected = 255 * ((1 - w) * g + w * cmap(h)[..., :3])
        assert np.abs(got - expected).max() <= 3.0  # 256 grey and colour steps, then rounding


def test_threshold_and_mask_outline(tmp_path):
    image = np.full((9, 9, 3), 50.0, dtype=np.float32)
    heat = np.zeros_like(image)
    heat[:, :, 1] = 0.2
    heat[4, 4, 1] = 1.0
    mask = np.zeros_like(image, dtype=np.uint8)
    mask[2:7, 2:7, 1] = 1
    rgb = figures.overlay_slice(
        image,
        heat,
        1,
        affine=np.eye(4),
        window=(0, 255),
        alpha=1.0,
        threshold=0.5,
        blend="constant",
        mask=mask,
        outline_color="lime",
    )
    # RAS identity affine, radiological: display[r, c] = voxel (8 - c, 8 - r)
    np.testing.assert_array_equal(rgb[4, 4], JET_TOP)  # above threshold
    np.testing.assert_array_equal(rgb[0, 0], [grey(50)] * 3)  # 0.2 <= threshold: grey
    np.testing.assert_array_equal(rgb[2, 4], [0, 255, 0])  # mask edge (voxel 4, 6)
    np.testing.assert_array_equal(rgb[2, 2], [0, 255, 0])  # mask corner
    np.testing.assert_array_equal(rgb[3, 4], [grey(50)] * 3)  # inside, not on the edge
    np.testing.assert_array_equal(rgb[1, 4], [grey(50)] * 3)  # outside


def test_2d_image_gives_one_png(tmp_path):
    image = np.arange(12, dtype=np.float32).reshape(3, 4) * 10
    heat = np.zeros((3, 4), dtype=np.float32)
    heat[0, 3] = 1.0
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    paths = figures.save_slice_pngs(image, heat, tmp_path, affine=affine, axis=None, window=(0, 255), alpha=1.0)
    assert [p.name for p in paths] == ["axial_000.png"]
    png = read_png(paths[0])
    assert png.shape == (4, 3, 3)
    np.testing.assert_array_equal(png[0, 2], JET_TOP)  # voxel (0, 3): row 4-1-3, col 3-1-0
    np.testing.assert_array_equal(png[3, 0], [grey(image[2, 0])] * 3)


def test_metatensor_inputs_bring_the_affine(volume, tmp_path):
    from monai.data import MetaTensor

    image, heat = volume
    img_mt = MetaTensor(torch.from_numpy(image)[None], affine=torch.from_numpy(LAS))
    heat_engine = torch.from_numpy(heat)[None, None]  # [B, 1, *S]
    paths = figures.save_slice_pngs(img_mt, heat_engine, tmp_path, window=(0, 255), alpha=1.0, slices=[3])
    np.testing.assert_array_equal(read_png(paths[0])[4, 1], JET_TOP)


def test_many_slices_in_parallel_are_all_written_in_order(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 40), dtype=np.float32)
    heat = rng.random((32, 32, 40), dtype=np.float32)
    paths = figures.save_slice_pngs(image, heat, tmp_path, affine=np.eye(4), workers=4, prefix="c1_")
    assert [p.name for p in paths] == [f"c1_axial_{k:03d}.png" for k in range(40)]
    for k in (0, 17, 39):
        expected = figures.overlay_slice(image, heat, k, affine=np.eye(4))
        np.testing.assert_array_equal(read_png(paths[k]), expected)
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in paths)  # no temporary files left


def test_window_is_shared_by_all_slices():
    image = np.zeros((4, 4, 3), dtype=np.float32)
    image[..., 0] = 10.0
    image[..., 2] = 1000.0  # one very bright slice
    heat = np.zeros_like(image)
    lo, hi = figures.window_for(image, (0, 100))
    assert (lo, hi) == (0.0, 1000.0)
    rgb = figures.overlay_slice(image, heat, 0, affine=np.eye(4), window=(lo, hi))
    assert rgb[0, 0, 0] == 3  # 10 of 1000 -> 2.55, not stretched per slice
    assert figures.window_for(image) == figures.window_for(image)


def test_ct_window_presets():
    image = np.array([-1000.0, -160.0, 0.0, 240.0, 1000.0], dtype=np.float32).reshape(5, 1, 1)
    rgb = figures.overlay_slice(image, np.zeros_like(image), 0, affine=np.eye(4), axis="sagittal", window="soft_tissue")
    assert rgb.shape == (1, 1, 3)
    rgb = figures.overlay_slice(image, np.zeros_like(image), 0, affine=np.eye(4), axis="axial", window="soft_tissue")
    # radiological axial of a (5, 1, 1) volume: one row, x reversed
    assert rgb[0, :, 0].tolist() == [255, 255, 102, 0, 0]  # 0 HU: 160 / 400 * 255


# --------------------------------------------------------------------------- bad input


def test_heat_shape_must_match_and_nothing_is_written(volume, tmp_path):
    image, heat = volume
    out = tmp_path / "pngs"
    with pytest.raises(
        ShapeError,
        match=r"heat must have the spatial shape of the image, \(6, 7, 5\), "
        r"not \(6, 7, 4\)",
    ):
        figures.save_slice_pngs(image, heat[..., :4], out, affine=LAS)
    assert not out.exists()


def test_bad_options(volume, tmp_path):
    image, heat = volume
    with pytest.raises(ArgumentError, match="`axis` must be one of .*not 'transverse'"):
        figures.save_slice_pngs(image, heat, tmp_path, affine=LAS, axis="transverse")
    with pytest.raises(ArgumentError, match="`convention` must be one of"):
        figures.mosaic(image, heat, affine=LAS, convention="left")
    with pytest.raises(ArgumentError, match=r"`window` must be \(low, high\) with low < high"):
        figures.mosaic(image, heat, affine=LAS, window=(5, 5))
    with pytest.raises(ArgumentError, match="`cmap` must be a matplotlib colormap .*not 'jett'"):
        figures.mosaic(image, heat, affine=LAS, cmap="jett")
    with pytest.raises(ArgumentError, match="`affine` is needed"):
        figures.mosaic(image, heat)
    with pytest.raises(ValueRangeError, match=r"axial slice index must lie in \[0, 4\], not 7"):
        figures.save_slice_pngs(image, heat, tmp_path, affine=LAS, slices=[7])
    assert list(tmp_path.iterdir()) == []


def test_nan_in_image_is_drawn_black_not_garbage():
    image = np.full((3, 3, 1), 50.0, dtype=np.float32)
    image[1, 1, 0] = np.nan
    rgb = figures.overlay_slice(image, np.zeros_like(image), 0, affine=np.eye(4), window=(0, 255))
    assert rgb[1, 1].tolist() == [0, 0, 0] and rgb[0, 0].tolist() == [grey(50)] * 3


# --------------------------------------------------------------------------- figures


def panel_titles(fig):
    return [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.images]


def test_mosaic_even_and_hottest():
    image = np.zeros((8, 8, 20), dtype=np.float32)
    heat = np.zeros_like(image)
    for k, v in {3: 0.5, 11: 1.0, 16: 0.8, 5: 0.1}.items():
        heat[2:5, 2:5, k] = v
    fig = figures.mosaic(image, heat, affine=np.eye(4), n=3, select="hottest")
    assert [t.split()[1] for t in panel_titles(fig)] == ["3", "11", "16"]
    fig = figures.mosaic(image, heat, affine=np.eye(4), n=4, select="even")
    assert [int(t.split()[1]) for t in panel_titles(fig)] == [4, 8, 11, 15]  # linspace(0, 19, 6)[1:-1]
    assert "z = +4.0 mm" in panel_titles(fig)[0]
    fig = figures.mosaic(image, heat, affine=np.eye(4), select=[0, 19], colorbar=False)
    assert len(panel_titles(fig)) == 2 and len(fig.axes) == 2


def test_even_slices_span_the_body_not_the_air_around_it():
    image = np.zeros((8, 8, 20), dtype=np.float32)
    image[2:6, 2:6, 5:15] = 100.0  # the "body" fills slices 5..14
    fig = figures.mosaic(image, np.zeros_like(image), affine=np.eye(4), n=4, window=(0, 255))
    assert [int(t.split()[1]) for t in panel_titles(fig)] == [7, 9, 10, 12]  # linspace(5, 14, 6)[1:-1]


def test_mosaic_panels_show_the_overlay(volume):
    image, heat = volume
    fig = figures.mosaic(image, heat, affine=LAS, select=[3], window=(0, 255), alpha=1.0)
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_array_equal(np.asarray(shown)[4, 1], JET_TOP)
    assert fig.axes[0].get_aspect() == pytest.approx(2.0 / 2.0)
    cor = figures.mosaic(image, heat, affine=LAS, axis="coronal", select=[2])
    assert cor.axes[0].get_aspect() == pytest.approx(3.0 / 2.0)  # z spacing / x spacing


def test_orthogonal_views_through_the_hottest_voxel(volume):
    image, heat = volume
    fig = figures.orthogonal_views(image, heat, affine=LAS, window=(0, 255), alpha=1.0)
    axial, coronal, sagittal = fig.axes[:3]
    assert axial.get_title().startswith("axial 3") and coronal.get_title().startswith("coronal 2")
    assert sagittal.get_title().startswith(f"sagittal {X - 1 - 1}")
    # crosshair through the voxel: axial display (row 4, col 1), as in the PNG test
    assert axial.lines[0].get_ydata()[0] == 4 and axial.lines[1].get_xdata()[0] == 1
    np.testing.assert_array_equal(np.asarray(axial.images[0].get_array())[4, 1], JET_TOP)
    world = LAS[:3, :3] @ [1, 2, 3] + LAS[:3, 3]
    title = fig._suptitle.get_text()
    assert f"({world[0]:+.1f}, {world[1]:+.1f}, {world[2]:+.1f}) mm" in title and "scan voxel 1 2 3" in title
    # the slice numbers in the title are those of the panels
    assert f"axial 3, coronal 2, sagittal {X - 1 - 1}" in title
    assert len(fig.axes) == 4  # three views and the colourbar


def test_orthogonal_views_at_a_world_point(volume):
    image, heat = volume
    point = LAS[:3, :3] @ [4, 5, 1] + LAS[:3, 3] + [0.4, -0.3, 0.6]
    fig = figures.orthogonal_views(image, heat, affine=LAS, point=point)
    assert "scan voxel 4 5 1" in fig._suptitle.get_text()
    assert fig.axes[0].get_title().startswith("axial 1")
    with pytest.raises(ValueRangeError, match="`point` must lie inside the image"):
        figures.orthogonal_views(image, heat, affine=LAS, point=(500.0, 0.0, 0.0))


def test_real_scan_blob_is_found_where_it_was_put():
    img = nib.load(ANATOMICAL)
    data, affine = img.get_fdata(dtype=np.float32), img.affine
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in data.shape], indexing="ij"), -1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    point = np.array([-16.0, 4.0, 20.0])
    heat = np.exp(-((world - point) ** 2).sum(-1) / (2 * 6.0**2))
    fig = figures.orthogonal_views(data, heat, affine=affine)
    assert "(-16.0, +4.0, +20.0) mm" in fig._suptitle.get_text()
    fig = figures.mosaic(data, heat, affine=affine, n=3, select="hottest")
    assert [t.split()[1] for t in panel_titles(fig)] == ["17", "18", "19"]  # z = 18, 20, 22 mm


def test_browser_slider_changes_the_slice(volume):
    image, heat = volume
    b = figures.browse(image, heat, affine=LAS, window=(0, 255), alpha=1.0)
    assert b.index == 3 and b.axis == "axial"  # starts on the hottest slice
    np.testing.assert_array_equal(np.asarray(b.artist.get_array())[4, 1], JET_TOP)
    b.slider.set_val(1)
    assert b.index == 1 and b.ax.get_title().startswith("axial 1")
    expected = figures.overlay_slice(image, heat, 1, affine=LAS, window=(0, 255), alpha=1.0)
    np.testing.assert_array_equal(np.asarray(b.artist.get_array()), expected)
    b.set_slice(3)
    b.alpha_slider.set_val(0.0)  # opacity 0: the plain grey image
    np.testing.assert_array_equal(np.asarray(b.artist.get_array())[4, 1], [grey(10 + 2 + 9)] * 3)
    with pytest.raises(ValueRangeError):
        b.set_slice(Z)


def test_save_figure_is_atomic(volume, tmp_path, monkeypatch):
    image, heat = volume
    fig = figures.orthogonal_views(image, heat, affine=LAS)
    out = figures.save_figure(fig, tmp_path / "views.png", dpi=50)
    assert mimage.imread(out).shape[2] in (3, 4)
    with pytest.raises(ArgumentError, match=r"figure path must end in one of .*views\.nii"):
        figures.save_figure(fig, tmp_path / "views.nii")

    def broken(path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        figures.save_figure(fig, tmp_path / "views.png")
    assert mimage.imread(out).shape[2] in (3, 4)  # the earlier file is intact
    assert sorted(os.listdir(tmp_path)) == ["views.png"]


def test_colorbar_uses_the_heat_scale():
    fig = matplotlib.figure.Figure()
    ax = fig.add_subplot()
    bar = figures.add_colorbar(fig, ax, cmap="hot", heat_range=(0.0, 2.5), label="Grad-CAM")
    assert bar.mappable.norm.vmin == 0.0 and bar.mappable.norm.vmax == 2.5
    assert bar.mappable.get_cmap().name == "hot" and bar.ax.get_ylabel() == "Grad-CAM"


def test_2d_figures():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    heat = np.zeros_like(image)
    heat[2, 1] = 1.0
    affine = np.diag([0.8, 1.2, 1.0, 1.0])
    fig = figures.orthogonal_views(image, heat, affine=affine)
    assert len(fig.axes) == 2 and fig.axes[0].get_title().startswith("axial 0")
    assert "scan voxel 2 1" in fig._suptitle.get_text()
    b = figures.browse(image, heat, affine=affine)
    assert b.index == 0 and not b.slider.ax.get_visible()
    b.alpha_slider.set_val(1.0)
    np.testing.assert_array_equal(np.asarray(b.artist.get_array())[4 - 1 - 1, 3 - 1 - 2], JET_TOP)


def test_multichannel_image_must_pick_a_channel():
    from monai.data import MetaTensor

    image = MetaTensor(torch.zeros(2, 4, 4, 4), affine=torch.eye(4, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"image must have one channel \(\[1, \*S\]\), not shape \(2, 4, 4, 4\)"):
        figures.mosaic(image, np.zeros((4, 4, 4)))
