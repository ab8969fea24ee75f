"""What a researcher meets in the first hour with their own data: sigmoid networks, 2D raster images,
scan headers, sizes the network cannot divide, readable slice PNGs, clear messages."""

import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pipeline_helpers import config, oblique_affine, write_case

from volcam import cli
from volcam.run.config import load_config

ROOT = Path(__file__).resolve().parents[2]
HEAT_ONLY = {"pngs": False, "figure": False}


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def rows_of(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def run_cli(*args, capsys) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


# --------------------------------------------------------------------------- sigmoid networks, trained briefly


def _train(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> torch.nn.Module:
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    loss_fn = DiceCELoss(sigmoid=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            idx = torch.randperm(len(images))[:4]
            opt.zero_grad()
            loss_fn(net(images[idx]), labels[idx]).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


def _disc(shape, centre, radius):
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


@pytest.fixture(scope="module")
def png_dataset(tmp_path_factory):
    """Grey PNGs (rows x columns = 48 x 64) with a bright disc, PNG labels, and a trained 1-channel sigmoid UNet."""
    from monai.networks.nets import UNet

    root = tmp_path_factory.mktemp("png")
    rng = np.random.default_rng(0)
    arrays, masks, centres = [], [], []
    for _ in range(12):
        centre = (int(rng.integers(10, 38)), int(rng.integers(10, 54)))  # (row, column)
        mask = _disc((48, 64), centre, 6)
        image = rng.normal(60, 12, (48, 64))
        image[mask] += 120
        arrays.append(np.clip(image, 0, 255).astype(np.uint8))
        masks.append(mask)
        centres.append(centre)
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for i in range(3):  # the held-out cases the run explains
        Image.fromarray(arrays[i]).save(root / "images" / f"cell{i}.png")
        Image.fromarray(masks[i].astype(np.uint8)).save(root / "labels" / f"cell{i}.png")
    # MONAI reads a PNG as [W, H]: train on the same layout
    x = torch.tensor(np.stack(arrays)).float().transpose(1, 2)[:, None] / 255.0
    y = torch.tensor(np.stack(masks)).float().transpose(1, 2)[:, None]
    torch.manual_seed(0)
    net = _train(UNet(2, 1, 1, channels=(8, 16), strides=(2,), num_res_units=1), x[3:], y[3:], steps=80)
    torch.save(net.state_dict(), root / "model.pt")
    return root, centres[:3]


def sigmoid_config(root: Path, dims: int, **sections) -> dict:
    cfg = {
        "network_def": {
            "_target_": "monai.networks.nets.UNet",
            "spatial_dims": dims,
            "in_channels": 1,
            "out_channels": 1,
            "channels": [8, 16],
            "strides": [2],
            "num_res_units": 1,
        },
        "checkpoint": str(root / "model.pt"),
        "device": "cpu",
        "cam": {"method": "hirescam", "target_layers": "model.2"},
        "targets": {"classes": [0], "names": {0: "object"}, "activation": "sigmoid"},
        "data": {"folder": str(root / "images"), "label_folder": str(root / "labels"), "num_workers": 0},
        "outputs": {"dir": str(root / "out")},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


@pytest.mark.slow
def test_sigmoid_network_on_2d_png_images(png_dataset, capsys):
    root, centres = png_dataset
    cfg = sigmoid_config(
        root,
        2,
        data={"glob": "*.png"},
        preprocessing=[
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0, "a_max": 255, "b_min": 0.0, "b_max": 1.0}
        ],
    )
    status, _, err = run_cli("run", write_yaml(root / "png.yaml", cfg), "--no-supervise", "--quiet", capsys=capsys)
    assert status == 0, err
    rows = rows_of(root / "out" / "summary.csv")
    assert [r["case"] for r in rows] == ["cell0", "cell1", "cell2"]
    for r, (row_c, col_c) in zip(rows, centres):
        # class 0 of a single-channel network is its foreground: the label is "label > 0", not the background
        assert float(r["energy_in_label"]) > 0.5, r
        assert float(r["energy_in_prediction"]) > 0.5, r
        folder = root / "out" / r["case"] / "object"
        heat = np.asarray(Image.open(folder / "heat.png"))  # 16-bit, the image's own rows and columns
        assert heat.shape == (48, 64) and heat.dtype == np.uint16
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        assert abs(peak[0] - row_c) <= 6 and abs(peak[1] - col_c) <= 6, (peak, row_c, col_c)
        overlay = np.asarray(Image.open(folder / "overlay.png").convert("RGB")).astype(int)
        assert overlay.shape == (48, 64, 3)  # the input's own layout: not rotated, not transposed
        source = np.asarray(Image.open(root / "images" / f"{r['case']}.png")).astype(int)
        far = (row_c + 24) % 48, (col_c + 32) % 64  # background away from the disc: plain grey
        assert overlay[far][0] == overlay[far][1] == overlay[far][2]
        assert abs(overlay[peak][0] - overlay[peak][2]) > 40  # coloured at the hottest pixel
        assert source[row_c, col_c] > source[far]
        assert (
            r["peak_x"] and float(r["peak_x"]) == peak[1] and float(r["peak_y"]) == peak[0]
        )  # pixels: x column, y row


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".tif", ".jpg"])
def test_tiff_and_jpeg_images_are_read_like_png(png_dataset, tmp_path, suffix, capsys):
    # MONAI alone hands a .tif to its DICOM reader; volcam lists TIFF and JPEG as readable and reads
    # them with Pillow: the same pixels, written as PNG, give the same heat
    root, _ = png_dataset
    (tmp_path / "images").mkdir()
    (tmp_path / "reference").mkdir()
    for png in sorted((root / "images").glob("*.png")):
        written = tmp_path / "images" / f"{png.stem}{suffix}"
        Image.open(png).save(written, **({"quality": 95} if suffix == ".jpg" else {}))
        Image.open(written).save(tmp_path / "reference" / png.name)  # the pixels as decoded, lossless
    scale = [
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0, "a_max": 255, "b_min": 0.0, "b_max": 1.0}
    ]
    heats = {}
    for folder, glob in (("images", f"*{suffix}"), ("reference", "*.png")):
        cfg = sigmoid_config(root, 2, data={"folder": str(tmp_path / folder), "label_folder": None, "glob": glob})
        cfg["outputs"] = {"dir": str(tmp_path / f"out-{folder}")}
        cfg["preprocessing"] = scale
        status, out, err = run_cli("run", write_yaml(tmp_path / f"{folder}.yaml", cfg), "--no-supervise", capsys=capsys)
        assert status == 0, err
        assert out.count(" px") == 3 and " mm" not in out  # the per-case lines give pixels, not millimetres
        rows = rows_of(tmp_path / f"out-{folder}" / "summary.csv")
        assert [(r["case"], r["status"]) for r in rows] == [(f"cell{i}", "ok") for i in range(3)], rows
        heats[folder] = [
            np.asarray(Image.open(tmp_path / f"out-{folder}" / r["case"] / "object" / "heat.png")) for r in rows
        ]
    for a, b in zip(heats["images"], heats["reference"]):
        assert a.shape == (48, 64) and a.max() > 0
        assert np.array_equal(a, b)


