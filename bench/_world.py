"""Benchmark plumbing: start a colocate world as a subprocess, find its processes, stop it.

Shared by ``soak.py`` and ``memory.py`` (not a benchmark itself). A world is
``mpiexec -n N python -m colocate serve --address-file F`` in its own session; its environment
carries a unique tag (``BENCH_WORLD_TAG``: any ``COLOCATE_*`` name would be read as a setting)
that every rank and executor child inherits, so the world's processes can be found, and if need
be killed, without touching any other colocate process on this shared machine. Every wait here
is bounded.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

TAG_VAR = "BENCH_WORLD_TAG"
_MPI_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "MPICH_", "I_MPI_")

# As the test suite: placement must work on a loaded 2-core machine and the guard must not pause
# executors because someone else loads the cores. Executors run at normal priority: these
# benchmarks measure the machinery, and at SCHED_IDLE any other user's load would stall them.
BENCH_ENV = {"COLOCATE_CO_LOCATION_SPARE_CORES": "all", "COLOCATE_GUARD_ENABLED": "false",
             "COLOCATE_CO_LOCATION_PRIORITY": "normal", "COLOCATE_LOG": "warning"}

# What a user gets with no settings at all (auto spare cores, executors at SCHED_IDLE, cgroups
# auto, the guard on): only the log level differs, so that logs stay short.
DEFAULT_ENV = {"COLOCATE_LOG": "warning"}

START_TIMEOUT = 90.0   # seconds for a world to write its address file and see its workers
STOP_TIMEOUT = 30.0    # seconds for a polite stop before signals


def tagged(tag: str) -> list[psutil.Process]:
    """Live processes (not zombies, not this one) whose environment carries ``tag``."""
    out = []
    me = os.getpid()
    for p in psutil.process_iter():
        try:
            if p.pid != me and p.environ().get(TAG_VAR) == tag and (
                    p.status() != psutil.STATUS_ZOMBIE):
                out.append(p)
        except (psutil.Error, OSError):
            continue
    return out


def kill_tagged(tag: str, timeout: float = 10.0) -> list[str]:
    """SIGKILL every process carrying ``tag``; returns what had to be killed."""
    left = tagged(tag)
    killed = []
    for p in left:
        try:
            killed.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=timeout)
    return killed


def clean_env(tag: str, extra: dict[str, str] | None = None,
              settings: dict[str, str] = BENCH_ENV) -> dict[str, str]:
    """Our environment without MPI or ``COLOCATE_`` variables, plus ``settings``, tag, ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_MPI_PREFIXES) and not k.startswith("COLOCATE_")}
    env.update(settings)
    env[TAG_VAR] = tag
    env.update(extra or {})
    return env


class World:
    """One ``mpiexec -n RANKS colocate serve`` subprocess with its own tag and log file.

    Args:
        ranks: MPI ranks (rank 0 schedules, the others are workers).
        directory: where the address file and the log go.
        env: extra environment for every rank (and so for the executor children).
        settings: the base settings (:data:`BENCH_ENV`, or :data:`DEFAULT_ENV` for the defaults).
    """

    def __init__(self, ranks: int, directory: Path, env: dict[str, str] | None = None,
                 settings: dict[str, str] = BENCH_ENV) -> None:
        self.ranks = ranks
        self.tag = f"bench-{uuid.uuid4().hex[:12]}"
        self.address = directory / f"{self.tag}.address"
        self.log_path = directory / f"{self.tag}.log"
        self.env = clean_env(self.tag, env, settings)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["mpiexec", "-n", str(ranks), sys.executable, "-m", "colocate", "serve",
             "--address-file", str(self.address)],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        self.exit_code: int | None = None
        self.killed: list[str] = []

    def log(self, tail: int = 40) -> str:
        """The last ``tail`` lines the world printed."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for the address file and for every worker to join.

        Raises:
            RuntimeError: the world exited first.
            TimeoutError: not ready within ``timeout`` seconds.
        """
        import colocate
        deadline = time.monotonic() + timeout
        while not self.address.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the world exited with code {self.proc.returncode} before "
                                   f"it was ready:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no address file after {timeout:g} s:\n{self.log()}")
            time.sleep(0.02)
        with colocate.Executor(address=self.address) as ex:
            while len(ex.status()["workers"]) < self.ranks - 1:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.ranks - 1} workers did not join within "
                                       f"{timeout:g} s:\n{self.log()}")
                time.sleep(0.05)

    def ranks_by_number(self) -> dict[int, psutil.Process]:
        """``{rank: process}`` for the ``colocate serve`` processes (rank from ``PMI_RANK``)."""
        out = {}
        for p in tagged(self.tag):
            try:
                if "colocate" in p.cmdline() and "serve" in p.cmdline():
                    out[int(p.environ()["PMI_RANK"])] = p
            except (psutil.Error, KeyError, ValueError):
                continue
        return out

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """``colocate stop``, then SIGTERM, then SIGKILL (each bounded); returns the exit code.

        What had to be killed is kept in ``killed``; the code is the world's own (0: every rank
        exited 0) when a polite step worked.
        """
        try:
            if self.proc.poll() is None and self.address.exists():
                try:
                    subprocess.run([sys.executable, "-m", "colocate", "stop", "--address",
                                    str(self.address)], env=self.env, capture_output=True,
                                   timeout=timeout, stdin=subprocess.DEVNULL)
                except subprocess.TimeoutExpired:
                    pass
                self._wait(timeout)
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self._wait(10.0)
            self.killed = kill_tagged(self.tag)
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self._wait(10.0)
            self.exit_code = self.proc.returncode
            return self.exit_code
        finally:
            self._log.close()

    def _wait(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


def wait_gone(tag: str, timeout: float = 15.0) -> list[psutil.Process]:
    """Wait (bounded) until no process carries ``tag``; returns those left."""
    deadline = time.monotonic() + timeout
    while True:
        left = tagged(tag)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def rss(proc: psutil.Process) -> int | None:
    """Resident set size in bytes, or ``None`` if the process is gone."""
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return None


def machine() -> dict:
    """What the numbers were measured on."""
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                  if ln.startswith("model name")), platform.processor())
    git = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent.parent), "describe",
                          "--always", "--dirty"], capture_output=True, text=True).stdout.strip()

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"cpu_model": model, "cores": os.cpu_count(),
            "allowed_cores": sorted(os.sched_getaffinity(0)),
            "memory_total": psutil.virtual_memory().total, "kernel": platform.release(),
            "python": platform.python_version(), "mpi4py": version("mpi4py"),
            "mpich": version("mpich"), "cloudpickle": version("cloudpickle"),
            "psutil": version("psutil"), "colocate_git": git, "hostname": platform.node(),
            "loadavg": list(os.getloadavg())}


def median_of(values: list) -> object:
    """The median over rounds of one figure: numbers: their median; dicts: key by key (a key
    missing from a round is left out of its median); anything else: the first round's."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return statistics.median(values)
    if all(isinstance(v, dict) for v in values):
        return {k: median_of([v[k] for v in values if k in v]) for k in values[0]}
    return values[0]
