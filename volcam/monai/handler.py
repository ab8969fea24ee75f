"""An Ignite handler, in MONAI's style, that writes CAMs of the first cases of an epoch.

    from volcam.monai import CAMHandler

    handler = CAMHandler(target_layers="model.1.submodule.0.conv", targets=1,
                         output_dir="runs/cams", every_n_epochs=5, max_cases=4)
    evaluator = SupervisedEvaluator(..., val_handlers=[handler, ...])

On ``ITERATION_COMPLETED`` of every ``every_n_epochs``-th epoch the handler takes the
engine's network and batch, computes the CAMs of the cases it still needs (at most
``max_cases`` per epoch) with one :meth:`~volcam.BaseCAM.explain` call, and writes, per
case, into ``output_dir/epoch_NNNN/<case>/`` what ``volcam run`` writes for a case
(``exports`` chooses among them):

- ``<class>/heat.nii.gz``: the heat volume on the scan's grid, with the scan's affine (through
  the inverse of the preprocessing ``transform`` when the network saw a resampled or cropped
  grid; without ``transform`` such a case gets ``heat_preprocessed.nii.gz`` on the
  network's grid instead),
- ``<class>/axial/``: one PNG overlay per slice (with the label's outline when there is one),
- ``<class>/figure.png``: orthogonal views through the hottest voxel (a mosaic of the hottest
  slices with ``figure_args={"select": ...}``),
- ``viewer.html``: the case in the self-contained HTML viewer,
- ``<class>/heat_pmap.dcm`` and ``<class>/heat_seg.dcm`` for a case read from a DICOM series.

An RGB overlay per case can also go to TensorBoard (``summary_writer``).

The engine is left exactly as it was (see :class:`CAMHandler`). ignite is imported through
``monai.utils.optional_import``; only :meth:`CAMHandler.attach` needs it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import CommonKeys, IgniteInfo, min_version, optional_import
from torch import nn

from volcam.errors import ConfigError, VolcamError
from volcam.layers import LayerSpec
from volcam.methods import BaseCAM, get_method
from volcam.monai._batch import default_batch_transform, default_output_transform, overlay, unwrap
from volcam.monai._cases import case_name, label_targets, plain, split_cases
from volcam.monai._export import predicted_regions
from volcam.monai._state import model_device, preserved_state
from volcam.selectors import Selector
from volcam.targets import TargetSpec

Events, has_ignite = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine = Any

__all__ = ["CAMHandler", "default_batch_transform", "default_output_transform", "overlay", "EXPORTS"]

#: what the handler can write per case
EXPORTS = ("nifti", "png", "figure", "viewer", "dicom")


def _require_ignite() -> None:
    if not has_ignite:
        from monai.utils import OptionalImportError

        raise OptionalImportError(
            "CAMHandler needs pytorch-ignite (MONAI's engines run on it), which is not installed; "
            "install it with `pip install pytorch-ignite` or `pip install volcam[ignite]`"
        )


class CAMHandler:
    """Write CAMs of the first ``max_cases`` cases every ``every_n_epochs`` epochs.

    The CAM object is built once for the engine's network, when the engine starts (or on
    the first call, without :meth:`attach`), and reused at every call.

    Args:
        target_layers: dotted module name(s) of the network (``"model.1.submodule.0.conv"``)
            or modules; see :class:`volcam.BaseCAM`.
        method: a registry name (``"gradcam"``, ``"gradcam++"``, ``"hirescam"``, ...; see
            ``volcam.METHODS``) or a :class:`~volcam.BaseCAM` subclass.
        targets: what to explain, as for :meth:`~volcam.BaseCAM.explain`: None (per case,
            the largest predicted foreground class), an int class, or a target callable.
        classes: several classes to explain instead of ``targets``, all from one forward pass
            (:meth:`~volcam.BaseCAM.explain_classes`); each gets its own folder
            ``<case>/<class name>/`` and a layer of the case's viewer page.
        class_names: names of the classes' folders (default ``class<c>``).
        output_dir: root folder; files go to ``output_dir/epoch_NNNN/<case>/``.
        every_n_epochs: write on epochs ``n, 2n, ...`` (the evaluator's epoch is the
            trainer's when it is run by MONAI's ``ValidationHandler``).
        max_cases: cases written per epoch (the first ones of the epoch); None for all.
        exports: any of ``"nifti"``, ``"png"``, ``"figure"``, ``"viewer"`` and ``"dicom"`` (a
            DICOM Parametric Map and SEG per class, on the series, for cases read from a DICOM
            series by :class:`volcam.io.dicom.DicomSeriesReader` and taken back to its grid;
            other cases get none); all by default; empty to only compute (and log to
            TensorBoard).
        batch_transform: ``engine.state.batch -> images``, a batch ``[B, C, *S]`` or a list
            of ``[C, *S]`` (collated and decollated batches both work; default
            :func:`default_batch_transform`, the ``"image"`` key).
            ``monai.handlers.from_engine("img")`` works too.
        output_transform: ``engine.state.output -> labels`` (``[B, 1 or K, *S]``, a list of
            ``[1 or K, *S]``, or None): drawn as contours in the slice PNGs and, with
            ``mask_from_label``, the region whose score is explained (default
            :func:`default_output_transform`, the ``"label"`` key).
        mask_from_label: explain the target class inside the label instead of inside the
            predicted region (``targets`` then must be an int or None).
        layer_output, model_output, reshape: selectors for tuple/dict outputs and token
            layers; see :class:`volcam.BaseCAM`.
        method_args: other keyword arguments of the method (``relu``, ``normalize``,
            ``batch_size`` for ScoreCAM, ...).
        transform: the invertible preprocessing (``Compose`` of the evaluator's dataset).
            When the network's input is on the source scan's grid (no spatial
            preprocessing), ``heat.nii.gz`` is written with the image's affine and this is
            not needed. Otherwise ``transform`` takes the heat back onto the scan's grid
            (``volcam.io.invert_to_source``); without it, ``heat_preprocessed.nii.gz`` is
            written on the network's grid, with a warning.
        image_key: the image's key in a dictionary ``transform``.
        eval_mode: compute the CAM with the network in eval mode (deterministic, batch
            norm with running statistics); the mode is restored afterwards either way.
        network: the module to explain; default ``engine.network``.
        summary_writer: a TensorBoard ``SummaryWriter``; if given, an overlay (the slice
            through the hottest voxel along the last axis, for 3D) is logged per case with
            ``monai.visualize.plot_2d_or_3d_image``.
        tag: TensorBoard tag prefix.
        png_args, figure_args: keyword arguments for ``volcam.figures.save_slice_pngs`` and
            ``volcam.figures.mosaic`` (``axis``, ``window``, ``cmap``, ``alpha``, ...).
        name: logger name (default: the engine's logger).

    The engine is left exactly as it was: the network's train/eval flags, ``requires_grad``
    flags, hooks, parameters and buffers (restored by :func:`volcam.capture.capture`),
    parameter ``.grad``\\ s (gradients are taken with ``torch.autograd.grad``), the optimizer,
    ``engine.state.batch``/``output`` (only read), and the torch, numpy and Python random
    states (saved and restored), so a run with the handler trains bit-identically to one
    without it.
    """

    def __init__(
        self,
        target_layers: LayerSpec | Sequence[LayerSpec],
        method: str | type[BaseCAM] = "gradcam",
        targets: TargetSpec = None,
        output_dir: str | Path = "./cams",
        classes: Sequence[int] | None = None,
        class_names: dict[int, str] | None = None,
        every_n_epochs: int = 1,
        max_cases: int | None = 4,
        exports: str | Sequence[str] = EXPORTS,
        batch_transform: Callable[[Any], Any] = default_batch_transform,
        output_transform: Callable[[Any], Any] = default_output_transform,
        mask_from_label: bool = False,
        layer_output: Selector = None,
        model_output: Selector = None,
        reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
        method_args: dict | None = None,
        transform: Callable | None = None,
        image_key: str = CommonKeys.IMAGE,
        eval_mode: bool = True,
        network: nn.Module | None = None,
        summary_writer: Any = None,
        tag: str = "cam",
        png_args: dict | None = None,
        figure_args: dict | None = None,
        name: str | None = None,
    ):
        if isinstance(method, str):
            self.method_cls = get_method(method)
        elif isinstance(method, type) and issubclass(method, BaseCAM):
            self.method_cls = method
        else:
            raise ConfigError(
                f"`method` must be a registry name (see volcam.METHODS) or a BaseCAM subclass, not {method!r}",
                key="method",
            )
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ConfigError(f"`every_n_epochs` must be a positive int, not {every_n_epochs!r}", key="every_n_epochs")
        if max_cases is not None and (isinstance(max_cases, bool) or not isinstance(max_cases, int) or max_cases < 1):
            raise ConfigError(f"`max_cases` must be a positive int or None, not {max_cases!r}", key="max_cases")
        exports = (exports,) if isinstance(exports, str) else tuple(exports or ())
        unknown = [e for e in exports if e not in EXPORTS]
        if unknown:
            raise ConfigError(f"`exports` must be a subset of {list(EXPORTS)}, not {list(exports)}", key="exports")
        if isinstance(targets, (list, tuple)):
            raise ConfigError(
                "`targets` must be None, an int or a target callable (applied to every case), not a "
                f"{type(targets).__name__}: the cases of a batch are not known in advance",
                key="targets",
            )
        if (method_args or {}).get("upsample", True) is False:
            raise ConfigError(
                "`method_args` must not set upsample=False, not {'upsample': False}: the handler writes "
                "heat volumes on the image's grid",
                key="method_args",
            )
        for arg, value in (("batch_transform", batch_transform), ("output_transform", output_transform)):
            if not callable(value):
                raise ConfigError(f"`{arg}` must be a callable, not {value!r}", key=arg)
        if network is not None and not isinstance(network, nn.Module):
            raise ConfigError(
                f"`network` must be a torch.nn.Module or None, not {type(network).__name__}", key="network"
            )
        self.target_layers = target_layers
        if classes is not None:
            if targets is not None:
                raise ConfigError("pass either `targets` or `classes`, not both", key="classes")
            if (
                isinstance(classes, int)
                or not classes
                or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in classes)
            ):
                raise ConfigError(
                    f"`classes` must be a non-empty list of class indices, not {classes!r}", key="classes"
                )
        self.classes = None if classes is None else [int(c) for c in classes]
        self.class_names = dict(class_names or {})
        self.targets = targets
        self.output_dir = Path(output_dir)
        self.every_n_epochs = every_n_epochs
        self.max_cases = max_cases
        self.exports = exports
        self.batch_transform = batch_transform
        self.output_transform = output_transform
        self.mask_from_label = bool(mask_from_label)
        self.cam_args: dict[str, Any] = dict(layer_output=layer_output, model_output=model_output, reshape=reshape)
        self.cam_args.update(method_args or {})
        self.transform = transform
        self.image_key = image_key
        self.eval_mode = bool(eval_mode)
        self.network = network
        self.summary_writer = summary_writer
        self.tag = tag
        self.png_args = dict(png_args or {})
        self.figure_args = dict(figure_args or {})
        self.name = name
        self.logger = logging.getLogger(name or __name__)
        self.cam: BaseCAM | None = None
        #: per case written in the current epoch: ``{case: {"dir": Path, "nifti": Path, ...}}``
        self.written: dict[str, dict[str, Any]] = {}
        self._epoch: int | None = None
        self._warned = False
        self._said_epochs = False
        self._count = 0

    # ------------------------------------------------------------------ ignite
    def attach(self, engine: Engine) -> None:
        """Register on ``engine``: the CAM object is built for the engine's network on
        ``STARTED`` (MONAI's engines attach their handlers before they set ``network``), the
        per-epoch count is reset on ``EPOCH_STARTED`` and the CAMs run on
        ``ITERATION_COMPLETED``. Attaching twice to the same engine is a no-op."""
        _require_ignite()
        if self.name is None:
            self.logger = engine.logger
        if not engine.has_event_handler(self._build, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._build)
        if not engine.has_event_handler(self._reset, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _build(self, engine: Any) -> BaseCAM:
        network = self.network if self.network is not None else getattr(engine, "network", None)
        if not isinstance(network, nn.Module):
            raise ConfigError(
                "CAMHandler needs the network to explain: the engine must have a `network` module "
                f"(MONAI's SupervisedEvaluator/SupervisedTrainer do), not {type(network).__name__}; "
                "or pass `network=`",
                key="network",
            )
        if self.cam is None:
            self.cam = self.method_cls(network, self.target_layers, **self.cam_args)
        elif self.cam.model is not network:
            raise VolcamError(
                "a CAMHandler explains one network: it is attached to an engine whose network is another "
                "module; create one handler per network"
            )
        return self.cam

    def _reset(self, engine: Any = None) -> None:
        self._count = 0
        self.written = {}
        self._epoch = None if engine is None else engine.state.epoch

    def _due(self, epoch: int) -> bool:
        if epoch % self.every_n_epochs != 0:
            return False
        return self.max_cases is None or self._count < self.max_cases

    def __call__(self, engine: Engine) -> None:
        """Compute and write the CAMs of the current batch's cases that are still due."""
        cam = self._build(engine)
        epoch = int(engine.state.epoch)
        if epoch != self._epoch:
            self._reset(engine)
        if (
            epoch % self.every_n_epochs != 0
            and not self._said_epochs
            and getattr(engine.state, "max_epochs", 0) <= epoch
        ):
            self._said_epochs = True
            warnings.warn(
                f"CAMHandler writes on epochs {self.every_n_epochs}, {2 * self.every_n_epochs}, ... "
                f"(every_n_epochs={self.every_n_epochs}) and this engine's run ends at epoch {epoch}: nothing is "
                "written in it. A standalone evaluator runs epoch 1 only: set every_n_epochs=1 there",
                RuntimeWarning,
                stacklevel=2,
            )
        if not self._due(epoch):
            return
        images = split_cases(unwrap(self.batch_transform(engine.state.batch)), "image")
        labels = unwrap(self.output_transform(engine.state.output))
        labels = None if labels is None else split_cases(labels, "label")
        if labels is not None and len(labels) != len(images):
            raise ConfigError(
                f"`output_transform` must give one label per image ({len(images)}), not {len(labels)}",
                key="output_transform",
            )
        n = len(images) if self.max_cases is None else min(len(images), self.max_cases - self._count)
        images = images[:n]
        labels = None if labels is None else labels[:n]
        if n == 0:
            return
        network = cam.model
        device = model_device(network)
        with preserved_state(network, eval_mode=self.eval_mode):
            x = torch.stack([plain(im).detach() for im in images]).to(device)
            if not x.is_floating_point():
                x = x.float()
            if self.mask_from_label:
                if labels is None:
                    raise ConfigError(
                        "`mask_from_label` needs labels, but `output_transform` gave None; "
                        "check the engine's output has a 'label' key or set `output_transform`",
                        key="output_transform",
                    )
                targets: Any = label_targets(self.targets, labels, device)
            else:
                targets = self.targets
            if self.classes is not None:
                masks = None
                if self.mask_from_label and labels is not None:
                    from volcam.monai._cases import _label_mask

                    masks = {
                        c: torch.stack([_label_mask(plain(lb).to(device), c) for lb in labels])[:, None]
                        for c in self.classes
                    }
                res = cam.explain_classes(x, self.classes, masks=masks)
            else:
                res = cam.explain(x, targets)
            heat = res.heat.detach().cpu()
            predicted = predicted_regions(res.output.detach(), self.classes, self.targets).cpu()
            del x, res
            for i, image in enumerate(images):
                index = self._count + i
                name = case_name(image, f"case_{index:03d}")
                if name in self.written:
                    name = f"{name}_{index:03d}"
                label = None if labels is None else plain(labels[i]).detach().cpu()
                self.written[name] = self._export(engine, epoch, name, image, heat[i], label, predicted[i])
        self._count += n

    # ------------------------------------------------------------------ exports
    @property
    def class_name(self) -> str:
        """The folder of the explained class: ``class<c>`` for an int target, else ``cam``."""
        if isinstance(self.targets, int) and not isinstance(self.targets, bool):
            return self.class_names.get(self.targets, f"class{self.targets}")
        return "cam"

    @property
    def folders(self) -> list[tuple[int, str]]:
        """``(class, folder name)`` of each map of a case."""
        if self.classes is not None:
            return [(c, self.class_names.get(c, f"class{c}")) for c in self.classes]
        c = self.targets if isinstance(self.targets, int) and not isinstance(self.targets, bool) else 0
        return [(c, self.class_name)]

    def _export(
        self,
        engine: Any,
        epoch: int,
        name: str,
        image: torch.Tensor,
        heat: torch.Tensor,
        label: torch.Tensor | None,
        predicted: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Write one case as ``volcam run`` does: ``heat`` ``[1, *S]`` on the grid of ``image``
        ``[C, *S]`` (both on the CPU) taken back to the scan's grid, into
        ``output_dir/epoch_NNNN/<case>/<class>/``."""
        from monai.data import MetaTensor

        from volcam.monai._export import layer_names, output_settings, to_source, write_case

        case_dir = self.output_dir / f"epoch_{epoch:04d}" / name
        written: dict[str, Any] = {"dir": case_dir}
        if not self.exports and self.summary_writer is None:
            return written
        image = image.detach().cpu()
        if not isinstance(image, MetaTensor):
            if not self._warned:
                self._warned = True
                warnings.warn(
                    "the batch images carry no affine (they are not MetaTensors); the CAMs are written "
                    "with an identity affine and will not overlay the scans in a viewer",
                    RuntimeWarning,
                    stacklevel=2,
                )
            image = MetaTensor(image, affine=torch.eye(4, dtype=torch.float64))
        src = to_source(image, heat, label, self.transform, self.image_key, predicted=predicted)
        if not src.on_source and not self._warned:
            self._warned = True
            warnings.warn(
                "the network input is not on the source scan's grid (the preprocessing resampled, cropped "
                "or reoriented it); the CAMs are written on the network's grid as heat_preprocessed.nii.gz. "
                "Pass the preprocessing as `transform=` to write them on the scan's grid",
                RuntimeWarning,
                stacklevel=2,
            )
        if self.exports:
            layer = layer_names(self.target_layers)
            settings = output_settings(
                self.exports, self.png_args, self.figure_args, getattr(self.cam, "normalize", True)
            )
            written.update(write_case(src, name, case_dir, self.folders, settings, self.method_cls.name, layer))
        if self.summary_writer is not None:
            from monai.visualize import plot_2d_or_3d_image

            volume, heat_volume = plain(image)[0].float(), heat[0].float()
            plot_2d_or_3d_image(
                overlay(volume, heat_volume)[None], epoch, self.summary_writer, max_channels=3, tag=f"{self.tag}/{name}"
            )
        self.logger.info(f"CAMHandler: epoch {epoch}, case {name!r} -> {case_dir}")
        return written
