"""Plots of the metrics with matplotlib (imported here only, when a function is called).

Figures are built with :class:`matplotlib.figure.Figure` directly, without pyplot, so
nothing depends on the interactive backend or on global state.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["plot_curves", "plot_sanity", "save_figure"]

_KIND_TITLES = {
    "deletion": "Deletion (lower area is better)",
    "insertion": "Insertion (higher area is better)",
}


_SANITY_AXES = {
    "cascading": "randomised from the output down to here",
    "independent": "layer randomised alone",
    "label": "class explained instead",
}


def _short(name: str, width: int = 30) -> str:
    """A layer name cut to its last ``width`` characters, at a dot where possible."""
    if len(name) <= width:
        return name
    tail = name[-width:]
    cut = tail.find(".")
    return "…" + (tail[cut:] if 0 <= cut < width - 6 else tail)


def _mean_band(values: torch.Tensor):
    v = values.detach().float().cpu()
    mean = v.nanmean(dim=0)
    if v.shape[0] > 1:
        lo = torch.nanquantile(v, 0.25, dim=0)
        hi = torch.nanquantile(v, 0.75, dim=0)
    else:
        lo = hi = mean
    return mean.numpy(), lo.numpy(), hi.numpy()


def plot_curves(curves: Mapping, *, title: str | None = None):
    """Deletion and insertion curves, one panel per kind, one line per map.

    Args:
        curves: ``{label: {"deletion": Curve, "insertion": Curve}}`` (e.g. one label per
            CAM method plus a random-map reference), or a single ``{"deletion": Curve, ...}``.
            Each line is the batch mean of the relative score, the band its interquartile
            range, and the legend gives the mean area under the curve.
        title: figure title.

    Returns:
        :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    from volcam.metrics.faithfulness import Curve

    if curves and all(isinstance(v, Curve) for v in curves.values()):
        curves = {"": curves}
    kinds = [k for k in ("deletion", "insertion") if any(k in v for v in curves.values())]
    fig = Figure(figsize=(5.0 * max(len(kinds), 1), 4.0), layout="constrained")
    axes = fig.subplots(1, max(len(kinds), 1), squeeze=False)[0]
    for ax, kind in zip(axes, kinds):
        for label, by_kind in curves.items():
            if kind not in by_kind:
                continue
            curve = by_kind[kind]
            x = curve.fractions.detach().float().cpu().numpy()
            mean, lo, hi = _mean_band(curve.relative)
            auc = float(curve.auc.detach().float().nanmean())
            name = f"{label} (AUC {auc:.3f})" if label else f"AUC {auc:.3f}"
            (line,) = ax.plot(x, mean, marker=".", label=name)
            if curve.relative.shape[0] > 1:
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(_KIND_TITLES[kind])
        ax.set_xlabel("fraction of voxels " + ("removed" if kind == "deletion" else "revealed"))
        ax.set_ylabel("score, 0 = baseline image, 1 = image")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def plot_sanity(results: Mapping, *, title: str | None = None):
    """Spearman correlation and SSIM between original and randomised maps, per step.

    Args:
        results: ``{label: SanityResult}``, e.g. ``{"cascading": ..., "independent": ...}``
            (see :mod:`volcam.metrics.sanity`). One row of panels per result: Spearman on
            the left, SSIM on the right, one tick per randomised layer (or swapped class),
            the batch mean as a line, the interquartile range as a band, the flag threshold
            as a dashed line. Ticks are numbered as the ``step`` column of ``sanity.csv``;
            long layer names are cut to their end.
        title: figure title.

    Returns:
        :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    n = len(results)
    longest = max((len(r.steps) for r in results.values()), default=1)
    fig = Figure(figsize=(max(8.0, 0.45 * longest * 2 + 3), 3.6 * max(n, 1)), layout="constrained")
    axes = fig.subplots(max(n, 1), 2, squeeze=False)
    for row, (label, result) in zip(axes, results.items()):
        x = list(range(len(result.steps)))
        batch = result.spearman.shape[1]
        for ax, name, values in ((row[0], "Spearman", result.spearman), (row[1], "SSIM", result.ssim)):
            mean, lo, hi = _mean_band(values.T)
            style = "none" if result.kind == "label" else "-"  # classes are not an ordered axis
            (line,) = ax.plot(
                x, mean, marker="o", linestyle=style, label=f"mean of {batch} maps" if batch > 1 else "map"
            )
            if values.shape[1] > 1:
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0, label="interquartile range")
            if name == "Spearman":
                ax.axhline(
                    result.threshold,
                    color="crimson",
                    linestyle="--",
                    linewidth=1,
                    label=f"unchanged if >= {result.threshold:g}",
                )
            ax.set_ylim(-1.05, 1.05)
            ax.set_xticks(x)
            ax.set_xticklabels(
                [f"{i + 1}. {_short(s)}" for i, s in enumerate(result.steps)], rotation=60, ha="right", fontsize="small"
            )
            ax.set_ylabel(f"{name} with original map")
            ax.set_xlabel(_SANITY_AXES.get(result.kind, "step"), fontsize="small")
            ax.set_title(f"{label}: {name}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def save_figure(fig, path, *, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
