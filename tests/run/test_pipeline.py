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

ROOT = Path(__file__).resolve().parents[2]


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
    status = cli.main(["run", str(cfg), "--no-supervise", "--override", "outputs.axes=[axial, coronal]"])
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
        empty = [k for k in pipeline.SUMMARY_COLUMNS if r[k] == "" and k not in ("error", "note", "series")]
        assert empty == [], empty
        peak = [int(v) for v in r["peak_voxel"].split()]
        assert values[tuple(peak)] == values.max()
        world = src.affine @ np.array([*peak, 1.0])
        np.testing.assert_allclose([float(r["peak_x"]), float(r["peak_y"]), float(r["peak_z"])], world[:3], atol=1e-3)
        assert 0 <= float(r["energy_in_prediction"]) <= 1 and 0 <= float(r["energy_in_label"]) <= 1
        assert float(r["predicted_volume_ml"]) == pytest.approx(int(r["predicted_voxels"]) * 0.01, abs=1e-3)
    assert not (out / ".volcam").exists()


def test_label_mask_and_energy_inside_label(dataset):
    """mask: label explains the labelled region: the energy inside it is computed on the network grid."""
    cfg = load_config(config(dataset, targets={"mask": "label", "classes": [1]}, outputs=HEAT_ONLY))
    assert pipeline.run(cfg, quiet=True) == 0
    rows = pipeline.read_summary(dataset / "out" / "summary.csv")
    assert len(rows) == 3 and all(r["pngs"] == "0" and r["figure"] == "" for r in rows)
    assert all(float(r["energy_in_label"]) > 0 for r in rows)


def test_sliding_window_run(dataset):
    cfg = load_config(
        config(
            dataset,
            sliding_window={"roi_size": [12, 12, 8], "sw_batch_size": 4},
            outputs=HEAT_ONLY,
            targets={"classes": [1]},
        )
    )
    assert pipeline.run(cfg, quiet=True) == 0
    rows = pipeline.read_summary(dataset / "out" / "summary.csv")
    heat = nib.load(str(dataset / "out" / rows[0]["heat_nifti"]))
    assert heat.shape == (20, 18, 12) and 0.5 < float(np.asarray(heat.dataobj).max()) <= 1.0


def test_2d_images_with_a_2d_network(tmp_path):
    affine = np.diag([0.7, 0.7, 3.0, 1.0])
    affine[:3, 3] = [-10.0, 20.0, 5.0]
    (tmp_path / "images").mkdir()
    for i in range(2):
        image = np.random.default_rng(i).normal(size=(24, 20)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine), tmp_path / "images" / f"xray{i}.nii.gz")
    net = {**config(tmp_path)["network_def"], "spatial_dims": 2}
    torch.manual_seed(0)
    from monai.networks.nets import UNet

    torch.save(UNet(2, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0).state_dict(), tmp_path / "model.pt")
    cfg = config(
        tmp_path,
        network_def=net,
        preprocessing=[{"_target_": "DivisiblePadd", "keys": "image", "k": 2}],
        data={"label_folder": None},
        targets={"classes": [2]},
    )
    assert pipeline.run(load_config(cfg), quiet=True) == 0
    rows = pipeline.read_summary(tmp_path / "out" / "summary.csv")
    assert [r["case"] for r in rows] == ["xray0", "xray1"]
    for r in rows:
        heat = nib.load(str(tmp_path / "out" / r["heat_nifti"]))
        assert heat.shape == (24, 20)
        np.testing.assert_allclose(heat.affine, affine)
        i, j = (int(v) for v in r["peak_voxel"].split())
        assert [float(r["peak_x"]), float(r["peak_y"]), float(r["peak_z"])] == pytest.approx(
            [-10 + 0.7 * i, 20 + 0.7 * j, 5.0], abs=1e-3
        )
        assert float(r["predicted_volume_ml"]) == pytest.approx(
            int(r["predicted_voxels"]) * 0.7 * 0.7 * 3 / 1000, abs=1e-4
        )
        assert r["pngs"] == "1" and (tmp_path / "out" / r["figure"]).is_file()