@pytest.fixture(scope="module")
def nifti_sigmoid(tmp_path_factory):
    """3D NIfTI scans (anisotropic, oblique) with a bright sphere, labels, and a trained 1-channel sigmoid UNet."""
    from monai.networks.nets import UNet

    root = tmp_path_factory.mktemp("sigmoid3d")
    rng = np.random.default_rng(1)
    shape = (24, 24, 16)
    images, masks = [], []
    for i in range(10):
        centre = [int(rng.integers(6, s - 6)) for s in shape]
        mask = _disc(shape, centre, 4)
        image = rng.normal(0, 0.2, shape) + 1.5 * mask
        images.append(image.astype(np.float32))
        masks.append(mask)
        if i < 2:
            for folder, arr in (("images", image.astype(np.float32)), ("labels", mask.astype(np.uint8))):
                (root / folder).mkdir(exist_ok=True)
                nib.save(nib.Nifti1Image(arr, oblique_affine()), root / folder / f"ball{i}.nii.gz")
    x = torch.tensor(np.stack(images[2:]))[:, None]
    y = torch.tensor(np.stack(masks[2:])).float()[:, None]
    net = _train(UNet(3, 1, 1, channels=(8, 16), strides=(2,), num_res_units=1), x, y, steps=60)
    torch.save(net.state_dict(), root / "model.pt")
    return root, masks[:2]


