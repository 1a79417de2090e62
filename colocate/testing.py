"""Helpers for colocate's tests and benchmarks: worlds as subprocesses, bounded waits, task helpers.

For tests and benchmarks only (as ``numpy.testing`` is): nothing in colocate imports it. A world
is ``mpiexec -n N python -m colocate serve --address-file F`` in its own session. Hydra puts
every rank in its own session too, so a world cannot be found (or killed) through its process
group. Instead each world's environment carries a unique tag (:data:`TAG_VAR`; any
``COLOCATE_*`` name would be read as a setting) that every rank and executor child inherits,
which lets a caller find, and if need be kill, exactly the processes of that world, and check
that none is left, without touching any other colocate process on a shared machine. Every wait
here is bounded.

The task helpers (:func:`crash`, :func:`crash_at`, :func:`wait_for_file`, :func:`mark_and_wait`)
run inside executor children: as module-level functions of an importable module, cloudpickle
sends them by reference.
"""

from __future__ import annotations

import operator
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import psutil

__all__ = [
    "START_TIMEOUT", "STOP_TIMEOUT", "TAG_VAR", "TEST_SETTINGS", "World", "assert_no_leftovers",
    "batch_records", "colocate_cmd", "connection_of",
    "crash", "crash_at", "describe", "kill_tagged", "mark_and_wait", "new_tag", "subprocess_env",
    "tagged_processes", "wait_for_file", "wait_gone", "wait_until",
]

T = TypeVar("T")

TAG_VAR = "CLTEST_WORLD"

# Placement must work on a 2-core machine whatever its load, and the interference guard must not
# pause executors because something else loads the cores (the guard has its own tests);
# warnings only, so logs stay short.
TEST_SETTINGS = {"COLOCATE_CO_LOCATION_SPARE_CORES": "all", "COLOCATE_GUARD_ENABLED": "false",
                 "COLOCATE_LOG": "warning"}

# Variables that would make a subprocess believe it is a rank of the MPI job that started it.
MPI_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "MPICH_", "I_MPI_")

START_TIMEOUT = 60.0   # seconds for a world to write its address file and see its workers
STOP_TIMEOUT = 30.0    # seconds for `colocate stop` to end a world before signals are used


# ----- waiting ------------------------------------------------------------------------------------
def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               interval: float = 0.01, max_interval: float = 0.25) -> T:
    """Call ``predicate`` at growing intervals until it returns a true value; return that value.

    Args:
        predicate: the condition; it may raise to stop the wait early (say, the process it
            waits on has exited).
        timeout: seconds to wait at the most.
        what: what is awaited, for the message.
        interval: the first pause, in seconds; each pause is 1.5 times the last.
        max_interval: the longest pause.

    Raises:
        TimeoutError: ``timeout`` seconds passed first ("timed out after T s waiting for WHAT").
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, max_interval)


# ----- helpers that run in tasks ------------------------------------------------------------------
def wait_for_file(path: str | os.PathLike, limit: float = 30.0) -> bool:
    """Block until ``path`` exists, ``limit`` seconds at the most; returns whether it appeared.

    Polls every 5 ms: a task that waits for a release file reacts at once.
    """
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def mark_and_wait(started: str | os.PathLike, release: str | os.PathLike,
                  value: Any = None, limit: float = 30.0) -> Any:
    """Say this task started (create ``started``), then wait (bounded) for ``release``.

    Returns ``value`` when one is given, else whether ``release`` appeared within ``limit``.
    """
    Path(started).touch()
    appeared = wait_for_file(release, limit)
    return appeared if value is None else value


def crash(code: int = 13) -> NoReturn:
    """End the executor child at once with exit code ``code``: no exception, no cleanup."""
    os._exit(code)


def crash_at(i: int, bad: int, code: int = 9) -> int:
    """Return ``i``, except that task ``bad`` crashes the executor child with ``code``."""
    if i == bad:
        os._exit(code)
    return i


# ----- batch runs --------------------------------------------------------------------------------
def batch_records(run_dir: str | os.PathLike) -> list[dict]:
    """The task records of a ``colocate run`` directory's ``results.jsonl`` so far, in order.

    None while the run has not made its journal yet; a line still being written is left out.
    """
    from colocate.batch.journal import RESULTS, iter_records
    path = Path(run_dir) / RESULTS
    return list(iter_records(path)) if path.exists() else []


# ----- environments and tagged processes ----------------------------------------------------------
def subprocess_env(tag: str | None = None, settings: Mapping[str, str] = TEST_SETTINGS,
                   own_settings: bool = True, **extra: str) -> dict[str, str]:
    """This process's environment for a subprocess: no MPI variables; ``settings``, tag, ``extra``.

    Args:
        tag: the value of :data:`TAG_VAR`; none: the variable is left as it is.
        settings: ``COLOCATE_*`` settings to apply (:data:`TEST_SETTINGS` by default).
        own_settings: keep this process's other ``COLOCATE_*`` variables (never
            ``COLOCATE_ADDRESS``); without them a subprocess sees colocate's defaults plus
            ``settings``.
        extra: more variables, applied last.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(MPI_PREFIXES) and k != "COLOCATE_ADDRESS"
           and (own_settings or not k.startswith("COLOCATE_"))}
    env.update(settings)
    if tag is not None:
        env[TAG_VAR] = tag
    env.update(extra)
    return env


