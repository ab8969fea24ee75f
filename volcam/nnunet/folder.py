"""nnU-Net results folders: where a trained model lives, which folds it has, and reading its
checkpoints safely.

A results folder is what ``nnUNetv2_train`` leaves behind::

    $nnUNet_results/Dataset003_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres/
        dataset.json  plans.json  fold_0/checkpoint_final.pth  fold_1/...

It is addressed either by its path or, as ``nnUNetv2_predict`` does, by dataset id (or name),
configuration, trainer and plans under ``$nnUNet_results``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

from volcam.checks import did_you_mean
from volcam.errors import ArgumentError

__all__ = [
    "REQUIRED_FILES",
    "require_nnunet",
    "find_model_folder",
    "resolve_folds",
    "read_json",
    "read_checkpoint",
]

#: files every results folder has beside its ``fold_*`` folders
REQUIRED_FILES = ("dataset.json", "plans.json")

_INSTALL_HINT = "explaining nnU-Net models needs nnU-Net v2: pip install 'volcam[nnunet]'"


def require_nnunet() -> None:
    """Import nnU-Net v2, or raise ``ModuleNotFoundError`` saying how to install it."""
    try:
        import nnunetv2  # noqa: F401
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"{_INSTALL_HINT} ({err})", name="nnunetv2") from err


def _folder_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a results folder, or None if it is one."""
    if not folder.is_dir():
        return "it does not exist" if not folder.exists() else "it is not a folder"
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        return f"{' and '.join(missing)} missing"
    if not any(p.is_dir() for p in folder.glob("fold_*")):
        return "it has no fold_N subfolder"
    return None


def _model_folders_under(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and _folder_problem(p) is None)


def _check_model_folder(folder: Path) -> Path:
    problem = _folder_problem(folder)
    if problem is None:
        return folder
    hint = ""
    inside = _model_folders_under(folder)
    if inside:  # a dataset folder: name the trained configurations in it
        hint = f"; it holds the model folders {[p.name for p in inside]}"
    elif folder.name.startswith("fold_") and _folder_problem(folder.parent) is None:
        hint = f"; did you mean its parent '{folder.parent}'?"
    raise ArgumentError(
        f"`folder` must be an nnU-Net results folder (dataset.json, plans.json and fold_N/ subfolders, "
        f"as nnUNetv2_train writes them), not '{folder}': {problem}{hint}",
        name="folder",
    )


def _dataset_folder(results: Path, dataset: int | str) -> Path:
    names = sorted(p.name for p in results.iterdir() if p.is_dir()) if results.is_dir() else []
    if isinstance(dataset, int) or (isinstance(dataset, str) and dataset.isdigit()):
        prefix = f"Dataset{int(dataset):03d}_"
        matches = [n for n in names if n.startswith(prefix)]
        if len(matches) == 1:
            return results / matches[0]
        what = f"no folder {prefix}*" if not matches else f"several folders {matches}"
    else:
        if str(dataset) in names:
            return results / str(dataset)
        what = f"no folder '{dataset}'{did_you_mean(dataset, names)}"
    datasets = [n for n in names if re.match(r"Dataset\d{3}_", n)]
    raise ArgumentError(
        f"`dataset` must name a trained dataset in nnUNet_results ('{results}'), not {dataset!r}: {what}; "
        f"it holds {datasets}",
        name="dataset",
    )


def find_model_folder(
    folder: str | os.PathLike[str] | None = None,
    *,
    dataset: int | str | None = None,
    configuration: str | None = None,
    trainer: str = "nnUNetTrainer",
    plans: str = "nnUNetPlans",
    results: str | os.PathLike[str] | None = None,
) -> Path:
    """The results folder of a trained model.

    Args:
        folder: the folder itself (``.../nnUNetTrainer__nnUNetPlans__3d_fullres``).
        dataset: instead of ``folder``: dataset id (``3``) or name (``"Dataset003_Liver"``) ...
        configuration: ... with its configuration (``"3d_fullres"``) ...
        trainer, plans: ... trainer class and plans identifier, as for ``nnUNetv2_predict``.
        results: the results root (default: the ``nnUNet_results`` environment variable).

    Raises:
        ArgumentError: the folder is not a results folder (the message says what is missing
            and lists the model folders of a dataset folder), or the dataset / configuration
            cannot be found.
    """
    if folder is not None:
        if dataset is not None or configuration is not None:
            raise ArgumentError("pass either `folder` or `dataset` and `configuration`, not both", name="folder")
        return _check_model_folder(Path(folder).expanduser())
    if dataset is None or configuration is None:
        raise ArgumentError(
            "a model must be given by `folder`, or by `dataset` and `configuration` "
            f"(dataset={dataset!r}, configuration={configuration!r})",
            name="folder",
        )
    root = results if results is not None else os.environ.get("nnUNet_results")
    if not root:
        raise ArgumentError(
            "finding a model by dataset and configuration needs the results root: set the nnUNet_results "
            "environment variable or pass `results`, or give the model folder itself",
            name="results",
        )
    data_folder = _dataset_folder(Path(root).expanduser(), dataset)
    model = data_folder / f"{trainer}__{plans}__{configuration}"
    if _folder_problem(model) is not None:
        present = [p.name for p in _model_folders_under(data_folder)]
        raise ArgumentError(
            f"`configuration` must be trained for {data_folder.name}, but there is no model folder "
            f"'{model.name}'{did_you_mean(model.name, present)}; trained: {present}",
            name="configuration",
        )
    return model


