"""What ``volcam evaluate`` writes: the tables (CSV, JSON), the plots and the printed summary."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["METRICS", "SANITY_KINDS", "summarise", "write_outputs", "plot", "table", "mean", "number"]

SANITY_KINDS = ("cascading", "independent", "label")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    _write_atomic(path, buf.getvalue())


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, bool):
        return int(v)
    return "" if v is None else v


def number(v) -> float:
    return float(v)


def _json_safe(obj):
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def mean(values) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else float("nan")


METRICS = ["energy", "pointing", "iou", "dice", "deletion_auc", "insertion_auc"]


def summarise(metric_rows, sanity_rows, classes, names) -> dict:
    out: dict = {}
    for c in classes:
        rows = [r for r in metric_rows if r["class"] == c]
        maps = list(dict.fromkeys(r["map"] for r in rows))
        entry = {
            "maps": {m: {k: mean(r.get(k) for r in rows if r["map"] == m) for k in METRICS} for m in maps},
            "cases": len({r["case"] for r in rows}),
        }
        sanity = {}
        for check in SANITY_KINDS:
            last = [r for r in sanity_rows if r["class"] == c and r["check"] == check and r["unchanged"] != ""]
            if last:
                steps = [r for r in sanity_rows if r["class"] == c and r["check"] == check]
                valid = [r["spearman_support"] for r in steps if not math.isnan(r["spearman_support"])]
                sanity[check] = {
                    "cases": len(last),
                    "unchanged": sum(bool(r["unchanged"]) for r in last),
                    "final_spearman": mean(r["spearman_support"] for r in last),
                    "final_spearman_all_voxels": mean(r["spearman"] for r in last),
                    "final_ssim": mean(r["ssim"] for r in last),
                    "max_spearman": max(valid, default=float("nan")),
                    "min_spearman": min(valid, default=float("nan")),
                }
        entry["sanity"] = sanity
        out[names[c]] = entry
    return out


def write_outputs(out, options, config, metric_rows, component_rows, sanity_rows, curves_json, summary) -> None:
    _write_csv(
        out / "metrics.csv",
        metric_rows,
        [
            "case",
            "class",
            "class_name",
            "map",
            "reference",
            "reference_volume",
            "score",
            *METRICS,
            "baseline_kept",
            "components",
        ],
    )
    _write_csv(
        out / "components.csv",
        component_rows,
        ["case", "class", "class_name", "map", "component", "volume", "energy", "peak", "hit", "iou", "dice"],
    )
    _write_csv(
        out / "sanity.csv",
        sanity_rows,
        [
            "case",
            "class",
            "class_name",
            "check",
            "step",
            "randomised",
            "spearman",
            "spearman_support",
            "ssim",
            "flagged",
            "unchanged",
        ],
    )
    _write_atomic(out / "curves.json", json.dumps(_json_safe(curves_json)) + "\n")
    settings = {
        "config": str(config.path) if config.path else None,
        "method": config["cam.method"],
        "target_layers": config["cam.target_layers"],
        "against": options.against,
        "level": options.level,
        "steps": options.steps,
        "baseline": options.baseline,
        "sigma": options.sigma,
        "sanity": options.sanity,
        "sanity_cases": options.sanity_cases,
        "threshold": options.threshold,
        "seed": options.seed,
    }
    _write_atomic(
        out / "summary.json", json.dumps(_json_safe({"settings": settings, "classes": summary}), indent=2) + "\n"
    )


def plot(out, pooled, sanity_plots, names, method) -> None:
    import torch

    from volcam.metrics.faithfulness import Curve
    from volcam.metrics.plots import plot_curves, plot_sanity, save_figure

    for c, by_map in pooled.items():
        merged: dict[str, dict[str, Any]] = {}
        for map_name, by_kind in by_map.items():
            merged[map_name] = {}
            for kind, curves in by_kind.items():
                merged[map_name][kind] = Curve(
                    kind,
                    curves[0].fractions,
                    torch.cat([cv.scores for cv in curves]),
                    torch.cat([cv.reference for cv in curves]),
                    torch.cat([cv.baseline_score for cv in curves]),
                    torch.cat([cv.relative for cv in curves]),
                    torch.cat([cv.auc for cv in curves]),
                )
        n = next(iter(merged.values()))["deletion"].auc.numel()
        versus = " vs random map" if "random" in merged else ""
        fig = plot_curves(merged, title=f"{names[c]}: {method}{versus}, {n} case(s)")
        save_figure(fig, out / "plots" / f"curves_{names[c]}.png")
    for case_id, c, results in sanity_plots:
        fig = plot_sanity(results, title=f"{case_id}, {names[c]}: {method} under randomisation")
        save_figure(fig, out / "plots" / f"sanity_{case_id}_{names[c]}.png")


def table(summary: dict) -> str:
    lines = [f"{'class':<12}{'map':<12}" + "".join(f"{k:>15}" for k in METRICS)]
    for cname, entry in summary.items():
        for m, vals in entry["maps"].items():
            lines.append(f"{cname:<12}{m:<12}" + "".join(f"{vals[k]:>15.3f}" for k in METRICS))
        for check, s in entry["sanity"].items():
            if check == "cascading":
                said = f"Spearman {s['final_spearman']:.3f}, SSIM {s['final_ssim']:.3f} after the full cascade"
            else:
                said = f"highest Spearman over the steps {s['max_spearman']:.3f}"
            lines.append(
                f"{cname:<12}{check + ' randomisation':<24} {said}; "
                f"unchanged in {s['unchanged']} of {s['cases']} case(s)"
            )
    return "\n".join(lines)
