"""``volcam run`` with an nnU-Net v2 model: the ``nnunet`` section of a config in place of
``network_def``, ``checkpoint`` and ``preprocessing``::

    nnunet:
      folder: $nnUNet_results/Dataset003_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres
      folds: [0, 1, 2, 3, 4]
      checkpoint: checkpoint_final.pth
      use_mirroring: true
      tile_step_size: 0.5
    cam: {method: hirescam, target_layers: decoder.stages.4}   # default: the model's default layer
    targets: {classes: [1, 2]}                                  # label values of dataset.json
    data: {folder: imagesTs/, label_folder: labelsTs/}          # nnU-Net naming: case_0000.nii.gz

The model is explained with :mod:`volcam.nnunet` (nnU-Net's own preprocessing, tiles, Gaussian
weighting, mirroring and fold averaging, and the way back onto the scan); everything else of
``volcam run`` (resume with provenance, the lock, per-case failures, ``summary.csv``, PNGs,
figures, the viewer, torchrun sharding) works unchanged. Inputs are NIfTI files.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volcam.checks import did_you_mean
from volcam.errors import ConfigError
from volcam.run.cases import Case, Listing
from volcam.run.outcome import CaseOutput, ClassOutput, fallback_note

__all__ = ["NNUNET_SETTINGS", "NnUNetRunner", "nnunet_cases", "nnunet_section"]

#: the settings of the ``nnunet`` section and their defaults
NNUNET_SETTINGS: dict[str, Any] = {
    "folder": None,
    "dataset": None,
    "configuration": None,
    "trainer": "nnUNetTrainer",
    "plans": "nnUNetPlans",
    "folds": [0],
    "checkpoint": "checkpoint_final.pth",
    "trust_checkpoint": False,
    "use_mirroring": True,
    "tile_step_size": 0.5,
}


def nnunet_section(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The ``nnunet`` section of a raw config with its defaults; it replaces network_def, checkpoint and
    preprocessing, which must then be left out."""
    section = raw.get("nnunet")
    if not isinstance(section, Mapping):
        raise ConfigError(f"nnunet must be a mapping (folder, folds, checkpoint, ...), not {section!r}", key="nnunet")
    for k in section:
        if k not in NNUNET_SETTINGS:
            raise ConfigError(
                f"nnunet.{k} is not a setting of nnunet (settings: {', '.join(NNUNET_SETTINGS)})"
                f"{did_you_mean(k, NNUNET_SETTINGS)}",
                key=f"nnunet.{k}",
            )
    both = [k for k in ("network_def", "checkpoint", "preprocessing") if raw.get(k)]
    if both:
        raise ConfigError(
            f"{both[0]} must be left out with an nnunet section (the results folder holds the network, its "
            "weights and its preprocessing), not given",
            key=both[0],
        )
    sliding = raw.get("sliding_window") or {}
    if isinstance(sliding, Mapping) and sliding.get("roi_size"):
        raise ConfigError(
            "sliding_window must be left out with an nnunet section (nnU-Net's own patch size, tile step and "
            "Gaussian weighting are used: nnunet.tile_step_size), not given",
            key="sliding_window.roi_size",
        )
    outputs = raw.get("outputs") or {}
    if isinstance(outputs, Mapping) and outputs.get("raw_heat"):
        raise ConfigError(
            "outputs.raw_heat must be false with an nnunet section (heat is stitched over windows, views and "
            "folds and normalised once on the scan's grid), not true",
            key="outputs.raw_heat",
        )
    data = raw.get("data") or {}
    other = [k for k in ("files", "dataset_json", "dicom") if isinstance(data, Mapping) and data.get(k)]
    if other:
        raise ConfigError(
            f"data.{other[0]} must be left out with an nnunet section (cases are data.folder in nnU-Net's naming, "
            "case_0000.nii.gz, with data.label_folder), not given",
            key=f"data.{other[0]}",
        )
    if section.get("folder") is None and section.get("dataset") is None:
        raise ConfigError("nnunet.folder is required (the results folder), or nnunet.dataset", key="nnunet.folder")
    return {**NNUNET_SETTINGS, **dict(section)}


