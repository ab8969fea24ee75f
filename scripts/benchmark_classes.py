#!/usr/bin/env python
"""Speed and peak memory of the engine's multi-target calls, on MONAI 3D UNets (CPU).

Cases (each a table; ratios are computed within one run):

- ``classes``: a UNet 3D with 4 output classes, Grad-CAM at the last decoder block, the 3
  foreground classes: one ``explain_classes`` call against a loop of three ``explain``
  calls and against one single-class call;
- ``organs``: a UNet 3D with 14 output classes (an abdominal-CT-like label set), the 13
  foreground classes in one call against the loop;
- ``methods``: every gradient method of one layer from one forward and one backward pass
  (``volcam.explain_methods``) against one method alone;
- ``sliding``: ``sliding_window_cam`` of one and of three classes over a CT-sized volume
  against ``monai.inferers.sliding_window_inference`` of the same network.

Every measurement runs in a fresh process (this script with ``--child``): the process
builds the network and the input, makes ``--warmup`` untimed calls, then times one call
and records its peak resident set size (the high-water mark is reset right before it, so
the peak includes the libraries, the model and the input, and "extra" is the growth during
the call). The runners are timed in rounds, one call each per round, in an order that
rotates every round, so slow drifts of a shared machine hit every runner alike; the
tables give the median over the rounds.

``--baseline PATH`` also times the loop of single-class calls (and the single-class call)
with the volcam checkout at PATH (e.g. a worktree of the main branch): "today's loop".

Examples::

    python scripts/benchmark_classes.py --quick --out bench-classes-quick
    python scripts/benchmark_classes.py --baseline ../main --out scripts/results/classes

Writes ``benchmark_classes.json`` and ``benchmark_classes.md`` to ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LAYER = "model.1.submodule.2"  # the last decoder block with features, before the output block
GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigengradcam")


# --------------------------------------------------------------------------- the child process
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _network(classes: int):
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(3, 1, classes, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2).eval()


def _runner(spec: dict) -> Any:
    """The call to measure, built from ``spec`` (in the child)."""
    import torch

    import volcam

    model = _network(spec["out_channels"])
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((1, 1, *spec["shape"]), generator=gen)
    kind, classes = spec["runner"], spec["classes"]
    if kind == "inference":

        def run():
            with torch.no_grad():
                return model(x)

        return run
    if kind == "sw inference":
        from monai.inferers import sliding_window_inference

        def run():
            with torch.no_grad():
                return sliding_window_inference(x, predictor=model, **spec["sw"])

        return run
    method = spec.get("method", "gradcam")
    cam = volcam.get_method(method)(model, LAYER)
    if kind == "single":
        return lambda: cam.explain(x, volcam.SegmentationTarget(classes[0]))
    if kind == "loop":
        return lambda: [cam.explain(x, volcam.SegmentationTarget(c)).heat for c in classes]
    if kind == "classes":
        return lambda: cam.explain_classes(x, classes)
    if kind == "classes batched":
        import volcam.methods._steps as steps

        steps.BATCHED_BACKWARD = True
        return lambda: cam.explain_classes(x, classes)
    if kind == "methods":
        return lambda: volcam.explain_methods(model, x, LAYER, GRADIENT_METHODS, targets=classes[0])
    if kind.startswith("sw cam"):
        from volcam.sliding import sliding_window_cam

        if len(classes) == 1:
            return lambda: sliding_window_cam(cam, x, targets=classes[0], **spec["sw"])
        return lambda: sliding_window_cam(cam, x, classes=classes, **spec["sw"])
    raise ValueError(f"unknown runner {kind!r}")


def child(spec: dict) -> dict:
    import gc
    import warnings

    import torch

    torch.set_num_threads(spec["threads"])
    warnings.simplefilter("ignore")  # empty maps of a random network are expected here
    run = _runner(spec)
    for _ in range(spec["warmup"]):
        run()
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    base = _status_kb("VmRSS")
    t0 = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t0
    del out
    peak = _status_kb("VmHWM")
    return {"ms": seconds * 1000, "peak_mb": peak / 1024, "extra_mb": (peak - base) / 1024 if reset else None}


# --------------------------------------------------------------------------- the parent
def measure(spec: dict, source: Path | None) -> dict:
    """Run one measurement in a fresh process (with the volcam of ``source`` when given)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(spec["threads"])}
    env["PYTHONPATH"] = str(source or ROOT)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(source or ROOT))
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench(name: str, runners: dict[str, tuple[dict, Path | None]], rounds: int, log) -> list[dict]:
    """Time every runner ``rounds`` times, one fresh process per call, rotating the order."""
    names = list(runners)
    samples: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            spec, source = runners[n]
            got = measure(spec, source)
            samples[n].append(got)
            log(f"  [{name}] round {r + 1}/{rounds} {n}: " + (got.get("error") or f"{got['ms']:.0f} ms"))
    rows = []
    for n in names:
        good = [s for s in samples[n] if "error" not in s]
        row: dict[str, Any] = {"case": name, "runner": n, "rounds": len(good)}
        if good:
            ms = [s["ms"] for s in good]
            row.update(
                median_ms=statistics.median(ms),
                min_ms=min(ms),
                max_ms=max(ms),
                peak_mb=statistics.median(s["peak_mb"] for s in good),
                extra_mb=statistics.median(s["extra_mb"] for s in good if s["extra_mb"] is not None)
                if any(s["extra_mb"] is not None for s in good)
                else None,
            )
        else:
            row["error"] = samples[n][0].get("error")
        rows.append(row)
    return rows


