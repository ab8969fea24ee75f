"""`volcam run` end to end: every output checked, bad cases, resume after a kill."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from pipeline_helpers import config, write_case

from volcam import cli, pipeline
from volcam.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def write_yaml(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def axial_count(path: Path) -> int:
    img = nib.load(str(path))
    axis = int(np.argmax(np.abs(img.affine[2, :3])))  # voxel axis closest to world S
    return img.shape[axis]


def files_under(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def dataset(tmp_path):
    for i in range(3):
        write_case(tmp_path / "images", f"case{i}", seed=i, label_folder=tmp_path / "labels")
    return tmp_path


HEAT_ONLY = {"pngs": False, "figure": False}


def test_cli_end_to_end_checks_every_output(dataset, capsys):
    (dataset / "images" / "case2.nii.gz").unlink()
    cfg = write_yaml(dataset / "run.yaml", config(dataset, data={"num_workers": 2}))
    status = cli.main(["run", str(cfg), "--override", "outputs.axes=[axial, coronal]"])
    assert status == 0
    out = dataset / "out"
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [(r["case"], r["class_name"], r["status"]) for r in rows] == [
        (f"case{i}", name, "ok") for i in range(2) for name in ("bright", "dark")
    ]
    printed = capsys.readouterr().out
    assert "[1/2] case0  ok" in printed and "2 done, 0 skipped, 0 failed" in printed
    for r in rows:
        src = nib.load(str(dataset / "images" / f"{r['case']}.nii.gz"))
        heat = nib.load(str(out / r["heat_nifti"]))
        # the heat volume lies on the scan's own grid
        assert heat.shape == src.shape
        np.testing.assert_allclose(heat.affine, src.affine, atol=1e-5)
        values = np.asarray(heat.dataobj)
        assert values.dtype == np.float32 and values.min() >= 0 and values.max() <= 1 and values.max() > 0.5
        # one PNG per slice along each axis
        case_dir = out / r["case"] / r["class_name"]
        n_axial = len(list((case_dir / "axial").glob("*.png")))
        assert n_axial == axial_count(dataset / "images" / f"{r['case']}.nii.gz")
        assert int(r["pngs"]) == n_axial + len(list((case_dir / "coronal").glob("*.png")))
        assert (out / r["figure"]).stat().st_size > 1000
        # summary rows complete, and their numbers agree with the files
        empty = [k for k in pipeline.SUMMARY_COLUMNS if r[k] == "" and k not in ("error", "note")]
        assert empty == [], empty
        peak = [int(v) for v in r["peak_voxel"].split()]
        assert values[tuple(peak)] == values.max()
        world = src.affine @ np.array([*peak, 1.0])
        np.testing.assert_allclose([float(r["peak_x"]), float(r["peak_y"]), float(r["peak_z"])], world[:3],
                                   atol=1e-3)
        assert 0 <= float(r["energy_in_prediction"]) <= 1 and 0 <= float(r["energy_in_label"]) <= 1
        assert float(r["predicted_volume_ml"]) == pytest.approx(int(r["predicted_voxels"]) * 0.01, abs=1e-3)
    assert not (out / ".partial").exists()


def test_label_mask_and_energy_inside_label(dataset):
    """mask: label explains the labelled region: the energy inside it is computed on the network grid."""
    cfg = load_config(config(dataset, targets={"mask": "label", "classes": [1]}, outputs=HEAT_ONLY))
    assert pipeline.run(cfg, quiet=True) == 0
    rows = pipeline.read_summary(dataset / "out" / "summary.csv")
    assert len(rows) == 3 and all(r["pngs"] == "0" and r["figure"] == "" for r in rows)
    assert all(float(r["energy_in_label"]) > 0 for r in rows)


def test_sliding_window_run(dataset):
    cfg = load_config(config(dataset, sliding_window={"roi_size": [12, 12, 8], "sw_batch_size": 4},
                             outputs=HEAT_ONLY, targets={"classes": [1]}))
    assert pipeline.run(cfg, quiet=True) == 0
    rows = pipeline.read_summary(dataset / "out" / "summary.csv")
    heat = nib.load(str(dataset / "out" / rows[0]["heat_nifti"]))
    assert heat.shape == (20, 18, 12) and 0.5 < float(np.asarray(heat.dataobj).max()) <= 1.0


def test_bad_cases_are_listed_and_leave_nothing(dataset, capsys):
    images = dataset / "images"
    (images / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    nib.save(nib.Nifti1Image(np.zeros((20, 18), np.float32), np.eye(4)), images / "flat2d.nii.gz")
    nib.save(nib.Nifti1Image(np.full((20, 18, 12), np.nan, np.float32), np.eye(4)), images / "allnan.nii.gz")
    cfg = write_yaml(dataset / "run.yaml", config(dataset, data={"num_workers": 1}, outputs=HEAT_ONLY))
    status = cli.main(["run", str(cfg), "--quiet"])
    assert status == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "3 of 6 case(s) failed: allnan, corrupt, flat2d" in captured.err
    rows = {(r["case"], r["class"]): r for r in csv.DictReader(open(dataset / "out" / "summary.csv"))}
    assert len(rows) == 12
    reasons = {case: rows[(case, "1")]["error"] for case in ("corrupt", "flat2d", "allnan")}
    assert "image must be a readable image file, not" in reasons["corrupt"] and "corrupt.nii.gz" in reasons["corrupt"]
    assert "image must be 3D like the network" in reasons["flat2d"] and "not 2D with shape [20, 18]" in reasons["flat2d"]
    assert "must contain only finite values, not no finite voxel" in reasons["allnan"]
    for case in ("corrupt", "flat2d", "allnan"):
        assert rows[(case, "1")]["status"] == rows[(case, "2")]["status"] == "failed"
    assert all(rows[(f"case{i}", c)]["status"] == "ok" for i in range(3) for c in "12")
    # nothing partial: only the good cases' folders and the summary
    assert sorted(p.name for p in (dataset / "out").iterdir()) == ["case0", "case1", "case2", "summary.csv"]


def test_failure_mid_case_removes_its_outputs(dataset, monkeypatch):
    """A failure after the first class's files are written (here an injected CUDA OOM) leaves nothing."""
    cfg = load_config(config(dataset, outputs=HEAT_ONLY))
    real = pipeline.Runner.explain
    calls = []

    def explain(self, x, target):
        calls.append(target.category)
        if len(calls) == 4:  # case1, second class
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, x, target)

    monkeypatch.setattr(pipeline.Runner, "explain", explain)
    assert pipeline.run(cfg, quiet=True) == 1
    rows = pipeline.read_summary(dataset / "out" / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed", "ok", "ok"]
    assert rows[2]["error"].startswith("out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)")
    assert "sliding_window.roi_size" in rows[2]["error"]
    assert sorted(p.name for p in (dataset / "out").iterdir()) == ["case0", "case2", "summary.csv"]


def test_rerun_skips_complete_cases(dataset):
    (dataset / "images" / "case2.nii.gz").unlink()
    cfg = config(dataset, outputs=HEAT_ONLY)
    assert pipeline.run(load_config(cfg), quiet=True) == 0
    out = dataset / "out"
    before = files_under(out / "case0")
    assert pipeline.run(load_config(cfg), quiet=True) == 0
    assert files_under(out / "case0") == before
    rows = pipeline.read_summary(out / "summary.csv")
    assert {r["status"] for r in rows} == {"skipped"} and all(r["heat_nifti"] for r in rows)
    # a case with a missing file is redone
    (out / "case1" / "dark" / "heat.nii.gz").unlink()
    assert pipeline.run(load_config(cfg), quiet=True) == 0
    assert [r["status"] for r in pipeline.read_summary(out / "summary.csv")] == ["skipped"] * 2 + ["ok"] * 2
    assert files_under(out / "case0") == before
    # so is every case when the config asks for other outputs, and every case with --overwrite
    cfg["outputs"]["raw_heat"] = True
    assert pipeline.run(load_config(cfg), quiet=True) == 0
    assert {r["status"] for r in pipeline.read_summary(out / "summary.csv")} == {"ok"}
    before = files_under(out / "case0")
    assert pipeline.run(load_config(cfg), quiet=True, overwrite=True) == 0
    after = files_under(out / "case0")
    assert after.keys() == before.keys() and all(after[k] > before[k] for k in before)


def test_killed_run_resumes_without_redoing_finished_cases(dataset):
    gate = dataset / "gate"
    cfg = config(dataset, outputs=HEAT_ONLY)
    gated = dict(cfg, network_def={**cfg["network_def"], "_target_": "pipeline_helpers.GatedUNet",
                                   "gate": str(gate), "block_after": 3})
    path = write_yaml(dataset / "gated.yaml", gated)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "MPLBACKEND": "Agg"}
    proc = subprocess.Popen([sys.executable, "-m", "volcam", "run", str(path), "--quiet"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = dataset / "out"
    try:
        deadline = time.monotonic() + 120
        # forward 4 is case1's second class: case0 is complete, case1 half written when it blocks
        while not Path(str(gate) + ".waiting").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached the second case"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (out / "case0" / pipeline.RECORD_NAME).is_file()
    assert not (out / "case1").exists() and any((out / ".partial").iterdir())  # partial stays staged
    finished = files_under(out / "case0")

    assert pipeline.run(load_config(cfg), quiet=True) == 0
    rows = pipeline.read_summary(out / "summary.csv")
    assert [r["status"] for r in rows] == ["skipped", "skipped", "ok", "ok", "ok", "ok"]
    assert files_under(out / "case0") == finished  # same files, same mtimes
    assert sorted(p.name for p in out.iterdir()) == ["case0", "case1", "case2", "summary.csv"]
