"""Leases: the scheduler's decisions (event by event) and a worker's task port (real sockets)."""

import threading

import pytest

from colocate.rank0 import scheduler as S
from colocate.wire import bell
from colocate.wire.messages import (
    DirectDone,
    LeaseEnded,
    LeaseOver,
    Outcome,
    Relayed,
    ResultMsg,
    Results,
    StartLease,
    Status,
    Submit,
    TaskInfo,
    TaskMsg,
    TaskOptions,
    Work,
)
from colocate.wire.stream import Stream
from colocate.worker.lease import LeaseDesk

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


# ----- the worker's task port, over real sockets -------------------------------------------------
class Desk:
    def __init__(self):
        self.sent = []
        self.desk = LeaseDesk("tok", "127.0.0.1", ("n1", 3, (5,)), self.sent.append,
                              lambda: None)

    def client(self, lease, token="tok"):
        """Connect as a leased client (the desk answers the handshake in another thread)."""
        answering = threading.Thread(target=self.poll, args=(20,))
        answering.start()
        try:
            return Stream(bell.ring_up(*self.desk.address, {"token": token, "role": "lease",
                                                            "lease": lease}))
        finally:
            answering.join()

    def poll(self, rounds=50):
        """Let the desk handle what is on its sockets; returns the work it gives out."""
        import select
        out = []
        for _ in range(rounds):
            r, w, _ = select.select(self.desk.readers(), self.desk.writers(), [], 0.01)
            out += self.desk.ready(r, w)
        return out


def read(st, n=1):
    import select
    got = []
    for _ in range(200):
        select.select([st], [], [], 0.01)
        got += st.receive()
        if len(got) >= n or st.closed:
            break
    return got


def test_task_port_runs_tasks_of_a_started_lease_and_returns_their_results():
    d = Desk()
    d.desk.start(StartLease(1, 7, 9.0))
    st = d.client(1)
    st.send(Submit([task(4, b"fn")]))
    (w,) = d.poll()
    assert (w.gid < 0, w.fn_bytes, w.args, w.timeout) == (True, b"fn", b"args4", 9.0)
    rest, again = d.desk.route([ok(w.gid), ok(12)])
    assert rest == [ok(12)] and again == []   # rank 0's task goes on to rank 0
    (res,) = read(st)
    assert res == Results([ResultMsg(4, Status.OK, b"res%d" % w.gid,
                                     TaskInfo("n1", 3, (5,), 1.0, 1.001, 1))])
    assert d.desk.tally() == (1, 0) and d.desk.tally() == (0, 0)


def test_a_lease_ends_after_its_running_task_and_never_runs_what_came_after():
    d = Desk()
    d.desk.start(StartLease(1, 7, None))
    st = d.client(1)
    st.send(Submit([task(0)]))
    (w,) = d.poll()
    d.desk.end(1)
    assert d.sent == []                      # its task still runs
    st.send(Submit([task(1)]))
    assert d.poll() == []                    # sent after the end: never run
    d.desk.route([Outcome(w.gid, Status.CRASHED, b"", 1.0, 2.0)])
    got = read(st, 2)
    assert [type(m) for m in got] == [Results, LeaseOver]   # its result, then the end
    assert d.sent == [LeaseEnded(1, 0, 1)]
    d.poll()
    assert read(st) == [] and st.closed      # and the worker closes the connection


def test_an_unknown_lease_gets_lease_over_at_once():
    d = Desk()
    st = d.client(5)
    st.send(Submit([task(0)]))
    assert d.poll() == []
    assert read(st) == [LeaseOver(5)]
    d.desk.end(5)
    assert d.sent == [LeaseEnded(5)]


def test_a_kept_result_goes_through_rank_0_and_the_client_is_told():
    d = Desk()
    d.desk.start(StartLease(1, 7, None))
    st = d.client(1)
    st.send(Submit([task(3)]))
    (w,) = d.poll()
    d.desk.route([ok(w.gid)._replace(kept=((0x103, 8),))])
    assert read(st) == [Relayed([3])]
    (msg,) = d.sent
    assert isinstance(msg, DirectDone) and msg.client == 7 and msg.result.id == 3
    assert msg.kept == ((0x103, 8),)


def test_the_task_port_refuses_a_wrong_token():
    d = Desk()
    with pytest.raises(PermissionError, match="wrong token"):
        d.client(1, token="bad")
    assert d.desk.conns == []


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
    assert S.LEASE_AFTER == 2 and s.lease_after[7] == 4
    # a lease that ends for another reason (a pause) does not raise it
    s.handle(S.WorkerPaused(1, True))
    s.handle(S.LeaseClosed(1, 2))
    assert s.lease_after[7] == 4
