"""Run configurations: parsing, overrides, validation messages, checkpoints, data listing."""

import json
from pathlib import Path

import pytest
import torch

from volcam.config import extract_state_dict, list_cases, load_checkpoint, load_config, parse_override
from volcam.errors import ConfigError

NET = {
    "_target_": "torch.nn.Conv3d",
    "in_channels": "@vars::channels",
    "out_channels": 3,
    "kernel_size": 1,
}


def base(**extra):
    cfg = {
        "vars": {"channels": 1},
        "network_def": dict(NET),
        "checkpoint": "none",
        "cam": {"target_layers": "conv"},
        "targets": {"classes": [1, 2]},
        "data": {"files": ["a.nii.gz"]},
    }
    cfg.update(extra)
    return cfg


def test_yaml_with_target_and_reference(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "vars: {channels: 2}\n"
        "network_def: {_target_: torch.nn.Conv3d, in_channels: '@vars::channels', out_channels: 3, kernel_size: 1}\n"
        "checkpoint: none\n"
        "cam: {target_layers: conv, method: hirescam}\n"
        "targets: {classes: 1, names: [bg, liver]}\n"
        "sliding_window: {roi_size: 16}\n"
        "data: {files: [a.nii.gz]}\n"
    )
    cfg = load_config(tmp_path / "c.yaml")
    net = cfg.build_network()
    assert isinstance(net, torch.nn.Conv3d) and net.in_channels == 2 and not net.training
    assert cfg["cam.method"] == "hirescam"
    assert cfg["targets.classes"] == [1]
    assert cfg.class_names == {1: "liver"}
    assert cfg["sliding_window.roi_size"] == [16, 16, 16]
    assert cfg.spatial_dims == 3
    # defaults filled in
    assert cfg["outputs.axes"] == ["axial"] and cfg["sliding_window.overlap"] == 0.25
    assert cfg["config_dir"] == str(tmp_path.resolve())


def test_json_config_and_expression(tmp_path):
    d = base(spatial_dims="$1 + 1")
    (tmp_path / "c.json").write_text(json.dumps(d))
    cfg = load_config(tmp_path / "c.json")
    assert cfg.spatial_dims == 2


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("cam.method=hirescam", "cam::method", "hirescam"),
        ("targets.classes=[1, 2]", "targets::classes", [1, 2]),
        ("checkpoint=null", "checkpoint", None),
        ("sliding_window::overlap=0.5", "sliding_window::overlap", 0.5),
        ("outputs.dir=out=1", "outputs::dir", "out=1"),
    ],
)
def test_parse_override(text, key, value):
    assert parse_override(text) == (key, value)


def test_overrides_apply_and_create_missing_sections():
    cfg = load_config(
        base(),
        ["cam.method=layercam", "sliding_window.roi_size=[8, 8, 8]", "vars.channels=4", "targets.names={1: a, 2: b}"],
    )
    assert cfg["cam.method"] == "layercam"
    assert cfg["sliding_window.roi_size"] == [8, 8, 8]
    assert cfg.build_network().in_channels == 4
    assert cfg.class_names == {1: "a", 2: "b"}


