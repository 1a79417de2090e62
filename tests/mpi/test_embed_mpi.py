"""Embedding under a real MPI job, run by pytest-mpi on every rank.

Run as ``mpiexec -n 3 python -m pytest --with-mpi tests/mpi/test_embed_mpi.py`` (the plain test
run does it for you: ``tests/mpi/test_embed.py``); without ``--with-mpi`` these tests are
skipped. Every rank runs every test. A failure on one rank must not leave the others waiting in a
collective: each test gathers every rank's problems before it asserts.
"""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

import colocate

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# "thread": a rank stuck in a blocking MPI call cannot be interrupted by a signal handler.
pytestmark = [pytest.mark.mpi(min_size=3), pytest.mark.timeout(60, method="thread")]

WORKERS = 1   # ranks that run tasks; one more schedules
BOUND = 30.0


def cube(x):
    return x ** 3


def fail_with(code):
    raise LookupError(f"failure {code}")


def hard_exit(code):
    os._exit(code)


@pytest.fixture
def comm():
    from mpi4py import MPI
    return MPI.COMM_WORLD


def check_everywhere(comm, problems: list[str]) -> None:
    """Share every rank's problems, then fail on all ranks if any rank has one."""
    everyone = comm.allgather(problems)
    found = [f"rank {r}: {p}" for r, ps in enumerate(everyone) for p in ps]
    assert not found, "\n".join(found)


def test_serving_ranks_get_none_and_the_others_an_executor(comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    problems: list[str] = []
    with colocate.embed(comm, workers=WORKERS) as ex:
        serving = ex is None
        if not serving:
            try:
                if not isinstance(ex, colocate.Executor):
                    problems.append(f"got {ex!r}")
                fut = ex.submit(cube, rank + 2)
                if fut.result(timeout=BOUND) != (rank + 2) ** 3:
                    problems.append(f"wrong result {fut.result()}")
                if fut.info.rank != 1:   # the only worker of the world
                    problems.append(f"ran on rank {fut.info.rank}")
            except Exception as e:   # noqa: BLE001 - reported on every rank
                problems.append(repr(e))
    if serving != (rank >= size - WORKERS - 1):
        problems.append(f"serving={serving} on rank {rank} of {size}")
    check_everywhere(comm, problems)


def test_map_and_remote_exceptions(comm):
    rank = comm.Get_rank()
    problems: list[str] = []
    with colocate.embed(comm, workers=WORKERS) as ex:
        if ex is not None:
            try:
                got = list(ex.map(cube, range(30), chunksize=4, timeout=BOUND))
                if got != [x ** 3 for x in range(30)]:
                    problems.append(f"map gave {got}")
                err = ex.submit(fail_with, rank).exception(timeout=BOUND)
                if not isinstance(err, LookupError) or str(err) != f"failure {rank}":
                    problems.append(f"expected LookupError, got {err!r}")
                elif "rank 1" not in str(err.__cause__):
                    problems.append(f"remote traceback without the rank: {err.__cause__}")
            except Exception as e:   # noqa: BLE001
                problems.append(repr(e))
    check_everywhere(comm, problems)


def test_a_crash_costs_one_task(comm):
    problems: list[str] = []
    with colocate.embed(comm, workers=WORKERS) as ex:
        if ex is not None:
            try:
                err = ex.submit(hard_exit, 21).exception(timeout=BOUND)
                if not isinstance(err, colocate.WorkerCrashed) or err.exitcode != 21:
                    problems.append(f"expected WorkerCrashed(21), got {err!r}")
                if ex.submit(cube, 3).result(timeout=BOUND) != 27:
                    problems.append("no result after the crash")
            except Exception as e:   # noqa: BLE001
                problems.append(repr(e))
    check_everywhere(comm, problems)


@pytest.mark.parametrize("workers", ["too many", 0, -1, "two", True])
def test_invalid_workers_fail_on_every_rank(comm, workers):
    size = comm.Get_size()
    k = size - 1 if workers == "too many" else workers
    with pytest.raises(colocate.ConfigError) as err:
        with colocate.embed(comm, workers=k):
            pass
    text = str(err.value)
    assert text.startswith(f"embed(workers): found workers={k!r} on a communicator of {size} "
                           f"ranks; needs 1 <= workers <= {size - 2}: workers counts the ranks "
                           "that run tasks"), text
    assert f"pass workers between 1 and {size - 2}, or start more ranks" in text
    comm.Barrier()   # every rank got here: nobody is left serving


def test_workers_counts_the_ranks_that_run_tasks(comm):
    # As in MPICommExecutor: workers=1 on 3 ranks is one scheduler, one worker, one client.
    rank, size = comm.Get_rank(), comm.Get_size()
    problems: list[str] = []
    with colocate.embed(comm, workers=size - 2) as ex:
        if (ex is None) != (rank >= 1):
            problems.append(f"rank {rank}: ex={ex!r}")
        if ex is not None:
            try:
                ranks = {f.info.rank for f in [ex.submit(cube, i) for i in range(20)]
                         if f.result(timeout=BOUND) is not None}
                if not ranks <= set(range(1, size - 1)):
                    problems.append(f"ran on world ranks {ranks}")
            except Exception as e:   # noqa: BLE001
                problems.append(repr(e))
    check_everywhere(comm, problems)


def test_default_workers_serve_all_but_rank_0(comm):
    rank, size = comm.Get_rank(), comm.Get_size()
    problems: list[str] = []
    with colocate.embed(comm) as ex:
        if (ex is None) != (rank >= 1):
            problems.append(f"rank {rank}: ex={ex!r}")
        if ex is not None:
            try:
                fut = ex.submit(cube, 4)
                if fut.result(timeout=BOUND) != 64 or fut.info.rank not in range(1, size - 1):
                    problems.append(f"{fut.result()} on {fut.info}")
            except Exception as e:   # noqa: BLE001
                problems.append(repr(e))
    check_everywhere(comm, problems)
