"""A MONAI dictionary transform that adds a CAM to a data dictionary.

    from monai.transforms import Compose, Invertd
    from volcam.monai import CAMd

    cam = volcam.GradCAM(network, "model.1.submodule.0.conv")
    post = Compose([
        CAMd(keys="image", cam=cam, targets=1, heat_key="cam"),
        Invertd(keys="cam", orig_keys="image", transform=preprocessing, nearest_interp=False),
    ])

It works on single cases (``[C, *S]``, as in a decollated evaluator's post-processing
chain) and on collated batches (``[B, C, *S]``, with ``batched=True``). The heat is a
``MetaTensor`` carrying the image's metadata and applied operations, so ``Invertd`` takes
it back to the source grid like any other output.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from copy import deepcopy
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

from volcam.errors import ConfigError
from volcam.methods import BaseCAM
from volcam.monai._cases import label_targets, plain
from volcam.monai._state import model_device, preserved_state
from volcam.targets import TargetSpec

__all__ = ["CAMd"]


class CAMd(MapTransform):
    """Add the heat map of ``d[key]`` under ``heat_key``.

    Args:
        keys: the image key(s) to explain (``"image"``).
        cam: a CAM object, e.g. ``volcam.GradCAM(network, "model.1.submodule.0.conv")``;
            it is reused at every call.
        targets: as for :meth:`~volcam.BaseCAM.explain` (None, an int class, a target callable).
        heat_key: where to put the heat map ``[1, *S]`` (``[B, 1, *S]`` batched), float32 in
            [0, 1] on the image's device; one key per image key when there are several.
        mask_key: a label key (``[1, *S]`` class indices or ``[K, *S]`` one-hot): explain the
            target class inside the label instead of inside the predicted region.
        batched: the images are collated batches ``[B, C, *S]`` instead of single cases.
        eval_mode: compute with the network in eval mode; its mode, and the torch, numpy
            and Python random states, are restored afterwards either way.
        allow_missing_keys: skip keys that are not in the dictionary.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        cam: BaseCAM | None = None,
        targets: TargetSpec = None,
        heat_key: str | Sequence[str] = "cam",
        mask_key: str | None = None,
        batched: bool = False,
        eval_mode: bool = True,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if not isinstance(cam, BaseCAM):
            raise ConfigError(
                f"`cam` must be a CAM object such as volcam.GradCAM(network, target_layers), not {cam!r}", key="cam"
            )
        self.heat_keys = ensure_tuple(heat_key)
        if len(self.heat_keys) != len(self.keys):
            raise ConfigError(
                f"`heat_key` must give one key per image key ({len(self.keys)}), not {len(self.heat_keys)}",
                key="heat_key",
            )
        self.cam = cam
        self.targets = targets
        self.mask_key = mask_key
        self.batched = bool(batched)
        self.eval_mode = bool(eval_mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, heat_key in self.key_iterator(d, self.heat_keys):
            d[heat_key] = self._heat(d[key], d.get(self.mask_key) if self.mask_key is not None else None)
        return d

    def _heat(self, image: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):
            raise ConfigError(f"the image must be a tensor [C, *S], not {type(image).__name__}", key="keys")
        device = model_device(self.cam.model)
        x = plain(image).detach().to(device)
        if not self.batched:
            x = x[None]
        if not x.is_floating_point():
            x = x.float()
        targets = self.targets
        if self.mask_key is not None:
            if label is None:
                raise ConfigError(f"`mask_key` {self.mask_key!r} is not in the data dictionary", key="mask_key")
            labels = list(plain(label).unbind(0)) if self.batched else [plain(label)]
            targets = label_targets(self.targets, labels, device)
        with preserved_state(self.cam.model, eval_mode=self.eval_mode):
            heat = self.cam.explain(x, targets).heat.detach()
        heat = heat.to(image.device)
        if not self.batched:
            heat = heat[0]
        if isinstance(image, MetaTensor):
            out = MetaTensor(heat, meta=deepcopy(image.meta), applied_operations=deepcopy(image.applied_operations))
            out.is_batch = image.is_batch
            return out
        return heat
