"""The pool's Slurm commands against a real Slurm (tests/slurm/setup-slurm.sh starts one).

The commands that colocate/rank0/pool/backends.py builds are run as the pool manager runs them, and
what Slurm prints is read back with the backend's own parsers.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
from test_slurm import slurm  # noqa: F401  (the session's real Slurm)

from colocate import config
from colocate.rank0.pool import JobTemplate, backend
from colocate.testing import wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]


def run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{shlex.join(cmd)}: {done.stderr}"
    return done.stdout


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
        started = wait_until(lambda: marks.exists() and marks.read_text(), 60,
                             "the pool job's worker to start")
        host, seen_id = started.split()[1:3]
        assert seen_id == jobid
        [job] = wait_until(lambda: [j for j in s.jobs(run(s.query(t))) if j.state == "running"],
                           30, "squeue to list the job as running")
        assert (job.id, job.nodes) == (jobid, (host,))
        # The node now runs a job: it is no longer idle for the pool to grow into.
        assert s.idle_nodes(run(s.idle(t))) == idle_before - 1
        info = run(["scontrol", "-o", "show", "job", jobid])
        assert f"JobName={name}" in info and "TimeLimit=00:05:00" in info
    finally:
        subprocess.run(s.cancel([jobid]), timeout=30)
    # scancel warns the worker with SIGTERM (what preemption does) before it ends the job.
    wait_until(lambda: "term" in marks.read_text(), 30, "the worker's SIGTERM on cancel")
    wait_until(lambda: not s.jobs(run(s.query(t))), 60, "squeue to list no pool job")


def _pool(tmp_path: Path, **settings) -> dict:
    return {**config.load(environ={})["pool"], "time": "5m", "grace": 20,
            "options": [f"--chdir={tmp_path}"], **settings}


SLEEPER = ["sh", "-c", "while :; do sleep 0.2; done"]


def test_the_manager_grows_to_max_jobs_shrinks_when_idle_and_stop_cancels_all(
        slurm, tmp_path: Path, caplog):  # noqa: F811
    from colocate.rank0.pool.manager import JobWorkers, PoolManager
    now = [1000.0]
    name = f"colocate-pool-mgr-{tmp_path.name[-12:]}"
    manager = PoolManager(_pool(tmp_path, max_jobs=1, idle_timeout=60), name, SLEEPER,
                          output=str(tmp_path / "%j.out"), clock=lambda: now[0])
    s = manager.backend
    try:
        caplog.set_level("INFO", logger="colocate.pool")
        [grow] = manager.tick(queued=5, free_cores=0)
        assert grow.count == 1
        [jid] = manager.submitted
        assert f"pool: submitted job {jid}: 5 task(s) queued" in caplog.text
        [job] = wait_until(lambda: s.jobs(run(s.query(manager.template))), 30,
                           "squeue to list the pool's job")
        assert job.id == jid
        # max_jobs 1: more work submits nothing more.
        assert manager.tick(queued=500, free_cores=0) == []
        # Still a task queued while it starts (with none, pool.ahead cancels a pending job).
        wait_until(lambda: manager.tick(queued=1, free_cores=0) == [] and
                   manager.jobs[0].state == "running", 30, "the job to run")
        # Idle past idle_timeout with nothing queued: cancelled, with the reason.
        now[0] += 100
        [cancel] = manager.tick(queued=0, free_cores=1,
                                joined={jid: JobWorkers(cores=1, idle_since=now[0] - 90)})
        assert cancel.job == jid
        assert f"pool: cancelled job {jid}: idle for 90 s" in caplog.text
        wait_until(lambda: not s.jobs(run(s.query(manager.template))), 60, "the job to end")
        # Grown again, then the world stops: stop() cancels every job of the pool.
        _grow_then_stop(manager)
    finally:
        ids = [j.id for j in s.jobs(run(s.query(manager.template)))]
        if ids:
            subprocess.run(s.cancel(ids), timeout=30)


def _grow_then_stop(manager) -> None:
    """Queued work submits one job; the world's stop() cancels it, and squeue lists none."""
    s = manager.backend
    manager.tick(queued=5, free_cores=0)
    [again] = manager.submitted
    assert manager.stop() == [again]
    wait_until(lambda: not s.jobs(run(s.query(manager.template))), 60, "no pool job after stop()")


