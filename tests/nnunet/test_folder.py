"""Finding and loading a results folder: by path and by dataset/configuration, folds, safe
checkpoints, and the errors that name what is wrong."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import volcam.nnunet
from volcam.errors import ArgumentError, LayerNotFoundError


def _copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_load_builds_the_trainers_network_with_fold_weights(folders):
    model = volcam.nnunet.load(folders.toy_3d, folds=(0, 1), device="cpu")
    assert model.configuration == "3d_fullres" and model.trainer_name == "nnUNetTrainer"
    assert model.folds == [0, 1] and model.mirror_axes == (0, 1, 2)
    assert model.patch_size == (8, 24, 24) and model.channel_names == ["CT"]
    assert [(c.value, c.name, c.channel) for c in model.classes] == [(1, "organ", 1), (2, "lesion", 2)]
    # the network holds fold 0's weights; fold 1's differ (another seed)
    state = model.network.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.parameters[0].items())
    assert any(not torch.equal(model.parameters[0][k], v) for k, v in model.parameters[1].items())
    assert not model.network.training
    assert not model.network.decoder.deep_supervision


def test_load_by_dataset_and_configuration(folders, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(folders.root / "results"))
    for dataset in (11, "11", "Dataset011_Toy"):
        model = volcam.nnunet.load(dataset=dataset, configuration="2d", device="cpu")
        assert model.folder == folders.toy_2d and model.configuration == "2d"
    with pytest.raises(ArgumentError, match=r"Dataset099_\*.*Dataset011_Toy"):
        volcam.nnunet.load(dataset=99, configuration="2d")
    with pytest.raises(ArgumentError, match=r"no model folder 'nnUNetTrainer__nnUNetPlans__3d_lowres'.*trained: \["):
        volcam.nnunet.load(dataset=11, configuration="3d_lowres")
    monkeypatch.delenv("nnUNet_results")
    with pytest.raises(ArgumentError, match="nnUNet_results"):
        volcam.nnunet.load(dataset=11, configuration="2d")


def test_not_a_results_folder_names_what_is_missing(folders, tmp_path):
    with pytest.raises(ArgumentError, match="it does not exist"):
        volcam.nnunet.load(tmp_path / "nowhere")
    dataset_folder = folders.toy_3d.parent
    with pytest.raises(ArgumentError, match=r"dataset.json and plans.json missing; it holds the model folders"):
        volcam.nnunet.load(dataset_folder)
    with pytest.raises(ArgumentError, match="did you mean its parent"):
        volcam.nnunet.load(folders.toy_3d / "fold_0")
    broken = _copy_folder(folders.toy_2d, tmp_path / "broken")
    (broken / "plans.json").unlink()
    with pytest.raises(ArgumentError, match=r"not '.*broken': plans.json missing") as err:
        volcam.nnunet.load(broken)
    assert err.value.name == "folder"


def test_missing_fold_and_checkpoint(folders):
    with pytest.raises(ArgumentError, match=r"there is no fold_3/; folds with 'checkpoint_final.pth': \[0, 1\]"):
        volcam.nnunet.load(folders.toy_3d, folds=(0, 3))
    with pytest.raises(ArgumentError, match=r"checkpoint_fnal.pth.*did you mean 'checkpoint_final.pth'"):
        volcam.nnunet.load(folders.toy_3d, checkpoint="checkpoint_fnal.pth")
    with pytest.raises(ArgumentError, match="fold numbers"):
        volcam.nnunet.load(folders.toy_3d, folds=(-1,))
    model = volcam.nnunet.load(folders.toy_3d, folds=None, device="cpu")  # every fold with the checkpoint
    assert model.folds == [0, 1]


def test_checkpoint_read_safely_or_refused(folders, tmp_path):
    folder = _copy_folder(folders.toy_2d, tmp_path / "model")
    path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=False)
    # a trained model's log holds numpy scalars: still read with weights_only=True
    checkpoint["logging"]["mean_fg_dice"] = [np.float32(0.5), np.float64(0.25)]
    checkpoint["_best_ema"] = np.float32(0.5)
    torch.save(checkpoint, path)
    assert volcam.nnunet.read_checkpoint(path)["_best_ema"] == np.float32(0.5)
    # any other object needs full unpickling: refused unless trusted
    checkpoint["logging"]["extra"] = shutil.Error("pickled object")
    torch.save(checkpoint, path)
    with pytest.raises(ArgumentError, match=r"cannot be read safely.*trust_checkpoint=True") as err:
        volcam.nnunet.load(folder, device="cpu")
    assert err.value.name == "trust_checkpoint" and str(path) in str(err.value)
    model = volcam.nnunet.load(folder, device="cpu", trust_checkpoint=True)
    assert model.configuration == "2d"


def test_compiled_checkpoint_and_layer_names_resolve(folders, tmp_path):
    folder = _copy_folder(folders.toy_2d, tmp_path / "model")
    path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["network_weights"] = {f"_orig_mod.{k}": v for k, v in checkpoint["network_weights"].items()}
    torch.save(checkpoint, path)
    model = volcam.nnunet.load(folder, device="cpu")
    assert model.resolve_layer("_orig_mod.decoder.stages.1") == "decoder.stages.1"
    assert model.resolve_layer("decoder.stages.1") == "decoder.stages.1"
    with pytest.raises(LayerNotFoundError, match="did you mean 'decoder.stages.1'"):
        model.resolve_layer("decoder.stage.1")


def test_cascade_is_refused_clearly(folders, tmp_path):
    folder = _copy_folder(folders.toy_3d, tmp_path / "cascade")
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_lowres"] = {"inherits_from": "3d_fullres", "next_stage": "3d_cascade_fullres"}
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    (folder / "plans.json").write_text(json.dumps(plans))
    path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["init_args"]["configuration"] = "3d_cascade_fullres"
    torch.save(checkpoint, path)
    with pytest.raises(ArgumentError, match=r"'3d_cascade_fullres' .* is a cascade stage.*'3d_lowres'"):
        volcam.nnunet.load(folder, folds=(0,), device="cpu")


def test_layers_name_the_unets_parts(folders):
    model = volcam.nnunet.load(folders.toy_3d, device="cpu")
    layers = {layer.name: layer for layer in model.layers()}
    assert layers["encoder"].output_shape.startswith("list(Tensor[1, 4, 8, 24, 24]")
    assert "layer_output" in layers["encoder"].kind
    assert layers["decoder.stages.1"].kind == "decoder stage"
    assert layers["decoder.stages.1"].output_shape == "Tensor[1, 4, 8, 24, 24]"
    assert layers["decoder.transpconvs.0"].kind == "transposed conv"
    assert layers["decoder.seg_layers.1"].output_shape == "Tensor[1, 3, 8, 24, 24]"
    # with deep supervision off only the full-resolution head runs
    assert "decoder.seg_layers.0" not in layers
    assert model.default_layer() == "decoder.stages.0"
    everything = model.layers(all_modules=True)
    assert len(everything) > len(layers)


def test_nnunet_compile_setting_leaves_the_network_uncompiled(folders, monkeypatch):
    """Hooks need the plain modules; nnU-Net's compile switch is left as the user set it."""
    import os

    monkeypatch.setenv("nnUNet_compile", "1")
    model = volcam.nnunet.load(folders.toy_2d, device="cpu")
    assert model.predictor.network is model.network
    assert os.environ["nnUNet_compile"] == "1"
