"""A real host load on a spare core makes the guard pause a real executor, and resume it."""

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import colocate
from colocate.colocation.cgroups import CgroupManager
from colocate.colocation.guard import FreezerAction, Guard, HostLoadSampler, SignalAction
from colocate.testing import wait_until

PKG_ROOT = str(Path(colocate.__file__).parent.parent)
CORE = 1
pytestmark = pytest.mark.skipif(CORE not in os.sched_getaffinity(0),
                                reason=f"needs core {CORE} in the affinity")

BUSY = "import os\nos.sched_setaffinity(0, [{core}])\n{extra}print('ready', flush=True)\n" \
       "while True:\n    pass\n"
EXECUTOR = BUSY.format(core=CORE, extra="from colocate.colocation.sandbox import apply_sandbox\n"
                                         f"apply_sandbox([{CORE}])\n")
HOST = BUSY.format(core=CORE, extra="")
SETTINGS = {"interval": 0.1, "pause_above": 0.5, "resume_below": 0.3, "hold": 0.3}


def start(procs, code, **kw):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (PKG_ROOT, os.environ.get("PYTHONPATH")) if p))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env=env, **kw)
    procs.append(p)
    ready, _, _ = select.select([p.stdout], [], [], 10)
    assert ready and p.stdout.readline().strip() == "ready"
    return p


def cpu_time(pid):
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def advancing(pid, by=0.05):
    start = cpu_time(pid)
    return lambda: cpu_time(pid) > start + by


@pytest.mark.timeout(30)
def test_sampler_subtracts_exactly_our_executor_time(procs):
    # Normal priority so the executor gets a good share even if other work shares the core.
    executor = start(procs, BUSY.format(core=CORE, extra=""))
    wait_until(advancing(executor.pid), 10, "the executor to run")
    ours = HostLoadSampler([CORE], lambda: [executor.pid])
    everything = HostLoadSampler([CORE])  # counts every process on the core as host
    before = cpu_time(executor.pid)
    t0 = time.monotonic()
    time.sleep(1.0)  # measurement window
    excl, total = ours.sample()[CORE], everything.sample()[CORE]
    share = (cpu_time(executor.pid) - before) / (time.monotonic() - t0)
    assert share > 0.3, f"executor got only {share:.0%} of core {CORE}"
    assert abs((total - excl) - share) < 0.15, (total, excl, share)


def ambient_load(pids, seconds=0.5):
    sampler = HostLoadSampler([CORE], lambda: pids)
    time.sleep(seconds)  # measurement window
    return sampler.sample()[CORE]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("action", ["freeze", "stop"])
def test_guard_pauses_executor_under_host_load_and_resumes_after(procs, action):
    manager = CgroupManager.detect()
    if action == "freeze" and "freezer" not in manager.controllers:
        pytest.skip(f"no cgroup freezer: {manager.reason}")
    executor = start(procs, EXECUTOR)
    if action == "freeze":
        group = manager.create("guarded")
        group.add(executor.pid)
        acts = FreezerAction(lambda core: group if core == CORE else None)
    else:
        acts = SignalAction(lambda core: [executor.pid] if core == CORE else [])
    guard = Guard.from_settings(SETTINGS, [CORE], lambda: [executor.pid], acts.pause, acts.resume)
    try:
        wait_until(advancing(executor.pid), 10, "the executor to run")
        guard.start()

        host = start(procs, HOST, start_new_session=True)
        wait_until(lambda: CORE in guard.paused, 10, "the guard to pause the core")
        if action == "freeze":
            wait_until(lambda: group.frozen, 5, "the group to freeze")
        else:
            wait_until(lambda: psutil.Process(executor.pid).status() == psutil.STATUS_STOPPED,
                       5, "the executor to stop")
        paused_at = cpu_time(executor.pid)
        wait_until(advancing(host.pid, 0.3), 10, "the host to run")
        assert cpu_time(executor.pid) == paused_at  # paused: not a tick while the host ran

        host.kill()
        host.wait(5)
        try:
            wait_until(lambda: CORE not in guard.paused, 10, "the guard to resume the core")
        except TimeoutError:
            other = ambient_load([executor.pid])
            if other >= SETTINGS["resume_below"]:
                pytest.skip(f"other processes use {other:.0%} of core {CORE}: the guard rightly "
                            "keeps the executor paused (shared machine)")
            raise
        wait_until(advancing(executor.pid), 10, "the executor to run again")
    finally:
        guard.stop()
        executor.kill()
        executor.wait(5)
        manager.close()


def test_the_worlds_own_processes_are_not_host_load():
    """A worker's guard counts rank 0, the other ranks and the launcher's proxy as ours."""
    from colocate.config import load
    from colocate.worker.confinement import Confinement
    cfg = load(None, environ={"COLOCATE_CO_LOCATION_CGROUPS": '"off"'})
    conf = Confinement(cfg, 1, [CORE], 2**30, lambda paused: None, peers=[4242, 4343])
    try:
        assert conf.guard is not None
        assert {os.getpid(), 4242, 4343} <= set(conf._own_pids())
    finally:
        conf.close()
