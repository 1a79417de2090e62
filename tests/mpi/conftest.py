"""pytest-mpi and the two kinds of test in this directory.

pytest-mpi treats every test whose keywords contain ``mpi`` as an MPI test, and a test's keywords
include the names of its parents: the directory ``tests/mpi`` makes every test here an "MPI
test", skipped without ``--with-mpi``. Modules that set ``RUNS_MPIEXEC = True`` start MPI jobs
themselves as subprocesses: they run in the plain ``pytest`` run, and are skipped under
``--with-mpi`` (every rank would start its own jobs).
"""

from __future__ import annotations

import pytest

_PYTEST_MPI_SKIP = "need --with-mpi option to run"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    with_mpi = bool(config.getoption("--with-mpi", default=False) or
                    config.getoption("--only-mpi", default=False))
    for item in items:
        if not getattr(getattr(item, "module", None), "RUNS_MPIEXEC", False):
            continue
        if with_mpi:
            item.add_marker(pytest.mark.skip(reason="starts mpiexec itself: run it without "
                                                    "--with-mpi, outside mpiexec"))
        else:
            item.own_markers[:] = [m for m in item.own_markers
                                   if not (m.name == "skip"
                                           and m.kwargs.get("reason") == _PYTEST_MPI_SKIP)]
