"""``volcam run``: CAMs for every case of a NIfTI dataset described by a config.

The pieces, each usable on its own (and by a distributed runner that shards the cases):

- :class:`Runner` builds the network (once), the CAM method and the preprocessing from a
  :class:`~volcam.config.RunConfig`, and turns one loaded case into its outputs
  (:meth:`Runner.process`);
- :func:`run_cases` is the loop over a list of cases: resume check, data loading in
  MONAI ``DataLoader`` workers (overlapping the computation), progress bar and log line,
  per-case failure capture. It returns one :class:`CaseResult` per case;
- :func:`write_summary` / :func:`merge_summaries` write the summary table (CSV);
- :func:`run` ties them together and returns the exit status.

Outputs of a case go to ``<outputs.dir>/<case>/``::

    <case>/volcam-case.json                  record of the case (outputs and summary rows)
    <case>/<class>/heat.nii.gz               heat volume on the scan's own grid and affine
    <case>/<class>/<axis>/*.png              one overlay per slice of the scan
    <case>/<class>/figure.png                orthogonal views through the peak (or a mosaic)

They are written into a staging folder (``<outputs.dir>/.partial/``) and moved into place
with one rename when the case has succeeded, so a case folder is either complete or
absent: a failed or interrupted case leaves nothing behind. A case is complete when its
record exists, declares the outputs the config asks for, and every file it lists exists;
complete cases are skipped on a rerun unless ``overwrite`` is set.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from volcam.config import Case, RunConfig, load_config
from volcam.errors import ImageReadError, ShapeError, TargetError, ValueRangeError, VolcamError

__all__ = [
    "SUMMARY_COLUMNS",
    "RECORD_NAME",
    "CaseResult",
    "Runner",
    "CaseDataset",
    "run_cases",
    "write_summary",
    "merge_summaries",
    "read_summary",
    "run",
]

RECORD_NAME = "volcam-case.json"
STAGING = ".partial"

#: columns of ``summary.csv``, one row per case and target class
SUMMARY_COLUMNS = [
    "case",  # case identifier (its output folder)
    "class",  # output channel explained
    "class_name",
    "status",  # ok | skipped (complete from an earlier run) | failed
    "error",  # why a case failed
    "note",  # e.g. an empty target
    "seconds",  # time spent on this class of this case (compute and writing)
    "image",
    "label",
    "predicted_voxels",  # voxels predicted as the class (network grid)
    "predicted_volume_ml",  # their volume, from the voxel size of the network grid
    "peak_x",  # hottest voxel, world coordinates in mm (RAS+, as in the NIfTI affine)
    "peak_y",
    "peak_z",
    "peak_voxel",  # its index "i j k" in the scan's own grid
    "energy_in_prediction",  # fraction of the map's sum inside the predicted region of the class
    "energy_in_label",  # ... inside the label of the class (when a label is given)
    "heat_nifti",  # output files, relative to the output folder
    "pngs",  # number of slice PNGs written
    "figure",
]


@dataclass
class CaseResult:
    """The outcome of one case: its status and one summary row per target class."""

    case: Case
    status: str
    rows: list[dict] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


def _describe(err: BaseException) -> str:
    """A one-line reason for the summary table."""
    if isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower():
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"out of memory ({first[:200]}); set sliding_window.roi_size, a smaller sw_batch_size, or device: cpu"
    text = " ".join(str(err).split())
    if len(text) > 500:
        text = text[:497] + "..."
    return f"{type(err).__name__}: {text}" if not isinstance(err, VolcamError) else text


# --------------------------------------------------------------------------- loading


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def _split_loading(pre):
    """Split a preprocessing Compose into (loading transforms, the rest)."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    items = list(pre.transforms)
    n = 0
    while n < len(items) and isinstance(items[n], (LoadImaged, EnsureChannelFirstd)):
        n += 1
    return Compose(items[:n]), Compose(items[n:])


