"""Real cgroups where this machine lets us write them; a fake v2 tree for the v2 paths."""

import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from colocate.colocation import _cgroupfs, cgroups
from colocate.colocation.cgroups import CgroupError, CgroupManager, Mount
from colocate.testing import wait_until

MANAGER = CgroupManager.detect()
needs_cgroups = pytest.mark.skipif(
    not MANAGER.available, reason=f"no writable cgroups here: {MANAGER.reason}")


def needs(ctrl):
    return pytest.mark.skipif(ctrl not in MANAGER.controllers,
                              reason=f"no usable {ctrl} controller: {MANAGER.reason}")


@pytest.fixture
def manager():
    m = CgroupManager.detect()
    yield m
    m.close()


def spawn(procs, code):
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    procs.append(p)
    return p


def cpu_time(pid):
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


WAIT_THEN = "import sys\nsys.stdin.readline()\n"


@needs_cgroups
@needs("memory")
@pytest.mark.timeout(30)
def test_memory_limit_oom_kills_and_is_detected(manager, procs):
    group = manager.create("oom", memory_bytes=64 * 2**20)
    assert not group.oom_killed()
    p = spawn(procs, WAIT_THEN + "x = bytearray(512 * 2**20)\n"
                     "for i in range(0, len(x), 4096):\n    x[i] = 1\nprint('survived')\n")
    group.add(p.pid)  # before it allocates: it waits for a line
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.wait(20) == -9, p.stdout.read()
    assert group.oom_killed()


@needs_cgroups
@needs("memory")
@pytest.mark.timeout(30)
def test_no_oom_reported_within_the_limit(manager, procs):
    group = manager.create("fits", memory_bytes=256 * 2**20)
    p = spawn(procs, WAIT_THEN + "x = bytearray(32 * 2**20)\nprint('ok')\n")
    group.add(p.pid)
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.wait(20) == 0
    assert not group.oom_killed()
    group.set_memory(128 * 2**20)
    assert group.memory_bytes == 128 * 2**20


@needs_cgroups
@needs("freezer")
@pytest.mark.timeout(30)
def test_freeze_stops_cpu_time_and_thaw_restarts_it(manager, procs):
    group = manager.create("busy")
    p = spawn(procs, "print('ready', flush=True)\nwhile True:\n    pass\n")
    group.add(p.pid)
    assert p.stdout.readline().strip() == "ready"
    start = cpu_time(p.pid)
    wait_until(lambda: cpu_time(p.pid) > start + 0.05, 10, "the busy child to run")

    group.freeze()
    assert group.frozen
    frozen_at = cpu_time(p.pid)
    time.sleep(0.3)  # measurement window: CPU time must not move at all
    assert cpu_time(p.pid) == frozen_at

    group.thaw()
    assert not group.frozen
    wait_until(lambda: cpu_time(p.pid) > frozen_at + 0.05, 10, "CPU time to advance after thaw")


@needs_cgroups
@needs("cpuset")
@pytest.mark.timeout(30)
def test_cpuset_confines_the_process(manager, procs):
    core = max(os.sched_getaffinity(0))
    group = manager.create("pinned", cpus=[core])
    p = spawn(procs, WAIT_THEN)
    group.add(p.pid)
    assert os.sched_getaffinity(p.pid) == {core}
    assert group.describe()["cpus"] == str(core)
    assert p.pid in group.pids()


@needs_cgroups
@needs("cpuset")
def test_cpuset_outside_the_parent_is_refused(manager):
    with pytest.raises(CgroupError, match="not within the parent's cores"):
        manager.create("bad", cpus=[4096])
    assert manager.groups() == []