@pytest.mark.parametrize(
    "overrides, key, message",
    [
        (["cam.mehtod=x"], "cam.mehtod", "did you mean 'method'"),
        (["targets.mask=labels"], "targets.mask", "targets.mask must be one of prediction, label, whole, not 'labels'"),
        (["targets.classes=null"], "targets.classes", "targets.classes is required"),
        (["targets.classes=[1, 1]"], "targets.classes", "must not repeat"),
        (["sliding_window.roi_size=[8, 8]"], "sliding_window.roi_size", "must have 3 entries"),
        (["sliding_window.overlap=1.5"], "sliding_window.overlap", "in [0, 1), not 1.5"),
        (["outputs.axes=[axail]"], "outputs.axes", "did you mean 'axial'"),
        (["outputs.figure=mosiac"], "outputs.figure", "did you mean 'mosaic'"),
        (["outputs.window=[5, 1]"], "outputs.window", "low < high"),
        (["cam.target_layers=7"], "cam.target_layers", "a dotted module name or a list of them"),
        (["spatial_dims=4"], "spatial_dims", "spatial_dims must be 2 or 3, not 4"),
        (["device=tpu"], "device", "device must be"),
        (["outputs.pngs=yes please"], "outputs.pngs", "true or false"),
        (["nope"], None, "key=value"),
    ],
)
def test_bad_values_name_their_key(overrides, key, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")) as e:
        cfg = load_config(base(), overrides)
        _ = cfg.device  # device is resolved on use
    assert e.value.key == key


def test_unknown_section_key_in_file():
    d = base()
    d["outputs"] = {"colormap": "jet"}
    with pytest.raises(ConfigError, match=r"outputs.colormap is not a setting of outputs") as e:
        load_config(d)
    assert e.value.key == "outputs.colormap"


def test_missing_network_def_suggests_typo():
    d = base()
    d["netwrok_def"] = d.pop("network_def")
    with pytest.raises(ConfigError, match=r"network_def is required.*did you mean 'netwrok_def'") as e:
        load_config(d)
    assert e.value.key == "network_def"


def test_network_that_cannot_be_built_names_the_key_and_cause():
    d = base()
    d["network_def"] = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3}
    cfg = load_config(d)
    with pytest.raises(ConfigError, match=r"network_def could not be built: .*TypeError.*missing") as e:
        cfg.build_network()
    assert e.value.key == "network_def"


def test_array_transform_in_preprocessing_is_rejected():
    d = base(preprocessing=[{"_target_": "ScaleIntensity"}])
    cfg = load_config(d)
    with pytest.raises(ConfigError, match=r"preprocessing\[0\] must be a dictionary transform.*ScaleIntensityd") as e:
        cfg.build_preprocessing()
    assert e.value.key == "preprocessing[0]"


def test_bad_config_file(tmp_path):
    with pytest.raises(ConfigError, match="must be an existing"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="valid YAML or JSON"):
        load_config(tmp_path / "bad.yaml")


# ----------------------------------------------------------------- checkpoints


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.ReLU(), torch.nn.Conv3d(2, 3, 1))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd},
        lambda sd: {"net": sd, "opt": {"state": {}, "param_groups": [{"lr": 0.1}]}},  # CheckpointSaver
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # DataParallel
    ],
    ids=["bare", "state_dict", "model", "checkpoint_saver", "module_prefix"],
)
def test_checkpoint_layouts(tmp_path, wrap):
    src = _net()
    torch.save(wrap(src.state_dict()), tmp_path / "m.pt")
    dst = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.ReLU(), torch.nn.Conv3d(2, 3, 1))
    load_checkpoint(dst, tmp_path / "m.pt")
    for a, b in zip(src.parameters(), dst.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_key_explicit_and_wrong():
    sd = _net().state_dict()
    keys = _net().state_dict().keys()
    assert extract_state_dict({"a": {"b": sd}}, keys, key="a.b").keys() == sd.keys()
    with pytest.raises(ConfigError, match=r"checkpoint_key must name an entry.*did you mean 'a'") as e:
        extract_state_dict({"a": {"b": sd}}, keys, key="aa")
    assert e.value.key == "checkpoint_key"


def test_checkpoint_errors(tmp_path):
    net = _net()
    with pytest.raises(ConfigError, match="must be an existing file"):
        load_checkpoint(net, tmp_path / "none.pt")
    torch.save(net, tmp_path / "whole.pt")  # a pickled module: refused by weights_only
    with pytest.raises(ConfigError, match="weights_only=True.*state_dict") as e:
        load_checkpoint(net, tmp_path / "whole.pt")
    assert e.value.key == "checkpoint"
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="must hold weights for network_def"):
        load_checkpoint(net, tmp_path / "other.pt")
    torch.save({"epoch": 1}, tmp_path / "nothing.pt")
    with pytest.raises(ConfigError, match="must hold a state dict"):
        load_checkpoint(net, tmp_path / "nothing.pt")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ConfigError, match="torch.load"):
        load_checkpoint(net, tmp_path / "trunc.pt")