def available_folds(folder: Path, checkpoint: str) -> list[int | str]:
    """Folds of ``folder`` that have ``checkpoint``, in nnU-Net's order (numbers, then ``"all"``)."""
    found: list[int | str] = []
    for p in folder.glob("fold_*"):
        if not (p / checkpoint).is_file():
            continue
        tail = p.name[len("fold_") :]
        if tail.isdigit():
            found.append(int(tail))
        elif tail == "all":
            found.append("all")
    return sorted(found, key=lambda f: (isinstance(f, str), f if isinstance(f, int) else 0))


def resolve_folds(folder: Path, folds: Any, checkpoint: str) -> list[tuple[int | str, Path]]:
    """``[(fold, checkpoint path), ...]`` for ``folds`` (None: every fold that has the checkpoint).

    Raises:
        ArgumentError: a fold or its checkpoint is missing (the message lists what there is).
    """
    if not isinstance(checkpoint, str) or not checkpoint:
        raise ArgumentError(f"`checkpoint` must be a file name such as 'checkpoint_final.pth', not {checkpoint!r}")
    present = available_folds(folder, checkpoint)
    if folds is None:
        if not present:
            others = sorted({p.name for p in folder.glob("fold_*/*.pth")})
            raise ArgumentError(
                f"`folds` = None uses every fold with '{checkpoint}', but no fold of '{folder}' has it; "
                f"checkpoints there: {others}",
                name="folds",
            )
        return [(f, folder / f"fold_{f}" / checkpoint) for f in present]
    if isinstance(folds, (int, str)):
        folds = (folds,)
    out = []
    for f in folds:
        if isinstance(f, str) and f.isdigit():
            f = int(f)
        if isinstance(f, bool) or not (isinstance(f, int) and f >= 0 or f == "all"):
            raise ArgumentError(f"`folds` must hold fold numbers (0, 1, ...) or 'all', not {f!r}", name="folds")
        fold_dir = folder / f"fold_{f}"
        path = fold_dir / checkpoint
        if not fold_dir.is_dir():
            raise ArgumentError(
                f"`folds` must name trained folds of '{folder}', not {f!r}: there is no fold_{f}/; "
                f"folds with '{checkpoint}': {present}",
                name="folds",
            )
        if not path.is_file():
            there = sorted(p.name for p in fold_dir.glob("*.pth"))
            raise ArgumentError(
                f"`checkpoint` must exist in every fold, but '{path}' does not{did_you_mean(checkpoint, there)}; "
                f"fold_{f} holds {there}",
                name="checkpoint",
            )
        out.append((f, path))
    if len({f for f, _ in out}) != len(out):
        raise ArgumentError(f"`folds` must not repeat a fold, not {list(folds)}", name="folds")
    return out


def read_json(path: Path) -> dict:
    """A JSON file of a results folder, with an error naming the file when it is not valid."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ArgumentError(f"'{path}' must be a readable JSON file, not: {err}", name="folder") from err


def _numpy_safe_globals() -> list:
    """numpy scalars and dtypes: what nnU-Net's training log in a checkpoint holds besides
    tensors, dicts and lists. They carry numbers only; no code runs to rebuild them."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar  # numpy 2
    except ImportError:  # numpy 1
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.float16, np.float32, np.float64)
    return [scalar, np.dtype, *{type(np.dtype(k)) for k in kinds}]


def read_checkpoint(path: Path, *, trust: bool = False) -> dict:
    """Read an nnU-Net checkpoint on the CPU.

    The file is first unpickled with ``torch.load(weights_only=True)`` (tensors, containers,
    numbers, strings, numpy scalars): nothing in it can run code. If that fails, the file
    holds other objects; it is then read with full unpickling only when ``trust`` is set,
    since unpickling can run arbitrary code.

    Raises:
        ArgumentError: the checkpoint cannot be read safely and ``trust`` is False, or it is
            not an nnU-Net checkpoint (no ``network_weights``).
    """
    import torch

    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
        if not trust:
            reason = str(err).strip().splitlines()
            unsafe = next((line.strip() for line in reason if "GLOBAL" in line or "Unsupported" in line), "")
            raise ArgumentError(
                f"checkpoint '{path}' cannot be read safely (torch.load with weights_only=True): it holds "
                f"objects other than tensors and numbers{': ' + unsafe[:200] if unsafe else ''}. Loading it "
                "fully can run code stored in the file: pass trust_checkpoint=True (--trust-checkpoint) "
                "only if you trust where the folder comes from",
                name="trust_checkpoint",
            ) from err
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ArgumentError(
            f"checkpoint '{path}' must be an nnU-Net checkpoint with 'network_weights', not one with {keys}",
            name="checkpoint",
        )
    return checkpoint


def strip_compile_prefix(state_dict: dict) -> dict:
    """A state dict without the ``_orig_mod.`` prefix ``torch.compile`` adds to every key."""
    prefix = "_orig_mod."
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict
