import os

import pytest

from colocate.colocation.spare import (
    discover_spare_cores,
    host_cores_from_cgroup,
    measure_host_busy,
    slurm_bound_cpus,
    slurm_cpus_on_node,
)
from colocate.errors import ConfigError

ALLOWED = list(range(8))


def fake_measure(busy):
    calls = []

    def measure(cores, window, own_pids):
        calls.append((list(cores), window, list(own_pids)))
        return {c: busy.get(c, 0.0) for c in cores}

    measure.calls = calls
    return measure


def discover(settings, busy=None, env=None, **kw):
    return discover_spare_cores(settings, allowed=ALLOWED, env=env or {},
                                measure=fake_measure(busy or {}), **kw)


def test_explicit_string():
    found = discover({"spare_cores": "6-7"})
    assert (found.cores, found.host_cores, found.source) == ([6, 7], [0, 1, 2, 3, 4, 5],
                                                             "explicit")


def test_explicit_list_of_ints():
    assert discover({"spare_cores": [7, 5]}).cores == [5, 7]


def test_all_takes_every_allowed_core():
    found = discover({"spare_cores": "all"})
    assert (found.cores, found.host_cores, found.source) == (ALLOWED, [], "all")


def test_explicit_cores_outside_allowed_are_rejected():
    with pytest.raises(ConfigError) as err:
        discover({"spare_cores": "6-9"})
    assert err.value.key == "co_location.spare_cores"
    assert "8-9" in str(err.value) and "0-7" in str(err.value)


@pytest.mark.parametrize("value", ["some", "x-", "1-", 3.5, {"a": 1}])
def test_invalid_setting_names_key_found_and_expected(value):
    with pytest.raises(ConfigError) as err:
        discover({"spare_cores": value})
    message = str(err.value)
    assert message.startswith("co_location.spare_cores: found")
    assert "'auto' or 'all'" in message or "expected" in message


def test_empty_explicit_list_is_rejected():
    with pytest.raises(ConfigError, match="empty"):
        discover({"spare_cores": ""})


def test_auto_takes_cores_under_threshold():
    busy = {0: 0.97, 1: 0.30, 2: 0.24, 5: 0.9}
    found = discover({"spare_cores": "auto", "auto_threshold": 0.25}, busy)
    assert found.cores == [2, 3, 4, 6, 7]
    assert found.host_cores == [0, 1, 5]
    assert found.source == "auto"
    assert "0: 97%" in found.detail and "threshold 25%" in found.detail


def test_auto_is_the_default_and_passes_window_and_own_pids():
    measure = fake_measure({})
    found = discover_spare_cores({}, allowed=ALLOWED, env={}, measure=measure, own_pids=[42])
    assert found.cores == ALLOWED and found.source == "auto"
    assert measure.calls == [(ALLOWED, 0.3, [42])]


def test_auto_when_nothing_runs_every_allowed_core_is_spare():
    found = discover({"spare_cores": "auto"})
    assert found.cores == ALLOWED and found.host_cores == []


@pytest.mark.parametrize(("key", "value"), [("auto_threshold", 0), ("auto_threshold", 1.5),
                                            ("auto_threshold", "high"), ("auto_window", 0),
                                            ("auto_window", 600), ("auto_window", "1s")])
def test_auto_knobs_validated(key, value):
    with pytest.raises(ConfigError) as err:
        discover({key: value})
    assert err.value.key == f"co_location.{key}"


def test_slurm_binding_mask_narrows_candidates():
    env = {"SLURM_JOB_ID": "7", "SLURM_CPU_BIND_TYPE": "mask_cpu:",
           "SLURM_CPU_BIND_LIST": "0x0F,0xF0", "SLURM_LOCALID": "1"}
    measure = fake_measure({4: 0.9})
    found = discover_spare_cores({}, allowed=ALLOWED, env=env, measure=measure)
    assert measure.calls[0][0] == [4, 5, 6, 7]
    assert found.cores == [5, 6, 7]
    assert found.host_cores == [0, 1, 2, 3, 4]
    assert "srun binding 4-7" in found.detail


def test_slurm_ignored_without_job_id():
    env = {"SLURM_CPU_BIND_TYPE": "mask_cpu:", "SLURM_CPU_BIND_LIST": "0x1"}
    assert discover({}, env=env).cores == ALLOWED


def test_slurm_binding_outside_affinity_falls_back_to_affinity():
    env = {"SLURM_JOB_ID": "7", "SLURM_CPU_BIND": "quiet,map_cpu:30,31", "SLURM_LOCALID": "0"}
    found = discover({}, env=env)
    assert found.cores == ALLOWED
    assert "outside the affinity" in found.detail


