"""The shipped configs parse, build their network, find their target layers and explain an input."""

from pathlib import Path

import pytest
import torch
import yaml

import volcam
from volcam import cli
from volcam.commands.layers import example_input
from volcam.config import load_config
from volcam.demo import demo_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# example config -> (overrides that only shrink the network's width, input size of a quick CAM
# or None to skip the forward pass). Layer names and structure stay those of the config;
# the full-width 3D networks take too long to build and run on a CPU test machine.
EXAMPLES = {
    "unet_spleen_ct.yaml": ([], [32, 32, 32]),
    "segresnet_brats_mri.yaml": (["network_def.init_filters=8"], [16, 16, 16]),
    "dynunet_deep_supervision.yaml": (["network_def.filters=[4, 4, 8, 8, 8]"], [32, 32, 16]),
    "swinunetr_btcv_ct.yaml": (["network_def.feature_size=12"], None),  # needs 64^3 inputs: too slow here
}


def test_every_run_config_is_covered():
    run_configs = [p.name for p in CONFIGS.glob("*.yaml") if "data" in yaml.safe_load(p.read_text())]
    assert sorted(run_configs) == sorted([*EXAMPLES, "demo.yaml"])


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_config_builds_and_explains(name):
    overrides, size = EXAMPLES[name]
    cfg = load_config(CONFIGS / name, overrides)
    torch.manual_seed(0)
    model = cfg.build_network(load_weights=False)  # the checkpoints are the user's
    assert not model.training
    cam = cfg.build_cam(model)  # the target layers exist
    layers = cfg["cam.target_layers"]
    assert [n for n, _ in cam.layers] == ([layers] if isinstance(layers, str) else layers)
    pre = cfg.build_preprocessing()  # the transforms are instantiated, loading first
    assert [type(t).__name__ for t in pre.transforms[:3]] == ["LoadImaged", "EnsureChannelFirstd", "Orientationd"]
    if size is None:
        return
    x = torch.randn(example_input(cfg, size).shape)
    c = cfg["targets.classes"][-1]
    res = cam.explain(x, targets=volcam.SegmentationTarget(c, mask="all", activation=cfg["targets.activation"]))
    assert res.heat.shape == (1, 1, *size)
    assert res.output.shape == (1, cfg.parsed("network_def.out_channels"), *size)
    assert float(res.heat.max()) == pytest.approx(1.0)


def test_dynunet_selector_takes_the_main_head_of_a_deep_supervision_stack():
    cfg = load_config(CONFIGS / "dynunet_deep_supervision.yaml")
    select = cfg["cam.model_output"]
    stack = torch.randn(2, 3, 3, 8, 8, 4)  # [B, heads + 1, classes, *S]
    assert torch.equal(select(stack), stack[:, 0])
    assert select(stack[:, 0]) is not None and torch.equal(select(stack[:, 0]), stack[:, 0])


def test_demo_yaml_is_the_demo_config():
    with open(CONFIGS / "demo.yaml") as f:
        assert yaml.safe_load(f) == demo_config("demo-output")


def test_layers_command(tmp_path, capsys):
    status = cli.main(["layers", str(CONFIGS / "demo.yaml"), "--input-size", "16", "--depth", "4"])
    assert status == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("UNet on an input of shape [1, 1, 16, 16, 16]")
    rows = {line.split()[0]: line.split(maxsplit=3) for line in out[2:]}
    assert rows["model.1.submodule.2"][1] == "Sequential"
    assert rows["model.1.submodule.2"][-1] == "Tensor[1, 8, 8, 8, 8]"
    assert rows["model.2"][-1] == "Tensor[1, 3, 16, 16, 16]"
    assert "model.0.conv.unit0" in rows and "model.0.conv.unit0.conv" not in rows  # 5 parts > --depth 4


def test_layers_command_reports_config_errors(tmp_path, capsys):
    status = cli.main(["layers", str(CONFIGS / "demo.yaml"), "--override", "cam.mehtod=gradcam"])
    assert status == 2
    assert (
        "volcam layers: error: --override cam.mehtod: mehtod is not a setting of cam; did you mean 'method'?"
        in capsys.readouterr().err
    )
