"""The pictures of ``volcam compare``: energy by method and layer, and a montage of one case's maps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["plot_energy", "plot_montage"]


def _short(layer: str, width: int = 28) -> str:
    return layer if len(layer) <= width else "..." + layer[-(width - 3) :]


def plot_energy(means: list[dict[str, Any]], methods: list[str], layers: list[str], path: Path) -> Path:
    """A grid of the mean energy inside the prediction, methods in rows and layers in columns."""
    import matplotlib.figure

    from volcam.figures import save_figure

    grid = np.full((len(methods), len(layers)), np.nan)
    for m in means:
        grid[methods.index(m["method"]), layers.index(m["layer"])] = m["energy_in_prediction"]
    fig = matplotlib.figure.Figure(figsize=(1.6 + 1.5 * len(layers), 0.9 + 0.45 * len(methods)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i in range(len(methods)):
        for j in range(len(layers)):
            value = grid[i, j]
            text = "" if math.isnan(value) else f"{value:.2f}"
            ax.text(j, i, text, ha="center", va="center", color="white" if value < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(len(layers)), [_short(name) for name in layers], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    ax.set_title("energy inside the prediction (mean over cases and classes)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05)
    return save_figure(fig, path)


def plot_montage(
    case: tuple[Any, Any],
    runner: Any,
    maps: dict[tuple[str, str], torch.Tensor],
    methods: list[str],
    layers: list[str],
    path: Path,
) -> Path:
    """The maps of one case and class: methods in rows, layers in columns, the same slice through
    the predicted region (its centre) on the network's grid."""
    import matplotlib.figure

    from volcam.figures import CaseFigures, save_figure

    case_, data = case
    image = data["image"][:1]
    figures = CaseFigures(image, raster=bool(data.get("raster", False)), window=runner.config.outputs.window)
    first = next(iter(maps.values()))
    x = data["image"].as_tensor()[None].float().to(runner.device)
    with torch.no_grad():
        from volcam.selectors import select

        output = select(runner.model(x), runner.config.cam.model_output, what="model output")
    pred = runner.predicted(output, runner.classes[0]).cpu()
    scene = figures.scene
    axis = 2  # axial (a 2D image: its own plane)
    centre = torch.nonzero(pred).float().mean(0) if bool(pred.any()) else torch.tensor(first.shape).float() / 2
    k = int(round(float(scene.canonical.to_canonical_index(centre.tolist())[axis]))) if first.ndim == 3 else 0
    k = min(max(k, 0), scene.shape[axis] - 1)
    fig = matplotlib.figure.Figure(
        figsize=(1.2 + 2.0 * len(layers), 0.6 + 2.0 * len(methods)), facecolor="black", layout="constrained"
    )
    axes = fig.subplots(len(methods), len(layers), squeeze=False)
    for i, method in enumerate(methods):
        for j, layer in enumerate(layers):
            ax = axes[i, j]
            heat = maps.get((method, layer))
            if heat is not None:
                view = scene.with_heat(heat.numpy())
                ax.imshow(view.rgb(axis, k), aspect=view.aspect(axis), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(_short(layer, 22), color="white", fontsize=7)
            if j == 0:
                ax.set_ylabel(method, color="white", fontsize=8)
    fig.suptitle(
        f"{case_.id}, {runner.names[runner.classes[0]]}: slice {k} through the predicted region", color="white"
    )
    return save_figure(fig, path)
