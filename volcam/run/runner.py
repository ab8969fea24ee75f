"""One case of a run: explain every configured class and take the results back to the scan.

:class:`Runner` builds the network (once, on its device), the CAM method and the
preprocessing from a :class:`~volcam.run.config.RunConfig`; :meth:`Runner.explain_case`
turns one loaded case (:func:`volcam.run.loading.load_case`) into a :class:`CaseOutput`: per
class, the heat volume on the scan's own grid, the predicted region there, and the
statistics of its summary row. Nothing is written here (:mod:`volcam.run.export` does that).

The network is always run in eval mode. Volumes whose size the network cannot divide (a
U-Net with strides 2, 2, 2 on 120 x 110 x 24 voxels) are padded to the next multiple of its
downsampling factor and the results cropped back.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import torch

from volcam.errors import ConfigError, EmptyMapWarning, EmptyTargetWarning, ShapeError
from volcam.geometry import voxel_to_world, voxel_volume_ml
from volcam.run.cases import Case, label_region
from volcam.run.config import RunConfig
from volcam.run.outcome import CaseOutput, ClassOutput, fallback_note
from volcam.targets import predicted_labels

__all__ = ["Runner", "CaseOutput", "ClassOutput", "make_runner", "network_divisor"]


def _prod(values: Any) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def network_divisor(model: torch.nn.Module, spatial_dims: int) -> tuple[int, ...] | None:
    """The size every spatial axis of the input must be a multiple of, for MONAI's U-Nets
    (UNet, AttentionUnet, BasicUNet, SegResNet, DynUNet); None when unknown."""
    name = type(model).__name__
    strides = getattr(model, "strides", None)
    if name in ("UNet", "AttentionUnet") and strides is not None:
        per_axis = [1] * spatial_dims
        for s in strides:
            s = [s] * spatial_dims if isinstance(s, int) else list(s)
            per_axis = [a * int(b) for a, b in zip(per_axis, s)]
        return tuple(per_axis)
    if name == "DynUNet" and strides is not None:
        per_axis = [1] * spatial_dims
        for s in strides:
            s = [s] * spatial_dims if isinstance(s, int) else list(s)
            per_axis = [a * int(b) for a, b in zip(per_axis, s)]
        return tuple(per_axis)
    if name == "BasicUNet":
        return (16,) * spatial_dims
    if name == "SegResNet":
        blocks = getattr(model, "blocks_down", None)
        if blocks is not None:
            return (2 ** (len(blocks) - 1),) * spatial_dims
    return None


def _fraction(heat: torch.Tensor, region: torch.Tensor) -> float:
    total = float(heat.sum())
    return float((heat * region).sum()) / total if total > 0 else float("nan")


class Runner:
    """Everything built once per run: network on its device, CAM method, preprocessing.

    Args:
        config: the run configuration.
    """

    def __init__(self, config: RunConfig):
        self.config = config
        self.device = config.device
        self.classes = list(config.targets.classes)
        self.names = dict(config.targets.names)
        self.targets = config.targets
        self.sliding = config.sliding
        self.pre = config.build_preprocessing()
        self.model = config.build_network().to(self.device)
        #: why the target layer is the one it is, when the config names none (see volcam.run.defaults)
        self.chosen = ""
        if not config.cam.target_layers:
            from volcam.run.defaults import choose_layer

            layer = choose_layer(self.model, config.example_input().to(self.device), config.out_channels)
            self.config = config = config.with_layers([layer.name])
            self.chosen = layer.reason
        self.cam = config.build_cam(self.model, normalize=not config.outputs.raw_heat)
        #: computed for a class whose map is all zero although the class is predicted (cam.fallback)
        self.fallback = (
            config.build_cam(self.model, config.cam.fallback, normalize=not config.outputs.raw_heat)
            if config.cam.fallback and config.cam.fallback != config.cam.method
            else None
        )
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        self.divisor = network_divisor(self.model, config.spatial_dims)
        self.layer_names = ";".join(config.cam.target_layers)
        if self.out_channels is not None:
            self.check_classes(self.out_channels)
        from volcam.run.memory import MemoryGuard

        s = config.sliding
        self.memory = MemoryGuard(
            self.model,
            self.device,
            divisor=self.divisor,
            sliding=(tuple(s.roi_size), s.sw_batch_size) if s.roi_size else None,
            out_channels=self.out_channels or 2,
        )

    def checkpoint_record(self) -> dict[str, Any] | None:
        """The checkpoint of the case records: ``{"path", "blake2b"}``, or None (initial weights)."""
        from volcam.run.checkpoint import file_digest

        path = self.config.checkpoint
        return None if path is None else {"path": str(path), "blake2b": file_digest(path)}

    def check_classes(self, channels: int) -> None:
        """Refuse classes the network's output does not have (a config error, for the whole run)."""
        bad = [c for c in self.classes if not 0 <= c < channels]
        if bad:
            hint = " (a single-channel sigmoid network has class 0: its foreground)" if channels == 1 else ""
            raise ConfigError(
                f"targets.classes must be output channels of the network, in [0, {channels - 1}], not {bad}{hint}",
                key="targets.classes",
            )

    # ---- targets and regions
    def target(self, c: int, label: torch.Tensor | None) -> Any:
        """The target of class ``c`` alone (``targets.mask``), e.g. for ``volcam evaluate``."""
        import volcam

        act = self.targets.activation
        if self.targets.mask == "whole":
            return volcam.SegmentationTarget(c, mask="all", activation=act)
        if self.targets.mask == "label" and label is not None:
            return volcam.SegmentationTarget(c, mask=self.label_region(label, c)[None].float(), activation=act)
        return volcam.SegmentationTarget(c, activation=act)

    def label_region(self, label: torch.Tensor, c: int) -> torch.Tensor:
        values = None if self.targets.label_values is None else self.targets.label_values.get(c)
        return label_region(label, c, out_channels=self.out_channels, values=values)

    def labels(self, output: torch.Tensor) -> torch.Tensor | None:
        """The predicted label of each voxel of ``output`` ``[1, classes, *S]`` (one pass of
        channel comparisons for every class, ``argmax``'s tie rule); None for sigmoid outputs."""
        if output.shape[1] == 1 or self.targets.activation == "sigmoid":
            return None
        return predicted_labels(output)

    def predicted(self, output: torch.Tensor, c: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``[*S]`` bool: where ``output`` ``[1, classes, *S]`` predicts class ``c``; ``labels``:
        :meth:`labels` of ``output``, when already computed."""
        if output.shape[1] == 1 or self.targets.activation == "sigmoid":
            return output[0, c] > 0
        if labels is None:
            labels = predicted_labels(output)
        return labels[0] == c

    # ---- the computation
    def masks(self, label: torch.Tensor | None) -> Any:
        """The region each class is explained over (``targets.mask``), for ``explain_classes``."""
        if self.targets.mask == "whole":
            return "all"
        if self.targets.mask == "label" and label is not None:
            return {c: self.label_region(label, c)[None].float() for c in self.classes}
        return None

    def explain(self, x: torch.Tensor, masks: Any, cam: Any = None, classes: list[int] | None = None) -> Any:
        """Every class of one input ``[1, C, *S]`` from one forward pass, whole or by windows:
        a result with ``heat [1, K, *S]``, ``output [1, classes, *S]`` (and ``notes``).
        ``cam`` and ``classes``: another method (the fallback) and some of the classes."""
        act = self.targets.activation
        cam = cam or self.cam
        classes = self.classes if classes is None else classes
        if isinstance(masks, dict):
            masks = {c: m for c, m in masks.items() if c in classes}
        if self.sliding.roi_size is not None:
            from volcam.sliding import sliding_window_cam

            s = self.sliding
            roi = list(self.sliding.roi_size)
            return sliding_window_cam(
                cam, x, roi, s.sw_batch_size, s.overlap, s.mode, classes=classes, masks=masks, activation=act
            )
        return cam.explain_classes(x, classes, masks=masks, activation=act)

    def _padding(self, shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
        if self.divisor is None or self.sliding.roi_size:
            return None
        pads = [(-s) % d for s, d in zip(shape, self.divisor)]
        if not any(pads):
            return None
        return [(p // 2, p - p // 2) for p in pads]

    def _explain_padded(
        self,
        x: torch.Tensor,
        masks: Any,
        pads: list[tuple[int, int]] | None,
        cam: Any = None,
        classes: list[int] | None = None,
    ) -> tuple[Any, Any, Any]:
        """``(heat [1, K, *S], output, notes)``; the input padded to the network's divisor and the
        results cropped back when ``pads`` is given."""
        if pads is None:
            try:
                res = self.explain(x, masks, cam, classes)
            except RuntimeError as err:
                if "Sizes of tensors must match" in str(err):
                    raise ShapeError(
                        f"the network cannot take a volume of {list(x.shape[2:])} voxels (its skip connections "
                        "need sizes divisible by its downsampling factor); add "
                        "{_target_: DivisiblePadd, keys: [image, label], k: 16} (k: the product of its strides) at "
                        "the end of preprocessing",
                        expected="sizes divisible by the network's downsampling factor",
                        actual_shape=tuple(x.shape),
                    ) from err
                raise
            return res.heat, res.output, getattr(res, "notes", [])
        flat = [p for pair in reversed(pads) for p in pair]
        xp = torch.nn.functional.pad(x, flat)
        if isinstance(masks, dict):
            masks = {c: torch.nn.functional.pad(m, flat) for c, m in masks.items()}
        res = self.explain(xp, masks, cam, classes)
        crop = (slice(None), slice(None)) + tuple(slice(a, a + n) for (a, _), n in zip(pads, x.shape[2:]))
        heat, output = res.heat[crop], res.output[crop]
        if self.cam.normalize:
            from volcam.postprocess import normalize

            heat = normalize(heat)
        return heat, output, getattr(res, "notes", [])

    def _fall_back(
        self,
        x: torch.Tensor,
        label: Any,
        pads: Any,
        heat: torch.Tensor,
        output: torch.Tensor,
        notes: list[Any],
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[list[str]], list[str]]:
        """``cam.fallback``: the classes whose map is all zero although the network predicts them
        are explained again with the fallback method (one more pass, for those classes only).
        Returns the heat, each class's notes as text, and each class's method."""
        method = self.config.cam.method
        methods = [method] * len(self.classes)
        texts = [[_note(n) for n in notes if n.sample == 0 and n.target == t] for t in range(len(self.classes))]
        if self.fallback is None:
            return heat, texts, methods
        empty_target = {n.target for n in notes if n.sample == 0 and n.reason == "empty_target"}
        redo = [
            t
            for t, c in enumerate(self.classes)
            if t not in empty_target
            and not bool(heat[0, t].max() > 0)
            and bool(self.predicted(output, c, labels).any())
        ]
        if not redo:
            return heat, texts, methods
        classes = [self.classes[t] for t in redo]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again, _, again_notes = self.memory.measure(
                lambda: self._explain_padded(x, self.masks(label), pads, self.fallback, classes), tuple(x.shape[2:])
            )
        _pass_on(caught)
        heat = heat.clone()
        name = self.config.cam.fallback or ""
        for k, t in enumerate(redo):
            heat[0, t] = again[0, k]
            still = "; ".join(_note(n) for n in again_notes if n.sample == 0 and n.target == k)
            empty = not bool(again[0, k].max() > 0)
            texts[t] = [fallback_note(name, method, "; ".join(texts[t]), still or ("all zero" if empty else ""))]
            methods[t] = name
        return heat, texts, methods

    def explain_case(self, case: Case, data: dict[str, Any]) -> CaseOutput:
        """Explain every class of one loaded case; see :class:`CaseOutput`.

        Raises whatever goes wrong; the loop turns it into a failed case.
        """
        from volcam.io import invert_to_source

        image = data["image"]
        if self.in_channels is not None and image.shape[0] != self.in_channels:
            raise ShapeError(
                f"image must have {self.in_channels} channel(s) like network_def.in_channels, not {image.shape[0]} "
                f"(shape {list(image.shape)}, '{case.image}')",
                expected=f"{self.in_channels} channels",
                actual_shape=tuple(image.shape),
            )
        x = image.as_tensor()[None].float().to(self.device)
        label = data["label"].as_tensor().to(self.device) if "label" in data else None
        source = data["source"]
        raster = bool(data.get("raster", False))
        voxel_ml = voxel_volume_ml(image.affine)
        pads = self._padding(tuple(x.shape[2:]))
        self.memory.check(x)
        out = CaseOutput(case, source, data.get("source_label"), raster)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            heat, output, map_notes = self.memory.measure(
                lambda: self._explain_padded(x, self.masks(label), pads), tuple(x.shape[2:])
            )
        _pass_on(caught)
        if self.out_channels is None:
            self.check_classes(output.shape[1])
        labels = self.labels(output)  # once for every class
        heat, texts, methods = self._fall_back(x, label, pads, heat, output, map_notes, labels)
        seconds = (time.perf_counter() - start) / len(self.classes)  # one pass for every class: shared
        for t, c in enumerate(self.classes):
            start = time.perf_counter()
            pred = self.predicted(output, c, labels)
            h = heat[0, t]
            notes = list(texts[t])
            if not notes and not bool(h.max() > 0):
                notes.append(
                    "the map is zero everywhere: no positive evidence at this layer "
                    "(try an element-wise method such as hirescam or layercam, another layer, or relu: false)"
                )
            row: dict[str, Any] = {
                "case": case.id,
                "class": c,
                "class_name": self.names[c],
                "status": "ok",
                "error": "",
                "note": "; ".join(notes),
                "method": methods[t],
                "layer": self.layer_names,
                "image": str(case.image),
                "label": str(case.label) if case.label else "",
                "predicted_voxels": int(pred.sum()),
                "predicted_volume_ml": "" if raster else round(int(pred.sum()) * voxel_ml, 4),
                "units": "px" if raster else "mm",  # of the peak (the log line; not a summary column)
                "energy_in_prediction": _fraction(h, pred),
                "energy_in_label": _fraction(h, self.label_region(label, c)) if label is not None else "",
            }
            heat_src = invert_to_source(heat[0, t : t + 1].detach().cpu(), data, self.pre, key="image")
            pred_src = invert_to_source(pred[None].float().cpu(), data, self.pre, key="image", nearest=True)
            hs = heat_src.as_tensor()[0]
            if bool(hs.max() > hs.min()):  # a flat (all-zero) map has no peak
                peak = torch.nonzero(hs == hs.max())[0].tolist()
                world = voxel_to_world(source.affine, peak)
                row.update(
                    peak_x=round(world[0], 3),
                    peak_y=round(world[1], 3),
                    peak_z=round(world[2], 3),
                    peak_voxel=" ".join(str(i) for i in peak),
                )
            row["seconds"] = round(seconds + time.perf_counter() - start, 3)
            row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            out.classes.append(ClassOutput(c, self.names[c], heat_src, pred_src.as_tensor()[0] > 0.5, row))
        return out


def make_runner(config: RunConfig) -> Any:
    """The runner of a config: :class:`Runner`, or for an ``nnunet`` section
    :class:`volcam.run.nnunet_runner.NnUNetRunner` (the same interface)."""
    if config.nnunet is not None:
        from volcam.run.nnunet_runner import NnUNetRunner

        return NnUNetRunner(config)
    return Runner(config)


def _note(note: Any) -> str:
    """A summary note from the engine's reason for an all-zero map."""
    if note.reason == "empty_target":
        return "empty target: the network predicts no voxel of this class (the map is all zero)"
    why = str(note.message).partition("is empty (all zero): ")[2]
    return f"empty map: {why}" if why else str(note.message)


def _pass_on(caught: list[warnings.WarningMessage]) -> None:
    """Warnings of the computation other than the empty-map ones (those become notes)."""
    for w in caught:
        if not issubclass(w.category, (EmptyMapWarning, EmptyTargetWarning)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
