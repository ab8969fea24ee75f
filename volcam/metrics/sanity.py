"""Sanity checks for saliency maps after Adebayo et al., "Sanity Checks for Saliency
Maps", NeurIPS 2018.

A map that explains the *model* must change when the model's weights are destroyed, and
a map that explains a *class* must change when another class is explained.

- **Cascading randomisation**: re-initialise the layers with parameters one at a time,
  from the output back to the input, cumulatively (step ``i`` has layers ``1..i``
  randomised), recomputing the map after each step.
- **Independent randomisation**: re-initialise one layer at a time, the rest trained.
- **Label randomisation**: keep the model, swap the explained class for each other class
  of the output (same region). Adebayo et al. retrain on permuted labels; swapping the
  target is the check that needs no training.

Each step is compared with the original map by Spearman rank correlation and SSIM
(:mod:`volcam.metrics.similarity`). A step is *flagged* when the Spearman correlation is
still at least ``threshold`` (default 0.5: more than half of the rank ordering survives);
the map is reported *unchanged* when it is flagged after the full cascade (cascading),
or at every step (independent, label).

Everything runs on a deep copy of the model, so the user's model is never touched; the
global random state is left as it was (each step seeds its own generator from ``seed``
and the step's layer, so a layer gets the same random weights in the cascading and the
independent check). Re-initialisation uses each module's own ``reset_parameters()`` (the
PyTorch default initialisation); parameters of modules without one are drawn from a
truncated normal with the trained tensor's standard deviation.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from volcam.errors import ArgumentError, LayerNotFoundError, TargetError
from volcam.layers import find_layer, list_layers, resolve_layers
from volcam.metrics.similarity import body_region, spearman, spearman_in, ssim
from volcam.postprocess import normalize
from volcam.targets import BoundTarget, ClassifierTarget, SegmentationTarget, TargetSpec, resolve_targets

__all__ = [
    "SanityResult",
    "model_randomisation",
    "label_randomisation",
    "parameter_layers",
    "randomise_module",
]


@dataclass
class SanityResult:
    """Similarity of randomised maps to the original, step by step.

    Attributes:
        kind: ``"cascading"``, ``"independent"`` or ``"label"``.
        steps: one name per step: the layer randomised at that step (for cascading, the
            layer added to the randomised top of the network), or the class explained.
        spearman: ``[T, B]`` rank correlation with the original map over all voxels (NaN for a
            sample whose original map is constant: there is nothing to compare, and a warning
            says so). Background both maps leave at zero inflates it: see ``spearman_support``.
        spearman_support: ``[T, B]`` the same inside the body (the voxels of the input above its
            background level, :func:`~volcam.metrics.similarity.body_region`), which padding or
            air around the body does not change; the verdict (:attr:`flagged`,
            :attr:`unchanged`) rests on it.
        ssim: ``[T, B]`` SSIM with the original map (both min-max normalised; NaN likewise).
        threshold: Spearman value at or above which a step is flagged.
        original: ``[B, 1, *S]`` the original map.
        maps: ``[T, B, 1, *S]`` the randomised maps when asked for (``keep_maps=True``),
            else None.
    """

    kind: str
    steps: list[str]
    spearman: torch.Tensor
    ssim: torch.Tensor
    threshold: float
    original: torch.Tensor
    maps: torch.Tensor | None = field(default=None, repr=False)
    spearman_support: torch.Tensor | None = None

    @property
    def flagged(self) -> torch.Tensor:
        """``[T, B]`` bool: the map barely changed at this step (Spearman over the maps'
        supports >= threshold)."""
        robust = self.spearman_support if self.spearman_support is not None else self.spearman
        return robust >= self.threshold

    @property
    def unchanged(self) -> torch.Tensor:
        """``[B]`` bool: the map fails the check. Cascading: still flagged with every listed
        layer randomised. Independent and label: flagged at every step."""
        if self.kind == "cascading":
            return self.flagged[-1]
        return self.flagged.all(dim=0)


def parameter_layers(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Names of the modules that hold parameters of their own, from the output back to the input.

    The order is the reverse of the order in which the modules run on ``example_input``
    (one forward pass without gradients on the model; its state is left as it was).
    Modules that do not run are left out.
    """
    own = {n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    ran = [info.name for info in list_layers(model, example_input)]
    return [n for n in reversed(ran) if n in own]


def randomise_module(module: nn.Module, generator_seed: int) -> None:
    """Re-initialise every parameter inside ``module`` in place, reproducibly.

    Modules with ``reset_parameters()`` use it (norm layers also reset their running
    statistics); other parameters get a truncated normal with their own standard deviation
    (0.02 where that is zero). The global random state is restored afterwards.
    """
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        # seed only the generators in use (the CPU one and the model's GPUs), all restored on exit
        torch.default_generator.manual_seed(generator_seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(generator_seed)
        handled: set[int] = set()
        for sub in module.modules():
            if hasattr(sub, "reset_parameters") and callable(sub.reset_parameters):
                sub.reset_parameters()
                if hasattr(sub, "reset_running_stats"):
                    sub.reset_running_stats()
                handled.update(id(p) for p in sub.parameters(recurse=False))
        with torch.no_grad():
            for p in module.parameters():
                if id(p) not in handled:
                    std = float(p.std()) if p.numel() > 1 else 0.0
                    nn.init.trunc_normal_(p, std=std if std > 0 else 0.02)


def _copy_cam(cam, model: nn.Module):
    """The same CAM method and settings on another copy of the model."""
    new = copy.copy(cam)
    new.model = model
    new.layers = resolve_layers(model, [name for name, _ in cam.layers])
    return new


def _frozen_targets(targets: TargetSpec, output: torch.Tensor):
    """Bind ``targets`` to the original model's output, as built-in targets (one per sample).

    The randomised models then explain the same class over the same region as the original,
    whatever they predict. User callables are passed on as they are.
    Returns ``(targets for explain, BoundTarget or None)``.
    """
    bound = resolve_targets(targets, output)
    if not isinstance(bound, BoundTarget):
        return targets, None
    return _as_builtin(bound), bound


def _as_builtin(bound: BoundTarget) -> list:
    cats = bound.categories.tolist()
    if bound.masks is None:
        return [ClassifierTarget(c) for c in cats]
    return [SegmentationTarget(c, mask=bound.masks[b : b + 1]) for b, c in enumerate(cats)]


def _compare(
    original: torch.Tensor, heat: torch.Tensor, region: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spearman (all voxels, and inside ``region``) and SSIM per sample; NaN where the
    original map is constant (nothing to compare)."""
    dims = tuple(range(1, original.ndim))
    flat = original.amax(dim=dims) == original.amin(dim=dims)
    nan = torch.full_like(flat, float("nan"), dtype=torch.float32)
    rho = torch.where(flat, nan, spearman(original, heat))
    rho_support = torch.where(flat, nan, spearman_in(original, heat, region))
    sim = torch.where(flat, nan, ssim(normalize(original), normalize(heat)))
    return rho, rho_support, sim


def _warn_constant(original: torch.Tensor) -> None:
    dims = tuple(range(1, original.ndim))
    flat = original.amax(dim=dims) == original.amin(dim=dims)
    if bool(flat.any()):
        warnings.warn(
            f"the original map of sample(s) {torch.nonzero(flat).flatten().tolist()} is constant (all zero after "
            "the ReLU, or an empty target); their sanity scores are NaN. Choose another layer or target.",
            RuntimeWarning,
            stacklevel=3,
        )


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1 <= threshold <= 1:
        raise ArgumentError(f"`threshold` must be a number in [-1, 1] (a Spearman correlation), not {threshold!r}")
    return float(threshold)


def model_randomisation(
    cam,
    x: torch.Tensor,
    targets: TargetSpec = None,
    *,
    mode: str = "cascading",
    layers: Sequence[str] | None = None,
    seed: int = 0,
    threshold: float = 0.5,
    keep_maps: bool = False,
) -> SanityResult:
    """Model-parameter randomisation test (cascading or independent).

    Args:
        cam: a CAM object (``volcam.GradCAM(model, ...)`` or any method); its model is
            deep-copied and never modified.
        x: ``[B, C, *S]`` input on the model's device.
        targets: what to explain, as for ``cam(x, targets)``. Built-in targets are bound
            to the original model's prediction and kept for every step (same class, same
            region); user callables are used as given.
        mode: ``"cascading"`` (cumulative, from the output back to the input) or
            ``"independent"`` (one layer at a time).
        layers: dotted names of the modules to re-initialise, one step each, in the order
            given (every parameter inside a named module is re-initialised). Default:
            every module with parameters of its own, from the output back to the input
            (:func:`parameter_layers`).
        seed: seed of the re-initialisation (step ``i`` uses ``seed + i``).
        threshold: Spearman correlation at or above which a step is flagged.
        keep_maps: also return the randomised maps.

    Returns:
        :class:`SanityResult` with one step per layer.
    """
    if mode not in ("cascading", "independent"):
        raise ArgumentError(f"`mode` must be 'cascading' or 'independent', not {mode!r}")
    threshold = _check_threshold(threshold)
    original_result = cam.explain(x, targets)
    frozen, _ = _frozen_targets(targets, original_result.output)
    original = original_result.heat
    region = body_region(x)
    _warn_constant(original)

    work = copy.deepcopy(cam.model)
    if layers is None:
        names = parameter_layers(work, x)
    else:
        if isinstance(layers, str):
            layers = [layers]
        names = [find_layer(work, name)[0] for name in layers]
    if not names:
        raise LayerNotFoundError("the model must have at least one module with parameters to randomise, not none")
    modules = dict(work.named_modules())
    work_cam = _copy_cam(cam, work)

    rho, rho_support, sim, maps = [], [], [], []
    for i, name in enumerate(names):
        module = modules[name]
        saved = None
        if mode == "independent":
            saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
        randomise_module(module, seed + i)
        heat = work_cam.explain(x, frozen).heat
        if saved is not None:
            module.load_state_dict(saved)
        r, rs, s = _compare(original, heat, region)
        rho.append(r)
        rho_support.append(rs)
        sim.append(s)
        if keep_maps:
            maps.append(heat)
    return SanityResult(
        kind=mode,
        steps=list(names),
        spearman=torch.stack(rho),
        spearman_support=torch.stack(rho_support),
        ssim=torch.stack(sim),
        threshold=threshold,
        original=original,
        maps=torch.stack(maps) if keep_maps else None,
    )


def label_randomisation(
    cam,
    x: torch.Tensor,
    targets: TargetSpec = None,
    *,
    categories: Sequence[int] | None = None,
    threshold: float = 0.5,
    keep_maps: bool = False,
) -> SanityResult:
    """Explain other classes over the same region and compare with the original map.

    Args:
        cam: a CAM object; the model is used as it is (not modified).
        x: ``[B, C, *S]`` input.
        targets: the original target (None, an int, ``SegmentationTarget``,
            ``ClassifierTarget`` or a list of them); it must be a built-in target so that
            its class can be swapped.
        categories: the classes to explain instead, one step each. Default: every class
            of the output except each sample's own (step ``j`` explains, for every
            sample, the ``j``-th class other than its own).
        threshold: Spearman correlation at or above which a step is flagged.
        keep_maps: also return the maps of the other classes.

    Returns:
        :class:`SanityResult` with ``kind="label"``, one step per class.
    """
    threshold = _check_threshold(threshold)
    original_result = cam.explain(x, targets)
    output = original_result.output
    bound = resolve_targets(targets, output)
    if not isinstance(bound, BoundTarget):
        raise TargetError(
            "label randomisation needs a target whose class can be swapped (None, an int, SegmentationTarget "
            f"or ClassifierTarget), not {targets!r}"
        )
    n_classes = output.shape[1]
    if n_classes < 2:
        raise TargetError(f"label randomisation needs a model output with at least 2 classes, not {n_classes}")
    own = bound.categories
    if categories is None:
        others = torch.stack([torch.tensor([c for c in range(n_classes) if c != int(o)]) for o in own.cpu()], dim=1)
        others = others.to(own.device)  # [K-1, B]
        uniform = bool((own == own[0]).all())
        names = (
            [f"class {int(c)}" for c in others[:, 0]]
            if uniform
            else [f"other class {j + 1}" for j in range(len(others))]
        )
    else:
        bad = [c for c in categories if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < n_classes]
        if bad or not categories:
            raise TargetError(
                f"`categories` must be a non-empty list of classes in [0, {n_classes - 1}], not {list(categories)!r}"
            )
        others = torch.tensor(list(categories), device=own.device)[:, None].expand(-1, own.numel())
        names = [f"class {c}" for c in categories]
    original = original_result.heat
    region = body_region(x)
    _warn_constant(original)
    rho, rho_support, sim, maps = [], [], [], []
    for row in others:
        swapped = _as_builtin(BoundTarget(row.clone(), bound.masks))
        heat = cam.explain(x, swapped).heat
        r, rs, s = _compare(original, heat, region)
        rho.append(r)
        rho_support.append(rs)
        sim.append(s)
        if keep_maps:
            maps.append(heat)
    return SanityResult(
        kind="label",
        steps=names,
        spearman=torch.stack(rho),
        spearman_support=torch.stack(rho_support),
        ssim=torch.stack(sim),
        threshold=threshold,
        original=original,
        maps=torch.stack(maps) if keep_maps else None,
    )
