"""The keys of a run configuration, their defaults and allowed values.

A config is a mapping with these top-level keys (every key but ``network_def``,
``checkpoint`` and ``data`` has a default)::

    network_def:       {_target_: monai.networks.nets.UNet, spatial_dims: 3, ...}   # required
    checkpoint:        path/to/model.pt     # required: a path, or `none` for the initial weights
    checkpoint_key:    null                 # entry of a wrapper dict holding the state dict
    device:            auto                 # auto | cpu | cuda | cuda:1 ...
    spatial_dims:      null                 # default: network_def.spatial_dims, else 3
    input_size:        null                 # dummy input for `volcam layers`
    python_path:       []                   # folders added to sys.path (custom network modules)
    vars:              {}                   # free entries for @references (vars::name)
    nnunet:            null                 # an nnU-Net v2 results folder, in place of network_def,
                                            #   checkpoint and preprocessing (volcam.run.nnunet_runner)
    cam:               {method, target_layers, layer_output, model_output, reshape, method_args}
    targets:           {classes, names, mask, activation, label_values}
    preprocessing:     []                   # dictionary transforms over keys image (and label)
    sliding_window:    {roi_size, sw_batch_size, overlap, mode}
    data:              {folder | files | dataset_json | dicom, glob, label_folder, section, series, num_workers}
    outputs:           {dir, heat_nifti, raw_heat, pngs, axes, figure, ...}

Unknown keys, at the top level and inside the sections, are errors with a did-you-mean: a
typo such as ``chekpoint:`` must never run a network with random weights.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "SECTIONS",
    "TOP_LEVEL",
    "MASKS",
    "ACTIVATIONS",
    "AXES",
    "FIGURES",
    "CONVENTIONS",
    "OUTLINES",
    "BLENDS",
    "DICOM_OUTPUTS",
    "IMAGE_SUFFIXES",
    "RASTER_SUFFIXES",
    "NO_CHECKPOINT",
    "MAP_SECTIONS",
]

#: Settings of the sections volcam owns: name -> default.
SECTIONS: dict[str, dict[str, Any]] = {
    "cam": {
        "method": None,  # volcam.run.defaults: LayerCAM, with HiResCAM for a class whose map is empty
        "fallback": None,
        "target_layers": None,
        "layer_output": None,
        "model_output": None,
        "reshape": None,
        "method_args": {},
    },
    "targets": {
        "classes": None,
        "names": None,
        "mask": "prediction",
        "activation": "softmax",
        "label_values": None,
    },
    "sliding_window": {"roi_size": None, "sw_batch_size": 1, "overlap": 0.25, "mode": "gaussian"},
    "data": {
        "folder": None,
        "glob": "*.nii.gz",
        "label_folder": None,
        "files": None,
        "dataset_json": None,
        "dicom": None,
        "series": {},
        "section": "test",
        "num_workers": 2,
    },
    "outputs": {
        "dir": "volcam-output",
        "heat_nifti": True,
        "raw_heat": False,
        "pngs": True,
        "axes": ["axial"],
        "figure": "orthogonal",
        "cmap": "jet",
        "alpha": 0.5,
        "window": None,
        "convention": "radiological",
        "outline": "label",
        "square_pixels": True,
        "min_png_size": 256,
        "colorbar": False,
        "letters": False,
        "viewer": True,
        "index": True,
        "dicom": [],
        "dicom_threshold": 0.5,
    },
}

#: The value of ``checkpoint`` that says "explain the network's initial weights".
NO_CHECKPOINT = "none"

TOP_LEVEL: dict[str, Any] = {
    "network_def": None,
    "checkpoint": None,
    "checkpoint_key": None,
    "device": "auto",
    "spatial_dims": None,
    "input_size": None,
    "python_path": [],
    "vars": {},
    "nnunet": None,
    "preprocessing": [],
    "config_dir": ".",
    **{name: {} for name in SECTIONS},
}

#: Top-level entries whose (raw) content affects the maps; their hash is part of a case's record.
MAP_SECTIONS = ("network_def", "checkpoint_key", "preprocessing", "cam", "targets", "sliding_window", "vars", "nnunet")

MASKS = ("prediction", "label", "whole")
ACTIVATIONS = ("softmax", "sigmoid")
AXES = ("axial", "coronal", "sagittal")
FIGURES = ("orthogonal", "mosaic")
CONVENTIONS = ("radiological", "neurological")
OUTLINES = ("label", "prediction", "none")
BLENDS = ("scaled", "constant")
DICOM_OUTPUTS = ("pmap", "seg")

#: File endings read as scans (NIfTI through nibabel; PNG/JPEG/TIFF through Pillow as 2D rasters).
IMAGE_SUFFIXES = (".nii.gz", ".nii")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