@pytest.mark.slow
def test_sigmoid_network_on_3d_nifti_scans(nifti_sigmoid, capsys):
    root, masks = nifti_sigmoid
    cfg = sigmoid_config(root, 3, targets={"mask": "label"}, outputs=HEAT_ONLY)
    status, _, err = run_cli("run", write_yaml(root / "run.yaml", cfg), "--no-supervise", "--quiet", capsys=capsys)
    assert status == 0, err
    for r, mask in zip(rows_of(root / "out" / "summary.csv"), masks):
        assert float(r["energy_in_label"]) > 0.5, r  # the ball, not the background
        heat = np.asarray(nib.load(root / "out" / r["heat_nifti"]).dataobj)
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        assert _disc(mask.shape, peak, 3)[mask].any()  # the peak within 3 voxels of the ball


def test_a_class_the_network_does_not_have_is_a_config_error_at_start(tmp_path, capsys):
    write_case(tmp_path / "images", "case0", seed=0)
    cfg = config(tmp_path, outputs=HEAT_ONLY, targets={"classes": [1, 5], "names": None}, data={"label_folder": None})
    status, _, err = run_cli("run", write_yaml(tmp_path / "run.yaml", cfg), "--no-supervise", capsys=capsys)
    assert status == 2 and "targets.classes must be output channels of the network, in [0, 2], not [5]" in err
    assert not (tmp_path / "out" / "case0").exists()
    cfg["network_def"]["out_channels"] = 1
    cfg["targets"]["classes"] = [1]
    cfg["checkpoint"] = "none"
    status, _, err = run_cli("run", write_yaml(tmp_path / "run.yaml", cfg), "--no-supervise", capsys=capsys)
    assert status == 2 and "a single-channel sigmoid network has class 0" in err


def test_label_regions_for_each_kind_of_output():
    from volcam.run.cases import label_region

    label = torch.tensor([[0, 1, 2, 3]])
    assert label_region(label, 0, out_channels=1).tolist() == [False, True, True, True]  # sigmoid: foreground
    assert label_region(label, 2, out_channels=4).tolist() == [False, False, True, False]  # softmax: label == c
    assert label_region(label, 1, values=[1, 3]).tolist() == [False, True, False, True]  # regions (BraTS-like)
    onehot = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0]])
    assert label_region(onehot, 1).tolist() == [False, True, True, False]


# --------------------------------------------------------------------------- 2D NIfTI stored [H, W, 1]


def test_a_2d_nifti_stored_with_a_third_axis_of_one_is_accepted(tmp_path, capsys):
    from monai.networks.nets import UNet

    affine = np.diag([0.7, 0.7, 3.0, 1.0])
    (tmp_path / "images").mkdir()
    image = np.random.default_rng(0).normal(size=(24, 20, 1)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "images" / "xray.nii.gz")
    torch.manual_seed(0)
    torch.save(UNet(2, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0).state_dict(), tmp_path / "model.pt")
    cfg = config(tmp_path, targets={"classes": [1]}, data={"label_folder": None})
    cfg["network_def"]["spatial_dims"] = 2
    status, _, err = run_cli("run", write_yaml(tmp_path / "r.yaml", cfg), "--no-supervise", "--quiet", capsys=capsys)
    assert status == 0, err
    heat = nib.load(tmp_path / "out" / "xray" / "bright" / "heat.nii.gz")
    assert heat.shape == (24, 20, 1)
    np.testing.assert_allclose(heat.affine, affine)


# --------------------------------------------------------------------------- headers, formats, sizes


