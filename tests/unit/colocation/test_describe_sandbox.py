"""The one log line about a worker's sandbox: readable for each kind of sandbox."""

from colocate.colocation.sandbox import describe_sandbox

PINNED = {"affinity": [2, 3], "policy": "SCHED_IDLE", "nice": 0,
          "autogroup": "nice 19 (own session)", "threads": 2, "rlimit_as": None, "refused": {}}
CGROUP = {"name": "rank1", "version": 2, "paths": ["/sys/fs/cgroup/colocate/rank1"],
          "cpus": "2-3", "memory_bytes": 2 * 2**30, "idle": True}


def test_pinned_idle_in_a_cgroup_with_a_guard():
    assert describe_sandbox(PINNED, CGROUP, "freeze") == (
        "cores 2-3, SCHED_IDLE, autogroup nice 19 (own session), 2 threads; "
        "cgroup v2 rank1 (cpus 2-3, memory 2.0 GiB); guard: freeze")


def test_refused_controls_and_no_cgroup_are_said():
    sandbox = {"affinity": None, "policy": "SCHED_OTHER", "nice": 19, "threads": 1,
               "refused": {"policy": "SCHED_IDLE refused (EPERM): nice 19"}}
    assert describe_sandbox(sandbox, "none (co_location.cgroups: off)", None) == (
        "not pinned, SCHED_OTHER nice 19, 1 thread; cgroup none (co_location.cgroups: off); "
        "no guard; refused: policy: SCHED_IDLE refused (EPERM): nice 19")


def test_inline_workers_have_no_sandbox():
    assert "no sandbox" in describe_sandbox(None, None, None)