def _load(config: Any) -> Any:
    try:
        from volcam.nnunet import load
    except ImportError as err:  # pragma: no cover - the extra is part of the test install
        raise ConfigError(
            f"the nnunet section needs the nnunet extra: pip install 'volcam[nnunet]' ({err})", key="nnunet"
        ) from err
    s = config.nnunet
    try:
        return load(
            s["folder"],
            folds=s["folds"],
            checkpoint=s["checkpoint"],
            device=config.device,
            trust_checkpoint=bool(s["trust_checkpoint"]),
            dataset=s["dataset"],
            configuration=s["configuration"],
            trainer=s["trainer"],
            plans=s["plans"],
        )
    except Exception as err:
        raise ConfigError(f"nnunet: {err}", key="nnunet") from err


def nnunet_cases(config: Any, data: Mapping[str, Any]) -> Listing:
    """The cases of ``data.folder`` in nnU-Net's naming (``case_0000.nii.gz`` and its further
    channels), with labels from ``data.label_folder`` named ``case.nii.gz``."""
    from volcam.nnunet.preprocess import list_cases

    model = loaded_model(config)
    if data.get("folder") is None:
        raise ConfigError("data.folder is required with an nnunet model (a folder in nnU-Net's naming)", key="data")
    folder = Path(data["folder"])
    try:
        found = list_cases(folder, model.file_ending, len(model.channel_names))
    except Exception as err:
        raise ConfigError(f"data.folder: {err}", key="data.folder") from err
    labels = Path(data["label_folder"]) if data.get("label_folder") else None
    listing = Listing()
    for case_id, files in found.items():
        label = labels / f"{case_id}{model.file_ending}" if labels is not None else None
        listing.append(Case(case_id, files[0], label if label is not None and label.is_file() else None))
    return listing


_MODELS: dict[int, Any] = {}


def loaded_model(config: Any) -> Any:
    """The loaded model of a config (loaded once per process and config)."""
    key = id(config.raw.get("nnunet"))
    if key not in _MODELS:
        _MODELS[key] = _load(config)
    return _MODELS[key]


class _NoCheck:
    """No memory estimate for nnU-Net models (their tiles bound the network's memory)."""

    def check(self, x: Any) -> None:
        return None


