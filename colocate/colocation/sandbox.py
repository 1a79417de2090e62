"""Sandbox: what an executor child applies to itself at start (pinning, priority, threads).

Called once by the executor child, first thing, before it imports user code::

    applied = apply_sandbox(cores=[3], priority="idle", threads=None, memory_limit=None)

Each control degrades instead of failing, and the returned dict says what was applied and
what the system refused, for the worker's log and ``colocate info``:

- **pinning**: ``os.sched_setaffinity`` on every thread of the process (Linux affinity is
  per thread; new threads inherit it).
- **priority** ``"idle"``: ``SCHED_IDLE`` (runs only when the core has nothing else to run),
  else nice 19 if refused; ``"nice"``: nice 19; ``"normal"``: unchanged. With
  ``/proc/sys/kernel/sched_autogroup_enabled`` = 1 (the default of most kernels) the scheduler
  first shares a core fairly between *sessions*, so a SCHED_IDLE process in a session of its
  own still gets half a core against a host process in another session (measured: 50/50).
  The sandbox therefore also moves the child into a new session and sets that session's
  autogroup nice to 19 (measured: 1 % for the child, 99 % for the host). A child inside a cpu
  cgroup other than the root is not autogrouped, and the write is then harmless.
- **threads**: OMP_NUM_THREADS and the other thread-pool variables (:func:`thread_env`) set
  to the core count, so numerical libraries do not start one thread per core of the node.
  Libraries already loaded are limited through threadpoolctl when it is installed.
- **memory**: ``RLIMIT_AS`` as a last resort when no memory cgroup is available. It caps
  virtual size, not resident memory, so give it room: allocators and thread stacks reserve
  address space they never touch.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys

from colocate.errors import ConfigError

PRIORITIES = ("idle", "nice", "normal")
NICE_LOWEST = 19

#: Environment variables that size the thread pools of common numerical libraries.
THREAD_VARS = (
    "OMP_NUM_THREADS",  # OpenMP: GCC libgomp, LLVM libomp, Intel
    "OPENBLAS_NUM_THREADS",  # OpenBLAS (numpy, scipy wheels)
    "MKL_NUM_THREADS",  # Intel MKL
    "VECLIB_MAXIMUM_THREADS",  # Apple Accelerate
    "BLIS_NUM_THREADS",  # BLIS / AMD AOCL
    "NUMEXPR_NUM_THREADS",  # numexpr
    "NUMEXPR_MAX_THREADS",  # numexpr's cap (it warns and uses 8 when unset on big nodes)
    "NUMBA_NUM_THREADS",  # numba parallel=True
    "RAYON_NUM_THREADS",  # Rust libraries (polars, tokenizers)
    "POLARS_MAX_THREADS",  # polars
    "TF_NUM_INTRAOP_THREADS",  # TensorFlow
    "TF_NUM_INTEROP_THREADS",
)

_POLICY_NAMES = {
    getattr(os, name): name
    for name in ("SCHED_OTHER", "SCHED_BATCH", "SCHED_IDLE", "SCHED_FIFO", "SCHED_RR")
    if hasattr(os, name)
}


def thread_env(n: int) -> dict[str, str]:
    """Environment variables that limit every common thread pool to ``n`` threads.

    Raises:
        ValueError: ``n`` is below 1.
    """
    if n < 1:
        raise ValueError(f"thread count {n}: expected 1 or more")
    return {var: str(n) for var in THREAD_VARS}


def apply_sandbox(cores: list[int] | None, priority: str = "idle", threads: int | None = None,
                  memory_limit: int | None = None, *, new_session: bool = True,
                  die_with_parent: bool = False) -> dict:
    """Pin, deprioritize and size the thread pools of the calling process.

    Args:
        cores: cores to pin to; ``None`` leaves the affinity alone.
        priority: ``"idle"``, ``"nice"`` or ``"normal"`` (see the module docstring).
        threads: thread-pool size; default ``len(cores)``, or the current affinity's size.
        memory_limit: bytes for ``RLIMIT_AS`` (soft and hard); ``None`` for none. Use it only
            when no memory cgroup holds the process.
        new_session: for ``"idle"``/``"nice"``, start a new session (``os.setsid``) so the
            autogroup nice applies to this process alone. Pass ``False`` if the caller needs
            the child in its session (e.g. to signal its process group).
        die_with_parent: ask the kernel to SIGKILL this process when its parent exits
            (``PR_SET_PDEATHSIG``), so an executor never outlives its worker rank. The signal
            fires when the parent *thread* that started the child exits: start executors from
            a long-lived thread.

    Returns:
        ``{"affinity": [..] | None, "policy": "SCHED_IDLE", "nice": 19, "autogroup": "nice 19"
        | None, "threads": n, "rlimit_as": bytes | None, "refused": {control: reason}}``.

    Raises:
        ConfigError: ``priority`` is not one of the three.
    """
    if priority not in PRIORITIES:
        raise ConfigError(f"found {priority!r}, expected one of {', '.join(PRIORITIES)}",
                          key="co_location.priority")
    refused: dict[str, str] = {}
    if die_with_parent:
        _set_parent_death_signal(refused)
    pinned: list[int] | None = None
    if cores is not None:
        try:
            for tid in _threads():
                os.sched_setaffinity(tid, cores)
            pinned = sorted(os.sched_getaffinity(0))
        except OSError as e:
            refused["affinity"] = f"sched_setaffinity({sorted(cores)}) refused: {e.strerror}"

    autogroup = None
    if priority == "idle":
        try:
            for tid in _threads():
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError) as e:
            refused["policy"] = f"SCHED_IDLE refused ({getattr(e, 'strerror', e)}): nice 19"
            _renice_all(NICE_LOWEST, refused)
    elif priority == "nice":
        _renice_all(NICE_LOWEST, refused)
    if priority != "normal":
        autogroup = _autogroup_nice(new_session, refused)

    n = threads or len(pinned or cores or os.sched_getaffinity(0))
    os.environ.update(thread_env(n))
    _limit_loaded_pools(n)

    rlimit = None
    if memory_limit is not None:
        try:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
            rlimit = memory_limit
        except (OSError, ValueError) as e:
            refused["rlimit_as"] = f"setrlimit(RLIMIT_AS, {memory_limit}) refused: {e}"

    me = describe_self()
    return {
        "affinity": pinned,
        "policy": me["policy"],
        "nice": me["nice"],
        "autogroup": autogroup,
        "threads": n,
        "rlimit_as": rlimit,
        "refused": refused,
    }


def describe_sandbox(sandbox: dict | None, cgroup: dict | str | None, guard: str | None) -> str:
    """One readable line about an executor's sandbox, for the server log.

    ``sandbox`` is what :func:`apply_sandbox` returned, ``cgroup`` the cgroup's description (a
    dict) or why there is none (a string), ``guard`` the guard's action (``None``: no guard).
    E.g. ``core 1, SCHED_IDLE, autogroup nice 19, 1 thread; cgroup v1 rank1 (cpus 1, memory
    unlimited, freezer); guard: freeze``.
    """
    if sandbox is None:
        return "tasks run in the rank itself (no executor child, no sandbox)"
    parts = []
    sb = sandbox
    cores = sb.get("affinity")
    if cores:
        from .cpulist import format_cpulist
        parts.append(f"core{'s' if len(cores) > 1 else ''} {format_cpulist(cores)}")
    else:
        parts.append("not pinned")
    policy = sb.get("policy") or "normal priority"
    if policy != "SCHED_IDLE" and sb.get("nice"):
        policy = f"{policy} nice {sb['nice']}"
    parts.append(policy)
    if sb.get("autogroup"):
        parts.append(f"autogroup {sb['autogroup']}")
    if sb.get("threads"):
        parts.append(f"{sb['threads']} thread{'s' if sb['threads'] != 1 else ''}")
    if sb.get("rlimit_as"):
        parts.append(f"address space <= {sb['rlimit_as'] / 2**30:.1f} GiB")
    line = ", ".join(parts)
    if isinstance(cgroup, dict):
        memory = cgroup.get("memory_bytes")
        inner = [f"cpus {cgroup['cpus']}"] if cgroup.get("cpus") else []
        inner.append("memory unlimited" if not memory else f"memory {memory / 2**30:.1f} GiB")
        if any("freezer" in p for p in cgroup.get("paths") or ()):
            inner.append("freezer")
        line += f"; cgroup v{cgroup.get('version')} {cgroup.get('name')} ({', '.join(inner)})"
    elif cgroup:
        line += f"; cgroup {cgroup}"
    line += f"; guard: {guard}" if guard else "; no guard"
    refused = sb.get("refused") or {}
    if refused:
        line += "; refused: " + "; ".join(f"{k}: {v}" for k, v in refused.items())
    return line


def describe_self() -> dict:
    """Where and how the calling process runs: pid, affinity, policy, nice, current core.

    Returns:
        ``{"pid": int, "affinity": [int], "policy": "SCHED_IDLE", "nice": int,
        "cpu": int | None, "threads_env": {"OMP_NUM_THREADS": "1", ...}}``.
    """
    return {
        "pid": os.getpid(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "policy": _POLICY_NAMES.get(os.sched_getscheduler(0), str(os.sched_getscheduler(0))),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "cpu": _current_cpu(),
        "threads_env": {k: os.environ[k] for k in THREAD_VARS if k in os.environ},
    }


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def _renice_all(value: int, refused: dict[str, str]) -> None:
    # Linux nice values are per thread: set every thread's, not only the caller's.
    for tid in _threads():
        try:
            os.setpriority(os.PRIO_PROCESS, tid, value)
        except OSError as e:
            refused["nice"] = f"setpriority({value}) refused: {e.strerror}"


def _autogroup_nice(new_session: bool, refused: dict[str, str]) -> str | None:
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            if f.read().strip() != "1":
                return None
    except OSError:
        return None
    session = "shared session"
    if new_session and os.getsid(0) != os.getpid():
        try:
            os.setsid()
            session = "own session"
        except OSError as e:  # a process-group leader cannot start a session
            refused["session"] = f"setsid refused: {e.strerror}"
    else:
        session = "own session" if os.getsid(0) == os.getpid() else session
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(NICE_LOWEST))
    except OSError as e:
        refused["autogroup"] = f"autogroup nice refused: {e.strerror}"
        return None
    return f"nice {NICE_LOWEST} ({session})"


def _limit_loaded_pools(n: int) -> None:
    """Limit thread pools of libraries loaded before the environment was set."""
    if not any(m in sys.modules for m in ("numpy", "scipy", "torch", "numexpr")):
        return
    try:
        from threadpoolctl import threadpool_limits  # optional; not a dependency
    except ImportError:
        return
    with contextlib.suppress(Exception):  # best effort: a library may refuse
        threadpool_limits(limits=n)


def _set_parent_death_signal(refused: dict[str, str]) -> None:
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
            refused["die_with_parent"] = f"prctl refused: {os.strerror(ctypes.get_errno())}"
        elif os.getppid() == 1:  # the parent died before prctl: do what it would have done
            os._exit(1)
    except (OSError, AttributeError) as e:
        refused["die_with_parent"] = f"prctl unavailable: {e}"


def _current_cpu() -> int | None:
    try:
        with open("/proc/self/stat") as f:
            text = f.read()
        return int(text[text.rindex(")") + 2 :].split()[36])
    except (OSError, ValueError, IndexError):
        return None
