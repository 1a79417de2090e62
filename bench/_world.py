"""Benchmark plumbing: the settings benchmarks start worlds with, and what the machine is.

Shared by the benchmarks (not a benchmark itself). The worlds themselves, their tags and the
bounded waits are :mod:`colocate.testing`'s, as the test suite's are: a world is
``mpiexec -n N python -m colocate serve`` in its own session, tagged so that its processes can
be found, and if need be killed, without touching any other colocate process on this shared
machine.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path

import psutil

from colocate.testing import World, subprocess_env

# As the test suite: placement must work on a loaded 2-core machine and the guard must not pause
# executors because someone else loads the cores. Executors run at normal priority: these
# benchmarks measure the machinery, and at SCHED_IDLE any other user's load would stall them.
BENCH_ENV = {"COLOCATE_CO_LOCATION_SPARE_CORES": "all", "COLOCATE_GUARD_ENABLED": "false",
             "COLOCATE_CO_LOCATION_PRIORITY": "normal", "COLOCATE_LOG": "warning"}

# What a user gets with no settings at all (auto spare cores, executors at SCHED_IDLE, cgroups
# auto, the guard on): only the log level differs, so that logs stay short.
DEFAULT_ENV = {"COLOCATE_LOG": "warning"}

START_TIMEOUT = 90.0   # seconds for a world to write its address file and see its workers


def clean_env(tag: str, extra: dict[str, str] | None = None,
              settings: dict[str, str] = BENCH_ENV) -> dict[str, str]:
    """Our environment without MPI or ``COLOCATE_`` variables, plus ``settings``, tag, ``extra``."""
    return subprocess_env(tag, settings, own_settings=False, **(extra or {}))


def bench_world(ranks: int, directory: Path, env: dict[str, str] | None = None,
                settings: dict[str, str] = BENCH_ENV) -> World:
    """A :class:`colocate.testing.World` with this environment: ``settings``, then ``env``.

    ``COLOCATE_*`` variables of this process are not passed on: the world sees colocate's
    defaults plus ``settings`` (:data:`BENCH_ENV`, or :data:`DEFAULT_ENV` for the defaults).
    """
    return World(ranks, directory, "bench", env=env, settings=settings, own_settings=False)


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


def write_json(path: Path, result: dict, indent: int = 2) -> None:
    """Write a bench's result (its folder made if need be) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent, default=str) + "\n")
    print(f"json: {path}")


def median_of(values: list) -> object:
    """The median over rounds of one figure: numbers: their median; dicts: key by key (a key
    missing from a round is left out of its median); anything else: the first round's."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return statistics.median(values)
    if all(isinstance(v, dict) for v in values):
        return {k: median_of([v[k] for v in values if k in v]) for k in values[0]}
    return values[0]
