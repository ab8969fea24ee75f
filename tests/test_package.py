"""The package itself: light import, registry, layer listing, command line."""

import subprocess
import sys
from pathlib import Path

import torch
from helpers import Pyramid, hook_count

import volcam
from volcam.layers import find_layer, list_layers

ROOT = Path(__file__).resolve().parents[1]


def test_imports_stay_light():
    """``import volcam`` and the CLI's parser load no heavy library; each subpackage loads only
    what it needs, when it is used (one fresh interpreter, checked step by step)."""
    code = """
import sys

def loaded(*names):
    return [m for m in names if m in sys.modules]

import volcam
heavy = loaded("matplotlib", "nibabel", "ignite", "monai", "scipy")
assert not heavy, heavy
import volcam.cli
volcam.cli.build_parser()
import volcam.sliding
assert callable(volcam.sliding_window_cam)
heavy = loaded("matplotlib", "nibabel", "ignite", "monai")
assert not heavy, heavy
import volcam.metrics
assert not loaded("matplotlib"), "volcam.metrics imports matplotlib"
import volcam.nnunet
assert not loaded("nnunetv2", "SimpleITK", "matplotlib"), loaded("nnunetv2", "SimpleITK", "matplotlib")
import volcam.io
assert not loaded("highdicom", "volcam.io.dicom"), loaded("highdicom", "volcam.io.dicom")
assert volcam.io.find_series is volcam.io.dicom.find_series  # loaded when a DICOM name is used
assert loaded("volcam.io.dicom")
print("light")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "light", out.stderr


def test_registry_names_every_public_method():
    assert volcam.METHODS["gradcam"] is volcam.GradCAM
    for name, cls in volcam.METHODS.items():
        assert issubclass(cls, volcam.BaseCAM)
        assert volcam.get_method(name) is cls
        assert cls.__doc__ and sys.modules[cls.__module__].__doc__  # every method file cites its paper


def test_list_layers_gives_shapes_in_execution_order_and_leaves_no_hook():
    model = Pyramid.pair()[1].train()
    infos = list_layers(model, torch.randn(1, 1, 1, 8, 8))
    names = [i.name for i in infos]
    assert names.index("enc") < names.index("down") < names.index("dec") < names.index("head")
    by_name = {i.name: i for i in infos}
    assert by_name["down"].output_shape == "Tensor[1, 8, 1, 4, 4]"
    assert by_name["head"].type_name == "Conv3d"
    assert by_name["(model)"].num_parameters == sum(p.numel() for p in model.parameters())
    assert hook_count(model) == 0 and model.training


def test_find_layer_by_module():
    model = Pyramid.pair()[0]
    assert find_layer(model, model.down) == ("down", model.down)


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "volcam", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    assert "usage: volcam" in out.stdout
