"""The pool's batch-system commands and the parsing of what they print (Slurm, PBS, Flux).

The outputs parsed here are in the formats the commands print; tests/integration/test_pool_slurm.py
runs the Slurm ones against a real Slurm.
"""

from __future__ import annotations

import json

import pytest

from colocate import config
from colocate.errors import ConfigError
from colocate.rank0.pool import JobState, JobTemplate, backend
from colocate.rank0.pool.backends import PBS, Flux, Slurm, parse_duration

JOIN = ["colocate", "join", "--address", "/shared/world.address"]


def template(**pool) -> JobTemplate:
    section = {**config.load(environ={})["pool"], **pool}
    return JobTemplate.from_config(section, name="colocate-pool-ab12", output="/logs/%j.out")


@pytest.mark.parametrize(("text", "seconds"), [
    ("1:00:00", 3600), ("2-00:00:00", 172800), ("45:00", 2700), ("0:10:00", 600),
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("36:00:00", 129600),
])
def test_durations(text, seconds):
    assert parse_duration(text, "pool.time") == seconds


@pytest.mark.parametrize(("value", "words"), [
    (60, "found 60 (YAML reads an unquoted 1:00:00 as 3600: quote it, or write '60s' or '60m')"),
    ("1:70:00", "found '1:70:00'"),
    ("soon", "found 'soon'"), ("0s", "longer than 0"),
])
def test_bad_durations_name_the_key_and_the_forms(value, words):
    with pytest.raises(ConfigError) as caught:
        parse_duration(value, "pool.time")
    assert caught.value.key == "pool.time"
    assert words in str(caught.value) and "'1:00:00'" in str(caught.value)


def test_slurm_submit_line():
    t = template(time="2:00:00", time_min="0:15:00", grace=45, partition="idle", qos="scavenger",
                 account="proj7", options=["--exclusive"], nodes_per_job=2)
    assert Slurm().submit(t, JOIN) == [
        "sbatch", "--parsable", "--job-name=colocate-pool-ab12", "--nodes=2",
        "--ntasks-per-node=1", "--time=02:00:00", "--signal=TERM@45", "--time-min=00:15:00",
        "--partition=idle", "--qos=scavenger", "--account=proj7", "--output=/logs/%j.out",
        "--exclusive",
        "--wrap=srun --nodes=2 --ntasks-per-node=1 colocate join --address /shared/world.address"]


def test_slurm_parsing():
    s = Slurm()
    assert s.job_id("1234\n") == "1234" and s.job_id("88;cluster2") == "88"
    with pytest.raises(ValueError, match="expected '1234' or '1234;cluster', found 'sbatch: error"):
        s.job_id("sbatch: error: invalid partition")
    out = "17|PENDING|\n18|RUNNING|vnode[1-2]\n19|COMPLETING|n07,gpu1\n20|PREEMPTED|n3\n"
    assert s.jobs(out) == [JobState("17", "pending"), JobState("18", "running",
                                                               ("vnode1", "vnode2")),
                           JobState("19", "ending", ("n07", "gpu1")),
                           JobState("20", "ending", ("n3",))]
    assert s.jobs("") == []
    with pytest.raises(ValueError, match="'ID|STATE|NODES' lines"):
        s.jobs("JOBID PARTITION NAME\n")
    assert s.idle_nodes("n1\nn2\nn1\n\n") == 2   # a node in two partitions counts once
    assert s.cancel(["17", "18"]) == ["scancel", "17", "18"]
    assert s.query(template()) == ["squeue", "--noheader", "--name=colocate-pool-ab12",
                                   "--format=%i|%T|%N"]
    assert s.idle(template(partition="idle"))[-1] == "--partition=idle"


def test_slurm_host_lists_keep_leading_zeros():
    assert Slurm().jobs("5|RUNNING|n[008-010],x1\n")[0].nodes == ("n008", "n009", "n010", "x1")