def load_case(case: Case, pre, spatial_dims: int, *, need_label: bool = False) -> dict:
    """Load and preprocess one case; raise a volcam error that says what is wrong with it.

    Returns:
        ``{"image": MetaTensor [C, *S] (network grid), "label": ... or absent,
        "source": MetaTensor [C, *S_src] (the scan as loaded, with its affine)}``.
    """
    loading, rest = _split_loading(pre)
    data = {"image": str(case.image)}
    if case.label is not None:
        data["label"] = str(case.label)
    elif need_label:
        raise TargetError(f"case '{case.id}' must have a label file when targets.mask is 'label', not none")
    for key, path in list(data.items()):
        if not Path(path).is_file():
            raise ImageReadError(f"{key} must be an existing file, not '{path}'", path=path)
    try:
        loaded = loading(data)
    except Exception as err:
        what = "image and label must be readable image files" if case.label else "image must be a readable image file"
        files = f"'{case.image}'" + (f" and '{case.label}'" if case.label else "")
        raise ImageReadError(f"{what}, not {files} ({_first_line(err)})", path=case.image) from err
    source = loaded["image"]
    n_spatial = source.ndim - 1
    if n_spatial != spatial_dims:
        raise ShapeError(
            f"image must be {spatial_dims}D like the network (channel + {spatial_dims} spatial axes), "
            f"not {n_spatial}D with shape {list(source.shape[1:])} ('{case.image}')",
            expected=f"{spatial_dims} spatial axes",
            actual_shape=tuple(source.shape),
        )
    finite = torch.isfinite(source)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        what = "no finite voxel (all NaN or infinite)" if bad == finite.numel() else f"{bad} NaN or infinite voxels"
        raise ValueRangeError(f"image must contain only finite values, not {what} ('{case.image}')")
    if "label" in loaded and tuple(loaded["label"].shape[1:]) != tuple(source.shape[1:]):
        raise ShapeError(
            f"label must have the image's shape {list(source.shape[1:])}, not {list(loaded['label'].shape[1:])} "
            f"('{case.label}')",
            expected=str(list(source.shape[1:])),
            actual_shape=tuple(loaded["label"].shape),
        )
    keep = source.clone()  # transforms may update meta in place; keep the scan as loaded
    try:
        out = rest(dict(loaded))
    except Exception as err:
        raise VolcamError(f"preprocessing failed on '{case.image}': {_first_line(err)}") from err
    out["source"] = keep
    return out


class CaseDataset(torch.utils.data.Dataset):
    """Cases loaded (in ``DataLoader`` workers): each item is ``{"index", "data" | "error"}``.

    A case that cannot be loaded becomes an item carrying its error, so one bad file does
    not stop the loader.
    """

    def __init__(self, cases: Sequence[Case], pre, spatial_dims: int, need_label: bool = False):
        self.cases = list(cases)
        self.pre = pre
        self.spatial_dims = spatial_dims
        self.need_label = need_label

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict:
        start = time.perf_counter()
        try:
            data = load_case(self.cases[index], self.pre, self.spatial_dims, need_label=self.need_label)
            return {"index": index, "data": data, "error": None, "seconds": time.perf_counter() - start}
        except Exception as err:  # reported per case, in the summary
            return {"index": index, "data": None, "error": _describe(err), "seconds": time.perf_counter() - start}


def _first(batch: list) -> Any:
    return batch[0]


# --------------------------------------------------------------------------- one case


def _world(affine, index) -> list[float]:
    """World coordinates (x, y, z) in mm of a voxel index (2D images lie in their slice, k = 0)."""
    a = torch.as_tensor(affine, dtype=torch.float64)
    n = a.shape[0] - 1
    idx = [float(i) for i in index][:n] + [0.0] * max(0, n - len(index))
    world = (a @ torch.tensor([*idx, 1.0], dtype=torch.float64))[:n].tolist()
    return world + [0.0] * (3 - len(world))


def _voxel_ml(affine) -> float:
    """Volume of one voxel in ml; for a 2D image with a 4x4 affine, a pixel times the slice thickness."""
    a = torch.as_tensor(affine, dtype=torch.float64)
    n = a.shape[0] - 1
    return abs(float(torch.linalg.det(a[:n, :n]))) / 1000.0


