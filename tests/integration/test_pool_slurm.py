"""The pool's Slurm commands against a real Slurm (tests/slurm/setup-slurm.sh starts one).

The commands that colocate/pool/backends.py builds are run as the pool manager runs them, and
what Slurm prints is read back with the backend's own parsers.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import pytest
from test_slurm import slurm  # noqa: F401  (the session's real Slurm)

from colocate import config
from colocate.pool import JobTemplate, backend

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]


def run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{shlex.join(cmd)}: {done.stderr}"
    return done.stdout


def wait_for(predicate, timeout: float, what: str):
    deadline, pause = time.monotonic() + timeout, 0.05
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(pause)
        pause = min(pause * 2, 0.5)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def test_a_pool_job_is_submitted_found_counted_and_cancelled_with_a_warning(slurm,  # noqa: F811
                                                                           tmp_path: Path):
    s = backend("slurm")
    section = {**config.load(environ={})["pool"], "time": "5m", "grace": 20,
               "options": [f"--chdir={tmp_path}"]}
    name = f"colocate-pool-test-{tmp_path.name[-12:]}"
    t = JobTemplate.from_config(section, name=name, output=str(tmp_path / "%j.out"))
    marks = tmp_path / "marks"
    worker = ["sh", "-c", f"trap 'echo term >> {marks}; exit 0' TERM; "
                          f"echo started $(hostname) $SLURM_JOB_ID >> {marks}; "
                          "while :; do sleep 0.1; done"]
    idle_before = s.idle_nodes(run(s.idle(t)))
    assert idle_before >= 1, "the test Slurm's node should be idle before the pool job"

    jobid = s.job_id(run(s.submit(t, worker)))
    try:
        started = wait_for(lambda: marks.exists() and marks.read_text(), 60,
                           "the pool job's worker to start")
        host, seen_id = started.split()[1:3]
        assert seen_id == jobid
        [job] = wait_for(lambda: [j for j in s.jobs(run(s.query(t))) if j.state == "running"],
                         30, "squeue to list the job as running")
        assert (job.id, job.nodes) == (jobid, (host,))
        # The node now runs a job: it is no longer idle for the pool to grow into.
        assert s.idle_nodes(run(s.idle(t))) == idle_before - 1
        info = run(["scontrol", "-o", "show", "job", jobid])
        assert f"JobName={name}" in info and "TimeLimit=00:05:00" in info
    finally:
        subprocess.run(s.cancel([jobid]), timeout=30)
    # scancel warns the worker with SIGTERM (what preemption does) before it ends the job.
    wait_for(lambda: "term" in marks.read_text(), 30, "the worker's SIGTERM on cancel")
    wait_for(lambda: not s.jobs(run(s.query(t))), 60, "squeue to list no pool job")