def test_config_loads_checkpoint(tmp_path):
    conv = torch.nn.Conv3d(1, 3, 1)
    torch.nn.init.constant_(conv.weight, 0.5)
    torch.save({"state_dict": conv.state_dict()}, tmp_path / "m.pt")
    cfg = load_config(base(checkpoint=str(tmp_path / "m.pt")))
    assert torch.all(cfg.build_network().weight == 0.5)


# ----------------------------------------------------------------- data listing


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_folder_with_glob_and_labels(tmp_path):
    for name in ("b_0000.nii.gz", "a_0000.nii.gz", "notes.txt"):
        _touch(tmp_path / "img" / name)
    _touch(tmp_path / "lbl" / "a.nii.gz")  # nnU-Net naming
    cases = list_cases({"folder": str(tmp_path / "img"), "label_folder": str(tmp_path / "lbl")})
    assert [c.id for c in cases] == ["a", "b"]  # nnU-Net's channel tag is not part of the case name
    assert cases[0].label == tmp_path / "lbl" / "a.nii.gz" and cases[1].label is None


def test_folder_recursive_glob_ids_are_unique(tmp_path):
    _touch(tmp_path / "p1" / "image.nii.gz")
    _touch(tmp_path / "p2" / "image.nii.gz")
    cases = list_cases({"folder": str(tmp_path), "glob": "**/*.nii.gz"})
    assert [c.id for c in cases] == ["p1__image", "p2__image"]


def test_files_list(tmp_path):
    cases = list_cases({"files": ["x/a.nii", {"image": "y/b.nii.gz", "label": "y/b_seg.nii.gz"}]}, base=tmp_path)
    assert [(c.id, c.image, c.label) for c in cases] == [
        ("a", tmp_path / "x/a.nii", None),
        ("b", tmp_path / "y/b.nii.gz", tmp_path / "y/b_seg.nii.gz"),
    ]
    with pytest.raises(ConfigError, match="distinct names"):
        list_cases({"files": ["x/a.nii", "y/a.nii.gz"]})


def test_msd_dataset_json(tmp_path):
    d = tmp_path / "Task09"
    d.mkdir()
    (d / "dataset.json").write_text(
        json.dumps(
            {
                "training": [{"image": "./imagesTr/s1.nii.gz", "label": "./labelsTr/s1.nii.gz"}],
                "test": ["./imagesTs/s2.nii.gz"],
            }
        )
    )
    test = list_cases({"dataset_json": str(d / "dataset.json")})
    assert [(c.id, c.image, c.label) for c in test] == [("s2", d / "imagesTs/s2.nii.gz", None)]
    train = list_cases({"dataset_json": str(d / "dataset.json"), "section": "training"})
    assert train[0].label == d / "labelsTr/s1.nii.gz"
    with pytest.raises(ConfigError, match=r"data.section must name a list.*did you mean 'training'") as e:
        list_cases({"dataset_json": str(d / "dataset.json"), "section": "trainig"})
    assert e.value.key == "data.section"


@pytest.mark.parametrize(
    "data, key, message",
    [
        ({}, "data", "exactly one of"),
        ({"folder": "a", "files": ["b"]}, "data", "exactly one of"),
        ({"folder": "/nonexistent/dir"}, "data.folder", "existing folder"),
        ({"files": []}, "data.files", "non-empty list"),
        ({"files": [{"label": "x"}]}, "data.files[0]", "'image' entry"),
        ({"dataset_json": "/nonexistent.json"}, "data.dataset_json", "readable JSON"),
        ({"fodler": "x"}, "data.fodler", "did you mean 'folder'"),
    ],
)
def test_bad_data_sections(data, key, message):
    with pytest.raises(ConfigError, match=message) as e:
        list_cases(data)
    assert e.value.key == key


def test_empty_glob(tmp_path):
    with pytest.raises(ConfigError, match=r"data.glob must match at least one file"):
        list_cases({"folder": str(tmp_path), "glob": "*.nii.gz"})