def label_region(label: torch.Tensor, c: int) -> torch.Tensor:
    """The voxels of class ``c`` in a label ``[C, *S]``: ``label[0] == c`` for a label map,
    ``label[c] > 0`` for a multi-channel (one channel per class) label."""
    if label.shape[0] > 1:
        if c >= label.shape[0]:
            raise TargetError(f"a label with {label.shape[0]} channels has no channel for class {c}")
        return label[c] > 0
    return label[0] == c


def _fraction(heat: torch.Tensor, region: torch.Tensor) -> float:
    total = float(heat.sum())
    return float((heat * region).sum()) / total if total > 0 else float("nan")


class Runner:
    """Everything built once per run: network on its device, CAM method, preprocessing.

    Args:
        config: the run configuration.
        output_dir: overrides ``outputs.dir``.
        overwrite: redo cases whose outputs are complete.
    """

    def __init__(self, config: RunConfig, *, output_dir: str | os.PathLike | None = None, overwrite: bool = False):
        self.config = config
        self.device = config.device
        self.out = Path(output_dir if output_dir is not None else config["outputs.dir"])
        self.overwrite = overwrite
        self.classes = list(config["targets.classes"])
        self.names = config.class_names
        self.mask = config["targets.mask"]
        self.activation = config["targets.activation"]
        self.outputs = config["outputs"]
        self.sliding = config["sliding_window"]
        self.pre = config.build_preprocessing()
        self.model = config.build_network().to(self.device)
        self.cam = config.build_cam(self.model, normalize=not self.outputs["raw_heat"])
        net = config.parser.get("network_def") or {}
        channels = net.get("in_channels") if isinstance(net, dict) else None
        self.in_channels = channels if isinstance(channels, int) else None
        #: extra entries of every case record (a distributed run notes the rank that wrote it)
        self.record_info: dict = {}

    # ---- what a complete case looks like
    def declared(self) -> dict:
        """The outputs a case must have, for the completeness check of a rerun."""
        o = self.outputs
        return {
            "classes": {str(c): self.names[c] for c in self.classes},
            "heat_nifti": bool(o["heat_nifti"]),
            "raw_heat": bool(o["raw_heat"]),
            "axes": list(o["axes"]) if o["pngs"] else [],
            "figure": o["figure"],
        }

    def case_dir(self, case: Case) -> Path:
        return self.out / case.id

    def completed(self, case: Case) -> dict | None:
        """The record of a complete earlier run of ``case``, or None."""
        record_path = self.case_dir(case) / RECORD_NAME
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            return None
        if record.get("declared") != self.declared() or record.get("image") != str(case.image):
            return None
        if not all((self.case_dir(case) / f).is_file() for f in record.get("files", [])):
            return None
        return record

    # ---- the work
    def _targets(self, c: int, label) -> Any:
        import volcam

        act = self.activation
        if self.mask == "whole":
            return volcam.SegmentationTarget(c, mask="all", activation=act)
        if self.mask == "label":
            return volcam.SegmentationTarget(c, mask=label_region(label, c)[None].float(), activation=act)
        return volcam.SegmentationTarget(c, activation=act)

    def explain(self, x: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
        """``(heat [1, 1, *S], output [1, classes, *S])`` for one input, whole or by windows."""
        if self.sliding["roi_size"]:
            from volcam.sliding import sliding_window_cam

            s = self.sliding
            res = sliding_window_cam(
                self.cam, x, s["roi_size"], s["sw_batch_size"], s["overlap"], s["mode"], targets=target
            )
            return res.heat, res.output
        res = self.cam.explain(x, targets=target)
        return res.heat, res.output

    def process(self, case: Case, data: dict, *, log_warnings: list | None = None) -> CaseResult:
        """Explain one loaded case (see :func:`load_case`) and write its outputs.

        Raises whatever goes wrong; :func:`run_cases` turns it into a failed result.
        """
        import warnings

        from volcam import io as vio

        image = data["image"]
        if self.in_channels is not None and image.shape[0] != self.in_channels:
            raise ShapeError(
                f"image must have {self.in_channels} channel(s) like network_def.in_channels, not {image.shape[0]} "
                f"(shape {list(image.shape)}, '{case.image}')",
                expected=f"{self.in_channels} channels",
                actual_shape=tuple(image.shape),
            )
        x = image.as_tensor()[None].float().to(self.device)
        label = data["label"].as_tensor().to(self.device) if "label" in data else None
        source = data["source"]
        voxel_ml = _voxel_ml(image.affine)

        stage = self.out / STAGING / f"{case.id}.{os.getpid()}"
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir(parents=True)
        rows, files = [], []
        try:
            for c in self.classes:
                start = time.perf_counter()
                name = self.names[c]
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", RuntimeWarning)
                    heat, output = self.explain(x, self._targets(c, label))
                if output.shape[1] == 1 or self.activation == "sigmoid":
                    pred = output[0, c] > 0
                else:
                    pred = output[0].argmax(0) == c
                h = heat[0, 0]
                notes = sorted({str(w.message).split(";")[0] for w in caught if "empty" in str(w.message)})
                if not notes and not bool(h.max() > 0):
                    notes.append(
                        "the map is zero everywhere: no positive evidence at this layer (try another layer or method)"
                    )
                note = "; ".join(notes)
                row = {
                    "case": case.id,
                    "class": c,
                    "class_name": name,
                    "status": "ok",
                    "error": "",
                    "note": note,
                    "image": str(case.image),
                    "label": str(case.label) if case.label else "",
                    "predicted_voxels": int(pred.sum()),
                    "predicted_volume_ml": round(int(pred.sum()) * voxel_ml, 4),
                    "energy_in_prediction": _fraction(h, pred),
                    "energy_in_label": _fraction(h, label_region(label, c)) if label is not None else "",
                }
                # back to the scan's own grid
                heat_src = vio.invert_to_source(heat[0].detach().cpu(), data, self.pre, key="image")
                hs = heat_src.as_tensor()[0] if hasattr(heat_src, "as_tensor") else heat_src[0]
                peak = torch.nonzero(hs == hs.max())[0].tolist()
                world = _world(source.affine, peak)
                if bool(hs.max() > hs.min()):  # a flat (all-zero) map has no peak
                    row.update(
                        peak_x=round(world[0], 3),
                        peak_y=round(world[1], 3),
                        peak_z=round(world[2], 3),
                        peak_voxel=" ".join(str(i) for i in peak),
                    )
                cdir = stage / name
                cdir.mkdir(parents=True, exist_ok=True)
                row.update(self._export(case, source, heat_src, world, cdir, stage, files))
                row["seconds"] = round(time.perf_counter() - start, 3)
                rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
            record = {
                "case": case.id,
                "image": str(case.image),
                "label": str(case.label) if case.label else None,
                "declared": self.declared(),
                "files": files,
                "rows": rows,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **self.record_info,
            }
            tmp = stage / (RECORD_NAME + ".tmp")
            tmp.write_text(json.dumps(record, indent=1, default=_json_default))
            tmp.replace(stage / RECORD_NAME)
            final = self.case_dir(case)
            if final.exists():
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            stage.replace(final)
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)
        return CaseResult(case, "ok", rows, seconds=sum(r["seconds"] for r in rows))

    def _export(self, case, source, heat_src, peak_world, cdir: Path, stage: Path, files: list) -> dict:
        """Write the heat NIfTI, slice PNGs and figure of one class; return their summary fields."""
        from volcam import figures
        from volcam import io as vio

        o = self.outputs
        rel = lambda p: Path(p).relative_to(stage).as_posix()
        fields = {"heat_nifti": "", "pngs": 0, "figure": ""}
        if o["heat_nifti"]:
            path = vio.save_heat(heat_src, cdir / "heat.nii.gz", reference=source, raw=o["raw_heat"])
            files.append(rel(path))
            fields["heat_nifti"] = f"{case.id}/{rel(path)}"
        img = source
        affine = source.affine
        style = dict(cmap=o["cmap"], alpha=o["alpha"], window=o["window"])
        if o["pngs"]:
            for axis in o["axes"]:
                paths = figures.save_slice_pngs(
                    img, heat_src, cdir / axis, affine=affine, axis=axis, convention=o["convention"], **style
                )
                files.extend(rel(p) for p in paths)
                fields["pngs"] += len(paths)
        if o["figure"]:
            if o["figure"] == "mosaic":
                fig = figures.mosaic(img, heat_src, affine=affine, axis=o["axes"][0], select="hottest", **style)
            else:
                fig = figures.orthogonal_views(img, heat_src, affine=affine, point=tuple(peak_world), **style)
            path = figures.save_figure(fig, cdir / "figure.png")
            files.append(rel(path))
            fields["figure"] = f"{case.id}/{rel(path)}"
        return fields