def test_the_heat_keeps_the_scans_qform_sform_and_units(tmp_path, capsys):
    """In ITK-based viewers the qform comes first: it must not become the sform's."""
    write_case(tmp_path / "images", "t1", seed=0)
    path = tmp_path / "images" / "t1.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    shifted = img.affine.copy()
    shifted[:3, 3] += [10.0, 0.0, 0.0]
    out = nib.Nifti1Image(data, None)
    out.set_sform(img.affine, code=2)
    out.set_qform(shifted, code=1)  # qform and sform 10 mm apart
    out.header.set_xyzt_units("mm", "sec")
    nib.save(out, path)
    cfg = config(tmp_path, outputs=HEAT_ONLY, data={"label_folder": None})
    assert run_cli("run", write_yaml(tmp_path / "r.yaml", cfg), "--no-supervise", "-q", capsys=capsys)[0] == 0
    src, heat = nib.load(path).header, nib.load(tmp_path / "out" / "t1" / "bright" / "heat.nii.gz").header
    np.testing.assert_allclose(heat.get_qform(), src.get_qform(), atol=1e-5)
    np.testing.assert_allclose(heat.get_sform(), src.get_sform(), atol=1e-5)
    assert int(heat["qform_code"]) == 1 and int(heat["sform_code"]) == 2
    assert heat.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(heat["pixdim"][1:4], src["pixdim"][1:4])


def test_formats_volcam_does_not_read_are_named(tmp_path, capsys):
    write_case(tmp_path / "images", "case0", seed=0)
    (tmp_path / "images" / "scan.nrrd").write_bytes(b"NRRD0004\n")
    cfg = config(tmp_path, outputs=HEAT_ONLY, data={"glob": "*", "label_folder": None})
    status, _, err = run_cli("run", write_yaml(tmp_path / "r.yaml", cfg), "--no-supervise", "-q", capsys=capsys)
    assert status == 1
    row = next(r for r in rows_of(tmp_path / "out" / "summary.csv") if r["case"] == "scan")
    assert "must be a NIfTI file (.nii.gz, .nii) or a 2D raster image" in row["error"] and "NRRD" in row["error"]


def test_a_volume_size_the_network_cannot_divide_is_padded_and_cropped_back(tmp_path, capsys):
    from monai.networks.nets import UNet

    write_case(tmp_path / "images", "odd", seed=0, shape=(30, 26, 12))
    torch.manual_seed(0)
    torch.save(UNet(3, 1, 3, channels=(4, 8, 8, 8), strides=(2, 2, 2)).state_dict(), tmp_path / "model.pt")
    cfg = config(tmp_path, outputs=HEAT_ONLY, data={"label_folder": None}, preprocessing=[])
    cfg["network_def"].update(channels=[4, 8, 8, 8], strides=[2, 2, 2], num_res_units=2)
    cfg["checkpoint"] = "none"
    status, _, err = run_cli("run", write_yaml(tmp_path / "r.yaml", cfg), "--no-supervise", "-q", capsys=capsys)
    assert status == 0, err + str(rows_of(tmp_path / "out" / "summary.csv"))
    heat = nib.load(tmp_path / "out" / "odd" / "bright" / "heat.nii.gz")
    values = np.asarray(heat.dataobj)
    assert heat.shape == (30, 26, 12) and values.max() == pytest.approx(1.0) and values.min() >= 0


def test_a_network_without_a_known_divisor_gets_the_fix_named(tmp_path):
    from volcam.run.runner import Runner

    write_case(tmp_path / "images", "odd", seed=0, shape=(30, 26, 12))
    cfg = config(tmp_path, outputs=HEAT_ONLY, data={"label_folder": None}, preprocessing=[], checkpoint="none")
    cfg["network_def"].update(channels=[4, 8, 8], strides=[2, 2])
    runner = Runner(load_config(cfg))
    runner.divisor = None  # as for a network volcam does not know
    from volcam.errors import ShapeError

    x = torch.randn(1, 1, 30, 26, 12)
    with pytest.raises(ShapeError, match=r"cannot take a volume of \[30, 26, 12\] voxels.*DivisiblePadd"):
        runner._explain_padded(x, None, None)


# --------------------------------------------------------------------------- slice PNGs and figures


