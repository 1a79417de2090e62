"""Leases: the scheduler's decisions, event by event.

The worker's task port, over real sockets, is tested in tests/integration/test_lease_desk.py.
"""

import pytest

from colocate.rank0 import scheduler as S
from colocate.rank0.leases import LEASE_AFTER
from colocate.wire.messages import (
    Outcome,
    ResultMsg,
    Status,
    TaskInfo,
    TaskMsg,
    TaskOptions,
    Work,
)

FN = b"h" * 16


def task(i, fn_bytes=None, **opts):
    return TaskMsg(i, FN, fn_bytes, b"args%d" % i, TaskOptions(**opts))


def work(i, fn_bytes=None):
    return Work(i, FN, fn_bytes, b"args%d" % i, None, None)


def ok(gid):
    return Outcome(gid, Status.OK, b"res%d" % gid, 1.0, 1.001)


def sched(workers=1, task_ports=True, leases=True):
    s = S.Scheduler(leases=leases)
    for r in range(1, workers + 1):
        assert s.handle(S.WorkerJoined(r, "n1", (r,), 1000, leases=task_ports)) == []
    s.handle(S.ClientJoined(7))
    return s


def leased(s, client=7):
    """Run the lone tasks that earn ``client`` a lease on worker 1; returns the next task id."""
    assert s.handle(S.Submitted(client, [task(0, b"fn")])) == [S.SendWork(1, [work(0, b"fn")])]
    s.handle(S.WorkerDone(1, [ok(0)]))
    assert s.handle(S.Submitted(client, [task(1)])) == [
        S.SendWork(1, [work(1)]), S.GrantLease(client, 1, 1, None)]
    s.handle(S.WorkerDone(1, [ok(1)]))
    return 2


def test_a_client_sending_lone_tasks_gets_a_lease_on_the_second():
    s = sched()
    leased(s)
    snap = s.snapshot()
    assert snap["leases"] == 1
    assert snap["workers"][0]["state"] == "leased" and snap["workers"][0]["leased_to"] == 7


@pytest.mark.parametrize("why", ["off", "no task port", "retries", "memory", "batch", "busy"])
def test_no_lease_when_off_or_the_task_or_world_does_not_allow_it(why):
    s = sched(leases=why != "off", task_ports=why != "no task port")
    opts = {"retries": {"retries": 1}, "memory": {"memory": 10}}.get(why, {})
    if why == "busy":   # another client's task is in the world
        s.handle(S.ClientJoined(8))
        s.handle(S.Submitted(8, [TaskMsg(0, FN, b"fn", b"x", TaskOptions())]))
    for i in range(4):
        msgs = [task(i, b"fn", **opts)] + ([task(10 + i, **opts)] if why == "batch" else [])
        out = s.handle(S.Submitted(7, msgs))
        assert not [x for x in out if isinstance(x, S.GrantLease)], (why, out)
        for ins in out:
            if isinstance(ins, S.SendWork) and why != "busy":
                s.handle(S.WorkerDone(1, [ok(w.gid) for w in ins.work]))


def test_anything_waiting_ends_the_lease_and_runs_once_it_has_ended():
    s = sched()
    leased(s)
    s.handle(S.ClientJoined(8))
    out = s.handle(S.Submitted(8, [TaskMsg(0, FN, None, b"x", TaskOptions())]))
    assert out == [S.CloseLease(1, 1)]   # the slot is the lease's until the worker says so
    assert s.handle(S.Submitted(8, [TaskMsg(1, FN, None, b"y", TaskOptions())])) == []
    out = s.handle(S.LeaseClosed(1, 1, done=3, failed=1))
    assert out == [S.SendWork(1, [Work(2, FN, None, b"x", None, None),   # (short: sent ahead)
                                  Work(3, FN, None, b"y", None, None)])]
    w = s.snapshot()["workers"][0]
    assert (w["done"], w["failed"], w["leased_to"]) == (5, 1, None)
    assert s.snapshot()["leases"] == 0


