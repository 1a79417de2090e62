"""A pool on the virtual cluster: it grows into idle nodes, and a batch job takes them back.

The world runs on vnode1 (rank 0 and one worker rank, both of its cores); its pool submits jobs
to the preemptible partition ``pool`` of tests/cluster/up.sh, which land on vnode2 and vnode3 and
join the world there. A batch job of the partition ``vc`` that needs both nodes preempts them:
Slurm sends SIGTERM, the pool's workers finish their running task and hand back what they were
sent ahead, and the batch job starts within the partition's GraceTime plus Slurm's own latency
(measured here first, on idle nodes). Every task leaves one side-effect file, written once at its
start and once at its end, so "exactly once" is read off the file system, not off the results.
Then the pool shrinks when idle, and ``colocate stop`` leaves no pool job behind.

The test process is the client: it reaches rank 0 over the bridge, at vnode1's address.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

TASKS, SECONDS = 80, 1.0   # the backlog: enough to keep both pool nodes busy past preemption


def _mark(directory: str, key: int, seconds: float) -> str:
    """A task that leaves its side effect: ``KEY`` gets a start line, then an end line."""
    import socket
    import time
    host = socket.gethostname()
    with open(f"{directory}/{key}", "a") as f:
        f.write(f"start {host} {time.time():.3f}\n")
    time.sleep(seconds)
    with open(f"{directory}/{key}", "a") as f:
        f.write(f"end {host} {time.time():.3f}\n")
    return host


def slurm_time(info: dict, key: str) -> float:
    """A time of ``scontrol show job`` (local time, 1 s resolution) as seconds since the epoch."""
    return time.mktime(time.strptime(info[key], "%Y-%m-%dT%H:%M:%S"))


def grace_time(cluster) -> int:
    """The preemptible partition's GraceTime (skips on a cluster an older up.sh brought up)."""
    out = cluster.slurm("scontrol", "show", "partition", "pool", check=False)
    m = re.search(r"GraceTime=(\d+)", out.stdout)
    if out.returncode != 0 or not m:
        pytest.skip("the virtual cluster has no preemptible partition 'pool': it was brought "
                    "up by an older tests/cluster/up.sh (down.sh, then up.sh, makes it)")
    return int(m[1])


def start_latency(cluster, tmp_path: Path) -> float:
    """Slurm's own submit-to-start latency for a job that needs both idle nodes, in seconds."""
    jobid = cluster.sbatch(["--partition=vc", "--nodes=2", "--exclusive",
                            "--nodelist=vnode2,vnode3", "--wrap=true"], tmp_path)
    info = cluster.wait_job(jobid, 60)
    return slurm_time(info, "StartTime") - slurm_time(info, "SubmitTime")


def pool_jobs(cluster, name: str) -> list[tuple[str, str, str]]:
    out = cluster.slurm("squeue", "-h", f"--name={name}", "-o", "%i|%T|%N").stdout
    return [tuple(line.split("|")) for line in out.split()]


def test_a_pool_grows_into_idle_nodes_is_preempted_shrinks_and_stops(cluster, srun_world,
                                                                    wait_until, tmp_path: Path):
    import cloudpickle

    import colocate
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    grace = grace_time(cluster)
    latency = start_latency(cluster, tmp_path)
    world = srun_world(("vnode1", "vnode1"), name="pool", env={
        "COLOCATE_SERVER_BIND": "vnode1", "COLOCATE_LOG": "info",
        "COLOCATE_POOL_MAX_JOBS": "2", "COLOCATE_POOL_MAX_PENDING": "2",
        "COLOCATE_POOL_INTERVAL": "0.5", "COLOCATE_POOL_PARTITION": "pool",
        "COLOCATE_POOL_TIME": "10m", "COLOCATE_POOL_GRACE": str(grace),
        "COLOCATE_POOL_IDLE_TIMEOUT": "3", "COLOCATE_POOL_OPTIONS": '["--exclusive"]'})
    name = f"colocate-pool-{world.read_address()['token'][:8]}"
    marks = tmp_path / "marks"
    marks.mkdir()
    batch = None
    try:
        with colocate.Executor(address=world.address) as ex:
            def nodes() -> list[str]:
                return sorted(w["node"] for w in ex.status()["workers"])

            futures = [ex.submit(_mark, str(marks), i, SECONDS) for i in range(TASKS)]
            # The pool grows into both idle nodes, and their workers join and run tasks.
            wait_until(lambda: {"vnode2", "vnode3"} <= set(nodes()), 120,
                         f"pool workers on vnode2 and vnode3 (workers on {nodes()})")
            wait_until(lambda: {f.result() for f in futures if f.done()} >= {"vnode2",
                                                                               "vnode3"},
                         60, "tasks done on both pool nodes")
            assert len(pool_jobs(cluster, name)) == 2
            assert sum(not f.done() for f in futures) > 10, "the backlog ran out too soon"
            # A batch job wants both nodes: Slurm preempts the pool's jobs.
            batch = cluster.sbatch(["--partition=vc", "--nodes=2", "--exclusive",
                                    "--nodelist=vnode2,vnode3", "--wrap=sleep 3"], tmp_path)
            info = cluster.wait_job(batch, grace + 60)
            assert info["JobState"] == "COMPLETED", info
            delay = slurm_time(info, "StartTime") - slurm_time(info, "SubmitTime")
            # + 1 s: scontrol's times are whole seconds.
            bound = grace + latency + 2 + 1
            print(f"batch job started {delay:.0f} s after submission (GraceTime {grace} s, "
                  f"Slurm's latency on idle nodes {latency:.0f} s, bound {bound:.0f} s)")
            assert delay <= bound, info
            results = [f.result(timeout=240) for f in futures]   # none failed or lost
            assert {"vnode2", "vnode3"} <= set(results)

            # Idle: the pool's jobs are cancelled after pool.idle_timeout, their workers leave.
            wait_until(lambda: not pool_jobs(cluster, name), 90, "the idle pool to shrink")
            wait_until(lambda: nodes() == ["vnode1"], 60, "the pool's workers to leave")
            # A new backlog grows it again; stopping the world cancels its jobs.
            more = [ex.submit(_mark, str(marks), TASKS + i, SECONDS) for i in range(20)]
            wait_until(lambda: pool_jobs(cluster, name), 60, "a new pool job")
        assert world.stop() == 0
        wait_until(lambda: not pool_jobs(cluster, name), 60,
                     "no pool job after colocate stop")
    finally:
        left = [j[0] for j in pool_jobs(cluster, name)]
        if left:
            cluster.slurm("scancel", *left, check=False)
        if batch:
            cluster.slurm("scancel", batch, check=False)
        world.stop()
    del more
    # Every task of the first backlog started once and ended once: none lost, none run twice.
    for key in range(TASKS):
        lines = (marks / str(key)).read_text().split("\n")
        kinds = [line.split()[0] for line in lines if line]
        assert kinds == ["start", "end"], f"task {key}: {lines}"
    assert re.search(r"leaving \(SIGTERM from the batch system\)", world.log() + "".join(
        p.read_text(errors="replace") for p in Path(world.address).parent.glob(
            "colocate-pool-*.out"))), "no pool worker said it left on SIGTERM"
    assert "worker lost" not in world.log()