@needs_cgroups
@needs("cpu")
def test_idle_weight_and_quota_written(manager):
    group = manager.create("weights", cpu_weight_idle=True, cpu_quota=0.5)
    d = group._dir("cpu")
    if manager.version == 1:
        idle_file = os.path.join(d, "cpu.idle")
        if os.path.exists(idle_file):  # cpu.idle=1 makes the kernel report its idle weight, 3
            assert open(idle_file).read().strip() == "1"
            assert open(os.path.join(d, "cpu.shares")).read().strip() == "3"
        else:
            assert open(os.path.join(d, "cpu.shares")).read().strip() == "2"
        assert open(os.path.join(d, "cpu.cfs_quota_us")).read().strip() == "50000"
    else:
        assert open(os.path.join(d, "cpu.max")).read().split() == ["50000", "100000"]


SPIN = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); print(1, flush=True)\n" \
       "while True: pass"


@needs("cpu")
@pytest.mark.timeout(30)
def test_an_idle_group_yields_its_core_to_a_process_outside_it(manager, procs):
    """The host's process competes with our topmost group: it must win nearly all the core."""
    core = max(os.sched_getaffinity(0))
    group = manager.create("yielding", cpu_weight_idle=True)
    # Each spinner is started and running before the next step: ours, once in its idle group
    # beside a spinning host, gets too little of the core to even start Python.
    ours = subprocess.Popen([sys.executable, "-c", SPIN, str(core)], stdout=subprocess.PIPE,
                            text=True)
    procs.append(ours)
    assert ours.stdout.readline()
    group.add(ours.pid)
    os.sched_setaffinity(ours.pid, {core})   # joining a v1 cpuset resets the affinity
    host = subprocess.Popen([sys.executable, "-c", SPIN, str(core)], stdout=subprocess.PIPE,
                            text=True)
    procs.append(host)
    assert host.stdout.readline()
    before = cpu_time(ours.pid), cpu_time(host.pid)
    time.sleep(1.0)   # a measuring window, not a wait for a condition
    got_ours, got_host = (cpu_time(p.pid) - b for p, b in zip((ours, host), before, strict=True))
    assert got_host > 0.85 * (got_ours + got_host), (got_ours, got_host)


@needs_cgroups
@pytest.mark.timeout(30)
def test_remove_moves_stragglers_out_and_cleanup_leaves_nothing(procs):
    m = CgroupManager.detect()
    a = m.create("a", memory_bytes=256 * 2**20)
    m.create("b")
    p = spawn(procs, WAIT_THEN)
    a.add(p.pid)
    paths = [d for g in m.groups() for d in g.describe()["paths"]]
    parents = {os.path.dirname(d) for d in paths}
    assert all(os.path.isdir(d) for d in paths)
    m.close()
    assert [d for d in paths if os.path.exists(d)] == []
    assert [d for d in parents if os.path.exists(d)] == []
    if m.version == 1:
        assert p.poll() is None  # moved out alive, not killed
    a.remove()  # idempotent
    a.thaw()  # a no-op once removed: callers may thaw before killing, unconditionally
    m.close()


@needs_cgroups
def test_cleanup_stale_removes_groups_of_dead_colocate_processes():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    m = CgroupManager.detect()
    base = next(iter(m._bases.values()))
    stale = os.path.join(base, f"colocate-{socket.gethostname()}-{dead.pid}")
    os.makedirs(os.path.join(stale, "core0"))
    try:
        removed = m.cleanup_stale()
        assert stale in removed and os.path.join(stale, "core0") in removed
        assert not os.path.exists(stale)
    finally:
        for d in (os.path.join(stale, "core0"), stale):
            _cgroupfs.rmdir_quiet(d)


ORPHAN_PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import ctypes, time; "
                          "ctypes.CDLL(None).prctl(1, 9); print(flush=True); time.sleep(120)"],
                         stdout=subprocess.PIPE)