def test_slice_pngs_have_square_pixels_a_minimum_size_and_the_label_outline(tmp_path, capsys):
    write_case(tmp_path / "images", "aniso", seed=0, label_folder=tmp_path / "labels")
    cfg = config(
        tmp_path,
        outputs={"axes": ["coronal"], "figure": "orthogonal", "min_png_size": 96, "outline": "label"},
        targets={"classes": [1]},
    )
    status, _, err = run_cli("run", write_yaml(tmp_path / "r.yaml", cfg), "--no-supervise", "-q", capsys=capsys)
    assert status == 0, err
    folder = tmp_path / "out" / "aniso" / "bright"
    pngs = sorted((folder / "coronal").glob("*.png"))
    png = np.asarray(Image.open(pngs[len(pngs) // 2]))
    # the scan: 20 x 18 x 12 voxels of 1.5 x 1.5 x 2.5 mm; a coronal slice is 20 wide, 12 high:
    # 30 x 30 mm... drawn with square pixels, its height/width is 12 * 2.5 / (20 * 1.5)
    h, w = png.shape[:2]
    assert min(h, w) >= 96 and h / w == pytest.approx(12 * 2.5 / (20 * 1.5), rel=0.1)
    with_outline = [np.asarray(Image.open(p)) for p in pngs]
    assert any(((im == 255).all(-1)).sum() > 5 for im in with_outline)  # the label's outline in white
    cfg["outputs"] = {**cfg["outputs"], "outline": "none", "dir": str(tmp_path / "plain")}
    assert run_cli("run", write_yaml(tmp_path / "r.yaml", cfg), "--no-supervise", "-q", capsys=capsys)[0] == 0
    plain = [
        np.asarray(Image.open(p)) for p in sorted((tmp_path / "plain" / "aniso" / "bright" / "coronal").glob("*.png"))
    ]
    assert sum(((im == 255).all(-1)).sum() for im in plain) < sum(((im == 255).all(-1)).sum() for im in with_outline)


def test_figure_titles_name_the_case_class_method_and_layer(tmp_path, monkeypatch):
    from volcam.figures import views

    titles = []
    real = views.draw_orthogonal

    def spy(case, **kwargs):
        fig = real(case, **kwargs)
        titles.append(fig._suptitle.get_text())
        return fig

    monkeypatch.setattr(views, "draw_orthogonal", spy)
    monkeypatch.setattr("volcam.figures.case.draw_orthogonal", spy)
    write_case(tmp_path / "images", "case7", seed=0)
    from volcam.run.loop import run

    cfg = config(tmp_path, targets={"classes": [1]}, outputs={"pngs": False}, data={"label_folder": None})
    assert run(cfg, quiet=True).exit_code == 0
    assert titles and titles[0].startswith("case7 · bright · gradcam at model.1.submodule\n")


def test_the_neurological_convention_reaches_the_orthogonal_views():
    from volcam import figures

    image = np.random.default_rng(0).normal(size=(9, 8, 7)).astype(np.float32)
    heat = np.zeros_like(image)
    heat[1, 4, 3] = 1.0
    views = {}
    for convention in ("radiological", "neurological"):
        fig = figures.orthogonal_views(image, heat, affine=np.eye(4), convention=convention)
        views[convention] = np.asarray(fig.axes[0].images[0].get_array())
    np.testing.assert_array_equal(views["neurological"], views["radiological"][:, ::-1])


# --------------------------------------------------------------------------- messages


def test_a_truncated_file_fails_its_case_with_the_readers_reason(tmp_path, capsys):
    write_case(tmp_path / "images", "case0", seed=0)
    full = (tmp_path / "images" / "case0.nii.gz").read_bytes()
    (tmp_path / "images" / "broken.nii.gz").write_bytes(full[: len(full) // 2])
    cfg = config(tmp_path, outputs=HEAT_ONLY, data={"label_folder": None})
    assert run_cli("run", write_yaml(tmp_path / "r.yaml", cfg), "--no-supervise", "-q", capsys=capsys)[0] == 1
    error = next(r for r in rows_of(tmp_path / "out" / "summary.csv") if r["case"] == "broken")["error"]
    assert "broken.nii.gz" in error and "end-of-stream" in error and "object at 0x" not in error


def test_files_left_out_are_counted_and_outputs_are_never_read_back(tmp_path, capsys):
    data = tmp_path / "data"
    write_case(data, "case0", seed=0)
    (data / "folder.nii.gz").mkdir()  # a folder named like an image
    (data / "gone.nii.gz").symlink_to(data / "missing.nii.gz")  # a broken link
    (data / "loop").symlink_to(data)  # a symbolic link loop under a recursive pattern
    cfg = config(tmp_path, outputs={**HEAT_ONLY, "dir": str(data / "cams")})
    cfg["data"] = {"folder": str(data), "glob": "**/*.nii.gz", "num_workers": 0}
    path = write_yaml(tmp_path / "r.yaml", cfg)
    status, out, _ = run_cli("run", path, "--no-supervise", capsys=capsys)
    assert status == 0 and "left out of the dataset" in out
    assert "1 folders named like images" in out and "1 broken links" in out
    assert [r["case"] for r in rows_of(data / "cams" / "summary.csv")] == ["case0", "case0"]
    # a second run does not take the first run's heat.nii.gz files (inside the data folder) for cases
    status, out, _ = run_cli("run", path, "--no-supervise", capsys=capsys)
    assert status == 0 and "files in the output folder" in out
    assert {r["case"] for r in rows_of(data / "cams" / "summary.csv")} == {"case0"}


def test_a_custom_network_module_is_found_through_python_path(tmp_path, capsys):
    models = tmp_path / "my_models"
    models.mkdir()
    (models / "mynet.py").write_text("from monai.networks.nets import UNet\n\nclass MyUNet(UNet):\n    pass\n")
    write_case(tmp_path / "images", "case0", seed=0)
    cfg = config(tmp_path, outputs=HEAT_ONLY, data={"label_folder": None})
    cfg["network_def"]["_target_"] = "mynet.MyUNet"
    path = write_yaml(tmp_path / "r.yaml", cfg)
    status, _, err = run_cli("run", path, "--no-supervise", capsys=capsys)
    assert status == 2 and "its folder on the import path with `python_path: [folder]`" in err
    status, _, err = run_cli("run", path, "--no-supervise", "-q", "--python-path", models, capsys=capsys)
    assert status == 0, err
    sys.modules.pop("mynet", None)
    cfg["python_path"] = ["my_models"]  # relative to the config's folder
    cfg["outputs"]["dir"] = str(tmp_path / "out2")
    status, _, err = run_cli("run", write_yaml(tmp_path / "r.yaml", cfg), "--no-supervise", "-q", capsys=capsys)
    assert status == 0, err


def test_numbers_in_messages_read_as_the_user_wrote_them(tmp_path):
    from volcam.errors import ConfigError

    cfg = config(tmp_path, outputs={"alpha": np.float64(12.0)})
    with pytest.raises(ConfigError, match=r"outputs.alpha must be a number in \[0, 1\], not 12.0$"):
        load_config(cfg)


def test_an_empty_target_reads_plainly_in_the_summary(tmp_path, capsys):
    write_case(tmp_path / "images", "case0", seed=0)
    cfg = config(tmp_path, outputs=HEAT_ONLY, data={"label_folder": None}, targets={"mask": "prediction"})
    torch.manual_seed(0)
    net = __import__("pipeline_helpers").tiny_unet()
    with torch.no_grad():  # a network that predicts the background everywhere
        net.model[2].conv.bias.copy_(torch.tensor([100.0, -100.0, -100.0]))
    torch.save(net.state_dict(), tmp_path / "model.pt")
    status, _, err = run_cli("run", write_yaml(tmp_path / "r.yaml", cfg), "--no-supervise", "-q", capsys=capsys)
    assert status == 0, err
    notes = {r["note"] for r in rows_of(tmp_path / "out" / "summary.csv")}
    assert notes == {"empty target: the network predicts no voxel of this class (the map is all zero)"}
    assert not any("sample(s)" in n for n in notes)


def test_evaluate_and_run_share_the_command_line_conventions(tmp_path, capsys):
    write_case(tmp_path / "images", "case0", seed=0, label_folder=tmp_path / "labels")
    path = write_yaml(tmp_path / "r.yaml", config(tmp_path, outputs=HEAT_ONLY))
    status, _, err = run_cli(
        "evaluate",
        path,
        "--output",
        tmp_path / "ev",
        "--override",
        "cam.method=hirescam",
        "targets.classes=[1]",
        "--sanity",
        "none",
        "--steps",
        "2",
        "--no-random",
        "-q",
        capsys=capsys,
    )
    assert status == 0, err
    rows = rows_of(tmp_path / "ev" / "metrics.csv")
    assert {r["class"] for r in rows} == {"1"} and {r["map"] for r in rows} == {"hirescam"}
    settings = json.loads((tmp_path / "ev" / "summary.json").read_text())["settings"]
    assert settings["method"] == "hirescam"
