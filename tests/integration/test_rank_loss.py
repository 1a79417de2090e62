"""Loss of a worker rank, for real: the batch never hangs, and ``--resume`` completes it with no
finished result lost or repeated, under MPICH and under Open MPI.

Two outcomes race, and both are correct: rank 0 sees the dead rank's bell close at once, fails
its running task with ``WorkerLost`` and moves the rest to the surviving worker (the batch may
finish with exit 1); and the launcher then takes the whole world down (MPICH's hydra even with
``-disable-auto-cleanup`` for a rank killed by a signal, within ~0.1 s; Open MPI's ``prterun``
within ~0.6 s), so the client gets ``BrokenWorld`` (exit 3). Open MPI's fault-tolerant mode,
where the world survives, is in ``test_rank_loss_openmpi.py``.
"""

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
       "COLOCATE_GUARD_ENABLED": "false",
       "PYTHONPATH": f"{REPO / 'tests' / 'data'}{os.pathsep}{REPO}"}


def ok_records(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec["status"] == "ok":
            out.append(rec)
    return out


def worker_ranks(root: int) -> list[psutil.Process]:
    """Worker ranks are the parents of executor children."""
    ranks = {}
    for p in psutil.Process(root).children(recursive=True):
        try:
            if "colocate.child" in " ".join(p.cmdline()):
                parent = p.parent()
                ranks[parent.pid] = parent
        except psutil.NoSuchProcess:
            continue
    return list(ranks.values())


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mpi", ["mpich", "openmpi"])
def test_killed_worker_rank_ends_the_world_promptly_and_resume_completes(tmp_path, request, mpi):
    python, env = (sys.executable, ENV) if mpi == "mpich" else request.getfixturevalue("openmpi")
    n = 30
    batch = tmp_path / "b.yaml"
    batch.write_text(f"name: sq\nfunction: slow_kernels:slow_square\n"
                     f"tasks:\n  product: {{x: {list(range(n))}, delay: [0.1]}}\noutput: out\n")
    run = subprocess.Popen([python, "-m", "colocate", "run", str(batch), "-n", "2",
                            "--no-progress"], cwd=tmp_path, env=env, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            journal = tmp_path / "out" / "results.jsonl"
            if journal.exists() and len(ok_records(tmp_path / "out")) >= 3:
                break
            time.sleep(0.02)
        else:
            pytest.fail("no results within 60 s")
        victims = worker_ranks(run.pid)
        assert len(victims) == 2, victims
        killed = time.monotonic()
        victims[0].send_signal(signal.SIGKILL)
        out, _ = run.communicate(timeout=60)
        took = time.monotonic() - killed
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(10)
    assert took < 30, f"the client took {took:.0f} s to finish after the loss"
    assert run.returncode in (1, 3), out
    assert "colocate run --resume" in out, out
    if run.returncode == 3:
        assert "BrokenWorld" in out, out
    failed = [json.loads(line) for line in
              (tmp_path / "out" / "results.jsonl").read_text().splitlines()
              if line.strip().startswith("{") and '"failed"' in line]
    assert all(r["error"]["type"] == "WorkerLost" for r in failed), failed
    before = {r["task_id"] for r in ok_records(tmp_path / "out")}
    assert 3 <= len(before) < n
    res = subprocess.run([python, "-m", "colocate", "run", str(batch), "-n", "2",
                          "--no-progress", "--resume", str(tmp_path / "out")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    ok = ok_records(tmp_path / "out")
    assert len(ok) == n == len({r["task_id"] for r in ok}), "a result was lost or duplicated"
    assert sorted(r["result"] for r in ok) == [x * x for x in range(n)]