def _git(source: Path) -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=source, capture_output=True, text=True)
    return done.stdout.strip() or None


def cases(args) -> dict[str, dict[str, tuple[dict, Path | None]]]:
    quick = args.quick
    common = {"threads": args.threads, "warmup": 1}
    base = args.baseline
    out: dict[str, dict[str, tuple[dict, Path | None]]] = {}
    size = (64,) * 3 if quick else (128,) * 3
    spec = {**common, "out_channels": 4, "shape": size, "classes": [1, 2, 3]}
    runs: dict[str, tuple[dict, Path | None]] = {
        "inference": ({**spec, "runner": "inference"}, None),
        "single class": ({**spec, "runner": "single"}, None),
        "loop of 3": ({**spec, "runner": "loop"}, None),
        "3 classes, one call": ({**spec, "runner": "classes"}, None),
    }
    if args.batched:
        runs["3 classes, one call, vmap backward"] = ({**spec, "runner": "classes batched"}, None)
    if base:
        runs["single class (baseline)"] = ({**spec, "runner": "single"}, base)
        runs["loop of 3 (baseline)"] = ({**spec, "runner": "loop"}, base)
    out[f"classes: UNet 3D {size[0]}^3, 4 classes"] = runs
    size = (48,) * 3 if quick else (96,) * 3
    spec = {**common, "out_channels": 14, "shape": size, "classes": list(range(1, 14))}
    runs = {
        "inference": ({**spec, "runner": "inference"}, None),
        "single class": ({**spec, "runner": "single"}, None),
        "loop of 13": ({**spec, "runner": "loop"}, None),
        "13 classes, one call": ({**spec, "runner": "classes"}, None),
    }
    if base:
        runs["loop of 13 (baseline)"] = ({**spec, "runner": "loop"}, base)
    out[f"organs: UNet 3D {size[0]}^3, 14 classes"] = runs
    if args.methods:
        size = (64,) * 3 if quick else (128,) * 3
        spec = {**common, "out_channels": 4, "shape": size, "classes": [1]}
        out[f"methods: UNet 3D {size[0]}^3, {len(GRADIENT_METHODS)} gradient methods"] = {
            "gradcam alone": ({**spec, "runner": "single", "method": "gradcam"}, None),
            "hirescam alone": ({**spec, "runner": "single", "method": "hirescam"}, None),
            "all, shared pass": ({**spec, "runner": "methods"}, None),
        }
    if args.sliding:
        shape = (192, 192, 96) if quick else tuple(args.sliding_shape)
        sw = {"roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.25, "mode": "constant"}
        spec = {**common, "warmup": 0, "out_channels": 4, "shape": shape, "sw": sw}
        runs = {
            "MONAI sliding_window_inference": ({**spec, "runner": "sw inference", "classes": [1]}, None),
            "sliding_window_cam, 1 class": ({**spec, "runner": "sw cam", "classes": [1]}, None),
            "sliding_window_cam, 3 classes": ({**spec, "runner": "sw cam 3", "classes": [1, 2, 3]}, None),
        }
        if base:
            runs["sliding_window_cam, 1 class (baseline)"] = ({**spec, "runner": "sw cam", "classes": [1]}, base)
        out[f"sliding: UNet 3D {'x'.join(map(str, shape))}, ROI 96^3"] = runs
    return out


def ratios(rows: list[dict]) -> list[dict]:
    """The issue's targets, as ratios of medians measured in this run."""

    def t(case_prefix: str, runner: str) -> float | None:
        for r in rows:
            if r["case"].startswith(case_prefix) and r["runner"] == runner:
                return r.get("median_ms")
        return None

    checks = [
        ("classes", "3 classes, one call", "loop of 3 (baseline)", 0.6, "K-class call / today's loop of 3"),
        ("classes", "3 classes, one call", "loop of 3", None, "K-class call / loop of 3 with this engine"),
        ("classes", "3 classes, one call", "single class", 1.8, "K-class call / one single-class call"),
        ("organs", "13 classes, one call", "loop of 13 (baseline)", 0.45, "13 classes / today's loop of 13"),
        ("organs", "13 classes, one call", "loop of 13", None, "13 classes / loop of 13 with this engine"),
        ("methods", "all, shared pass", "gradcam alone", 1.3, "all gradient methods / Grad-CAM alone"),
        (
            "sliding",
            "sliding_window_cam, 1 class",
            "MONAI sliding_window_inference",
            2.0,
            "sliding CAM 1 class / inference",
        ),
        (
            "sliding",
            "sliding_window_cam, 3 classes",
            "MONAI sliding_window_inference",
            3.0,
            "sliding CAM 3 classes / inference",
        ),
        (
            "sliding",
            "sliding_window_cam, 1 class (baseline)",
            "MONAI sliding_window_inference",
            None,
            "today's sliding CAM 1 class / inference",
        ),
    ]
    out = []
    for case, num, den, limit, label in checks:
        a, b = t(case, num), t(case, den)
        if a is None or b is None:
            continue
        value = a / b
        out.append({"target": label, "value": value, "limit": limit, "met": None if limit is None else value <= limit})
    return out


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = ["# volcam benchmark: several targets per call", ""]
    lines += [f"- {k}: {v}" for k, v in env.items() if v is not None]
    lines += [
        "",
        "Median of the rounds (one fresh process per call, order rotating); peak = peak RSS of that "
        "process during the call (libraries, model and input included); extra = growth during the call.",
        "",
    ]
    by_case: dict[str, list[dict]] = {}
    for r in report["rows"]:
        by_case.setdefault(r["case"], []).append(r)
    for case, rows in by_case.items():
        lines += [
            f"## {case}",
            "",
            "| runner | median ms | min-max ms | peak MB | extra MB |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['runner']} | error: {r['error']} | | | |")
                continue
            extra = "-" if r.get("extra_mb") is None else f"{r['extra_mb']:.0f}"
            lines.append(
                f"| {r['runner']} | {r['median_ms']:.0f} | {r['min_ms']:.0f}-{r['max_ms']:.0f} | "
                f"{r['peak_mb']:.0f} | {extra} |"
            )
        lines.append("")
    lines += ["## Targets", "", "| ratio | measured | limit | met |", "|---|---:|---:|---|"]
    for t in report["targets"]:
        limit = "-" if t["limit"] is None else f"<= {t['limit']}"
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['value']:.2f} | {limit} | {met} |")
    return "\n".join(lines) + "\n"


