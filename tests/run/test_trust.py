"""Outputs that can be trusted: provenance-checked resume, a safe output folder, signals, memory,
configs as code. Through the real command, in a subprocess where the behaviour is the process's."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_helpers import config, tiny_unet, write_case

from volcam import cli
from volcam.run.outdir import OutputFolder

ROOT = Path(__file__).resolve().parents[2]
HEAT_ONLY = {"pngs": False, "figure": False}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "MPLBACKEND": "Agg"}


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def rows_of(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def mtimes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def volcam(*args, timeout=180, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "volcam", *map(str, args)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def run_cli(*args, capsys=None) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return status, out, err


@pytest.fixture
def dataset(tmp_path):
    for i in range(3):
        write_case(tmp_path / "images", f"case{i}", seed=i, label_folder=tmp_path / "labels")
    return tmp_path


def case_complete(folder: Path) -> bool:
    """A case folder with its record and every file the record lists."""
    record_path = folder / "volcam-case.json"
    if not record_path.is_file():
        return False
    record = json.loads(record_path.read_text())
    return all((folder / f).is_file() for f in record["files"])


# --------------------------------------------------------------------------- 1. provenance


def test_resume_refuses_cases_made_differently_and_names_what_differs(dataset, capsys):
    cfg = config(dataset, outputs=HEAT_ONLY)
    path = write_yaml(dataset / "run.yaml", cfg)
    out = dataset / "out"
    assert run_cli("run", path, "--no-supervise", "--quiet", capsys=capsys)[0] == 0
    before = mtimes(out)
    rows = rows_of(out / "summary.csv")
    assert {(r["method"], r["layer"]) for r in rows} == {("gradcam", "model.1.submodule")}
    record = json.loads((out / "case0" / "volcam-case.json").read_text())
    assert record["maps"]["method"] == "gradcam" and record["maps"]["checkpoint"]["blake2b"]
    assert record["image"]["size"] == (dataset / "images" / "case0.nii.gz").stat().st_size

    # another method, another layer: refused before anything is done, naming the field
    status, _, err = run_cli("run", path, "--no-supervise", "-o", "cam.method=layercam", capsys=capsys)
    assert status == 2 and "cam.method (gradcam, now layercam) in 3 case(s)" in err and "--overwrite" in err
    status, _, err = run_cli("run", path, "--no-supervise", "-o", "cam.target_layers=model.2.conv", capsys=capsys)
    assert status == 2 and "cam.target_layers" in err and "model.2.conv" in err
    # another checkpoint at the same path
    torch.manual_seed(5)
    torch.save({"state_dict": tiny_unet().state_dict()}, dataset / "model.pt")
    other = tiny_unet()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    torch.save({"state_dict": other.state_dict()}, dataset / "model.pt")
    status, _, err = run_cli("run", path, "--no-supervise", capsys=capsys)
    assert status == 2 and "checkpoint (its content) in 3 case(s)" in err
    # the image file replaced (same name, new content)
    torch.save({"state_dict": tiny_unet().state_dict()}, dataset / "model.pt")  # the first weights again
    assert run_cli("run", path, "--no-supervise", "--quiet", capsys=capsys)[0] == 0  # all skipped
    write_case(dataset / "images", "case1", seed=7)
    status, _, err = run_cli("run", path, "--no-supervise", capsys=capsys)
    assert status == 2 and "the image file" in err and "in 1 case(s)" in err and "case1" in err
    after = mtimes(out)
    assert all(after[k] == before[k] for k in before if k.startswith("case"))  # no case was touched
    # --overwrite redoes them, and the records say what made them now
    status, _, _ = run_cli("run", path, "--no-supervise", "--overwrite", "-o", "cam.method=layercam", capsys=capsys)
    assert status == 0
    assert {r["method"] for r in rows_of(out / "summary.csv")} == {"layercam"}
    assert json.loads((out / "case1" / "volcam-case.json").read_text())["maps"]["method"] == "layercam"


# --------------------------------------------------------------------------- 2. config typos


@pytest.mark.parametrize("typo", ["chekpoint", "Checkpoint"])
def test_a_typo_in_a_top_level_key_is_a_config_error(dataset, capsys, typo):
    cfg = config(dataset, outputs=HEAT_ONLY)
    cfg[typo] = cfg.pop("checkpoint")
    status, _, err = run_cli("run", write_yaml(dataset / "run.yaml", cfg), "--no-supervise", capsys=capsys)
    assert status == 2 and f"{typo} is not a key of a run config" in err and "did you mean 'checkpoint'" in err
    assert not (dataset / "out").exists()


def test_running_without_weights_must_be_said(dataset, capsys):
    cfg = config(dataset, outputs=HEAT_ONLY)
    del cfg["checkpoint"]
    path = write_yaml(dataset / "run.yaml", cfg)
    status, _, err = run_cli("run", path, "--no-supervise", capsys=capsys)
    assert status == 2 and "checkpoint is required" in err and "checkpoint: none" in err
    status, out, _ = run_cli("run", path, "--no-supervise", "-o", "checkpoint=none", capsys=capsys)
    assert status == 0 and "checkpoint none (initial weights)" in out


def test_the_start_line_names_the_checkpoint_and_its_hash(dataset, capsys):
    from volcam.run.checkpoint import file_digest

    path = write_yaml(dataset / "run.yaml", config(dataset, outputs=HEAT_ONLY))
    status, out, _ = run_cli("run", path, "--no-supervise", capsys=capsys)
    assert status == 0 and f"model.pt ({file_digest(dataset / 'model.pt')[:12]})" in out


# --------------------------------------------------------------------------- 3. name collisions


def test_class_names_that_collide_are_refused_before_any_output(dataset, capsys):
    cfg = config(dataset, outputs=HEAT_ONLY, targets={"names": {1: "a b", 2: "a_b"}})
    status, _, err = run_cli("run", write_yaml(dataset / "run.yaml", cfg), "--no-supervise", capsys=capsys)
    assert status == 2 and "targets.names must give every class its own folder, not 'a_b'" in err
    assert not (dataset / "out").exists()


def test_an_image_named_like_the_summary_is_refused(dataset, capsys):
    write_case(dataset / "images", "summary.csv", seed=3)
    cfg = config(dataset, outputs=HEAT_ONLY)
    status, _, err = run_cli("run", write_yaml(dataset / "run.yaml", cfg), "--no-supervise", capsys=capsys)
    assert status == 2 and "case 'summary.csv'" in err and "must not be named like a file of the run" in err
    assert not (dataset / "out").exists()


# --------------------------------------------------------------------------- 4. users' folders


def test_a_users_folder_named_like_a_case_is_never_touched(dataset, capsys):
    out = dataset / "out"
    (out / "case0").mkdir(parents=True)
    (out / "case0" / "important.txt").write_text("mine")
    path = write_yaml(dataset / "run.yaml", config(dataset, outputs=HEAT_ONLY))
    for extra in ([], ["--overwrite"]):
        status, _, err = run_cli("run", path, "--no-supervise", *extra, capsys=capsys)
        assert status == 3 and f"'{out / 'case0'}'" in err and "volcam does not touch them" in err
        assert (out / "case0" / "important.txt").read_text() == "mine"
        assert sorted(p.name for p in out.iterdir()) == ["case0"]  # nothing written, lock released


def test_files_a_user_put_into_a_case_folder_survive_overwrite(dataset, capsys):
    out = dataset / "out"
    path = write_yaml(dataset / "run.yaml", config(dataset, outputs=HEAT_ONLY))
    assert run_cli("run", path, "--no-supervise", capsys=capsys)[0] == 0
    (out / "case1" / "notes.txt").write_text("reviewed")
    (out / "case1" / "bright" / "mine.txt").write_text("also mine")
    assert run_cli("run", path, "--no-supervise", "--overwrite", capsys=capsys)[0] == 0
    assert (out / "case1" / "notes.txt").read_text() == "reviewed"
    assert (out / "case1" / "bright" / "mine.txt").read_text() == "also mine"
    assert case_complete(out / "case1")


# --------------------------------------------------------------------------- 5. the lock


def gated_config(dataset: Path, gate: Path, block_after: int, **sections) -> dict:
    cfg = config(dataset, outputs=HEAT_ONLY, **sections)
    cfg["network_def"] = {
        **cfg["network_def"],
        "_target_": "pipeline_helpers.GatedUNet",
        "gate": str(gate),
        "block_after": block_after,
    }
    return cfg


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_second_run_on_the_same_folder_stops_and_the_first_finishes(dataset, capsys):
    gate = dataset / "gate"
    path = write_yaml(dataset / "gated.yaml", gated_config(dataset, gate, block_after=2))
    first = subprocess.Popen(
        [sys.executable, "-m", "volcam", "run", str(path), "--quiet"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(Path(str(gate) + ".waiting"), first)
        status, _, err = run_cli("run", path, "--no-supervise", "--quiet", capsys=capsys)
        assert status == 3 and "is in use by another run (process" in err
        gate.touch()
        _, stderr = first.communicate(timeout=120)
        assert first.returncode == 0, stderr
    finally:
        if first.poll() is None:
            first.kill()
    out = dataset / "out"
    assert [r["status"] for r in rows_of(out / "summary.csv")] == ["ok"] * 6
    assert all(case_complete(out / f"case{i}") for i in range(3))
    assert sorted(p.name for p in out.iterdir()) == ["case0", "case1", "case2", "index.html", "summary.csv"]


# --------------------------------------------------------------------------- 6. kill -9 mid-swap


def test_kill_9_at_random_points_of_an_overwrite_keeps_every_case_complete(dataset):
    out = dataset / "out"
    path = write_yaml(dataset / "run.yaml", config(dataset, outputs=HEAT_ONLY))
    assert volcam("run", path, "--quiet", "--no-supervise").returncode == 0
    rng = random.Random(0)
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-m", "volcam", "run", str(path), "--overwrite", "--quiet", "--no-supervise"],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(2.0, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        # every case is complete (old or new), or its old folder waits, complete, to be put back
        folder = OutputFolder(out)
        staged = {p.name.split(".")[0]: p for p in folder.staging.glob("*.old")} if folder.staging.is_dir() else {}
        for i in range(3):
            name = f"case{i}"
            assert case_complete(out / name) or case_complete(staged[name]), name
        # every file the summary points to is there
        for row in rows_of(out / "summary.csv"):
            assert (out / row["heat_nifti"]).is_file(), row
    # the next run finishes what was interrupted; the summary then matches the records
    assert volcam("run", path, "--quiet", "--no-supervise").returncode == 0
    rows = rows_of(out / "summary.csv")
    assert [r["status"] for r in rows] == ["skipped"] * 6
    for i in range(3):
        record = json.loads((out / f"case{i}" / "volcam-case.json").read_text())
        assert [float(r["energy_in_prediction"]) for r in rows[2 * i : 2 * i + 2]] == pytest.approx(
            [r["energy_in_prediction"] for r in record["rows"]], rel=1e-5
        )
    assert sorted(p.name for p in out.iterdir()) == ["case0", "case1", "case2", "index.html", "summary.csv"]


# --------------------------------------------------------------------------- 7. signals and exit codes


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_cleanly(dataset, sig, code):
    gate = dataset / "gate"
    path = write_yaml(dataset / "gated.yaml", gated_config(dataset, gate, block_after=2))
    proc = subprocess.Popen(
        [sys.executable, "-m", "volcam", "run", str(path), "--quiet"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(Path(str(gate) + ".waiting"), proc)  # case1 is in progress
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert f"stopped by {signal.Signals(sig).name}" in err and "Traceback" not in err
    out = dataset / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "case0",
        "index.html",
        "summary.csv",
    ]  # nothing partial, lock released
    assert [(r["case"], r["status"]) for r in rows_of(out / "summary.csv")] == [("case0", "ok")] * 2


def test_a_full_disk_stops_the_run_with_the_path_and_no_leftovers(dataset):
    import resource

    path = write_yaml(dataset / "run.yaml", config(dataset))  # with PNGs and figures: larger files

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    proc = volcam("run", path, "--quiet", "--no-supervise", preexec_fn=small_files)
    assert proc.returncode == 3, proc.stderr
    assert "volcam run: error: cannot write" in proc.stderr and "Traceback" not in proc.stderr
    assert str(dataset / "out") in proc.stderr
    leftovers = [p for p in (dataset / "out").rglob("*") if ".tmp" in p.name or "staging" in p.parts]
    assert leftovers == []
    assert not (dataset / "out" / ".volcam" / "lock").exists()


# --------------------------------------------------------------------------- 8. configs as code


def test_no_eval_refuses_expressions_and_no_code_runs(dataset):
    marker = dataset / "PWNED"
    cfg = config(dataset, outputs=HEAT_ONLY)
    cfg["outputs"]["dir"] = f"$__import__('pathlib').Path({str(marker)!r}).write_text('x') and {str(dataset / 'o')!r}"
    path = write_yaml(dataset / "run.yaml", cfg)
    proc = volcam("run", path, "--no-eval", "--quiet")
    assert proc.returncode == 2 and "must not be a $ expression" in proc.stderr and "outputs.dir" in proc.stderr
    assert not marker.exists()
    # a value given on the command line too
    plain = write_yaml(dataset / "plain.yaml", config(dataset, outputs=HEAT_ONLY))
    proc = volcam("run", plain, "--no-eval", "-o", f"outputs.dir=$open({str(marker)!r}, 'w').write('x')")
    assert proc.returncode == 2 and not marker.exists()
    # components outside MONAI's networks and transforms
    cfg = config(dataset, outputs=HEAT_ONLY)
    cfg["preprocessing"].append({"_target_": "os.system", "command": f"touch {marker}"})
    proc = volcam("run", write_yaml(dataset / "target.yaml", cfg), "--no-eval")
    assert proc.returncode == 2 and "_target_ must name a component of monai.networks" in proc.stderr
    assert not marker.exists()
    # without --no-eval the expression does run: the refusal above is what stopped it
    assert volcam("layers", path).returncode == 0 and marker.exists()