child.stdout.readline()   # its parent-death signal (SIGKILL) is set
print(child.pid, flush=True)
time.sleep(120)
"""


@needs_cgroups
@needs("freezer")
def test_cleanup_stale_thaws_the_frozen_child_of_a_killed_rank(manager, procs):
    # A worker rank killed while the guard held its executor frozen: the child's parent-death
    # SIGKILL waits in the frozen group until someone thaws it.
    rank = spawn(procs, ORPHAN_PARENT)
    child = int(rank.stdout.readline())
    base = manager._bases["freezer"]
    stale = os.path.join(base, f"colocate-{socket.gethostname()}-{rank.pid}")
    group = os.path.join(stale, "rank1")
    os.makedirs(group)
    try:
        _cgroupfs.write(os.path.join(group, "cgroup.procs"), str(child))
        name, value = (("freezer.state", "FROZEN") if manager.version == 1
                       else ("cgroup.freeze", "1"))
        _cgroupfs.write(os.path.join(group, name), value)
        rank.kill()
        rank.wait(5)
        time.sleep(0.3)
        assert psutil.pid_exists(child) and _cgroupfs.procs(group) == [child]   # stuck
        removed = manager.cleanup_stale()
        assert group in removed and stale in removed
        wait_until(lambda: not psutil.pid_exists(child), 5, "the thawed orphan to die")
    finally:
        _cgroupfs.thaw_dir(group)
        for d in (group, stale):
            _cgroupfs.rmdir_quiet(d)


def test_off_mode_and_bad_mode():
    m = CgroupManager.detect("off")
    assert not m.available and "off" in m.reason
    with pytest.raises(CgroupError, match="not available"):
        m.create("x")
    with pytest.raises(cgroups.ConfigError, match="co_location.cgroups"):
        CgroupManager.detect("v3")


# -- a fake v2 tree: the v2 code paths on a machine without delegated cgroup v2 ------------


@pytest.fixture
def fake_v2(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    own = root / "job"
    own.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu cpuset memory io\n")
    (own / "cgroup.controllers").write_text("cpu cpuset memory\n")
    (own / "cgroup.subtree_control").write_text("")
    (own / "cgroup.procs").write_text("")
    (own / "cgroup.freeze").write_text("0")
    mount = Mount(str(root), "/", 2, frozenset({"cpu", "cpuset", "memory", "io"}))
    monkeypatch.setattr(cgroups, "read_mounts", lambda: [mount])
    monkeypatch.setattr(cgroups, "read_membership", lambda: {"": "/job"})
    return own


def test_fake_v2_detects_and_writes_v2_knobs(fake_v2):
    m = CgroupManager.detect("v2")
    assert (m.available, m.version) == (True, 2)
    assert m.controllers == {"cpu", "cpuset", "memory", "freezer"}
    g = m.create("core3", cpus=[3], memory_bytes=2**30, cpu_weight_idle=True, cpu_quota=0.25)
    d = fake_v2 / f"colocate-{socket.gethostname()}-{os.getpid()}" / "core3"
    assert g.describe()["paths"] == [str(d)]
    assert (d / "cpuset.cpus").read_text() == "3"
    assert (d / "cpu.idle").read_text() == "1"
    assert (d / "cpu.max").read_text() == "25000 100000"
    assert (d / "memory.max").read_text() == str(2**30)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (fake_v2 / "cgroup.subtree_control").read_text() == "+memory"  # last of +cpu..
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert g.oom_killed()
    g.freeze(wait=False)
    assert (d / "cgroup.freeze").read_text() == "1"


def test_fake_v2_with_processes_in_our_cgroup_is_unavailable(fake_v2):
    (fake_v2 / "cgroup.procs").write_text("123\n456\n")
    m = CgroupManager.detect("v2")
    assert not m.available
    assert "no-internal-process rule" in m.reason and "holds processes (2)" in m.reason


def test_hybrid_cgroup2_without_controllers_is_explained(monkeypatch, tmp_path):
    mount = Mount(str(tmp_path), "/", 2, frozenset())
    monkeypatch.setattr(cgroups, "read_mounts", lambda: [mount])
    m = CgroupManager.detect("v2")
    assert not m.available and "hybrid layout" in m.reason
