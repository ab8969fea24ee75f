"""A trained nnU-Net v2 model, loaded through nnU-Net's own classes (:func:`volcam.nnunet.load`),
and its CAMs::

    import volcam.nnunet
    model = volcam.nnunet.load("Dataset003_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres", folds=(0, 1))
    res = model.explain("imagesTs/liver_7_0000.nii.gz", classes=[1, 2], layer="decoder.stages.3")
    res.heat[2]          # [x, y, z] in [0, 1] on the scan's grid
    res.save("cams/liver_7")
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volcam.checks import in_range, positive_int
from volcam.errors import ArgumentError, EmptyTargetWarning
from volcam.nnunet.labels import ClassInfo, all_classes, resolve_classes
from volcam.nnunet.loop import explain_volume
from volcam.nnunet.mapback import SourceGrid, heat_to_native, read_file_order, segmentation_from_logits
from volcam.nnunet.preprocess import PreprocessedCase, case_files, list_cases, preprocess_case
from volcam.nnunet.result import NnUNetResult, case_stats, class_region

__all__ = ["NnUNetModel", "NnUNetLayer"]

log = logging.getLogger(__name__)

_KINDS = [
    (re.compile(r"^encoder$"), "encoder (a list of skips: layer_output=i picks stage i)"),
    (re.compile(r"^encoder\.stem$"), "stem"),
    (re.compile(r"^encoder\.stages\.\d+$"), "encoder stage"),
    (re.compile(r"^decoder\.stages\.\d+$"), "decoder stage"),
    (re.compile(r"^decoder\.transpconvs\.\d+$"), "transposed conv"),
    (re.compile(r"^decoder\.seg_layers\.\d+$"), "segmentation head"),
]
_COMPILED = "_orig_mod."


@dataclass(frozen=True)
class NnUNetLayer:
    """A module of the network with the shape of its output for one patch."""

    name: str
    kind: str
    type_name: str
    output_shape: str
    num_parameters: int


def quiet():
    """nnU-Net prints to stdout; a library keeps stdout for its caller."""
    return contextlib.redirect_stdout(io.StringIO())


class NnUNetModel:
    """A trained nnU-Net model: its network (deep supervision off, first fold's weights), the
    weights of every fold, and nnU-Net's plans, configuration and label managers.

    Build it with :func:`load`. ``network`` is never changed by :meth:`explain` or :meth:`predict_logits`:
    after each call it holds the first fold's weights again, no hook and its own ``requires_grad``.

    Attributes:
        folder: the results folder.
        folds: the folds used, in order.
        checkpoint_paths: the checkpoint file of each fold.
        network: the ``torch.nn.Module`` built by the trainer class's ``build_network_architecture``.
        parameters: one state dict per fold (on the CPU).
        predictor: an ``nnUNetPredictor`` on the same network and weights (nnU-Net's own inference).
        plans_manager, configuration_manager, label_manager, dataset_json: nnU-Net's.
        trainer_name, configuration: from the first fold's checkpoint.
        mirror_axes: the axes nnU-Net mirrors over at inference (from the checkpoint), or None.
        device: where the network runs.
    """

    def __init__(self, **parts: Any):
        self.folder: Path = parts["folder"]
        self.folds: list = parts["folds"]
        self.checkpoint_paths: list[Path] = parts["checkpoint_paths"]
        self.network: nn.Module = parts["network"]
        self.parameters: list[dict] = parts["parameters"]
        self.predictor = parts["predictor"]
        self.plans_manager = parts["plans_manager"]
        self.configuration_manager = parts["configuration_manager"]
        self.label_manager = parts["label_manager"]
        self.dataset_json: dict = parts["dataset_json"]
        self.trainer_name: str = parts["trainer_name"]
        self.configuration: str = parts["configuration"]
        self.mirror_axes = parts["mirror_axes"]
        self.device: torch.device = parts["device"]

    def __repr__(self) -> str:
        return (
            f"NnUNetModel('{self.folder}', configuration={self.configuration!r}, folds={self.folds}, "
            f"trainer={self.trainer_name!r}, device={str(self.device)!r})"
        )

    # ------------------------------------------------------------------ description
    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.configuration_manager.patch_size)

    @property
    def channel_names(self) -> list[str]:
        names = self.dataset_json.get("channel_names", self.dataset_json.get("modality", {}))
        return [names[k] for k in sorted(names, key=int)]

    @property
    def file_ending(self) -> str:
        return self.dataset_json["file_ending"]

    @property
    def region_based(self) -> bool:
        return bool(self.label_manager.has_regions)

    @property
    def classes(self) -> list[ClassInfo]:
        """The foreground classes (label models) or regions, as :meth:`explain` names them."""
        return resolve_classes(self.label_manager, self.dataset_json, None)

    def resolve_layer(self, layer: str) -> str:
        """A dotted module name of :attr:`network`; a ``_orig_mod.`` prefix (compiled networks) is
        dropped. Raises :class:`~volcam.errors.LayerNotFoundError` with the closest names."""
        from volcam.layers import find_layer

        if not isinstance(layer, str):
            return find_layer(self.network, layer)[0]
        modules = dict(self.network.named_modules())
        if layer.startswith(_COMPILED) and layer[len(_COMPILED) :] in modules:
            return layer[len(_COMPILED) :]
        return find_layer(self.network, layer)[0]

    def default_layer(self) -> str:
        """The second-to-last decoder stage (the last one when there is one only)."""
        stages = sorted(
            (int(m.group(1)), n)
            for n, _ in self.network.named_modules()
            if (m := re.match(r"^decoder\.stages\.(\d+)$", n))
        )
        if not stages:
            raise ArgumentError(
                f"`layer` must be given for a {type(self.network).__name__}: it has no decoder.stages; "
                "model.layers() lists its modules",
                name="layer",
            )
        return stages[-2][1] if len(stages) > 1 else stages[-1][1]

    def layers(self, *, all_modules: bool = False) -> list[NnUNetLayer]:
        """The network's candidate target layers, in execution order, with their output for one
        patch of zeros: encoder (a list of skips), encoder stages, decoder stages, transposed
        convolutions, segmentation heads; ``all_modules`` lists every module that runs."""
        from volcam.layers import list_layers

        x = torch.zeros(1, self._in_channels, *self.patch_size, device=self.device)
        out = []
        for info in list_layers(self.network, x):
            kind = next((k for p, k in _KINDS if p.match(info.name)), None)
            if kind is None and not all_modules:
                continue
            out.append(NnUNetLayer(info.name, kind or "", info.type_name, info.output_shape, info.num_parameters))
        return out

    @property
    def _in_channels(self) -> int:
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        return determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)

    # ------------------------------------------------------------------ cases
    def list_cases(self, folder: str | os.PathLike[str]) -> dict[str, list[Path]]:
        """The cases of an input folder in nnU-Net's naming: ``{case: [channel files]}``."""
        return list_cases(folder, self.file_ending, len(self.channel_names))

    def preprocess(self, image: Any, mask: str | os.PathLike[str] | None = None) -> PreprocessedCase:
        """nnU-Net's preprocessing of one case (``image``: a channel file or the list of them)."""
        case, files = case_files(image, self.file_ending, len(self.channel_names))
        return preprocess_case(
            case, files, self.plans_manager, self.configuration_manager, self.dataset_json, mask=mask
        )

    def _slicers(self, tile_step_size: float):
        def slicers(shape: tuple[int, ...]) -> list[tuple]:
            saved = self.predictor.tile_step_size
            try:
                self.predictor.tile_step_size = tile_step_size
                return self.predictor._internal_get_sliding_window_slicers(shape)
            finally:
                self.predictor.tile_step_size = saved

        return slicers

    def predict_logits(
        self,
        case: PreprocessedCase,
        *,
        use_mirroring: bool = True,
        tile_step_size: float = 0.5,
        use_gaussian: bool = True,
    ) -> torch.Tensor:
        """nnU-Net's own ``predict_logits_from_preprocessed_data`` of a preprocessed case (no CAM):
        ``[heads, *S]`` float16. The network holds the first fold's weights again afterwards."""
        p = self.predictor
        saved = (p.use_mirroring, p.tile_step_size, p.use_gaussian)
        try:
            p.use_mirroring, p.tile_step_size, p.use_gaussian = use_mirroring, tile_step_size, use_gaussian
            with quiet():
                return p.predict_logits_from_preprocessed_data(case.data)
        finally:
            p.use_mirroring, p.tile_step_size, p.use_gaussian = saved
            self.network.load_state_dict(self.parameters[0])

    # ------------------------------------------------------------------ CAMs
    def explain(
        self,
        image: Any,
        classes: Any = None,
        method: str = "gradcam",
        layer: str | Sequence[str] | None = None,
        *,
        layer_output: Any = None,
        mask: str | os.PathLike[str] | None = None,
        use_mirroring: bool = True,
        tile_step_size: float = 0.5,
        use_gaussian: bool = True,
        batch_size: int = 1,
        probabilities: bool = False,
        keep_logits: bool = False,
        progress: bool = False,
        **method_options: Any,
    ) -> NnUNetResult:
        """The CAM of each class of one case, on the scan's grid, with nnU-Net's segmentation.

        The case is preprocessed by nnU-Net, explained window by window, view by view and fold by
        fold the way nnU-Net predicts it (see :mod:`volcam.nnunet.loop`), and taken back onto the
        source grid the way nnU-Net exports its logits (see :mod:`volcam.nnunet.mapback`).

        Args:
            image: one channel file of the case (the others are found by nnU-Net's naming,
                ``case_0000.nii.gz``, ``case_0001.nii.gz`` ...) or the list of channel files.
            classes: label values or names from ``dataset.json`` (region-based models: the value
                ``regions_class_order`` writes for the region, or its name); None: all foreground.
            method: a CAM method name (``"gradcam"``, ``"hirescam"``, ``"layercam"`` ...).
            layer: dotted module name(s) of :attr:`network` (``model.layers()`` lists them);
                None: :meth:`default_layer`.
            layer_output: selector for a layer whose output is a list (``layer="encoder"``,
                ``layer_output=3`` explains the fourth skip).
            mask: the region each class is explained over: None (the voxels each window predicts
                as the class), ``"all"`` (every voxel), or a label map on the scan's grid (e.g.
                from ``labelsTs``): class ``c`` is explained over the voxels labelled ``c`` (a
                region over the voxels labelled with one of its labels).
            use_mirroring: nnU-Net's test-time mirroring over the checkpoint's axes.
            tile_step_size: window step as a fraction of the patch (nnU-Net's default 0.5).
            use_gaussian: Gaussian importance weighting of windows (nnU-Net's default).
            batch_size: views per forward; 1 reproduces nnU-Net's logits bit for bit, larger
                values are faster on GPUs (logits then agree within float tolerance).
            probabilities: also return nnU-Net's probabilities on the scan's grid.
            keep_logits: also return the logits on the network's grid.
            progress: show a progress bar over windows.
            method_options: passed to the method (e.g. ``relu=False``).

        Returns:
            :class:`~volcam.nnunet.result.NnUNetResult`.

        Raises:
            ArgumentError: a class is not in ``dataset.json``, a bad option.
            ImageReadError: a channel file is missing or unreadable (named in the message).
            LayerNotFoundError: the layer is not a module of the network.
        """
        from volcam.methods import get_method

        in_range(tile_step_size, "tile_step_size", 0.0, 1.0, low_open=True)
        positive_int(batch_size, "batch_size")
        fixed = sorted(set(method_options) & {"normalize", "upsample"})
        if fixed:
            raise ArgumentError(
                f"`{fixed[0]}` is not a method option here: maps are stitched raw at the patch's size and "
                "normalised once on the scan's grid",
                name=fixed[0],
            )
        infos = resolve_classes(self.label_manager, self.dataset_json, classes)
        names = [self.resolve_layer(n) for n in ([layer] if isinstance(layer, str) else layer)] if layer else None
        names = names or [self.default_layer()]
        mask_mode = mask if isinstance(mask, str) and mask == "all" else None
        if mask is not None and mask_mode is None and not isinstance(mask, (str, os.PathLike)):
            raise ArgumentError(f"`mask` must be None, 'all' or a label file, not {mask!r}", name="mask")
        cam = get_method(method)(
            self.network, names, layer_output=layer_output, normalize=False, upsample=True, **method_options
        )

        case, files = case_files(image, self.file_ending, len(self.channel_names))
        log.info("%s: preprocessing %d file(s)", case, len(files))
        pre = preprocess_case(
            case,
            files,
            self.plans_manager,
            self.configuration_manager,
            self.dataset_json,
            mask=None if mask is None or mask_mode else mask,
        )
        regions = all_classes(self.label_manager, self.dataset_json)
        masks = None
        if mask_mode == "all":
            masks = torch.ones((len(infos), *pre.data.shape[1:]))
        elif pre.mask is not None:
            masks = torch.from_numpy(
                np.stack([class_region(pre.mask, i, regions, ground_truth=True) for i in infos])
            ).float()

        log.info("%s: explaining %s at %s", case, [i.name for i in infos], names)
        out = explain_volume(
            cam,
            self.parameters,
            pre.data,
            [i.channel for i in infos],
            num_heads=int(self.label_manager.num_segmentation_heads),
            activation="sigmoid" if self.region_based else "softmax",
            patch_size=self.patch_size,
            slicers=self._slicers(tile_step_size),
            mirror_axes=self.mirror_axes if use_mirroring else None,
            masks=masks,
            use_gaussian=use_gaussian,
            batch_size=batch_size,
            device=self.device,
            progress=progress,
        )

        log.info("%s: back onto the scan's grid", case)
        with quiet():
            converted = segmentation_from_logits(
                out.logits,
                self.plans_manager,
                self.configuration_manager,
                self.label_manager,
                pre.properties,
                probabilities=probabilities,
            )
        native_seg, native_probs = converted if probabilities else (converted, None)
        heat_native, raw_max = heat_to_native(out.heat, self.plans_manager, self.configuration_manager, pre.properties)
        grid = SourceGrid.of(files[0], pre.properties)
        segmentation = grid.to_file_order(native_seg)
        label_map = read_file_order(mask) if mask is not None and mask_mode is None else None

        heat, stats = {}, {}
        for k, info in enumerate(infos):
            heat[info.value] = np.ascontiguousarray(grid.to_file_order(heat_native[k]), dtype=np.float32)
            row = case_stats(
                heat[info.value],
                class_region(segmentation, info, regions),
                grid.affine,
                class_region(label_map, info, regions, ground_truth=True) if label_map is not None else None,
            )
            row.update(raw_max=float(raw_max[k]), windows=int(out.windows[k]), note="")
            if out.windows[k] == 0:
                row["note"] = "empty target: the class is predicted nowhere, its heat is zero"
                warnings.warn(
                    f"class {info.value} ({info.name}) has an empty target region in every window of case "
                    f"'{case}': its heat is all zero; pass another class or a mask",
                    EmptyTargetWarning,
                    stacklevel=2,
                )
            stats[info.value] = row

        return NnUNetResult(
            case=case,
            image_files=files,
            classes=infos,
            heat=heat,
            segmentation=segmentation,
            grid=grid,
            stats=stats,
            settings=self._settings(
                method,
                names,
                layer_output,
                infos,
                mask,
                use_mirroring,
                tile_step_size,
                use_gaussian,
                batch_size,
                method_options,
            ),
            probabilities=grid.to_file_order(native_probs) if native_probs is not None else None,
            logits=out.logits if keep_logits else None,
            native_segmentation=native_seg,
            writer=self.plans_manager.image_reader_writer_class(),
        )

    def _settings(self, method, names, layer_output, infos, mask, mirroring, step, gaussian, batch, options) -> dict:
        from volcam import __version__

        return {
            "volcam_version": __version__,
            "model": str(self.folder),
            "trainer": self.trainer_name,
            "configuration": self.configuration,
            "folds": list(self.folds),
            "checkpoints": [str(p) for p in self.checkpoint_paths],
            "checkpoint_sizes": [p.stat().st_size for p in self.checkpoint_paths],
            "method": method,
            "layers": list(names),
            "layer_output": layer_output if isinstance(layer_output, (int, str, type(None))) else repr(layer_output),
            "classes": [i.value for i in infos],
            "mask": str(mask) if mask is not None else None,
            "use_mirroring": bool(mirroring),
            "mirror_axes": list(self.mirror_axes) if mirroring and self.mirror_axes is not None else None,
            "tile_step_size": float(step),
            "use_gaussian": bool(gaussian),
            "batch_size": int(batch),
            "method_options": {k: repr(v) for k, v in options.items()},
        }
