"""The virtual cluster of tests/cluster/up.sh, for the tests that cross nodes for real.

``cluster`` (session) brings up 3 virtual nodes (network + UTS namespaces, one slurmd each, one
slurmctld) with ``up.sh 3`` and takes them down with ``down.sh`` at the end of the session,
unless they were already up when the session began (then they are left as they were). It skips
with up.sh's reason where the cluster cannot exist here: not root, no network or UTS
namespaces, the Slurm or munge packages missing (``bash .ci/run`` installs them). A cluster
that could be set up but did not come up (a daemon that never got idle) fails instead.

This cluster's Slurm is reached only through ``SLURM_CONF`` in :attr:`Cluster.env`, never
through ``os.environ``: the single-node Slurm of tests/slurm (the ``slurm`` tests) runs beside
it in the same session and must keep its default configuration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from colocate.testing import World, colocate_cmd, new_tag, wait_until

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
UP, DOWN, ON = HERE / "up.sh", HERE / "down.sh", HERE / "on.sh"
STATE = Path(os.environ.get("COLOCATE_CLUSTER_STATE", "/var/tmp/colocate-cluster"))
CONF = STATE / "slurm.conf"
NODES = ("vnode1", "vnode2", "vnode3")
TAG_VAR = "CLTEST_WORLD"
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
_MPI_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "MPICH_", "I_MPI_", "SLURM_")

# up.sh exits 1 with "cluster: cannot ..." for what this machine does not allow or lacks (skip),
# and 2 when it could set up but the nodes never got idle (a failure).
CANNOT = 1


class Cluster:
    """The running virtual cluster: its nodes, its Slurm, and commands on its nodes."""

    nodes = NODES

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(_MPI_PREFIXES) and not k.startswith("COLOCATE_")}
        env.update({
            "SLURM_CONF": str(CONF),
            # This checkout, wherever colocate is installed from; tests/data for task modules.
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "data"),
                                           *filter(None, [os.environ.get("PYTHONPATH")])]),
            "COLOCATE_PYTHON": sys.executable,
            "COLOCATE_GUARD_ENABLED": "false", "COLOCATE_LOG": "warning",
            # UCX sees one machine (one boot id) and would carry MPI between the virtual nodes
            # in shared memory (sysv, cma); over TCP it crosses their network, as between real
            # nodes (a cut link then stops it). MPICH's own shared memory within a node stays.
            "UCX_TLS": "self,tcp",
            # The virtual nodes share this machine's two cores: the three hosts' CPU 0 is one
            # physical CPU, busy, so everything else on the machine runs on CPU 1, where
            # executors at SCHED_IDLE got no time to start until the hosts ended (measured: the
            # world's set-up took the host's whole 30 s). Executors at normal priority here; the
            # sandbox's priority has its own tests.
            "COLOCATE_CO_LOCATION_PRIORITY": "normal",
        })
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.env = env

    def environ(self, tag: str | None = None, **extra: str) -> dict[str, str]:
        """The environment for a command on the cluster, optionally tagged for cleanup."""
        env = dict(self.env)
        if tag is not None:
            env[TAG_VAR] = tag
        env.update(extra)
        return env

    def on(self, node: str, cmd: Sequence[str], *, timeout: float = 60, env: dict | None = None,
           check: bool = True, **kw) -> subprocess.CompletedProcess:
        """Run ``cmd`` on ``node`` (its namespaces, via on.sh) and wait for it, bounded."""
        r = subprocess.run(["bash", str(ON), node, *cmd], env=env or self.env, text=True,
                           capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
        if check:
            assert r.returncode == 0, (f"{' '.join(cmd)} on {node} exited {r.returncode}:\n"
                                       f"{r.stdout}\n{r.stderr}")
        return r

    def slurm(self, *cmd: str, timeout: float = 30, check: bool = True
              ) -> subprocess.CompletedProcess:
        """A Slurm client command (sinfo, scontrol, scancel, ...) against this cluster."""
        r = subprocess.run(list(cmd), env=self.env, text=True, capture_output=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if check:
            assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"
        return r

    def sbatch(self, args: Sequence[str], cwd: Path, env: dict | None = None,
               node: str = "vnode1") -> str:
        """Submit from ``node`` (as a user on a login node would); returns the job id."""
        r = self.on(node, ["sbatch", "--parsable", f"--chdir={cwd}", *args],
                    env={**self.env, **(env or {})}, timeout=30)
        return r.stdout.strip().split(";")[0]

    def job(self, jobid: str) -> dict:
        out = self.slurm("scontrol", "-o", "show", "job", jobid, check=False).stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def wait_job(self, jobid: str, timeout: float) -> dict:
        """Wait until the job has ended; cancel it and fail past ``timeout`` seconds."""
        def ended() -> dict | None:
            info = self.job(jobid)
            return info if info.get("JobState") in ENDED else None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = ended()
            if info:
                return info
            time.sleep(0.3)
        self.slurm("scancel", jobid, check=False)
        pytest.fail(f"job {jobid} still {self.job(jobid).get('JobState')} after {timeout} s")

    def idle(self) -> bool:
        """Every node idle (after a test that took one down, before the next one starts)."""
        out = self.slurm("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout.split("\n")
        states = dict(line.split() for line in out if line.strip())
        return sorted(states) == list(NODES) and set(states.values()) == {"idle"}

    def netns_pids(self, node: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", f"colocate-{node}"], capture_output=True,
                             text=True, timeout=10).stdout
        return [int(p) for p in out.split()]


def _up_already() -> bool:
    try:
        if (STATE / "nodes").read_text().strip() != str(len(NODES)):
            return False
    except OSError:
        return False
    return Cluster().idle()


@pytest.fixture(scope="session")
def cluster():
    """The virtual cluster of 3 nodes, up (see the module docstring)."""
    if os.geteuid() != 0:
        pytest.skip("the virtual cluster (tests/cluster/up.sh) needs root: network "
                    "namespaces, /etc/hosts and slurmd")
    was_up = _up_already()
    if not was_up:
        try:
            r = subprocess.run(["bash", str(UP), str(len(NODES))], capture_output=True,
                               text=True, timeout=150)
        except subprocess.TimeoutExpired:
            pytest.fail("tests/cluster/up.sh 3 did not finish within 150 s")
        reason = (r.stderr or r.stdout).strip().splitlines()
        if r.returncode == CANNOT:
            pytest.skip(reason[-1] if reason else "tests/cluster/up.sh 3 failed")
        assert r.returncode == 0, f"tests/cluster/up.sh 3 exited {r.returncode}: {r.stderr}"
        assert r.stdout.split() == list(NODES), r.stdout
    yield Cluster()
    if not was_up:
        subprocess.run(["bash", str(DOWN)], capture_output=True, timeout=120)


# ----- worlds across the nodes -----------------------------------------------------------------
class SrunWorld(World):
    """A colocate world started by ``srun`` on the virtual cluster, one rank per listed node.

    ``layout`` names the node of every rank in rank order (``srun --distribution=arbitrary``):
    ``("vnode2", "vnode1", "vnode2", "vnode3")`` puts rank 0 on vnode2. The rest is
    :class:`colocate.testing.World`'s, but for stopping: ``colocate stop`` runs on rank 0's
    node, then the job is cancelled (``scancel``).
    """

    def __init__(self, cluster: Cluster, layout: Sequence[str], directory: Path,
                 name: str = "world", env: dict[str, str] | None = None,
                 time_limit: int = 10) -> None:
        self.cluster, self.layout = cluster, tuple(layout)
        tag = new_tag(name)
        hosts = directory / f"{name}.hosts"
        hosts.write_text("".join(f"{n}\n" for n in self.layout))
        self.name = f"{name}-{tag[-6:]}"
        super().__init__(
            len(self.layout), directory, name, tag=tag,
            environ=cluster.environ(tag, SLURM_HOSTFILE=str(hosts),
                                    COLOCATE_CO_LOCATION_SPARE_CORES="all", **(env or {})),
            launcher=("srun", f"--job-name={self.name}", "--distribution=arbitrary",
                      f"--ntasks={len(self.layout)}", "--mpi=pmi2", f"--time={time_limit}",
                      "--kill-on-bad-exit=0"))

    def wait_ready(self, timeout: float = 90, workers: bool = False) -> SrunWorld:
        """Wait for the address file (with ``workers``, for every worker to join too)."""
        super().wait_ready(timeout, workers)
        return self

    def read_address(self) -> dict:
        return json.loads(self.address.read_text())

    def jobid(self) -> str | None:
        out = self.cluster.slurm("squeue", "-h", "-n", self.name, "-o", "%i",
                                 check=False).stdout.split()
        return out[0] if out else None

    def stop(self, timeout: float = 60, ask: bool = True) -> int | None:
        """``colocate stop`` on rank 0's node (with ``ask``), then scancel the job.

        Returns srun's exit code.
        """
        return super().stop(timeout, ask=ask)

    def _ask_stop(self, timeout: float) -> None:
        try:
            stop = self.cluster.on(self.layout[0], colocate_cmd(
                "stop", "--address", str(self.address)), env=self.env, timeout=timeout,
                check=False)
            if stop.returncode == 0:
                self.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            pass

    def _terminate(self) -> None:
        jobid = self.jobid()
        if jobid:
            self.cluster.slurm("scancel", jobid, check=False)
        self.wait_exit(30)

    def kill(self) -> None:   # (its ranks run under slurmd: scancel ended them, or nothing will)
        self.proc.kill()
        self.wait_exit(10)


@pytest.fixture(scope="module")
def srun_world(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory):
    """Start worlds with srun for a module: ``srun_world(layout, name=..., env=...)``.

    Every world is stopped at the end of the module, and the cluster left idle.
    """
    worlds: list[SrunWorld] = []
    directory = tmp_path_factory.mktemp("cluster-worlds")

    def start(layout: Sequence[str], name: str = "world", ready: bool = True,
              env: dict[str, str] | None = None) -> SrunWorld:
        w = SrunWorld(cluster, layout, directory, f"{name}{len(worlds)}", env)
        worlds.append(w)
        if ready:
            w.wait_ready()
        return w

    yield start
    for w in worlds:
        w.stop()
    wait_until(cluster.idle, 60, "every node of the cluster idle again", 0.05, 0.5)