def test_a_job_waiting_ahead_is_cancelled_when_the_queue_empties_and_at_stop(
        slurm, tmp_path: Path, caplog):  # noqa: F811
    from colocate.rank0.pool.manager import PoolManager
    # --begin an hour from now: the jobs stay pending, as behind a busy node.
    manager = PoolManager(_pool(tmp_path, max_jobs=2, max_pending=2, ahead=1, cores_per_node=8,
                                options=[f"--chdir={tmp_path}", "--begin=now+1hour"]),
                          f"colocate-pool-ahead-{tmp_path.name[-12:]}", SLEEPER,
                          output=str(tmp_path / "%j.out"))
    s = manager.backend
    try:
        caplog.set_level("INFO", logger="colocate.pool")
        [ahead] = manager.tick(queued=5, free_cores=0)
        [jid] = manager.submitted
        [job] = wait_until(lambda: s.jobs(run(s.query(manager.template))), 30,
                           "squeue to list the job")
        assert (job.id, job.state) == (jid, "pending")
        # Pending already, and its 8 cores cover the queue: no second one.
        assert manager.tick(queued=5, free_cores=0) == []
        # The queue empties: the pending job is cancelled at once, with the reason.
        [cancel] = manager.tick(queued=0, free_cores=1)
        assert cancel.job == jid
        assert f"pool: cancelled job {jid}: pending and no task queued" in caplog.text
        wait_until(lambda: not s.jobs(run(s.query(manager.template))), 60, "the job to end")
        # Work again, then the world stops: stop() cancels the job waiting ahead.
        _grow_then_stop(manager)
    finally:
        ids = [j.id for j in s.jobs(run(s.query(manager.template)))]
        if ids:
            subprocess.run(s.cancel(ids), timeout=30)


def test_a_submit_the_batch_system_refuses_is_logged_and_rank_0_carries_on(
        slurm, tmp_path: Path, caplog):  # noqa: F811
    from colocate.rank0.pool.manager import PoolManager
    # More memory than the node has: sbatch refuses the job at submission.
    manager = PoolManager(_pool(tmp_path, max_jobs=2, options=["--mem=64000000"]),
                          f"colocate-pool-bad-{tmp_path.name[-12:]}", SLEEPER)
    caplog.set_level("INFO", logger="colocate.pool")
    decisions = manager.tick(queued=5, free_cores=0)
    assert [type(d).__name__ for d in decisions] == ["SubmitJob"]
    assert manager.submitted == {}
    assert "pool: submitting a job failed (exit 1)" in caplog.text
    assert "node configuration is not available" in caplog.text
    # The next tick tries again, and still nothing is left behind in the queue.
    manager.tick(queued=5, free_cores=0)
    assert manager.submitted == {} and not manager.backend.jobs(run(manager.backend.query(
        manager.template)))


