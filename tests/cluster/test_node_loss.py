"""Loss of a whole virtual node under a running batch, and ``colocate run --resume`` after it.

The world: rank 0 and a worker on vnode1, a worker on vnode2 and one on vnode3, started by
``srun --mpi=pmi2`` (MPICH, the PyPI wheel). While ``colocate run`` (in the root namespace, as on
a login node) works through a batch, vnode3 is lost in one of two ways:

* ``kill``: every process in vnode3's network namespace is killed (its slurmd, slurmstepd, the
  worker rank and its executor child): the kernel closes their sockets at once.
* ``cut``: vnode3's link goes down (``ip link set clv3 down``, its veth in the root namespace):
  nothing closes, packets just stop; rank 0 notices only by the missing heartbeats
  (``server.heartbeat_timeout``, 5 s here).

Documented outcome for MPICH (what the assertions accept): the client ends within
:data:`BOUND` seconds of the loss, with exit 1 (rank 0 declared the worker lost, failed its
running task with ``WorkerLost`` and finished the rest on the survivors) or exit 3
(``BrokenWorld``: the launcher took the whole world down); it prints the ``--resume`` command;
every failed record is a ``WorkerLost``. Then a new world on the two other nodes resumes the
batch, and every task has exactly one ``ok`` record with the right value. Open MPI is not tested
here (its rank-loss outcomes, including the fault-tolerant mode, are tested on one machine in
tests/integration/test_rank_loss*.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

BOUND = 45.0          # seconds from the loss to the client's end
N = 36                # tasks of 0.4 s on 3 workers: ~5 s of work
LOST = "vnode3"
ENV = {"COLOCATE_SERVER_HEARTBEAT_TIMEOUT": "5", "COLOCATE_SERVER_HEARTBEAT": "0.5"}


def ok_records(run_dir) -> list[dict]:
    path = run_dir / "results.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("status") == "ok":
            out.append(rec)
    return out


def all_records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()
            if line.strip().startswith("{")]


def lose(cluster, how: str) -> None:
    if how == "kill":
        for pid in cluster.netns_pids(LOST):
            subprocess.run(["kill", "-KILL", str(pid)], capture_output=True, timeout=10)
    else:
        subprocess.run(["ip", "link", "set", "clv3", "down"], check=True, timeout=10)


def restore(cluster, how: str, world) -> None:
    """Bring vnode3 back: link up, slurmd restarted, the world's job ended; nodes idle."""
    started = time.monotonic()
    subprocess.run(["ip", "link", "set", "clv3", "up"], capture_output=True, timeout=10)
    if how == "kill":
        cluster.on(LOST, ["slurmd"], timeout=30)   # first: slurmctld can then end the job there
    world.stop(ask=False)   # a world that lost a rank may not finalize: cancel its job
    stopped = time.monotonic()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not cluster.idle():
        # A node that was marked down comes back by itself (ReturnToService=2) once its
        # slurmd registers; a job still completing on it is cleaned up by slurmctld.
        time.sleep(0.5)
    assert cluster.idle(), cluster.slurm("sinfo", "-N", check=False).stdout
    print(f"{how}: restored in {stopped - started:.1f} + {time.monotonic() - stopped:.1f} s")


@pytest.mark.parametrize("how", ["kill", "cut"])
def test_node_loss_ends_in_time_and_resume_completes(cluster, srun_world, tmp_path, how):
    batch = tmp_path / "b.yaml"
    batch.write_text(f"name: sq\nfunction: slow_kernels:slow_square\n"
                     f"tasks:\n  product: {{x: {list(range(N))}, delay: [0.4]}}\noutput: out\n")
    run_dir = tmp_path / "out"
    world = srun_world(("vnode1", "vnode1", "vnode2", "vnode3"), name=f"loss-{how}", env=ENV)
    env = world.env
    run = subprocess.Popen([sys.executable, "-m", "colocate", "run", str(batch), "--address",
                            str(world.address), "--no-progress"], cwd=tmp_path, env=env,
                           start_new_session=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not {r["worker"]["node"] for r in ok_records(run_dir)} >= {"vnode1", "vnode2",
                                                                         LOST}:
            if time.monotonic() > deadline or run.poll() is not None:
                pytest.fail(f"no result from every node within 60 s:\n{world.log()}")
            time.sleep(0.05)
        lost_at = time.monotonic()
        lose(cluster, how)
        try:
            out, _ = run.communicate(timeout=BOUND + 30)
        except subprocess.TimeoutExpired:
            run.kill()
            out, _ = run.communicate()
            pytest.fail(f"the client still ran {BOUND + 30:.0f} s after the loss:\n{out}\n"
                        f"world:\n{world.log()}")
        took = time.monotonic() - lost_at
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
        restore(cluster, how, world)
    print(f"{how}: client exit {run.returncode} {took:.1f} s after the loss")
    assert took < BOUND, f"the client took {took:.0f} s after the loss:\n{out}"
    assert run.returncode in (1, 3), out
    assert "colocate run --resume" in out, out
    if run.returncode == 3:
        assert "BrokenWorld" in out, out
    failed = [r for r in all_records(run_dir) if r["status"] == "failed"]
    assert all(r["error"]["type"] == "WorkerLost" for r in failed), failed
    before = {r["task_id"] for r in ok_records(run_dir)}
    assert 3 <= len(before) <= N

    survivors = srun_world(("vnode1", "vnode1", "vnode2"), name=f"resume-{how}")
    res = subprocess.run([sys.executable, "-m", "colocate", "run", str(batch), "--resume",
                          str(run_dir), "--address", str(survivors.address), "--no-progress"],
                         cwd=tmp_path, env=survivors.env, capture_output=True, text=True,
                         timeout=120)
    survivors.stop()
    assert res.returncode == 0, res.stdout + res.stderr
    ok = ok_records(run_dir)
    assert len(ok) == N == len({r["task_id"] for r in ok}), "a result was lost or repeated"
    assert sorted(r["result"] for r in ok) == [x * x for x in range(N)]
    assert {r["worker"]["node"] for r in ok if r["task_id"] not in before} <= {"vnode1",
                                                                               "vnode2"}
