"""The pool's policy by exact decisions: a pure function of queue, cores, jobs and time."""

from __future__ import annotations

import pytest

from colocate import config
from colocate.errors import ConfigError
from colocate.rank0.pool import Job, Policy, SubmitJob, View, decide

POOL = Policy(min_jobs=0, max_jobs=4, max_pending=2, nodes_per_job=1, cores_per_node=8, ahead=0,
              grow_above=1.0, idle_timeout=60, pending_timeout=300)


def running(jid: str, idle_since: float | None = None, cores: int = 8) -> Job:
    return Job(jid, "running", submitted=0.0, idle_since=idle_since, cores=cores)


def pending(jid: str, submitted: float = 0.0) -> Job:
    return Job(jid, "pending", submitted=submitted)


def kinds(decisions) -> list[tuple]:
    return [(type(d).__name__, d.count if isinstance(d, SubmitJob) else d.job) for d in decisions]


def test_the_default_pool_never_submits():
    policy = Policy.from_config(config.load(environ={})["pool"])
    assert decide(View(now=0, queued=10_000, free_cores=0, idle_nodes=100), policy) == []


def test_a_backlog_grows_the_pool_by_the_jobs_it_needs_up_to_max_pending():
    # 20 queued, 4 free: 16 uncovered cores, two 8-core jobs.
    got = decide(View(now=0, queued=20, free_cores=4, idle_nodes=10), POOL)
    assert kinds(got) == [("SubmitJob", 2)]
    assert "20 task(s) queued, 4 free core(s) and 0 expected" in got[0].reason
    assert "10 idle node(s)" in got[0].reason
    # Far more work: still only max_pending jobs queued at once.
    assert kinds(decide(View(now=0, queued=10_000, free_cores=0, idle_nodes=10), POOL)) == [
        ("SubmitJob", 2)]


def test_pending_jobs_count_as_cores_to_come():
    # 12 queued, 4 free, one pending 8-core job: covered.
    assert decide(View(now=10, queued=12, free_cores=4, jobs=(pending("1"),), idle_nodes=5),
                  POOL) == []
    got = decide(View(now=10, queued=13, free_cores=4, jobs=(pending("1"),), idle_nodes=5), POOL)
    assert kinds(got) == [("SubmitJob", 1)]
    assert "8 expected from pending jobs" in got[0].reason


def test_the_queue_per_core_threshold():
    lax = Policy(max_jobs=4, cores_per_node=8, grow_above=4.0, ahead=0)
    # 16 queued on 4 free cores is 4 per core: not above the threshold.
    assert decide(View(now=0, queued=16, free_cores=4), lax) == []
    # 17 is: 17/4 - 4 = 0.25 cores short, one job.
    assert kinds(decide(View(now=0, queued=17, free_cores=4), lax)) == [("SubmitJob", 1)]


def test_growth_for_work_goes_only_into_idle_nodes():
    assert decide(View(now=0, queued=100, free_cores=0, idle_nodes=0), POOL) == []
    two_node = Policy(max_jobs=4, max_pending=4, nodes_per_job=2, cores_per_node=8, ahead=0)
    got = decide(View(now=0, queued=100, free_cores=0, idle_nodes=5), two_node)
    assert kinds(got) == [("SubmitJob", 2)]   # 5 idle nodes hold two 2-node jobs
    # Where the batch system cannot say, the queue decides.
    assert kinds(decide(View(now=0, queued=100, free_cores=0, idle_nodes=None), two_node)) == [
        ("SubmitJob", 4)]


def test_never_more_than_max_jobs_alive_ending_ones_included():
    jobs = (running("1"), running("2"), Job("3", "ending", 0.0), pending("4"))
    assert decide(View(now=0, queued=1000, free_cores=0, jobs=jobs, idle_nodes=9), POOL) == []
    # Once the ending job is gone, one more fits.
    got = decide(View(now=0, queued=1000, free_cores=0, jobs=jobs[:2] + jobs[3:], idle_nodes=9),
                 POOL)
    assert kinds(got) == [("SubmitJob", 1)]
    assert "1 of pool.max_jobs 4 left" in got[0].reason


def test_min_jobs_are_kept_even_without_work_and_without_idle_nodes():
    keep = Policy(min_jobs=2, max_jobs=4, max_pending=2, cores_per_node=8, idle_timeout=60,
                  ahead=0)
    got = decide(View(now=0, queued=0, free_cores=0, idle_nodes=0), keep)
    assert kinds(got) == [("SubmitJob", 2)]
    assert "0 live job(s), pool.min_jobs 2" in got[0].reason
    # Idle for long, but only down to min_jobs: the longest idle goes first.
    jobs = (running("a", idle_since=50), running("b", idle_since=10), running("c", idle_since=30))
    got = decide(View(now=200, queued=0, free_cores=24, jobs=jobs), keep)
    assert kinds(got) == [("CancelJob", "b")]
    assert "idle for 190 s (pool.idle_timeout 60 s)" in got[0].reason


def test_idle_jobs_are_cancelled_only_past_the_timeout_and_with_nothing_queued():
    jobs = (running("1", idle_since=100), running("2", idle_since=None))
    assert decide(View(now=159, queued=0, free_cores=8, jobs=jobs), POOL) == []
    assert kinds(decide(View(now=160, queued=0, free_cores=8, jobs=jobs), POOL)) == [
        ("CancelJob", "1")]
    # A queued task keeps every job (it is about to be placed).
    assert decide(View(now=1000, queued=1, free_cores=8, jobs=jobs), POOL) == []