def test_a_world_grows_a_pool_into_slurm_and_gives_it_back(slurm, world_factory,  # noqa: F811
                                                           tmp_path: Path):
    import sys

    import cloudpickle

    import colocate
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    world = world_factory(ranks=2, env={
        "COLOCATE_POOL_MAX_JOBS": "1", "COLOCATE_POOL_INTERVAL": "0.5",
        "COLOCATE_POOL_IDLE_TIMEOUT": "2", "COLOCATE_POOL_TIME": "5m",
        "COLOCATE_POOL_GRACE": "10", "COLOCATE_LOG": "info"})
    name = f"colocate-pool-{json.loads(world.address.read_text())['token'][:8]}"
    s = backend("slurm")
    t = JobTemplate.from_config(config.load(environ={})["pool"], name=name)
    trace = tmp_path / "runs"
    try:
        with colocate.Executor(address=world.address) as ex:
            # A backlog on one worker rank: the pool submits a job, whose workers join.
            futures = [ex.submit(_record, str(trace), i, 0.3) for i in range(40)]
            wait_until(lambda: any(w["rank"] >= 2 for w in ex.status()["workers"]), 90,
                       "a worker of the pool's job to join")
            [job] = ex.status()["pool"] or [None]
            assert job is None or job["state"] in {"pending", "running"}
            for f in futures:
                f.result(timeout=120)
            assert {f.info.rank for f in futures} - {1}, "no task ran on a pool worker"
            # Idle past pool.idle_timeout: the job is cancelled, its workers leave cleanly.
            wait_until(lambda: not s.jobs(run(s.query(t))), 90, "the idle pool job to end")
            wait_until(lambda: [w["rank"] for w in ex.status()["workers"]] == [1], 60,
                       "the pool's workers to leave")
            # A new backlog grows it again, and stopping the world cancels it.
            more = [ex.submit(_record, str(trace), 100 + i, 0.3) for i in range(40)]
            wait_until(lambda: s.jobs(run(s.query(t))), 60, "a second pool job")
        world.stop()
        wait_until(lambda: not s.jobs(run(s.query(t))), 60, "no pool job after the world stopped")
    finally:
        ids = [j.id for j in s.jobs(run(s.query(t)))]
        if ids:
            subprocess.run(s.cancel(ids), timeout=30)
    runs = [int(x) for x in trace.read_text().split()]
    first = [k for k in runs if k < 100]
    assert sorted(first) == list(range(40)), "every task of the first backlog ran exactly once"
    assert len(runs) == len(set(runs)), "no task ran twice"
    assert "pool: submitted job" in world.log() and "pool: cancelled job" in world.log()
    assert "worker lost" not in world.log()
    del more


def _record(path: str, key: int, seconds: float) -> int:
    import os
    import time
    with open(path, "a") as f:
        f.write(f"{key}\n")
    time.sleep(seconds)
    return os.getpid()


def test_jobs_that_end_before_a_worker_joins_make_the_pool_hold_off(slurm, tmp_path: Path,  # noqa: F811
                                                                    caplog):
    from colocate.rank0.pool.manager import PoolManager
    now = [0.0]
    manager = PoolManager(_pool(tmp_path, max_jobs=1, interval=5.0),
                          f"colocate-pool-fail-{tmp_path.name[-12:]}", ["sh", "-c", "exit 3"],
                          output=str(tmp_path / "%j.out"), clock=lambda: now[0])
    s = manager.backend
    caplog.set_level("INFO", logger="colocate.pool")
    for _ in range(2):
        [grow] = manager.tick(queued=5, free_cores=0)
        assert grow.count == 1
        wait_until(lambda: not s.jobs(run(s.query(manager.template))), 60, "the job to fail")
        now[0] += 1
    # Both ended with no worker joined: the second makes the pool hold off, and say why.
    assert manager.tick(queued=5, free_cores=0) == [] and manager.submitted == {}
    assert "ended before any of its workers joined, 2 such job(s) in a row" in caplog.text
    assert f"its output: {tmp_path}/%j.out" in caplog.text
    now[0] += 5 * 2 ** 2 + 1   # past the hold: it tries again
    manager.tick(queued=5, free_cores=0)
    assert len(manager.submitted) == 1
    manager.stop()


@pytest.fixture
def preemptible(slurm):  # noqa: F811
    """The test Slurm's preemptible partition "pool" (set up by tests/slurm/setup-slurm.sh)."""
    def has_pool() -> bool:
        return "pool" in run(["sinfo", "-h", "-o", "%R"]).split()
    if not has_pool():   # a Slurm started by an older setup-slurm.sh: restart it with "pool"
        setup = Path(__file__).resolve().parents[1] / "slurm" / "setup-slurm.sh"
        done = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=150)
        if done.returncode != 0 or not has_pool():
            pytest.skip(f"no preemptible partition 'pool': {done.stderr.strip()[-400:]}")
    grace = re.search(r"GraceTime=(\d+)", run(["scontrol", "show", "partition", "pool"]))
    return int(grace[1]) if grace else 0