class NnUNetRunner:
    """:class:`volcam.run.runner.Runner` for an nnU-Net model (the same attributes and methods
    that the loop, the export and the provenance use)."""

    def __init__(self, config: Any):
        self.config = config
        self.model = loaded_model(config)
        self.device = self.model.device
        infos = {i.value: i for i in self.model.classes}
        self.classes = list(config.targets.classes)
        unknown = [c for c in self.classes if c not in infos]
        if unknown:
            raise ConfigError(
                f"targets.classes must be label values of the model's dataset.json ({sorted(infos)}), not {unknown}",
                key="targets.classes",
            )
        given = config.raw.get("targets", {}).get("names")
        self.names = dict(config.targets.names) if given else {c: infos[c].slug for c in self.classes}
        self.infos = infos
        self.all_classes = list(self.model.classes)
        self.targets = config.targets
        self.chosen = ""
        if not config.cam.target_layers:
            self.config = config = config.with_layers([self.model.default_layer()])
            self.chosen = "nnU-Net's decoder stage before the last"
        self.layers = [self.model.resolve_layer(n) for n in config.cam.target_layers]
        self.layer_names = ";".join(self.layers)
        from monai.transforms import Compose

        from volcam.run.loading import loading_transforms

        self.pre = Compose(loading_transforms())  # the scan as read, for the outputs; nnU-Net preprocesses itself
        self.memory = _NoCheck()
        self.out_channels = None
        #: named on the run's first line (see volcam.run.loop.method_note); applied in explain_case
        self.fallback = config.cam.fallback if config.cam.fallback != config.cam.method else None

    def checkpoint_record(self) -> dict[str, Any]:
        """The model of the case records: the results folder, the folds, and one hash over every
        fold's checkpoint file, ``plans.json`` and ``dataset.json`` (a retrained fold or edited
        plans make earlier maps stale)."""
        from volcam.run.checkpoint import file_digest

        h = hashlib.blake2b(digest_size=32)
        folder = Path(self.model.folder)
        for path in [*self.model.checkpoint_paths, folder / "plans.json", folder / "dataset.json"]:
            h.update(file_digest(path).encode())
        return {"path": str(folder), "folds": [str(f) for f in self.model.folds], "blake2b": h.hexdigest()}

    def label_region(self, label: torch.Tensor, c: int) -> torch.Tensor:
        info = self.infos[c]
        values = info.region if info.region else (c,)
        region = torch.zeros_like(label[0], dtype=torch.bool)
        for v in values:
            region |= label[0] == v
        return region

    def explain_case(self, case: Case, data: dict[str, Any]) -> CaseOutput:
        start = time.perf_counter()
        mask: Any = None
        if self.targets.mask == "whole":
            mask = "all"
        elif self.targets.mask == "label" and case.label is not None:
            mask = case.label
        s = self.config.nnunet
        quiet = logging.getLogger("volcam.nnunet")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # volcam run prints its own line per case
        cam = self.config.cam

        def explain(method: str, classes: list[int]) -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self.model.explain(
                    case.image,
                    classes=classes,
                    method=method,
                    layer=self.layers,
                    layer_output=cam.layer_output,
                    mask=mask,
                    use_mirroring=bool(s["use_mirroring"]),
                    tile_step_size=float(s["tile_step_size"]),
                    **dict(cam.method_args),
                )

        methods = {c: cam.method for c in self.classes}
        try:
            res = explain(cam.method, self.classes)
            # cam.fallback: a class predicted but with an all-zero map is explained again
            redo = [
                c
                for c in self.classes
                if cam.fallback
                and cam.fallback != cam.method
                and not float(np.max(res.heat[c])) > 0
                and (res.stats[c].get("predicted_voxels") or 0) > 0
            ]
            if redo:
                again = explain(cam.fallback, redo)
                for c in redo:
                    note = fallback_note(
                        cam.fallback, cam.method, res.stats[c].get("note", ""), again.stats[c].get("note", "")
                    )
                    res.heat[c] = again.heat[c]
                    res.stats[c] = {**again.stats[c], "note": note}
                    methods[c] = cam.fallback
        finally:
            quiet.setLevel(level)
        source = data["source"]
        seconds = (time.perf_counter() - start) / len(self.classes)
        out = CaseOutput(case, source, data.get("source_label"), False)
        for c in self.classes:
            stats = res.stats[c]
            heat = torch.as_tensor(res.heat[c], dtype=torch.float32)[None]
            if tuple(heat.shape[1:]) != tuple(source.shape[1:]):
                raise ConfigError(
                    f"the heat of case '{case.id}' must lie on its scan's grid {list(source.shape[1:])}, not "
                    f"{list(heat.shape[1:])}: volcam run reads NIfTI inputs of nnU-Net models (use volcam nnunet "
                    "for other formats)",
                    key="data.folder",
                )
            from monai.data import MetaTensor

            heat_src = MetaTensor(heat, meta=dict(source.meta))
            row = {
                "case": case.id,
                "class": c,
                "class_name": self.names[c],
                "status": "ok",
                "error": "",
                "note": stats.get("note", ""),
                "method": methods[c],
                "layer": self.layer_names,
                "image": str(case.image),
                "label": str(case.label) if case.label else "",
                "seconds": round(seconds, 3),
                **{k: v for k, v in stats.items() if k in _ROW_KEYS},
            }
            region = torch.as_tensor(class_region(res.segmentation, self.infos[c], self.all_classes))
            out.classes.append(ClassOutput(c, self.names[c], heat_src, region, row))
        return out


def class_region(segmentation: Any, info: Any, regions: list[Any]) -> Any:
    from volcam.nnunet.result import class_region as region_of

    return region_of(segmentation, info, regions)


_ROW_KEYS = (
    "predicted_voxels",
    "predicted_volume_ml",
    "peak_x",
    "peak_y",
    "peak_z",
    "peak_voxel",
    "energy_in_prediction",
    "energy_in_label",
)