def test_a_second_worker_takes_other_work_and_the_lease_stays():
    s = sched(workers=2)
    leased(s)
    s.handle(S.ClientJoined(8))
    out = s.handle(S.Submitted(8, [TaskMsg(0, FN, None, b"x", TaskOptions())]))
    assert out == [S.SendWork(2, [Work(2, FN, b"fn", b"x", None, None)])]
    assert s.snapshot()["leases"] == 1


@pytest.mark.parametrize("event", [S.WorkerPaused(1, True), S.ClientLeft(7), S.DrainRequested()])
def test_pause_departure_and_drain_end_the_lease(event):
    s = sched()
    leased(s)
    out = s.handle(event)
    assert out == [S.CloseLease(1, 1)]
    assert s.handle(event) == []   # asked once
    out = s.handle(S.LeaseClosed(1, 1))
    assert (S.Exit() in out) == isinstance(event, S.DrainRequested)


def test_drain_deadline_cuts_off_a_leased_task():
    s = sched()
    leased(s)
    s.handle(S.DrainRequested())
    assert s.handle(S.DrainDeadline()) == [S.CutOff(1, Status.INTERRUPTED)]


def test_a_leased_task_that_kept_objects_is_recorded_then_delivered():
    s = sched()
    leased(s)
    info = TaskInfo("n1", 1, (1,), 1.0, 2.0, 1)
    res = ResultMsg(5, Status.OK, b"ref", info)
    out = s.handle(S.DirectReported(1, 7, res, ((0x101, 100),)))
    assert out == [S.Deliver(7, [res])]
    assert s.snapshot()["store"]["objects"] == 1 and s.snapshot()["workers"][0]["stored"] == 100
    s.handle(S.ClientLeft(7))    # gone: what it kept goes
    assert s.snapshot()["store"]["objects"] == 0
    out = s.handle(S.DirectReported(1, 7, res, ((0x201, 50),)))   # and what comes after it too
    assert out == [S.DiscardObjects(1, [0x201])]


def test_a_lost_leased_worker_frees_the_client_for_a_new_lease():
    s = sched(workers=2)
    leased(s)
    s.handle(S.WorkerGone(1, "gone"))
    assert s.snapshot()["leases"] == 0
    out = s.handle(S.Submitted(7, [task(5)]))   # its lone tasks go through rank 0 again
    assert out == [S.SendWork(2, [Work(2, FN, b"fn", b"args5", None, None)]),
                   S.GrantLease(7, 2, 2, None)]


def test_status_says_which_client_holds_a_lease():
    from colocate.cli import render_status
    s = sched()
    leased(s)
    st = {**s.snapshot(), "address": "a", "uptime": 1.0, "clients_connected": 1}
    text = render_status(st)
    assert "leased" in text.splitlines()[2]
    assert "rank 1 is leased to client 7" in text


def test_a_lease_that_gave_way_doubles_the_lone_tasks_needed_for_the_next():
    s = sched()
    leased(s)
    s.handle(S.ClientJoined(8))
    s.handle(S.Submitted(8, [TaskMsg(0, FN, None, b"x", TaskOptions())]))   # wants the slot
    s.handle(S.LeaseClosed(1, 1))
    s.handle(S.WorkerDone(1, [ok(2)]))
    grants = []
    for i in range(10, 16):   # client 7's lone tasks: the lease comes back on the fourth
        out = s.handle(S.Submitted(7, [task(i)]))
        grants.append(any(isinstance(x, S.GrantLease) for x in out))
        for ins in out:
            if isinstance(ins, S.SendWork):
                s.handle(S.WorkerDone(1, [ok(w.gid) for w in ins.work]))
        if grants[-1]:
            break
    assert grants == [False, False, False, True]
    assert LEASE_AFTER == 2 and s.leases.after[7] == 4
    # a lease that ends for another reason (a pause) does not raise it
    s.handle(S.WorkerPaused(1, True))
    s.handle(S.LeaseClosed(1, 2))
    assert s.leases.after[7] == 4
