"""Real child processes: pinning, priority, thread env, RLIMIT_AS, host-pid discovery."""

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import colocate
from colocate.colocation.sandbox import THREAD_VARS, apply_sandbox
from colocate.colocation.spare import discover_spare_cores
from colocate.errors import ConfigError

PKG_ROOT = str(Path(colocate.__file__).parent.parent)
TWO_CORES = len(os.sched_getaffinity(0)) >= 2 and {0, 1} <= os.sched_getaffinity(0)
needs_two_cores = pytest.mark.skipif(not TWO_CORES, reason="needs cores 0 and 1 in the affinity")


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PKG_ROOT, env.get("PYTHONPATH")) if p)
    for var in THREAD_VARS:
        env.pop(var, None)
    return env


def run_child(body: str) -> dict:
    code = ("import json, os\n"
            "from colocate.colocation.sandbox import apply_sandbox, describe_self\n"
            f"{body}\n"
            "print(json.dumps({'applied': applied, 'self': describe_self()}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=child_env(), timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def start(procs, code: str, **kw) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", code], env=child_env(), text=True,
                         stdout=subprocess.PIPE, **kw)
    procs.append(p)
    return p


def read_line(p: subprocess.Popen, timeout: float = 10.0) -> str:
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    assert ready, f"no line from pid {p.pid} within {timeout} s"
    return p.stdout.readline().strip()


@needs_two_cores
@pytest.mark.timeout(30)
def test_idle_sandbox_pins_deprioritizes_and_sizes_thread_pools():
    r = run_child("applied = apply_sandbox([1])")
    assert r["self"]["affinity"] == [1]
    assert r["self"]["cpu"] == 1
    assert r["self"]["policy"] == "SCHED_IDLE"
    assert r["applied"]["affinity"] == [1] and r["applied"]["policy"] == "SCHED_IDLE"
    assert r["applied"]["threads"] == 1
    assert r["self"]["threads_env"] == {v: "1" for v in THREAD_VARS}
    assert r["applied"]["refused"] == {}


@pytest.mark.timeout(30)
def test_thread_count_override_and_every_thread_pinned():
    cores = sorted(os.sched_getaffinity(0))[:1]
    r = run_child("import threading\n"
                  "ev = threading.Event()\n"
                  "t = threading.Thread(target=ev.wait, daemon=True); t.start()\n"
                  f"applied = apply_sandbox({cores}, threads=3)\n"
                  "applied['thread_aff'] = sorted(os.sched_getaffinity(t.native_id))\n"
                  "applied['thread_policy'] = os.sched_getscheduler(t.native_id)\n")
    assert r["self"]["threads_env"]["OMP_NUM_THREADS"] == "3"
    assert r["applied"]["thread_aff"] == cores  # the thread started before the sandbox too
    assert r["applied"]["thread_policy"] == os.SCHED_IDLE


@pytest.mark.timeout(30)
def test_sched_idle_refused_falls_back_to_nice_19():
    r = run_child("def refuse(*a):\n    raise PermissionError(1, 'Operation not permitted')\n"
                  "os.sched_setscheduler = refuse\n"
                  "applied = apply_sandbox(None)\n")
    assert r["self"]["policy"] == "SCHED_OTHER"
    assert r["self"]["nice"] == 19
    assert "SCHED_IDLE refused" in r["applied"]["refused"]["policy"]


@pytest.mark.timeout(30)
def test_nice_and_normal_priorities():
    nice = run_child("applied = apply_sandbox(None, 'nice')")
    assert (nice["self"]["policy"], nice["self"]["nice"]) == ("SCHED_OTHER", 19)
    normal = run_child("applied = apply_sandbox(None, 'normal')")
    assert normal["self"]["policy"] == "SCHED_OTHER"
    assert normal["self"]["nice"] == os.getpriority(os.PRIO_PROCESS, 0)
    assert normal["applied"]["autogroup"] is None


def test_invalid_priority_is_a_config_error():
    with pytest.raises(ConfigError, match="co_location.priority: found 'low'"):
        apply_sandbox(None, "low")


@pytest.mark.timeout(30)
def test_rlimit_as_turns_a_big_allocation_into_memory_error():
    r = run_child("applied = apply_sandbox(None, 'normal', memory_limit=512 * 2**20)\n"
                  "try:\n    x = bytearray(1024 * 2**20)\n    applied['got'] = 'memory'\n"
                  "except MemoryError:\n    applied['got'] = 'MemoryError'\n")
    assert r["applied"]["rlimit_as"] == 512 * 2**20
    assert r["applied"]["got"] == "MemoryError"


BUSY = ("import os, sys\nos.sched_setaffinity(0, [{core}])\n"
        "{extra}\nprint('ready', flush=True)\nwhile True:\n    pass\n")


def cpu_time(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


@needs_two_cores
@pytest.mark.timeout(30)
def test_idle_executor_yields_the_core_to_a_host_in_another_session(procs):
    host = start(procs, BUSY.format(core=1, extra=""), start_new_session=True)
    guest = start(procs, BUSY.format(
        core=1, extra="from colocate.colocation.sandbox import apply_sandbox\n"
                      "apply_sandbox([1])"))
    assert read_line(host) == "ready" and read_line(guest) == "ready"
    h0, g0 = cpu_time(host.pid), cpu_time(guest.pid)
    time.sleep(1.0)  # measurement window
    h, g = cpu_time(host.pid) - h0, cpu_time(guest.pid) - g0
    # Without the autogroup nice, SCHED_IDLE in its own session gets about half (measured).
    assert g / (h + g) < 0.1, f"guest got {g:.2f} s of {h + g:.2f} s"


@needs_two_cores
@pytest.mark.timeout(30)
def test_spare_cores_from_a_real_host_pid(procs):
    host = start(procs, BUSY.format(core=0, extra=""))
    assert read_line(host) == "ready"
    found = discover_spare_cores({"host_pids": [host.pid]}, allowed=[0, 1])
    assert (found.cores, found.host_cores, found.source) == ([1], [0], "host_pids")


PINNED_THREAD = ("t = threading.Thread(target=threading.Event().wait, daemon=True); t.start()\n"
                 "os.sched_setaffinity(t.native_id, [1])\n")
PINNED_CHILD = ("c = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],"
                " stdin=subprocess.PIPE)\nos.sched_setaffinity(c.pid, [1])\n")


@needs_two_cores
@pytest.mark.timeout(30)
@pytest.mark.parametrize("extra", [PINNED_THREAD, PINNED_CHILD], ids=["thread", "child"])
def test_host_pid_threads_and_children_count_as_host(procs, extra):
    code = ("import os, subprocess, sys, threading\n"
            "os.sched_setaffinity(0, [0])\n"
            f"{extra}"
            "print('ready', flush=True)\nsys.stdin.read()\n")
    host = start(procs, code, stdin=subprocess.PIPE)
    assert read_line(host) == "ready"
    found = discover_spare_cores({"host_pids": [host.pid]}, allowed=[0, 1])
    assert found.cores == [] and found.host_cores == [0, 1]
    host.stdin.close()  # the child sees EOF and exits with its parent