def _json_default(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


# --------------------------------------------------------------------------- the loop


def _format_row(row: dict) -> str:
    parts = [f"{row['class_name']}: {row['predicted_voxels']} vox"]
    if row.get("note"):
        parts.append(row["note"].split(":")[0])
    if row.get("peak_x") not in (None, ""):
        parts.append(f"peak ({row['peak_x']:.1f}, {row['peak_y']:.1f}, {row['peak_z']:.1f}) mm")
    e = row.get("energy_in_prediction")
    if isinstance(e, float) and not math.isnan(e):
        parts.append(f"{100 * e:.0f}% in prediction")
    e = row.get("energy_in_label")
    if isinstance(e, float) and not math.isnan(e):
        parts.append(f"{100 * e:.0f}% in label")
    return ", ".join(parts)


def _failed(runner: Runner, case: Case, error: str, seconds: float) -> CaseResult:
    rows = [
        {
            "case": case.id,
            "class": c,
            "class_name": runner.names[c],
            "status": "failed",
            "error": error,
            "seconds": round(seconds, 3),
            "image": str(case.image),
            "label": str(case.label) if case.label else "",
        }
        for c in runner.classes
    ]
    return CaseResult(case, "failed", rows, error=error, seconds=seconds)


def run_cases(
    runner: Runner,
    cases: Sequence[Case],
    *,
    num_workers: int | None = None,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
    on_result: Callable[[int, CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Process ``cases`` in order and return one :class:`CaseResult` per case.

    Complete cases are skipped (status ``skipped``, rows from their record) unless the
    runner overwrites. The others are loaded in ``num_workers`` DataLoader workers
    (default ``data.num_workers``) while the previous case is computed. A case that fails
    (unreadable file, wrong shape, non-finite values, out of memory, ...) is recorded with
    its reason and the loop goes on. A progress bar and one log line per case are shown
    unless ``quiet``. ``on_result(i, result)`` is called as each case ends, quiet or not.
    """
    from monai.data import DataLoader
    from tqdm.auto import tqdm

    cases = list(cases)
    results: dict[int, CaseResult] = {}
    todo = []
    for i, case in enumerate(cases):
        record = None if runner.overwrite else runner.completed(case)
        if record is not None:
            rows = [{**r, "status": "skipped"} for r in record.get("rows", [])]
            results[i] = CaseResult(case, "skipped", rows)
        else:
            todo.append(i)
    # staged files of interrupted earlier attempts at these cases (named <case>.<pid>)
    ids = {case.id for case in cases}
    staging = runner.out / STAGING
    for leftover in staging.iterdir() if staging.is_dir() else ():
        match = re.fullmatch(r"(.+)\.\d+", leftover.name)
        if match and match.group(1) in ids:
            shutil.rmtree(leftover, ignore_errors=True)

    bar = tqdm(total=len(cases), unit="case", disable=quiet, file=sys.stderr, dynamic_ncols=True)
    write = log or (lambda line: tqdm.write(line, file=sys.stdout))
    width = len(str(len(cases)))

    def report(i: int, res: CaseResult) -> None:
        bar.update(1)
        if on_result is not None:
            on_result(i, res)
        if quiet:
            return
        head = f"[{i + 1:>{width}}/{len(cases)}] {res.case.id}"
        if res.status == "failed":
            write(f"{head}  FAILED  {res.error}")
        else:
            write(f"{head}  ok  {res.seconds:.1f} s  " + " | ".join(_format_row(r) for r in res.rows))

    if results:  # complete from an earlier run: one line for all of them
        bar.update(len(results))
        if on_result is not None:
            for i, res in sorted(results.items()):
                on_result(i, res)
        if not quiet:
            write(f"{len(results)} of {len(cases)} case(s) already complete, skipped (--overwrite redoes them)")
    if todo:
        workers = runner.config["data.num_workers"] if num_workers is None else num_workers
        dataset = CaseDataset(
            [cases[i] for i in todo], runner.pre, runner.config.spatial_dims, need_label=runner.mask == "label"
        )
        loader = DataLoader(
            dataset, batch_size=1, shuffle=False, num_workers=min(workers, len(todo)), collate_fn=_first
        )
        try:
            for item in loader:
                i = todo[item["index"]]
                case = cases[i]
                if item["error"] is not None:
                    res = _failed(runner, case, item["error"], item["seconds"])
                else:
                    start = time.perf_counter()
                    try:
                        res = runner.process(case, item["data"])
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except Exception as err:  # recorded, the run goes on
                        if runner.device.type == "cuda":
                            torch.cuda.empty_cache()
                        res = _failed(runner, case, _describe(err), time.perf_counter() - start)
                        if os.environ.get("VOLCAM_DEBUG"):
                            traceback.print_exc()
                results[i] = res
                report(i, res)
        finally:
            bar.close()
    else:
        bar.close()
    return [results[i] for i in range(len(cases))]


# --------------------------------------------------------------------------- summary


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_summary(results: Sequence[CaseResult] | Sequence[dict], path: str | os.PathLike) -> Path:
    """Write the summary rows (of results, or rows) to a CSV file, atomically."""
    rows = [r for res in results for r in res.rows] if results and isinstance(results[0], CaseResult) else results
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in SUMMARY_COLUMNS})
    tmp.replace(path)
    return path


def read_summary(path: str | os.PathLike) -> list[dict]:
    """The rows of a summary CSV, as dictionaries of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def merge_summaries(
    paths: Sequence[str | os.PathLike], path: str | os.PathLike, order: Sequence[str] | None = None
) -> Path:
    """Merge summary CSVs (e.g. one per shard) into one, in case ``order`` if given."""
    rows = [r for p in paths for r in read_summary(p)]
    if order is not None:
        rank = {c: i for i, c in enumerate(order)}
        rows.sort(key=lambda r: (rank.get(r["case"], len(rank)), int(r["class"] or 0)))
    return write_summary(rows, path)


# --------------------------------------------------------------------------- run


def run(
    config: RunConfig | str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    output: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> int:
    """Run a config over its dataset; return the exit status (0: every case ok, 1: some failed).

    Writes ``<outputs.dir>/summary.csv`` with one row per case and class. Under ``torchrun``
    the cases are shared among the processes (see :mod:`volcam.distributed`).
    """
    from volcam import distributed

    if distributed.detect() is not None:  # started by torchrun (or srun + torchrun): shard the cases
        return distributed.run(config, overrides=overrides, output=output, overwrite=overwrite, quiet=quiet)
    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    cases = config.list_cases()
    runner = Runner(config, output_dir=output, overwrite=overwrite)
    runner.out.mkdir(parents=True, exist_ok=True)
    if not quiet:
        how = f"sliding windows {runner.sliding['roi_size']}" if runner.sliding["roi_size"] else "whole volumes"
        print(
            f"volcam run: {len(cases)} case(s), {config['cam.method']} on {config['cam.target_layers']}, "
            f"classes {runner.classes}, {how}, device {runner.device}, outputs in {runner.out}"
        )
    results = run_cases(runner, cases, quiet=quiet)
    summary = write_summary(results, runner.out / "summary.csv")
    staging = runner.out / STAGING
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()
    failed = [r for r in results if r.status == "failed"]
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}
    if not quiet:
        print(
            f"volcam run: {counts['ok']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
            f"summary: {summary}"
        )
    if failed:
        print(
            f"volcam run: {len(failed)} of {len(results)} case(s) failed: "
            + ", ".join(r.case.id for r in failed)
            + f" (reasons in {summary})",
            file=sys.stderr,
        )
    return 1 if failed else 0
