import json
import os
import socket
import stat

import pytest

from colocate.colocation import info, topology
from colocate.colocation.topology import Gpu, Topology, parse_nvidia_smi
from colocate.errors import ConfigError


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("COLOCATE_NODE_NAME", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_probe_reads_this_node(clean_env):
    t = Topology.probe({})
    assert t.node == socket.gethostname()
    assert t.allowed == sorted(os.sched_getaffinity(0))
    assert set(t.allowed) <= set(t.online)
    assert all(c in t.siblings[c] for c in t.online)
    assert sorted(c for cores in t.numa.values() for c in cores) == t.online
    assert 0 < t.memory_available <= t.memory_total


def test_node_name_setting_wins_over_env(clean_env):
    clean_env.setenv("COLOCATE_NODE_NAME", "from-env")
    assert Topology.probe({}).node == "from-env"
    t = Topology.probe({"node_name": "from-config"})
    assert t.node == "from-config" and t.sources["node"] == "co_location.node_name"


def test_falls_back_when_sysfs_is_missing(clean_env, tmp_path):
    clean_env.setattr(topology, "SYS_CPU", str(tmp_path / "cpu"))
    clean_env.setattr(topology, "SYS_NODE", str(tmp_path / "node"))
    t = Topology.probe({"gpus": []})
    assert t.online == list(range(os.cpu_count()))
    assert t.siblings == {c: [c] for c in t.online}
    assert t.numa == {0: t.online}
    assert "no sysfs" in t.sources["online"] and "no sysfs" in t.sources["numa"]


def test_gpus_from_settings_win(clean_env):
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert Topology.probe({"gpus": [2, 3]}).gpus == [Gpu("2"), Gpu("3")]
    assert Topology.probe({"gpus": "5, 6"}).gpus == [Gpu("5"), Gpu("6")]
    assert Topology.probe({"gpus": []}).gpus == []
    with pytest.raises(ConfigError, match="co_location.gpus"):
        Topology.probe({"gpus": 3})


@pytest.mark.parametrize(("visible", "ids"), [("0,1", ["0", "1"]), ("", []), ("-1", []),
                                              ("GPU-aa,GPU-bb", ["GPU-aa", "GPU-bb"])])
def test_gpus_from_cuda_visible_devices(clean_env, visible, ids):
    clean_env.setenv("CUDA_VISIBLE_DEVICES", visible)
    t = Topology.probe({})
    assert [g.id for g in t.gpus] == ids
    assert t.sources["gpus"] == "CUDA_VISIBLE_DEVICES"


def test_gpus_from_nvidia_smi_on_path(clean_env, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, NVIDIA A100-SXM4-40GB, 40960'\n"
                   "echo '1, NVIDIA A100-SXM4-40GB, 40960'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    clean_env.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    t = Topology.probe({})
    assert [g.id for g in t.gpus] == ["0", "1"]
    assert t.gpus[0] == Gpu("0", "NVIDIA A100-SXM4-40GB", 40960 * 2**20)


def test_no_gpus_without_any_source(clean_env, tmp_path):
    clean_env.setenv("PATH", str(tmp_path))
    t = Topology.probe({})
    assert t.gpus == [] and t.sources["gpus"].startswith("none")


def test_parse_nvidia_smi_skips_garbage():
    text = "0, Tesla V100, 16160\nNo devices were found\n1, Tesla, V100, [N/A]\n"
    assert parse_nvidia_smi(text) == [Gpu("0", "Tesla V100", 16160 * 2**20),
                                      Gpu("1", "Tesla, V100", None)]


def test_physical_cores_and_numa_lookup():
    t = Topology("n", [0, 1, 2, 3], [0, 1, 2, 3], {0: [0, 2], 2: [0, 2], 1: [1, 3], 3: [1, 3]},
                 {0: [0, 2], 1: [1, 3]}, 100, 50)
    assert t.physical_cores() == [[0, 2], [1, 3]]
    assert t.physical_cores([2, 3]) == [[2], [3]]
    assert t.numa_of(3) == 1 and t.numa_of(99) == 0


def test_info_collect_and_render(clean_env):
    report = info.collect({"spare_cores": "all", "memory_budget": "1GiB", "node_name": "n7"},
                          {"action": "stop"})
    json.dumps(report)  # serializable for `colocate info --json`
    assert report["node"] == "n7"
    assert report["spare"]["cores"] == sorted(os.sched_getaffinity(0))
    assert report["memory"]["budget"] == 2**30
    assert report["guard"]["action"] == "stop"
    text = info.render(report)
    assert "n7" in text and "1.0 GiB" in text and "(source: all)" in text
    assert "control cgroups" in text and "control sched_idle" in text


def test_info_reports_spare_errors_without_failing(clean_env):
    report = info.collect({"host_pids": [999999999]})
    assert "found no process 999999999" in report["spare"]["error"]
    assert "ERROR: " in info.render(report)


def test_info_default_budget_is_half_of_available(clean_env):
    report = info.collect({"spare_cores": "all", "cgroups": "off"})
    assert report["memory"]["budget"] == report["memory"]["available"] // 2
    assert report["controls"]["cgroups"]["active"] is False
    assert "disabled" in report["controls"]["cgroups"]["note"]
