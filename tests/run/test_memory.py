"""Memory: an estimate before each case from measured peaks; a case that will not fit fails alone;
a case whose process the system kills is recorded, and the run goes on."""

import csv
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_helpers import NETWORK_DEF, config, tiny_unet, write_case

from volcam.run import memory
from volcam.run.memory import MemoryGuard, peak_bytes

ROOT = Path(__file__).resolve().parents[2]
HEAT_ONLY = {"pngs": False, "figure": False, "viewer": False, "index": False}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "MPLBACKEND": "Agg"}


def rows_of(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_the_estimate_has_the_stated_error():
    """Stated error (volcam.run.memory): once a case of the same size has run, -15% to +50%; from a
    smaller case, 0.9 to 2.5 times; before any case, the activations alone (k = 1)."""
    from monai.networks.nets import UNet

    import volcam
    from volcam.run.memory import activation_bytes

    torch.manual_seed(0)
    net = UNet(3, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).eval()
    cam = volcam.HiResCAM(net, "model.1.submodule.2")

    def compute(x):
        return cam.explain(x, targets=1)

    guard = MemoryGuard(net, torch.device("cpu"), divisor=(4, 4, 4))
    a = torch.randn(1, 1, 96, 96, 64)
    guard.check(a)  # measures the activations on a crop
    first = guard.estimate(a.shape[2:])
    assert first == pytest.approx(activation_bytes(net, a), rel=0.01)  # k = 1: the activations, linear in voxels
    guard.measure(lambda: compute(a), a.shape[2:])
    same = torch.randn(1, 1, 96, 96, 64) * 2  # another case of the same size
    real = peak_bytes(lambda: compute(same), torch.device("cpu"))
    assert 0.85 * real <= guard.estimate(same.shape[2:]) <= 1.5 * real
    assert 0.4 * real <= first <= 2.5 * real
    larger = torch.randn(1, 1, 112, 104, 72)
    real = peak_bytes(lambda: compute(larger), torch.device("cpu"))
    assert 0.9 * real <= guard.estimate(larger.shape[2:]) <= 2.5 * real


def test_a_case_that_will_not_fit_fails_before_it_starts_and_the_next_runs(tmp_path, monkeypatch):
    from volcam.run.loop import run

    write_case(tmp_path / "images", "a_small", seed=0)
    write_case(tmp_path / "images", "b_large", seed=1, shape=(160, 150, 128))
    write_case(tmp_path / "images", "c_small", seed=2)
    cfg = config(tmp_path, outputs=HEAT_ONLY, data={"label_folder": None})
    monkeypatch.setattr(memory, "available_bytes", lambda device: 60 * 2**20)  # 60 MB free
    result = run(cfg, quiet=True)
    rows = {r["case"]: r for r in rows_of(tmp_path / "out" / "summary.csv")}
    assert result.exit_code == 1 and [r.case.id for r in result.failed] == ["b_large"]
    error = rows["b_large"]["error"]
    assert "needs about" in error and "MB" not in error and "GB are free" in error
    assert "sliding_window.roi_size" in error
    assert rows["a_small"]["status"] == rows["c_small"]["status"] == "ok"
    assert not (tmp_path / "out" / "b_large").exists()


def test_a_case_beyond_an_address_space_limit_fails_alone(tmp_path):
    """A real limit (RLIMIT_AS): the large case fails, cleanly, and the next case runs."""
    write_case(tmp_path / "images", "a_small", seed=0)
    write_case(tmp_path / "images", "b_large", seed=1, shape=(256, 256, 160))
    write_case(tmp_path / "images", "c_small", seed=2)
    cfg = config(tmp_path, outputs=HEAT_ONLY, data={"label_folder": None, "num_workers": 0})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import volcam.run.loop, monai.networks.nets, torch; "
            "print(int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024)",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    limit = int(probe.stdout) + 700 * 2**20  # what the imports take, plus 700 MB

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "volcam", "run", str(path), "--quiet", "--no-supervise"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limited,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    rows = {r["case"]: r for r in rows_of(tmp_path / "out" / "summary.csv")}
    assert rows["b_large"]["status"] == "failed" and "memory" in rows["b_large"]["error"].lower()
    assert rows["a_small"]["status"] == rows["c_small"]["status"] == "ok"
    assert "Traceback" not in proc.stderr


def test_a_case_the_system_kills_is_recorded_and_not_retried_unless_asked(tmp_path):
    write_case(tmp_path / "images", "a_small", seed=0)
    write_case(tmp_path / "images", "b_huge", seed=1, shape=(40, 36, 24))
    write_case(tmp_path / "images", "c_small", seed=2)
    cfg = config(tmp_path, outputs=HEAT_ONLY, data={"label_folder": None, "num_workers": 0})
    cfg["network_def"] = {**NETWORK_DEF, "_target_": "pipeline_helpers.KilledOnLargeInput", "voxels": 20 * 18 * 12}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    torch.save({"state_dict": tiny_unet().state_dict()}, tmp_path / "model.pt")

    def volcam(*args):
        return subprocess.run(
            [sys.executable, "-m", "volcam", "run", str(path), *args],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )

    proc = volcam("--quiet")  # supervised: the work runs in a child process
    assert proc.returncode == 1, proc.stderr
    assert "case b_huge was killed by SIGKILL while explaining this case (out of memory?)" in proc.stderr
    rows = {r["case"]: r for r in rows_of(tmp_path / "out" / "summary.csv")}
    assert rows["b_huge"]["status"] == "failed" and "killed by SIGKILL" in rows["b_huge"]["error"]
    assert rows["a_small"]["status"] == rows["c_small"]["status"] == "ok"
    # a rerun does not die on the same case again
    proc = volcam()
    assert proc.returncode == 1 and "was killed" not in proc.stderr
    assert "were killed in an earlier run and are not retried (b_huge)" in proc.stdout
    assert [r["status"] for r in rows_of(tmp_path / "out" / "summary.csv")] == [
        "skipped",
        "skipped",
        "failed",
        "failed",
        "skipped",
        "skipped",
    ]
    # unless asked to
    proc = volcam("--retry-failed", "--quiet")
    assert proc.returncode == 1 and "case b_huge was killed by SIGKILL" in proc.stderr
    # --overwrite redoes every case once: the case killed in this run is not retried by the restart
    proc = volcam("--overwrite", "--quiet")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("case b_huge was killed by SIGKILL") == 1 and "too many times" not in proc.stderr
    rows = {r["case"]: r for r in rows_of(tmp_path / "out" / "summary.csv")}
    assert rows["b_huge"]["status"] == "failed" and "killed by SIGKILL" in rows["b_huge"]["error"]
    assert rows["a_small"]["status"] == rows["c_small"]["status"] == "ok"
