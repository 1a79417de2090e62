"""MPI jobs as subprocesses (the dask-mpi way): exit codes, output, and nothing left behind.

* the example application (``examples/offload_app.py``) embedding a colocate world;
* the pytest-mpi suite ``test_embed_mpi.py`` under ``mpiexec -n 3`` (so a plain ``pytest`` run
  covers it);
* an independent MPI job whose every rank is a client of a running ``colocate serve``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from colocate.testing import kill_tagged

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "offload_app.py"
MPI_SUITE = Path(__file__).with_name("test_embed_mpi.py")
RUNS_MPIEXEC = True   # plain tests that start MPI jobs (see conftest.py here)


@pytest.fixture
def mpirun(subprocess_env, assert_no_leftovers):
    """Run ``mpiexec -n N ARGS`` with a bound; afterwards no process of the job may be left."""
    tags: list[str] = []

    def run(n: int, *args: str, timeout: float = 100.0) -> subprocess.CompletedProcess:
        tag = f"mpijob-{uuid.uuid4().hex[:12]}"
        tags.append(tag)
        proc = subprocess.Popen(["mpiexec", "-n", str(n), *args], cwd=ROOT,
                                env=subprocess_env(tag), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tagged(tag)
            proc.kill()
            out, err = proc.communicate(timeout=10)
            pytest.fail(f"mpiexec -n {n} {' '.join(args)} did not end within {timeout:g} s:\n"
                        f"{out}\n{err}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    yield run
    for tag in tags:
        assert_no_leftovers(tag)


@pytest.mark.timeout(120)
def test_offload_app(mpirun):
    job = mpirun(4, sys.executable, str(APP))
    assert job.returncode == 0, f"{job.stdout}\n{job.stderr}"
    lines = [ln for ln in job.stdout.splitlines() if ln.startswith("offload_app:")]
    assert len(lines) == 1, job.stdout   # printed by rank 0 only
    line = lines[0]
    assert line.endswith(": OK"), line
    assert "on 2 compute ranks" in line and "ran on colocate rank 1 on " in line
    tasks = int(re.search(r"; (\d+) statistics tasks", line).group(1))
    assert tasks == 2 * (800 // 50 + 1), line   # every 50 of 800 steps, plus step 0, per rank


@pytest.mark.timeout(120)
def test_offload_app_with_more_compute_ranks(mpirun):
    job = mpirun(5, sys.executable, str(APP), "--steps", "200", "--every", "20")
    assert job.returncode == 0, f"{job.stdout}\n{job.stderr}"
    assert "on 3 compute ranks" in job.stdout and job.stdout.rstrip().endswith("OK")


@pytest.mark.timeout(60)
def test_offload_app_with_too_few_ranks_explains(mpirun):
    job = mpirun(2, sys.executable, str(APP), timeout=50)
    assert job.returncode == 2, f"{job.stdout}\n{job.stderr}"
    assert "found a communicator of 2 rank(s), needs at least 3" in job.stderr
    assert "start more ranks" in job.stderr
    assert "Traceback" not in job.stderr


@pytest.mark.timeout(120)
def test_pytest_mpi_suite_under_mpiexec(mpirun):
    job = mpirun(3, sys.executable, "-m", "pytest", "--with-mpi", "-p", "no:cacheprovider",
                 "-q", "-rfE", str(MPI_SUITE))
    out = job.stdout + job.stderr
    assert job.returncode == 0, out
    # The ranks share stdout, so their summary lines may run together.
    summaries = re.findall(r"(\d+) passed in", job.stdout)
    assert len(summaries) == 3, out                # one summary per rank
    assert all(int(n) >= 5 for n in summaries), out
    assert "skipped" not in job.stdout and "failed" not in job.stdout, out


CLIENT_JOB = """
import sys
from mpi4py import MPI
from colocate import Executor

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
with Executor(address=sys.argv[1]) as ex:
    squares = list(ex.map(lambda x: x * x, range(100 * rank, 100 * rank + 100), timeout=60))
    where = {f.info.rank for f in [ex.submit(abs, -i) for i in range(10)] if f.result(60) >= 0}
total = comm.allreduce(sum(squares), op=MPI.SUM)
ranks = sorted(set().union(*comm.allgather(where)))
if rank == 0:
    print(f"client job: {comm.Get_size()} ranks, total {total}, served by {ranks}")
"""


@pytest.mark.timeout(120)
def test_independent_mpi_job_offloads_to_a_running_server(mpirun, server, tmp_path):
    script = tmp_path / "client_job.py"
    script.write_text(CLIENT_JOB)
    job = mpirun(2, sys.executable, str(script), server)
    assert job.returncode == 0, f"{job.stdout}\n{job.stderr}"
    expected = sum(x * x for x in range(200))
    assert f"client job: 2 ranks, total {expected}, served by" in job.stdout, job.stdout