def tagged_processes(tag: str, var: str = TAG_VAR) -> list[psutil.Process]:
    """Live processes (not zombies, not this one) whose environment has ``var`` set to ``tag``."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(var) == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def describe(procs: list[psutil.Process]) -> str:
    """``pid: command line`` of each process, for messages."""
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid}: {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            out.append(f"{p.pid}: (gone)")
    return "; ".join(out)


def kill_tagged(tag: str, timeout: float = 10.0, var: str = TAG_VAR) -> list[str]:
    """SIGKILL every process carrying ``tag``, wait (bounded) for them; returns what was killed."""
    left = tagged_processes(tag, var)
    killed = []
    for p in left:
        try:
            killed.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=timeout)
    return killed


def wait_gone(tag: str, timeout: float = 15.0, var: str = TAG_VAR) -> list[psutil.Process]:
    """Wait (bounded) until no process carries ``tag``; returns those still left."""
    try:
        wait_until(lambda: not tagged_processes(tag, var), timeout, f"the processes of {tag}",
                   interval=0.02)
    except TimeoutError:
        return tagged_processes(tag, var)
    return []


def connection_of(executor: Any) -> Any:
    """The engine behind an ``Executor``, for tests that stand in for rank 0 or a worker.

    It is colocate's private :class:`colocate.client.connection.Connection`: a test that drives
    it (e.g. hands it a lease no rank 0 granted) is white-box and may need changing with the
    client. Tests that only need the engine's thread use the public ``Executor.thread``.
    """
    return executor._conn


def lease_of(executor: Any) -> dict | None:
    """The lease the client holds, ``{"id", "rank"}`` (from ``status()``), or ``None``."""
    return executor.status()["client"]["lease"]


def take_lease(executor: Any, required: bool = True, timeout: float = 60.0) -> dict | None:
    """Lone tasks until the client holds a lease (the second lone task earns it): the lease.

    ``required``: fail (AssertionError) when the client holds none after three; else ``None``.
    """
    for i in range(3):
        got = executor.submit(operator.add, i, 1).result(timeout=timeout)
        assert got == i + 1, f"a lone task {i} + 1 came back as {got!r}"
    lease = lease_of(executor)
    assert lease is not None or not required, "a client sending lone tasks gets a lease"
    return lease


def new_tag(name: str) -> str:
    """A world's tag: ``NAME-`` and 12 random hex digits."""
    return f"{name}-{uuid.uuid4().hex[:12]}"


def colocate_cmd(*args: str) -> list[str]:
    """``python -m colocate ARGS`` with this interpreter."""
    return [sys.executable, "-m", "colocate", *args]