def environment(args) -> dict:
    import monai
    import torch

    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": args.machine,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": args.threads,
        "rounds": args.rounds,
        "load_average_at_start": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "volcam": _git(ROOT),
        "baseline": f"{args.baseline} @ {_git(args.baseline)}" if args.baseline else None,
        "quick": args.quick,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (64^3, 48^3, 192x192x96) for development")
    p.add_argument("--rounds", type=int, default=3, help="timed calls per runner (default 3)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--baseline", type=Path, default=None, help="a volcam checkout to time today's loop with")
    p.add_argument("--no-methods", dest="methods", action="store_false", help="skip the shared-pass case")
    p.add_argument("--sliding", action="store_true", help="the sliding-window case (minutes on a CPU)")
    p.add_argument("--sliding-shape", type=int, nargs=3, default=(512, 512, 256))
    p.add_argument("--batched", action="store_true", help="also time the vmap-batched backward of the K classes")
    p.add_argument("--only", default=None, help="run only the cases whose name starts with one of these (comma list)")
    p.add_argument("--machine", default=platform.node(), help="a description of the machine, for the record")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.baseline:
        args.baseline = args.baseline.resolve()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    report: dict[str, Any] = {"environment": environment(args), "rows": [], "targets": []}
    todo = cases(args)
    if args.only:
        keep = tuple(s.strip() for s in args.only.split(","))
        todo = {k: v for k, v in todo.items() if k.startswith(keep)}
    for name, runners in todo.items():
        log(f"{name}")
        report["rows"] += bench(name, runners, args.rounds, log)
        report["targets"] = ratios(report["rows"])
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "benchmark_classes.json").write_text(json.dumps(report, indent=1))
            (args.out / "benchmark_classes.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
