"""Batches end to end on a real local world: CLI exit codes, run directory, kill -9 and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "COLOCATE_CO_LOCATION_SPARE_CORES": "all", "COLOCATE_LOG": "warning",
       "PYTHONPATH": f"{REPO / 'tests' / 'data'}{os.pathsep}{REPO}"}


def colocate(*args, cwd, timeout=120, check_rc=None):
    proc = subprocess.run([sys.executable, "-m", "colocate", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


def records(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass   # a torn last line from the kill
    return out


@pytest.mark.timeout(120)
def test_run_writes_every_result_and_report_reads_it(tmp_path):
    batch = tmp_path / "b.yaml"
    batch.write_text("name: sq\nfunction: slow_kernels:slow_square\n"
                     "tasks:\n  product: {x: [1, 2, 3, 4], delay: [0.0]}\noutput: out\n")
    colocate("run", str(batch), "-n", "1", "--no-progress", cwd=tmp_path, check_rc=0)
    recs = records(tmp_path / "out")
    assert sorted(r["result"] for r in recs) == [1, 4, 9, 16]
    assert all(r["status"] == "ok" and r["worker"]["rank"] >= 1 for r in recs)
    rep = colocate("report", str(tmp_path / "out"), cwd=tmp_path, check_rc=0)
    assert "succeeded" in rep.stdout and "4" in rep.stdout


@pytest.mark.timeout(180)
def test_kill_minus_nine_then_resume_gives_the_uninterrupted_results(tmp_path):
    n = 40
    batch = tmp_path / "b.yaml"
    batch.write_text(f"name: sq\nfunction: slow_kernels:slow_square\n"
                     f"tasks:\n  product: {{x: {list(range(n))}, delay: [0.05]}}\noutput: out\n")
    run = subprocess.Popen([sys.executable, "-m", "colocate", "run", str(batch), "-n", "1",
                            "--no-progress"], cwd=tmp_path, env=ENV, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = tmp_path / "out" / "results.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:   # wait until some, not all, results are recorded
        if journal.exists() and 5 <= len(records(tmp_path / "out")) < n:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the batch recorded no results within 60 s")
    # Kill the whole job at once: client, mpiexec, every rank and executor.
    group = [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]
    os.killpg(run.pid, signal.SIGKILL)
    for p in group:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    run.wait(10)
    psutil.wait_procs(group, timeout=10)
    before = {r["task_id"] for r in records(tmp_path / "out") if r["status"] == "ok"}
    assert 0 < len(before) < n
    colocate("run", str(batch), "-n", "1", "--no-progress", "--resume", str(tmp_path / "out"),
             cwd=tmp_path, check_rc=0)
    ok = [r for r in records(tmp_path / "out") if r["status"] == "ok"]
    assert len(ok) == n == len({r["task_id"] for r in ok}), "a result was lost or duplicated"
    assert sorted(r["result"] for r in ok) == [x * x for x in range(n)]


@pytest.mark.timeout(120)
def test_submit_without_wait_returns_at_once_and_a_recorder_writes_the_results(tmp_path):
    log = open(tmp_path / "world.log", "wb")
    world = subprocess.Popen(["mpiexec", "-n", "2", sys.executable, "-m", "colocate", "serve",
                              "--address-file", str(tmp_path / "addr")], cwd=tmp_path,
                             env={**ENV, "COLOCATE_LOG": "info",
                                  # a one-worker world: the guard must not pause it for the
                                  # test suite's own load on the worker's core
                                  "COLOCATE_GUARD_ENABLED": "false"}, stdout=log,
                             stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "addr").exists():
            assert time.monotonic() < deadline and world.poll() is None, "the world did not start"
            time.sleep(0.05)
        batch = tmp_path / "b.yaml"
        batch.write_text("name: sq\nfunction: slow_kernels:slow_square\n"
                         "tasks:\n  product: {x: [1, 2, 3], delay: [0.3]}\noutput: out\n")
        started = time.monotonic()
        sub = colocate("submit", str(batch), "--address", str(tmp_path / "addr"), cwd=tmp_path,
                       check_rc=0)
        assert time.monotonic() - started < 10 and "recorder: pid" in sub.stdout, sub.stdout
        deadline = time.monotonic() + 60
        while len([r for r in (records(tmp_path / "out") if (tmp_path / "out" /
                   "results.jsonl").exists() else []) if r["status"] == "ok"]) < 3:
            assert time.monotonic() < deadline, "the recorder did not record every result"
            time.sleep(0.05)
        assert sorted(r["result"] for r in records(tmp_path / "out")) == [1, 4, 9]
        (log,) = (tmp_path / "out").glob("submit-*.log")     # the recorder's log: in the run
        assert f"log out/{log.name}" in sub.stdout, sub.stdout
        assert not list(tmp_path.glob("*.log")) or [p.name for p in tmp_path.glob("*.log")] == [
            "world.log"], "submit left a log outside the run directory"
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: sq\nfunction: slow_kernels:no_such\ntasks: [{args: [1]}]\n")
        colocate("submit", str(bad), "--address", str(tmp_path / "addr"), cwd=tmp_path,
                 check_rc=2)
    finally:
        colocate("stop", "--address", str(tmp_path / "addr"), cwd=tmp_path)
        world.wait(30)


@pytest.mark.timeout(120)
def test_named_array_is_stored_once_and_passed_by_reference(tmp_path):
    import numpy as np
    field = np.arange(512 * 512, dtype=np.float64).reshape(512, 512)   # 2 MiB: shared memory
    np.save(tmp_path / "field.npy", field)
    (tmp_path / "k.py").write_text(
        "def total(a, scale=1):\n"
        "    assert not a.flags.writeable   # the stored array, mapped read-only\n"
        "    return float(a.sum()) * scale\n")
    batch = tmp_path / "b.yaml"
    batch.write_text("name: d\ndata: {field: field.npy}\nfunction: k.py:total\n"
                     "tasks:\n  product: {a: [{ref: field}], scale: [1, 2, 3]}\noutput: out\n")
    colocate("run", str(batch), "-n", "1", "--no-progress", cwd=tmp_path, check_rc=0)
    recs = records(tmp_path / "out")
    total = float(field.sum())
    assert sorted(r["result"] for r in recs) == [total, 2 * total, 3 * total], recs
    assert all(r["kwargs"]["a"] == {"ref": "field"} for r in recs), recs
