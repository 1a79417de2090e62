"""A worker's task port for leased clients (colocate.worker.lease.LeaseDesk), over real sockets.

The scheduler's side of leases is unit-tested in tests/unit/rank0/test_lease_rules.py.
"""

import threading

import pytest

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
)
from colocate.wire.stream import Stream
from colocate.worker.lease import LeaseDesk

pytestmark = pytest.mark.timeout(60)

FN = b"h" * 16


def task(i, fn_bytes=None):
    """Task ``i`` of the client, as it sends it on its lease."""
    return TaskMsg(i, FN, fn_bytes, b"args%d" % i, TaskOptions())


def ok(gid):
    """The child's OK outcome of work ``gid``."""
    return Outcome(gid, Status.OK, b"res%d" % gid, 1.0, 1.001)


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
