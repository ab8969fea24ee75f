"""What ``volcam compare`` reports: the means per (method, layer), the recommendation, and the
files it writes (``compare.csv``, ``compare.md``, ``summary.json``, ``plots/``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["COLUMNS", "markdown", "means_of", "recommend", "write_outputs"]

COLUMNS = [
    "case",
    "class",
    "class_name",
    "method",
    "layer",
    "role",
    "energy_in_prediction",
    "energy_in_label",
    "random_energy",
    "energy_ratio",
    "pointing",
    "deletion_auc",
    "insertion_auc",
    "empty",
    "randomised_spearman",
    "seconds",
    "peak_mb",
]


def _mean(values: Sequence[Any]) -> float:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else float("nan")


def means_of(rows: list[dict[str, Any]], methods: list[str], layers: list[tuple[str, str]]) -> list[dict[str, Any]]:
    means = []
    for layer, role in layers:
        for method in methods:
            mine = [r for r in rows if r["method"] == method and r["layer"] == layer]
            if not mine:
                continue
            entry: dict[str, Any] = {"method": method, "layer": layer, "role": role, "rows": len(mine)}
            for key in ("energy_in_prediction", "energy_in_label", "energy_ratio", "deletion_auc", "insertion_auc"):
                entry[key] = _mean([r.get(key) for r in mine])
            entry["min_energy_ratio"] = min(
                (r["energy_ratio"] for r in mine if not math.isnan(r["energy_ratio"])), default=float("nan")
            )
            entry["pointing"] = _mean([float(r["pointing"]) for r in mine])
            entry["empty"] = _mean([float(r["empty"]) for r in mine])
            entry["randomised_spearman"] = _mean([r.get("randomised_spearman") for r in mine])
            entry["seconds"] = _mean([r["seconds"] for r in mine])
            entry["peak_mb"] = max(r["peak_mb"] for r in mine)
            means.append(entry)
    return means


def recommend(means: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    def ok(m: dict[str, Any]) -> bool:
        changed = math.isnan(m["randomised_spearman"]) or m["randomised_spearman"] < 0.5
        return m["pointing"] >= 0.5 and m["empty"] < 0.5 and changed and not math.isnan(m["energy_in_prediction"])

    good = [m for m in means if ok(m)]
    if not good:
        return None, (
            "no (method, layer) puts its peak inside the prediction in most cases with maps that change under "
            "randomisation; look at the table and the montage, or try other layers (--layers)"
        )
    best = max(
        good, key=lambda m: (m["energy_in_prediction"], m["insertion_auc"] if not math.isnan(m["insertion_auc"]) else 0)
    )
    reason = (
        f"recommended: cam.method: {best['method']}, cam.target_layers: {best['layer']} ({best['role']}): "
        f"{best['energy_in_prediction']:.0%} of the heat inside the prediction, {best['energy_ratio']:.1f} times a "
        f"random map (at least {best['min_energy_ratio']:.1f}), peak inside it in {best['pointing']:.0%} of the cases"
    )
    return best, reason


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3g}"
    return "" if value is None else str(value)


def markdown(means: list[dict[str, Any]]) -> str:
    keys = [
        ("method", "method"),
        ("layer", "layer"),
        ("energy_in_prediction", "energy in prediction"),
        ("energy_ratio", "x random"),
        ("pointing", "peak inside"),
        ("deletion_auc", "deletion AUC"),
        ("insertion_auc", "insertion AUC"),
        ("empty", "empty"),
        ("randomised_spearman", "randomised rho"),
        ("seconds", "s / map"),
        ("peak_mb", "peak MB"),
    ]
    lines = ["| " + " | ".join(title for _, title in keys) + " |", "|" + "---|" * len(keys)]
    for m in means:
        lines.append("| " + " | ".join(_cell(m.get(k)) for k, _ in keys) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(
    result: Any,
    case: tuple[Any, Any],
    runner: Any,
    methods: list[str],
    layers: list[tuple[str, str]],
    montage: dict[tuple[str, str], torch.Tensor],
) -> None:
    """Write ``result``'s files (a :class:`~volcam.run.compare.Comparison`) to ``result.output``."""
    import csv
    import io

    from volcam.io import atomic_write

    out = result.output
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
    text = buf.getvalue()
    atomic_write(out / "compare.csv", lambda tmp: Path(tmp).write_text(text))
    md = "# volcam compare\n\n" + markdown(result.means) + "\n" + result.reason + "\n"
    atomic_write(out / "compare.md", lambda tmp: Path(tmp).write_text(md))
    summary = {
        "methods": methods,
        "layers": [{"name": n, "role": r} for n, r in layers],
        "means": result.means,
        "recommendation": result.recommendation,
        "reason": result.reason,
    }
    content = json.dumps(summary, indent=1, default=lambda v: None)
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(content))
    from volcam.run.compare_plots import plot_energy, plot_montage

    plot_energy(result.means, methods, [n for n, _ in layers], out / "plots" / "energy.png")
    if montage:
        plot_montage(case, runner, montage, methods, [n for n, _ in layers], out / "plots" / "montage.png")