def test_a_job_pending_too_long_is_cancelled_and_replaced_when_work_waits():
    jobs = (pending("7", submitted=0),)
    got = decide(View(now=300, queued=50, free_cores=0, jobs=jobs, idle_nodes=3), POOL)
    assert kinds(got) == [("CancelJob", "7"), ("SubmitJob", 2)]
    assert "pending for 300 s, more than pool.pending_timeout 300 s" in got[0].reason
    assert decide(View(now=299, queued=8, free_cores=0, jobs=jobs, idle_nodes=3), POOL) == []


def test_cores_per_node_is_learnt_from_joined_workers():
    learn = Policy(max_jobs=8, max_pending=8, cores_per_node=0, ahead=0)
    # Nothing joined yet: a node is taken to bring 1 core.
    assert kinds(decide(View(now=0, queued=3, free_cores=0), learn)) == [("SubmitJob", 3)]
    jobs = (running("1", cores=4), running("2", cores=2))   # 3 cores per node on average
    view = View(now=0, queued=7, free_cores=0, jobs=jobs)
    assert kinds(decide(view, learn)) == [("SubmitJob", 3)]


@pytest.mark.parametrize(("settings", "key", "words"), [
    ({"min_jobs": 3, "max_jobs": 2}, "pool.min_jobs", "min_jobs 3 is more than max_jobs 2"),
    ({"max_jobs": -1}, "pool.max_jobs", "expected an integer >= 0, found -1"),
    ({"nodes_per_job": 0}, "pool.nodes_per_job", "expected an integer >= 1, found 0"),
    ({"grow_above": 0}, "pool.grow_above", "expected a number > 0, found 0"),
    ({"idle_timeout": True}, "pool.idle_timeout", "expected a number > 0, found True"),
    ({"ahead": -1, "max_jobs": 2}, "pool.ahead", "expected an integer >= 0, found -1"),
    ({"ahead": 3, "max_jobs": 2}, "pool.ahead", "ahead 3 is more than max_jobs 2"),
])
def test_bad_settings_say_what_was_found_and_expected(settings, key, words):
    with pytest.raises(ConfigError) as caught:
        Policy(**settings)
    assert caught.value.key == key
    assert words in str(caught.value)


def test_settings_come_from_the_configuration():
    cfg = config.load(environ={"COLOCATE_POOL_MAX_JOBS": "6", "COLOCATE_POOL_MIN_JOBS": "1",
                               "COLOCATE_POOL_IDLE_TIMEOUT": "30"})
    policy = Policy.from_config(cfg["pool"])
    assert (policy.max_jobs, policy.min_jobs, policy.idle_timeout) == (6, 1, 30)
    with pytest.raises(ConfigError, match="unknown key 'max_job'"):
        config.load(environ={"COLOCATE_POOL_MAX_JOB": "6"})


AHEAD = Policy(max_jobs=2, max_pending=2, cores_per_node=8, ahead=1, pending_timeout=300)


def test_a_job_waits_ahead_while_tasks_are_queued_and_no_node_is_idle():
    got = decide(View(now=0, queued=100, free_cores=0, idle_nodes=0), AHEAD)
    assert kinds(got) == [("SubmitJob", 1)]
    assert "1 job(s) to wait ahead in the batch queue (pool.ahead 1)" in got[0].reason
    # One is waiting already: no second one, and none past max_jobs.
    assert decide(View(now=1, queued=100, free_cores=0, idle_nodes=0, jobs=(pending("1"),)),
                  AHEAD) == []
    assert decide(View(now=1, queued=100, free_cores=0, idle_nodes=0,
                       jobs=(running("1"), running("2"))), AHEAD) == []
    # Free cores take the queue: nothing ahead.
    assert decide(View(now=0, queued=4, free_cores=4, idle_nodes=0), AHEAD) == []


def test_waiting_ahead_never_lessens_growth_into_idle_nodes():
    assert kinds(decide(View(now=0, queued=100, free_cores=0, idle_nodes=2), AHEAD)) == [
        ("SubmitJob", 2)]
    three = Policy(max_jobs=4, max_pending=3, cores_per_node=8, ahead=3)
    # One idle node: growth would take 1, the ahead rule keeps 3 pending.
    assert kinds(decide(View(now=0, queued=100, free_cores=0, idle_nodes=1), three)) == [
        ("SubmitJob", 3)]


def test_a_job_waiting_ahead_is_cancelled_when_the_queue_empties_or_at_pending_timeout():
    got = decide(View(now=5, queued=0, free_cores=8, jobs=(running("1"), pending("2", 3.0))),
                 AHEAD)
    assert kinds(got) == [("CancelJob", "2")]
    assert "pending and no task queued" in got[0].reason
    # The newest first, never below min_jobs.
    keep = Policy(min_jobs=1, max_jobs=2, max_pending=2, cores_per_node=8, ahead=1)
    assert kinds(decide(View(now=5, queued=0, free_cores=0,
                             jobs=(pending("1", 1.0), pending("2", 2.0))), keep)) == [
        ("CancelJob", "2")]
    # Still queued work, but pending too long: cancelled, and one submitted in its place.
    assert kinds(decide(View(now=400, queued=100, free_cores=0, idle_nodes=0,
                             jobs=(pending("1", 0.0),)), AHEAD)) == [
        ("CancelJob", "1"), ("SubmitJob", 1)]


def test_ahead_defaults_to_one_and_pool_ahead_zero_turns_it_off():
    cfg = config.load(environ={"COLOCATE_POOL_MAX_JOBS": "2"})
    assert Policy.from_config(cfg["pool"]).ahead == 1
    off = Policy.from_config(config.load(environ={"COLOCATE_POOL_MAX_JOBS": "2",
                                                  "COLOCATE_POOL_AHEAD": "0"})["pool"])
    assert decide(View(now=0, queued=100, free_cores=0, idle_nodes=0), off) == []