def test_pbs_commands_and_parsing():
    p = PBS()
    t = template(partition="workq", account="proj7", nodes_per_job=3)
    assert p.submit(t, JOIN) == [
        "qsub", "-N", "colocate-pool-ab12", "-l", "select=3:mpiprocs=1", "-l", "place=scatter",
        "-l", "walltime=01:00:00", "-q", "workq", "-A", "proj7", "-j", "oe", "-o",
        "/logs/%j.out", "--", "pbsdsh", "--", *JOIN]
    assert p.submit(template(), JOIN)[-5:] == ["--", *JOIN]
    assert p.job_id("4711.pbs01\n") == "4711.pbs01"
    qstat = {"Jobs": {
        "1.srv": {"Job_Name": "colocate-pool-ab12", "job_state": "R",
                  "exec_host": "n1/0*8+n2/0*8"},
        "2.srv": {"Job_Name": "colocate-pool-ab12", "job_state": "Q"},
        "3.srv": {"Job_Name": "someone-else", "job_state": "R"}}}
    assert p.jobs(json.dumps(qstat), name="colocate-pool-ab12") == [
        JobState("1.srv", "running", ("n1", "n2")), JobState("2.srv", "pending")]
    nodes = {"nodes": {"n1": {"state": "free"}, "n2": {"state": "free", "jobs": ["1.srv/0"]},
                       "n3": {"state": "down"}, "n4": {"state": "free"}}}
    assert p.idle_nodes(json.dumps(nodes)) == 2
    with pytest.raises(ValueError, match="expected JSON like"):
        p.jobs("qstat: command not found")
    assert p.cancel(["1.srv"]) == ["qdel", "1.srv"]


def test_flux_commands_and_parsing():
    f = Flux()
    assert f.submit(template(partition="batch", time="30m"), JOIN) == [
        "flux", "batch", "--nodes=1", "--time-limit=1800s", "--job-name=colocate-pool-ab12",
        "--queue=batch", "--output=/logs/%j.out", "--wrap", "flux", "run", "--nodes=1",
        "--tasks-per-node=1", *JOIN]
    assert f.job_id("ƒ2Aqq5uzEn\n") == "ƒ2Aqq5uzEn"
    assert f.jobs("ƒA|SCHED|\nƒB|RUN|node[3-4]\nƒC|CLEANUP|node5\n") == [
        JobState("ƒA", "pending"), JobState("ƒB", "running", ("node3", "node4")),
        JobState("ƒC", "ending", ("node5",))]
    assert f.idle_nodes("7\n") == 7
    assert f.cancel(["ƒA"]) == ["flux", "cancel", "ƒA"]


@pytest.mark.parametrize(("pool", "key", "words"), [
    ({"time_min": "2:00:00"}, "pool.time_min", "longer than time '1:00:00'"),
    ({"grace": 3600}, "pool.grace", "not shorter than the job's time 3600 s"),
    ({"grace": -1}, "pool.grace", "expected seconds >= 0, found -1"),
    ({"options": "--exclusive"}, "pool.options", "expected a list of option strings"),
    ({"partition": ""}, "pool.partition", "expected a name, found ''"),
])
def test_bad_templates_say_what_was_found_and_expected(pool, key, words):
    with pytest.raises(ConfigError) as caught:
        template(**pool)
    assert caught.value.key == key
    assert words in str(caught.value)


def test_backends_by_name():
    assert isinstance(backend("slurm"), Slurm) and isinstance(backend("flux"), Flux)
    with pytest.raises(ConfigError, match="expected one of slurm, pbs, flux, found 'lsf'"):
        backend("lsf")
    with pytest.raises(ValueError, match="expected one or more job ids"):
        Slurm().cancel([])
    with pytest.raises(ValueError, match="worker command"):
        Slurm().submit(template(), "colocate join")


def test_batch_commands_run_without_the_job_and_mpi_variables_rank_0_runs_in(monkeypatch):
    from colocate.rank0.pool.manager import run_command
    for k, v in {"SLURM_HOSTFILE": "/h", "SLURM_JOB_ID": "7", "PMI_RANK": "0",
                 "SLURM_CONF": "/etc/s.conf", "KEEP_ME": "1"}.items():
        monkeypatch.setenv(k, v)
    done = run_command(["env"])
    seen = dict(line.split("=", 1) for line in done.out.splitlines() if "=" in line)
    assert seen["SLURM_CONF"] == "/etc/s.conf" and seen["KEEP_ME"] == "1"
    assert not {"SLURM_HOSTFILE", "SLURM_JOB_ID", "PMI_RANK"} & set(seen)
