"""The Slurm launchers on the 3-node virtual cluster: colocate-with.sbatch -N 3, attach, drain.

Jobs are submitted from vnode1, as from a login node. The host program is real (stress-ng, else a
Python busy loop) and prints its node and CPUs first; each batch task reports where it ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from launching import data_copy, host_program

from colocate import launch as L
from colocate.testing import batch_records

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "launchers" / "slurm" / "colocate-with.sbatch"
ATTACH = REPO / "launchers" / "slurm" / "colocate-attach.sh"


NODES = ["vnode1", "vnode2", "vnode3"]


def hosts_on_host_core(out: str) -> list[str]:
    """The nodes whose host task printed that it may use CPU 0 only."""
    return sorted(line.split()[1] for line in out.splitlines()
                  if line.startswith("HOST ") and line.endswith("Cpus_allowed_list: 0"))


@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_colocate_with_sbatch_on_three_nodes(cluster, tmp_path, launcher):
    """The world by srun --mpi=pmi2, or by hydra (mpiexec -launcher slurm) inside the job."""
    batch = data_copy(tmp_path, "where-spread.yaml")
    jobid = cluster.sbatch(["-N3", "--exclusive", "--ntasks-per-node=1", "-t", "3", "-o",
                            "out.txt", str(SBATCH), str(batch), "--",
                            *host_program(node=True, seconds=12)], tmp_path,
                           env={"COLOCATE_SLURM_LAUNCHER": launcher})
    info = cluster.wait_job(jobid, 150)
    out = (tmp_path / "out.txt").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", out
    assert hosts_on_host_core(out) == NODES, out                   # host on CPU 0 of every node
    assert "host exit 0, batch exit 0, colocate exit 0; exit 0" in out, out
    recs = batch_records(tmp_path / "runs" / "where-spread")
    assert sorted(r["kwargs"]["index"] for r in recs) == [0, 1, 2, 3, 4, 5], out
    assert sorted({r["worker"]["node"] for r in recs}) == NODES, recs  # results from 3 nodes
    for r in recs:
        assert r["status"] == "ok", r
        assert r["result"]["host"] == r["worker"]["node"], r
        assert r["result"]["affinity"] == [1] and r["worker"]["cores"] == [1], r
    assert not (tmp_path / f"colocate-{jobid}.address").exists()   # the server cleaned up


def test_attach_to_a_running_three_node_job(cluster, tmp_path, wait_until):
    """Attach to a running 3-node job: the world spans its three nodes, on CPU 1 of each.

    The spare cores are named (COLOCATE_SPARE_CORES=1). ``spare_cores: auto`` is not tested
    here: it measures the load of the machine's cores, which every virtual node shares, so the
    other nodes' ranks starting up make CPU 1 look busy (measured: "no spare core on this node").
    """
    host = L.slurm_host_step(host_program(node=True, seconds=60), [0], 3, 1)
    jobid = cluster.sbatch(["-N3", "--exclusive", "-t", "2", "-o", "host.txt", "--wrap",
                            L.shell_join(host)], tmp_path)
    try:
        wait_until(lambda: len(hosts_on_host_core(
            (tmp_path / "host.txt").read_text() if (tmp_path / "host.txt").exists() else ""
        )) == 3, 90, "the host job's three tasks running")
        env = cluster.environ(COLOCATE_SPARE_CORES="1")
        batch = data_copy(tmp_path, "where-spread.yaml")
        out = cluster.on("vnode1", ["bash", str(ATTACH), jobid, str(batch)],
                         cwd=tmp_path, env=env, timeout=150, check=False)
        recs = batch_records(tmp_path / "runs" / "where-spread")
        assert out.returncode == 0, out.stdout + out.stderr
        assert len(recs) == 6 and all(r["status"] == "ok" for r in recs), out.stderr
        assert sorted({r["worker"]["node"] for r in recs}) == NODES, recs
        assert {tuple(r["result"]["affinity"]) for r in recs} == {(1,)}, recs
        assert cluster.job(jobid)["JobState"] == "RUNNING"          # the host was not touched
    finally:
        cluster.slurm("scancel", jobid, check=False)
    cluster.wait_job(jobid, 60)


def test_warning_signal_drains_across_nodes(cluster, tmp_path, wait_until):
    """`scancel --signal=TERM --batch` stands in for Slurm's --signal=B:TERM@N warning."""
    batch = data_copy(tmp_path, "where-slow.yaml")
    jobid = cluster.sbatch(["-N3", "--exclusive", "--ntasks-per-node=1", "-t", "3", "-o",
                            "out.txt", str(SBATCH), str(batch), "--",
                            *host_program(node=True, seconds=20)], tmp_path,
                           env={"COLOCATE_SERVER_DRAIN_GRACE": "3"})
    run_dir = tmp_path / "runs" / "where-slow"
    wait_until(lambda: sum(r["status"] == "ok" for r in batch_records(run_dir)) >= 4, 120,
               "the four quick tasks")
    # The slow ones run on the three nodes' workers when the warning comes.
    cluster.slurm("scancel", "--signal=TERM", "--batch", jobid)
    info = cluster.wait_job(jobid, 120)
    out = (tmp_path / "out.txt").read_text()
    recs = batch_records(run_dir)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "3:0", out
    assert "SIGTERM received: draining colocate" in out, out
    done = sorted(r["kwargs"]["index"] for r in recs if r["status"] == "ok")
    cut = [r for r in recs if r["status"] == "interrupted"]
    assert done == [0, 1, 2, 3], out
    # The slow tasks that were running when the warning came, on more than one node, are
    # marked interrupted (the others were never started: not run).
    assert cut and {r["kwargs"]["index"] for r in cut} <= {4, 5, 6, 7}, out
    assert len({r["worker"]["node"] for r in cut}) >= 2, cut
    assert "batch exit 3" in out and hosts_on_host_core(out) == NODES, out   # host unharmed
    assert "host exit 0" in out, out


def test_one_cpu_job_is_told_what_to_add(cluster, tmp_path):
    """`sbatch -N 1 --ntasks-per-node=1` without --exclusive: Slurm gives the job one CPU."""
    jobid = cluster.sbatch(["-N1", "--ntasks-per-node=1", "-t", "1", "-o", "out.txt",
                            str(SBATCH), str(data_copy(tmp_path, "where.yaml")), "--", "true"],
                           tmp_path)
    info = cluster.wait_job(jobid, 60)
    out = (tmp_path / "out.txt").read_text()
    assert info["ExitCode"] == "2:0", out
    assert "the allocation has 1 CPU on this node (" in out, out
    assert ("and the host job uses it (--ntasks-per-node=1 x --cpus-per-task=1), so no CPU is "
            "left for colocate. Add --exclusive to the sbatch options") in out, out