@pytest.mark.timeout(240)
def test_a_batch_job_preempts_the_pool_and_no_task_is_lost_or_run_twice(
        preemptible, world_factory, tmp_path: Path):
    import sys

    import cloudpickle

    import colocate
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    grace = preemptible
    world = world_factory(ranks=2, env={
        "COLOCATE_POOL_MAX_JOBS": "1", "COLOCATE_POOL_INTERVAL": "0.5",
        "COLOCATE_POOL_PARTITION": "pool", "COLOCATE_POOL_TIME": "10m",
        "COLOCATE_POOL_GRACE": str(grace), "COLOCATE_POOL_IDLE_TIMEOUT": "600",
        "COLOCATE_LOG": "info"})
    name = f"colocate-pool-{json.loads(world.address.read_text())['token'][:8]}"
    s = backend("slurm")
    t = JobTemplate.from_config({**config.load(environ={})["pool"], "partition": "pool"},
                                name=name)
    trace = tmp_path / "runs"
    batch = None
    try:
        with colocate.Executor(address=world.address) as ex:
            futures = [ex.submit(_record, str(trace), i, 1.0) for i in range(24)]
            wait_until(lambda: any(f.done() and f.info.rank >= 2 for f in futures), 120,
                       "a task done by a worker of the pool's job")
            [pool_job] = s.jobs(run(s.query(t)))
            # A real job wants the whole node: Slurm preempts the pool job (SIGTERM, then
            # GraceTime), its workers leave, and their tasks finish or go back.
            batch = run(["sbatch", "--parsable", "--partition=debug", "--exclusive",
                         f"--chdir={tmp_path}", "--wrap=sleep 2"]).strip().split(";")[0]
            wait_until(lambda: "JobState=RUNNING" in run(["scontrol", "-o", "show", "job", batch])
                       or "JobState=COMPLETED" in run(["scontrol", "-o", "show", "job", batch]),
                       grace + 60, "the batch job to start")
            results = [f.result(timeout=120) for f in futures]   # none failed or lost
        info = run(["scontrol", "-o", "show", "job", batch])
        submitted, started = (time.mktime(time.strptime(re.search(rf"{k}=(\S+)", info)[1],
                                                        "%Y-%m-%dT%H:%M:%S"))
                              for k in ("SubmitTime", "StartTime"))
        assert started - submitted <= grace + 2 + 3, info   # + Slurm's own scheduling latency
        # Slurm preempted the pool's job, and its workers had left before GraceTime was up
        # (so it ends COMPLETED, exit 0, rather than killed).
        preempted = run(["scontrol", "-o", "show", "job", pool_job.id])
        assert "PreemptTime=None" not in preempted, preempted
        when, ended = (time.mktime(time.strptime(re.search(rf"{k}=(\S+)", preempted)[1],
                                                 "%Y-%m-%dT%H:%M:%S"))
                       for k in ("PreemptTime", "EndTime"))
        assert ended - when <= grace, preempted
        print(f"batch job started {started - submitted:.0f} s after submission; the pool's "
              f"job ended {ended - when:.0f} s after preemption (GraceTime {grace} s)")
    finally:
        world.stop()
        ids = [j.id for j in s.jobs(run(s.query(t)))]
        if ids:
            subprocess.run(s.cancel(ids), timeout=30)
    runs = [int(x) for x in trace.read_text().split()]
    assert sorted(runs) == list(range(24)), "every task ran exactly once"
    assert len(results) == 24
    assert "leaving" in world.log() or "is leaving" in world.log()
    assert "worker lost" not in world.log()