def test_bad_cases_are_listed_and_leave_nothing(dataset, capsys):
    images = dataset / "images"
    (images / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    nib.save(nib.Nifti1Image(np.zeros((20, 18), np.float32), np.eye(4)), images / "flat2d.nii.gz")
    nib.save(nib.Nifti1Image(np.full((20, 18, 12), np.nan, np.float32), np.eye(4)), images / "allnan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((20, 18, 12, 2), np.float32), np.eye(4)), images / "twochannel.nii.gz")
    cfg = write_yaml(dataset / "run.yaml", config(dataset, data={"num_workers": 1}, outputs=HEAT_ONLY))
    status = cli.main(["run", str(cfg), "--quiet", "--no-supervise"])
    assert status == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "4 of 7 case(s) failed: allnan, corrupt, flat2d, twochannel" in captured.err
    rows = {(r["case"], r["class"]): r for r in csv.DictReader(open(dataset / "out" / "summary.csv"))}
    assert len(rows) == 14
    reasons = {case: rows[(case, "1")]["error"] for case in ("corrupt", "flat2d", "allnan", "twochannel")}
    assert "image must be a readable image file, not" in reasons["corrupt"] and "corrupt.nii.gz" in reasons["corrupt"]
    assert (
        "image must be 3D like the network" in reasons["flat2d"] and "not 2D with shape [20, 18]" in reasons["flat2d"]
    )
    assert "must contain only finite values, not no finite voxel" in reasons["allnan"]
    assert "image must have 1 channel(s) like network_def.in_channels, not 2" in reasons["twochannel"]
    for case in ("corrupt", "flat2d", "allnan", "twochannel"):
        assert rows[(case, "1")]["status"] == rows[(case, "2")]["status"] == "failed"
    assert all(rows[(f"case{i}", c)]["status"] == "ok" for i in range(3) for c in "12")
    # nothing partial: only the good cases' folders and the summary
    assert sorted(p.name for p in (dataset / "out").iterdir()) == [
        "case0",
        "case1",
        "case2",
        "index.html",
        "summary.csv",
    ]


def test_failure_mid_case_removes_its_outputs(dataset, monkeypatch):
    """A failure after the first class's files are written (here an injected CUDA OOM) leaves nothing."""
    from volcam.run.export import CaseExporter

    cfg = load_config(config(dataset, outputs=HEAT_ONLY))
    real = CaseExporter._write_class
    calls = []

    def write_class(self, out, cls, *args, **kwargs):
        calls.append((out.case.id, cls.category))
        if len(calls) == 4:  # case1, second class: its first class's files are written
            assert (args[-1] / "1" / "heat.nii.gz").is_file() or any(args[-1].rglob("heat.nii.gz"))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, out, cls, *args, **kwargs)

    monkeypatch.setattr(CaseExporter, "_write_class", write_class)
    assert pipeline.run(cfg, quiet=True) == 1
    rows = pipeline.read_summary(dataset / "out" / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed", "ok", "ok"]
    assert rows[2]["error"].startswith("out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)")
    assert "sliding_window.roi_size" in rows[2]["error"]
    assert sorted(p.name for p in (dataset / "out").iterdir()) == ["case0", "case2", "index.html", "summary.csv"]


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
    gated = dict(
        cfg,
        network_def={
            **cfg["network_def"],
            "_target_": "pipeline_helpers.GatedUNet",
            "gate": str(gate),
            "block_after": 2,
        },
    )
    path = write_yaml(dataset / "gated.yaml", gated)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "MPLBACKEND": "Agg"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "volcam", "run", str(path), "--quiet", "--no-supervise"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out = dataset / "out"
    try:
        deadline = time.monotonic() + 120
        # forward 3 is case1's (one probe of the memory estimate, then one pass per case): case0 is complete
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
    assert not (out / "case1").exists()  # a case is in place complete or not at all
    assert (out / ".volcam" / "lock").is_file()  # the killed run's lock stays; the next run takes it over
    finished = files_under(out / "case0")

    gate.touch()  # the same (gated) network, which no longer waits
    assert pipeline.run(load_config(gated), quiet=True) == 0
    rows = pipeline.read_summary(out / "summary.csv")
    assert [r["status"] for r in rows] == ["skipped", "skipped", "ok", "ok", "ok", "ok"]
    assert files_under(out / "case0") == finished  # same files, same mtimes
    assert sorted(p.name for p in out.iterdir()) == ["case0", "case1", "case2", "index.html", "summary.csv"]


def test_merge_summaries_in_case_order(tmp_path):
    """Tables written by separate processes (e.g. one per shard) merge into one, in case order."""
    rows = [
        {"case": c, "class": k, "status": "ok", "energy_in_prediction": 0.25, "note": None}
        for c in ("b", "a", "c")
        for k in (2, 1)
    ]
    pipeline.write_summary(rows[:2] + rows[4:], tmp_path / "shard0.csv")
    pipeline.write_summary(rows[2:4], tmp_path / "shard1.csv")
    merged = pipeline.merge_summaries(
        [tmp_path / "shard0.csv", tmp_path / "shard1.csv"], tmp_path / "all.csv", order=["a", "b", "c"]
    )
    got = pipeline.read_summary(merged)
    assert [(r["case"], r["class"]) for r in got] == [
        ("a", "1"),
        ("a", "2"),
        ("b", "1"),
        ("b", "2"),
        ("c", "1"),
        ("c", "2"),
    ]
    assert list(got[0]) == pipeline.SUMMARY_COLUMNS
    assert got[0]["energy_in_prediction"] == "0.25" and got[0]["note"] == "" and got[0]["seconds"] == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.csv", "shard0.csv", "shard1.csv"]  # no temp files


@pytest.mark.cuda
@pytest.mark.parametrize("roi", [None, [12, 12, 8]], ids=["whole", "sliding"])
def test_cuda_run_matches_cpu_run(dataset, roi):
    """The runner on a GPU writes the same heat volumes and statistics as on the CPU."""
    rows = {}
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # full float32 on the GPU
    try:
        for device in ("cpu", "cuda"):
            cfg = config(
                dataset,
                device=device,
                outputs={**HEAT_ONLY, "dir": str(dataset / device)},
                targets={"mask": "label"},
                sliding_window={"roi_size": roi},
            )
            assert pipeline.run(load_config(cfg), quiet=True) == 0
            rows[device] = pipeline.read_summary(dataset / device / "summary.csv")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert len(rows["cpu"]) == len(rows["cuda"]) == 6
    for cpu, gpu in zip(rows["cpu"], rows["cuda"]):
        assert (cpu["case"], cpu["class"]) == (gpu["case"], gpu["class"])
        assert int(gpu["predicted_voxels"]) == pytest.approx(int(cpu["predicted_voxels"]), rel=0.01, abs=2)
        for key in ("energy_in_prediction", "energy_in_label"):
            assert float(gpu[key]) == pytest.approx(float(cpu[key]), abs=1e-3)
        a = np.asarray(nib.load(str(dataset / "cpu" / cpu["heat_nifti"])).dataobj)
        b = np.asarray(nib.load(str(dataset / "cuda" / gpu["heat_nifti"])).dataobj)
        np.testing.assert_allclose(b, a, atol=2e-3)