# ----- worlds -------------------------------------------------------------------------------------
class World:
    """One ``mpiexec -n RANKS colocate serve`` subprocess with its own tag, address file and log.

    Another launcher (``srun`` on a test cluster) is a subclass that passes ``launcher`` and
    ``environ`` and, where its processes are not this machine's, overrides :meth:`_ask_stop`,
    :meth:`_terminate` and :meth:`kill` (the steps of :meth:`stop`).

    Args:
        ranks: MPI ranks (rank 0 schedules, the others are workers).
        directory: where the address file (``TAG.address``) and the log (``TAG.log``) go.
        name: the start of the tag (``NAME-`` and 12 random hex digits).
        args: more arguments for ``colocate serve``.
        env: more environment for every rank (and so for the executor children).
        settings: the base settings (:data:`TEST_SETTINGS` by default).
        own_settings: pass this process's ``COLOCATE_*`` variables on (see
            :func:`subprocess_env`).
        prefix: a command that runs ``mpiexec`` (for instance ``("taskset", "-c", "0,1")``).
        launcher: the command that starts the ranks, instead of ``mpiexec -n RANKS`` (after
            ``prefix``); ``python -m colocate serve`` follows it.
        tag: the world's tag, instead of a new one (for an ``environ`` that names it).
        environ: the whole environment of the world, instead of :func:`subprocess_env`'s
            (``env``, ``settings`` and ``own_settings`` are then unused).
    """

    def __init__(self, ranks: int, directory: Path, name: str = "world",
                 args: tuple[str, ...] = (), env: Mapping[str, str] | None = None,
                 settings: Mapping[str, str] = TEST_SETTINGS, own_settings: bool = True,
                 prefix: tuple[str, ...] = (), launcher: Sequence[str] | None = None,
                 tag: str | None = None, environ: Mapping[str, str] | None = None) -> None:
        self.ranks = ranks
        self.tag = tag or new_tag(name)
        self.address = Path(directory) / f"{self.tag}.address"
        self.log_path = Path(directory) / f"{self.tag}.log"
        self.env = (dict(environ) if environ is not None
                    else subprocess_env(self.tag, settings, own_settings, **(env or {})))
        self.killed: list[str] = []
        if launcher is None:
            launcher = ("mpiexec", "-n", str(ranks))
        cmd = [*prefix, *launcher, *colocate_cmd(
            "serve", "--address-file", str(self.address), *args)]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def log(self, tail: int | None = None) -> str:
        """Everything the world printed so far, or its last ``tail`` lines."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text if tail is None else "\n".join(text.splitlines()[-tail:])

    def wait_ready(self, timeout: float = START_TIMEOUT, workers: bool = True) -> World:
        """Wait for the address file and (with ``workers``) for every worker to join.

        Raises:
            RuntimeError: the world exited first.
            TimeoutError: not ready within ``timeout`` seconds (the message ends with the log).
        """
        def written() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the world exited with code {self.proc.returncode} before "
                                   f"it was ready:\n{self.log()}")
            return self.address.exists()
        start = time.monotonic()
        try:
            wait_until(written, timeout, f"the address file {self.address}")
            if workers:
                import colocate
                left = max(1.0, timeout - (time.monotonic() - start))
                with colocate.Executor(address=self.address) as ex:
                    wait_until(lambda: len(ex.status()["workers"]) == self.ranks - 1, left,
                               f"{self.ranks - 1} workers to join")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; the world's log (tail):\n{self.log(tail=40)}") from None
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

    def stop(self, timeout: float = STOP_TIMEOUT, sweep: bool = False, ask: bool = True) -> int:
        """Stop the world: ``colocate stop``, then SIGTERM, then SIGKILL; returns its exit code.

        The code is the one from the first step that worked: 0 means every rank exited 0. With
        ``sweep``, whatever of the world is still alive once ``mpiexec`` has exited is killed at
        once and listed in :attr:`killed` (benchmarks); without, :meth:`assert_clean` finds it.
        Without ``ask``, the first step (``colocate stop``) is left out.
        """
        try:
            if ask and self.proc.poll() is None and self.address.exists():
                self._ask_stop(timeout)
            if self.proc.poll() is None:
                self._terminate()
            if sweep:
                self.killed = kill_tagged(self.tag)
            if self.proc.poll() is None:
                self.kill()
            return self.proc.returncode
        finally:
            self._log.close()

    def _ask_stop(self, timeout: float) -> None:
        """The first step of :meth:`stop`: ``colocate stop``, and wait for the world to exit."""
        try:
            subprocess.run(colocate_cmd("stop", "--address", str(self.address)), env=self.env,
                           capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pass
        self.wait_exit(timeout)

    def _terminate(self) -> None:
        """The second step of :meth:`stop`, when the first did not end it: SIGTERM, a wait."""
        self.proc.send_signal(signal.SIGTERM)
        self.wait_exit(10.0)

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

    def ranks_by_number(self) -> dict[int, psutil.Process]:
        """``{rank: process}`` for the ``colocate serve`` processes (rank from ``PMI_RANK``)."""
        out = {}
        for p in self.processes():
            try:
                if "colocate" in p.cmdline() and "serve" in p.cmdline():
                    out[int(p.environ()["PMI_RANK"])] = p
            except (psutil.Error, KeyError, ValueError):
                continue
        return out

    def assert_clean(self, timeout: float = 15.0) -> None:
        """No rank, proxy or executor child of this world is left (else they are killed).

        Raises:
            AssertionError: some were left after ``timeout`` seconds (they are named).
        """
        assert_no_leftovers(self.tag, timeout)


def assert_no_leftovers(tag: str, timeout: float = 15.0, var: str = TAG_VAR) -> None:
    """Wait (bounded) until no process carries ``tag``; kill them and raise if some remain.

    Raises:
        AssertionError: some were left after ``timeout`` seconds (they are named).
    """
    left = wait_gone(tag, timeout, var)
    if left:
        text = describe(left)
        kill_tagged(tag, var=var)
        raise AssertionError(f"processes of world {tag} left behind after {timeout:g} s: {text}")
