"""`volcam run` over several processes: torchrun with gloo on the CPU, sharding, progress, failures."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.distributed as dist
from pipeline_helpers import config, write_case

from volcam import distributed, pipeline
from volcam.config import load_config
from volcam.errors import DistributedError

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = {"pngs": True, "axes": ["axial"], "figure": False}
TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


# --------------------------------------------------------------------------- pieces


def test_detect_reads_torchruns_environment():
    assert distributed.detect({}) is None
    assert distributed.detect(TORCHRUN_ENV) == distributed.DistEnv(rank=1, world_size=3, local_rank=1)
    # one process is a plain run
    assert distributed.detect({**TORCHRUN_ENV, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) is None


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"MASTER_PORT": ""},
            "needs RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the environment "
            "(start it with torchrun), not MASTER_PORT missing",
        ),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be a whole number (torchrun sets it), not 'two'"),
        ({"RANK": "3"}, "RANK must be in [0, WORLD_SIZE=3), not 3"),
        ({"LOCAL_RANK": "-1"}, "LOCAL_RANK must be at least 0, not -1"),
    ],
)
def test_detect_rejects_an_incomplete_environment(change, message):
    with pytest.raises(DistributedError) as err:
        distributed.detect({**TORCHRUN_ENV, **change})
    assert message in str(err.value)


def test_timeout_from_the_environment():
    assert distributed.timeout_seconds({}) == distributed.DEFAULT_TIMEOUT == 600.0
    assert distributed.timeout_seconds({distributed.ENV_TIMEOUT: "45"}) == 45.0
    for bad in ("0", "-3", "soon", "nan"):
        with pytest.raises(
            DistributedError,
            match=rf"VOLCAM_DIST_TIMEOUT must be a positive number of seconds, "
            rf"not '{bad}'",
        ):
            distributed.timeout_seconds({distributed.ENV_TIMEOUT: bad})


def test_shard_gives_every_case_to_exactly_one_rank():
    # 5 cases over 2 ranks: DistributedSampler gives rank 1 [1, 3, 0] (0 repeated as padding)
    assert distributed.shard(5, 0, 2) == [0, 2, 4]
    assert distributed.shard(5, 1, 2) == [1, 3]
    assert distributed.shard(2, 2, 4) == [] and distributed.shard(0, 0, 2) == []
    for world in range(1, 6):
        for n in range(0, 12):
            shares = [distributed.shard(n, r, world) for r in range(world)]
            assert sorted(i for s in shares for i in s) == list(range(n)), (n, world)
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
            if n % world == 0:  # no padding: exactly the sampler's shares
                sampler = [
                    list(torch.utils.data.DistributedSampler(range(n), world, r, shuffle=False)) for r in range(world)
                ]
                assert shares == sampler


def test_rank_device_one_gpu_per_process(monkeypatch):
    cpu = torch.device("cpu")
    assert distributed.rank_device(cpu, 3) == cpu
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.rank_device(torch.device("cuda"), 1) == torch.device("cuda", 1)
    with pytest.raises(
        DistributedError,
        match=r"LOCAL_RANK must be below the number of GPUs this process sees "
        r"\(2\), not 2: start at most 2 process\(es\) per node "
        r"\(torchrun --nproc_per_node=2\)",
    ):
        distributed.rank_device(torch.device("cuda"), 2)


def _announce(store, rank, host="node-a", pid=100):
    store.set(f"count/{rank}", "0")
    store.set(f"host/{rank}", host)
    store.set(f"pid/{rank}", str(pid))
    store.add(f"beat/{rank}", 1)


def test_watcher_relays_lines_and_collects_rows():
    store = dist.HashStore()
    for r in range(2):
        _announce(store, r, pid=100 + r)
    lines = []
    watcher = distributed.Watcher(store, 2, timeout=10, on_line=lambda r, t: lines.append((r, t)), clock=lambda: 0.0)
    store.set("line/1/0", "case1  ok")
    store.set("count/1", "1")
    assert watcher.poll() is False and lines == [(1, "case1  ok")]
    store.set("line/0/0", "case0  ok")
    store.set("line/0/1", "case2  FAILED  bad")
    store.set("count/0", "2")
    store.set("rows/0", json.dumps([{"case": "case0"}, {"case": "case2"}]))
    store.set("finished/0", "1")
    assert watcher.poll() is False  # rank 1 is not finished
    assert lines[1:] == [(0, "case0  ok"), (0, "case2  FAILED  bad")]
    store.set("rows/1", json.dumps([{"case": "case1"}]))
    store.set("finished/1", "1")
    assert watcher.poll() is True and len(lines) == 3
    assert watcher.rows == {0: [{"case": "case0"}, {"case": "case2"}], 1: [{"case": "case1"}]}
    assert watcher.processes == {0: ("node-a", 100), 1: ("node-a", 101)}


def test_watcher_gives_up_on_a_silent_rank():
    """A rank whose heartbeat stops for longer than the timeout fails the run, named with its host."""
    store = dist.HashStore()
    _announce(store, 0)
    _announce(store, 1, host="node-b")
    now = [0.0]
    watcher = distributed.Watcher(store, 2, timeout=30, clock=lambda: now[0])
    assert watcher.poll() is False
    now[0] = 25.0
    store.add("beat/1", 1)  # alive at t=25
    assert watcher.poll() is False
    now[0] = 50.0  # silent for 25 s: still fine
    assert watcher.poll() is False
    now[0] = 56.0  # silent for 31 s; rank 0 itself (the watcher's own rank) is never considered silent
    with pytest.raises(
        DistributedError,
        match=r"rank 1 \(on node-b\) must keep running until its cases are done, "
        r"not stay silent for 31 s \(VOLCAM_DIST_TIMEOUT=30\)",
    ):
        watcher.poll()


# --------------------------------------------------------------------------- torchrun


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, *, timeout=240, extra_env=None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "volcam",
        "run",
        *args,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def write_yaml(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def files_under(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def dataset(tmp_path):
    for i in range(5):
        write_case(tmp_path / "images", f"case{i}", seed=i, label_folder=tmp_path / "labels")
    (tmp_path / "images" / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    return tmp_path


@pytest.mark.slow
def test_torchrun_two_processes_match_the_single_process_run(dataset):
    """Six cases (one unreadable) over two gloo ranks: each case done once, by one rank; the same heat
    volumes, PNGs and summary as one process; complete cases skipped, whichever process wrote them."""
    cfg = config(dataset, outputs=OUTPUTS)
    torch.set_num_threads(1)
    assert pipeline.run(load_config(cfg), quiet=True) == 1  # the corrupt case fails
    single = dataset / "out"
    shared = dataset / "shared"
    shared.mkdir()
    shutil.copytree(single / "case4", shared / "case4")  # complete already: a rerun must not redo it
    resumed = files_under(shared / "case4")

    path = write_yaml(dataset / "run.yaml", cfg)
    proc = torchrun([str(path), "--output", str(shared)])
    assert proc.returncode == 1, proc.stderr[-3000:]  # some case failed, as in the single-process run
    assert "volcam run: 1 of 6 case(s) failed: corrupt" in proc.stderr
    assert re.search(r"rank\s*: 0 \(local_rank: 0\)\s+exitcode\s*: 1\b", proc.stderr)  # the launcher's report
    assert "SIGTERM" not in proc.stderr  # rank 1 ended on its own before rank 0 reported the failure

    # one log line per case, on rank 0 only, naming the rank that did it
    out = proc.stdout
    assert out.count("volcam run: 6 case(s) over 2 processes (gloo, cpu)") == 1
    lines = re.findall(r"^\[(\d)/6\] (\S+)  (ok|FAILED|skipped)\b.*?(?:  \(rank (\d)\))$", out, re.M)
    assert sorted(n for n, *_ in lines) == list("123456")
    by_case = {case: (status, int(rank)) for _, case, status, rank in lines}
    assert sorted(by_case) == ["case0", "case1", "case2", "case3", "case4", "corrupt"] and len(lines) == 6
    assert by_case["case4"] == ("skipped", 0) and by_case["corrupt"][0] == "FAILED"
    # the five cases to do, shared as DistributedSampler shares them (in listing order, case4 left out)
    todo = ["case0", "case1", "case2", "case3", "corrupt"]
    assert {c: by_case[c][1] for c in todo} == {c: i % 2 for i, c in enumerate(todo)}
    assert "1 done" not in out and "4 done, 1 skipped, 1 failed over 2 processes" in out

    # every case written once, by the rank that reported it; case4 untouched
    for case in ("case0", "case1", "case2", "case3"):
        record = json.loads((shared / case / pipeline.RECORD_NAME).read_text())
        assert (record["rank"], record["world_size"]) == (by_case[case][1], 2)
    assert files_under(shared / "case4") == resumed
    assert sorted(p.name for p in shared.iterdir()) == [
        "case0",
        "case1",
        "case2",
        "case3",
        "case4",
        "index.html",
        "summary.csv",
    ]

    # the same outputs as one process
    for case in ("case0", "case1", "case2", "case3"):
        assert files_under(shared / case).keys() == files_under(single / case).keys()
        for name in ("bright", "dark"):
            a, b = (
                nib.load(str(single / case / name / "heat.nii.gz")),
                nib.load(str(shared / case / name / "heat.nii.gz")),
            )
            np.testing.assert_array_equal(a.affine, b.affine)
            np.testing.assert_allclose(np.asarray(b.dataobj), np.asarray(a.dataobj), atol=1e-6, rtol=0)
    # one merged summary, in the order of the cases, equal to the single run's but for times and case4
    rows1, rows2 = pipeline.read_summary(single / "summary.csv"), pipeline.read_summary(shared / "summary.csv")
    assert [(r["case"], r["class"]) for r in rows2] == [(r["case"], r["class"]) for r in rows1]
    assert [(r["case"], r["status"]) for r in rows2] == [
        (c, s)
        for c, s in [
            ("case0", "ok"),
            ("case1", "ok"),
            ("case2", "ok"),
            ("case3", "ok"),
            ("case4", "skipped"),
            ("corrupt", "failed"),
        ]
        for _ in range(2)
    ]
    same = [k for k in pipeline.SUMMARY_COLUMNS if k not in ("seconds", "status")]
    for r1, r2 in zip(rows1, rows2):
        for r in (r1, r2):
            r["error"] = re.sub(r" at 0x[0-9a-f]+", "", r["error"])  # object addresses in a loader's message
        assert {k: r2[k] for k in same} == {k: r1[k] for k in same}

    # the ranks' records are complete records: a rerun skips every case, whichever rank wrote it
    written = files_under(shared)
    assert pipeline.run(load_config(cfg), output=str(shared), quiet=True) == 1
    assert [r["status"] for r in pipeline.read_summary(shared / "summary.csv")] == ["skipped"] * 10 + ["failed"] * 2
    run_files = ("summary.csv", "index.html")  # rewritten by every run; the cases' files are not
    assert {k: v for k, v in files_under(shared).items() if k not in run_files} == {
        k: v for k, v in written.items() if k not in run_files
    }


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_run_with_a_clear_message(dataset):
    """Rank 1 exits hard (status 3) at its first forward pass: the launcher ends rank 0, which says
    why, and exits non-zero instead of waiting."""
    cfg = config(dataset, outputs={"pngs": False, "figure": False})
    cfg["network_def"] = {**cfg["network_def"], "_target_": "distributed_helpers.ExitOnRank", "rank": 1, "code": 3}
    path = write_yaml(dataset / "dies.yaml", cfg)
    start = time.monotonic()
    proc = torchrun([str(path), "--quiet"], timeout=180, extra_env={distributed.ENV_TIMEOUT: "60"})
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    err = proc.stderr
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\s+exitcode\s*: 3\b", err)  # the launcher's report
    assert (
        "volcam run: rank 0 stopped by SIGTERM (torchrun sends it to every process when one fails: see its "
        "report). Completed cases are kept: rerun the same command to do the rest."
    ) in err
    assert elapsed < 170


def test_an_existing_process_group_is_not_taken_over(monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    with pytest.raises(DistributedError, match="must start its own process group, not find one already initialised"):
        with distributed.process_group(torch.device("cpu"), 5.0):
            pass
