"""Loading a trained nnU-Net v2 model the way ``nnUNetPredictor.initialize_from_trained_model_folder``
does, with checkpoints read safely."""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from typing import Any

import torch
from torch import nn

from volcam.errors import ArgumentError
from volcam.nnunet.folder import (
    find_model_folder,
    read_checkpoint,
    read_json,
    require_nnunet,
    resolve_folds,
    strip_compile_prefix,
)
from volcam.nnunet.model import NnUNetModel, quiet

__all__ = ["load"]

log = logging.getLogger(__name__)


def _trainer_class(name: str):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if name == nnUNetTrainer.__name__:
        return nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with quiet():
            return recursive_find_trainer_class_by_name(name)
    except Exception as err:  # nnU-Net imports every trainer module while it searches
        raise ArgumentError(
            f"the checkpoint's trainer class {name!r} must be importable to build its network, but nnU-Net's "
            f"search for it failed: {type(err).__name__}: {err}; install what it needs, or put it where "
            "nnUNet_extTrainer points",
            name="trainer",
        ) from err


def _device(device: Any) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ArgumentError(
            f"`device` must be a torch device such as 'cpu' or 'cuda', not {device!r}", name="device"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"`device` must be available on this machine, not {device!r}: no CUDA; use 'cpu'")
    return dev


def _build_network(trainer_class, plans_manager, configuration_manager, in_channels: int, heads: int) -> nn.Module:
    """The trainer's network with deep supervision off, as nnU-Net builds it for inference."""
    sig = inspect.signature(trainer_class.build_network_architecture)
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if "plans_manager" in sig.parameters:
            return trainer_class.build_network_architecture(
                plans_manager, configuration_manager, in_channels, heads, enable_deep_supervision=False
            )
        return trainer_class.build_network_architecture(  # the older signature
            configuration_manager.network_arch_class_name,
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            in_channels,
            heads,
            enable_deep_supervision=False,
        )


def load(
    folder: str | os.PathLike[str] | None = None,
    folds: Any = (0,),
    checkpoint: str = "checkpoint_final.pth",
    device: Any = None,
    trust_checkpoint: bool = False,
    *,
    dataset: int | str | None = None,
    configuration: str | None = None,
    trainer: str = "nnUNetTrainer",
    plans: str = "nnUNetPlans",
    results: str | os.PathLike[str] | None = None,
) -> NnUNetModel:
    """Load a trained nnU-Net v2 model the way ``nnUNetPredictor.initialize_from_trained_model_folder``
    does, with safe checkpoint reading.

    Args:
        folder: the results folder (``.../Dataset003_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres``).
        folds: fold numbers (or ``"all"``) whose weights are averaged, as nnU-Net averages them;
            None: every fold that has ``checkpoint``.
        checkpoint: the checkpoint file name in each fold folder.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device`` (None: CUDA if available).
        trust_checkpoint: read checkpoints that ``torch.load(weights_only=True)`` refuses with full
            unpickling (which can run code stored in the file). Off by default.
        dataset, configuration, trainer, plans, results: the model by dataset id or name and
            configuration under ``nnUNet_results``, as ``nnUNetv2_predict -d 3 -c 3d_fullres`` does
            (instead of ``folder``).

    Returns:
        :class:`NnUNetModel`.

    Raises:
        ArgumentError: not a results folder, missing fold or checkpoint, a checkpoint that cannot
            be read safely, a cascade configuration; the message names the file.
        ModuleNotFoundError: nnU-Net v2 is not installed (``pip install 'volcam[nnunet]'``).
    """
    require_nnunet()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    path = find_model_folder(
        folder, dataset=dataset, configuration=configuration, trainer=trainer, plans=plans, results=results
    )
    fold_paths = resolve_folds(path, folds, checkpoint)
    dataset_json = read_json(path / "dataset.json")
    plans_manager = PlansManager(read_json(path / "plans.json"))
    log.info("reading %s", fold_paths[0][1])
    first = read_checkpoint(fold_paths[0][1], trust=trust_checkpoint)
    parameters = [strip_compile_prefix(first["network_weights"])]
    for _, ckpt in fold_paths[1:]:
        log.info("reading %s", ckpt)
        parameters.append(strip_compile_prefix(read_checkpoint(ckpt, trust=trust_checkpoint)["network_weights"]))
    trainer_name = first["trainer_name"]
    configuration_name = first["init_args"]["configuration"]
    mirror_axes = first.get("inference_allowed_mirroring_axes")
    if configuration_name not in plans_manager.available_configurations:
        raise ArgumentError(
            f"the checkpoint's configuration {configuration_name!r} must be in '{path / 'plans.json'}', which has "
            f"{plans_manager.available_configurations}",
            name="folder",
        )
    configuration_manager = plans_manager.get_configuration(configuration_name)
    if configuration_manager.previous_stage_name is not None:
        raise ArgumentError(
            f"configuration {configuration_name!r} of '{path}' is a cascade stage: its network also takes the "
            f"segmentation of {configuration_manager.previous_stage_name!r} as input, which volcam does not "
            f"provide; explain the {configuration_manager.previous_stage_name!r} or a 3d_fullres model instead",
            name="folder",
        )
    label_manager = plans_manager.get_label_manager(dataset_json)
    in_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    heads = label_manager.num_segmentation_heads
    network = _build_network(_trainer_class(trainer_name), plans_manager, configuration_manager, in_channels, heads)
    try:
        network.load_state_dict(parameters[0])
    except RuntimeError as err:
        raise ArgumentError(
            f"the weights of '{fold_paths[0][1]}' must fit the network the plans describe: {err}", name="checkpoint"
        ) from err
    dev = _device(device)
    network = network.to(dev).eval()
    compile_flag = os.environ.pop("nnUNet_compile", None)  # the predictor shares the (uncompiled) network
    try:
        predictor = _predictor(
            nnUNetPredictor,
            network,
            plans_manager,
            configuration_manager,
            parameters,
            dataset_json,
            trainer_name,
            mirror_axes,
            dev,
        )
    finally:
        if compile_flag is not None:
            os.environ["nnUNet_compile"] = compile_flag
    return NnUNetModel(
        folder=path,
        folds=[f for f, _ in fold_paths],
        checkpoint_paths=[p for _, p in fold_paths],
        network=network,
        parameters=parameters,
        predictor=predictor,
        plans_manager=plans_manager,
        configuration_manager=configuration_manager,
        label_manager=label_manager,
        dataset_json=dataset_json,
        trainer_name=trainer_name,
        configuration=configuration_name,
        mirror_axes=tuple(mirror_axes) if mirror_axes is not None else None,
        device=dev,
    )


def _predictor(
    nnUNetPredictor,
    network,
    plans_manager,
    configuration_manager,
    parameters,
    dataset_json,
    trainer_name,
    mirror_axes,
    dev,
):
    """An ``nnUNetPredictor`` on the same network and weights, set up as nnU-Net's trainer sets one up."""
    with quiet():
        predictor = nnUNetPredictor(
            tile_step_size=0.5,
            use_gaussian=True,
            use_mirroring=True,
            perform_everything_on_device=dev.type == "cuda",
            device=dev,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        predictor.manual_initialization(
            network,
            plans_manager,
            configuration_manager,
            parameters,
            dataset_json,
            trainer_name,
            tuple(mirror_axes) if mirror_axes is not None else None,
        )
    return predictor