def test_slurm_cpus_on_node_caps_spare_count_least_busy_first():
    env = {"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "4"}
    busy = {0: 0.9, 1: 0.2, 2: 0.1, 3: 0.05}
    found = discover({}, busy, env=env)
    # 4 CPUs for the job, core 0 busy with the host -> at most 3 spare, the least busy.
    assert found.cores == [4, 5, 6]
    assert "kept the 3 least busy" in found.detail


def test_slurm_bound_cpus_forms():
    assert slurm_bound_cpus({"SLURM_CPU_BIND_TYPE": "map_cpu:", "SLURM_CPU_BIND_LIST": "3,9",
                             "SLURM_LOCALID": "1"}) == [9]
    assert slurm_bound_cpus({"SLURM_CPU_BIND": "quiet,mask_cpu:0x3,0xC",
                             "SLURM_LOCALID": "3"}) == [2, 3]
    assert slurm_bound_cpus({"SLURM_CPU_BIND": "quiet,none"}) is None
    assert slurm_bound_cpus({"SLURM_CPU_BIND_TYPE": "mask_cpu:",
                             "SLURM_CPU_BIND_LIST": "0xzz"}) is None


def test_slurm_cpus_on_node_forms():
    assert slurm_cpus_on_node({"SLURM_CPUS_ON_NODE": "12"}) == 12
    assert slurm_cpus_on_node({"SLURM_JOB_CPUS_PER_NODE": "72(x2),36",
                               "SLURM_NODEID": "2"}) == 36
    assert slurm_cpus_on_node({"SLURM_JOB_CPUS_PER_NODE": "72(x2),36",
                               "SLURM_NODEID": "1"}) == 72
    assert slurm_cpus_on_node({}) is None


def test_host_pids_affinity_gives_host_cores():
    me = os.getpid()
    mine = sorted(os.sched_getaffinity(0))
    found = discover_spare_cores({"host_pids": [me]}, allowed=mine + [max(mine) + 1],
                                 env={}, measure=fake_measure({}))
    assert found.source == "host_pids"
    assert found.host_cores == mine
    assert found.cores == [max(mine) + 1]


def test_host_pids_covering_every_core_leave_none_and_say_why():
    mine = sorted(os.sched_getaffinity(0))
    found = discover_spare_cores({"host_pids": [os.getpid()]}, allowed=mine, env={},
                                 measure=fake_measure({}))
    assert found.cores == []
    assert "unpinned" in found.detail


def test_host_pid_that_does_not_exist():
    with pytest.raises(ConfigError, match="found no process 999999999"):
        discover({"host_pids": [999999999]})


@pytest.mark.parametrize("value", [["abc"], [0], [1.5], "x"])
def test_host_pids_invalid(value):
    with pytest.raises(ConfigError) as err:
        discover({"host_pids": value})
    assert err.value.key == "co_location.host_pids"


def test_host_cgroup_from_a_cpuset_directory(tmp_path):
    (tmp_path / "cpuset.cpus").write_text("0-1\n")
    (tmp_path / "cpuset.effective_cpus").write_text("0-2\n")
    found = discover({"host_cgroup": str(tmp_path)})
    assert found.source == "host_cgroup"
    assert found.host_cores == [0, 1, 2] and found.cores == [3, 4, 5, 6, 7]
    assert host_cores_from_cgroup(str(tmp_path)) == ([0, 1, 2], str(tmp_path))


def test_host_cgroup_v2_effective_wins(tmp_path):
    (tmp_path / "cpuset.cpus").write_text("\n")
    (tmp_path / "cpuset.cpus.effective").write_text("6-7\n")
    assert discover({"host_cgroup": str(tmp_path)}).cores == [0, 1, 2, 3, 4, 5]


def test_host_cgroup_without_cpuset(tmp_path):
    with pytest.raises(ConfigError) as err:
        discover({"host_cgroup": str(tmp_path)})
    assert err.value.key == "co_location.host_cgroup"
    assert "found no cpuset" in str(err.value)


def test_explicit_cores_overlapping_declared_host_cores(tmp_path):
    (tmp_path / "cpuset.cpus").write_text("0-3")
    with pytest.raises(ConfigError, match="also host cores"):
        discover({"spare_cores": "3-4", "host_cgroup": str(tmp_path)})
    assert discover({"spare_cores": "4-5", "host_cgroup": str(tmp_path)}).cores == [4, 5]


def test_measure_host_busy_reads_real_counters():
    cores = sorted(os.sched_getaffinity(0))
    busy = measure_host_busy(cores, 0.05, [os.getpid()])
    assert set(busy) == set(cores)
    assert all(0.0 <= v <= 1.0 for v in busy.values())
