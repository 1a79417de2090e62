"""Puts into segments reserved ahead: the store server's side, the bookkeeping, the client's spares.

The store server runs here for real (threads, a data port on loopback, memfd segments); the
connections to it are opened by hand where a test needs to say which one carries what.
"""

import socket
import threading
import time

import numpy as np
import pytest

from colocate.rank0 import scheduler as S
from colocate.store import datalink
from colocate.store.putahead import PutAhead
from colocate.store.server import StoreServer
from colocate.wire.bell import ring_up

pytestmark = pytest.mark.skipif(not datalink.HAVE_MEMFD, reason="needs memfd_create")

TOKEN = "t0ken"
WORLD = "world-put-ahead"
NBYTES = 512 * 1024
WAIT = 10.0


@pytest.fixture
def server():
    srv = StoreServer(TOKEN, rank=1, host="127.0.0.1", pool=64 << 20)
    srv.start()
    datalink.register_world(WORLD, TOKEN)
    yield srv
    srv.close()


def connect(srv: StoreServer) -> socket.socket:
    sock = ring_up("127.0.0.1", srv.address.port, {"token": TOKEN, "role": "data"})
    sock.settimeout(WAIT)
    return sock


def ask(sock: socket.socket, **req) -> dict:
    datalink.send_msg(sock, req)
    return datalink.recv_msg(sock)


def until(cond, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def reserve(srv, oid=1 << 16):
    res = datalink.reserve(WORLD, srv.address, 1, "n1", oid, NBYTES)
    assert res is not None and res.id == oid
    return res


# ----- the store server ---------------------------------------------------------------------------
def test_a_granted_reservation_outlives_its_connection_and_commits_on_another(server):
    sock = connect(server)
    reply = ask(sock, op="reserve", id=5 << 16, meta=None, nbytes=NBYTES, gid=None)
    sock.close()   # a client's spare waits in the client, not in a connection
    time.sleep(0.1)
    assert 5 << 16 in server.reserved
    res = datalink.Reservation(WORLD, server.address, 1, "n1", reply["id"], reply["fd"], NBYTES,
                               datalink._maps.get(server.address.pid, reply["fd"], 5 << 16,
                                                  NBYTES))
    data = np.arange(NBYTES // 8, dtype=np.float64)
    assert datalink.fill(res, memoryview(data).cast("B"))
    assert datalink.send_commit(res, ("ndarray", "<f8", (NBYTES // 8,), "C"), wait=True)
    assert server.usage()["objects"] == 1 and not server.reserved


def test_a_reservation_the_worker_numbered_goes_with_its_connection(server):
    sock = connect(server)
    reply = ask(sock, op="reserve", id=None, meta=None, nbytes=NBYTES, gid=3)
    assert reply["id"] in server.reserved
    sock.close()   # an executor child died between reserve and commit
    until(lambda: not server.reserved, "the reservation to be recycled")
    assert server.usage()["pooled"] >= NBYTES


def test_a_drop_that_overtakes_the_commit_recycles_and_the_commit_is_ignored(server):
    res = reserve(server)
    server.drop([res.id])   # the free went through rank 0 faster than the commit
    assert not server.reserved and server.usage()["pooled"] >= NBYTES
    sock = connect(server)
    reply = ask(sock, op="commit", id=res.id, meta=("pickle",), reply=True)
    assert not reply["ok"] and "not reserved" in reply["error"]
    assert server.usage()["objects"] == 0


def test_a_read_over_tcp_waits_for_a_commit_still_on_its_way(server):
    res = reserve(server)
    data = np.full(NBYTES, 7, np.uint8)
    assert datalink.fill(res, memoryview(data))
    sock = connect(server)
    got = {}

    def read():
        got["reply"] = ask(sock, op="get", id=res.id)
        got["data"] = bytearray(NBYTES)
        datalink.recv_exactly(sock, memoryview(got["data"]))

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)
    assert "reply" not in got   # no answer before the commit
    assert datalink.send_commit(res, ("ndarray", "|u1", (NBYTES,), "C"), wait=False)
    reader.join(WAIT)
    assert got["reply"]["ok"] and got["data"] == bytes(data)


def test_a_streamed_put_supersedes_an_unfilled_reservation(server):
    res = reserve(server)
    sock = connect(server)
    datalink.send_msg(sock, {"op": "put", "id": res.id, "meta": ("pickle",), "nbytes": NBYTES,
                             "gid": None})
    datalink.send_buffer(sock, memoryview(bytes(NBYTES)))
    assert datalink.recv_msg(sock)["ok"]
    assert not server.reserved and server.usage()["objects"] == 1
    assert server.usage()["pooled"] >= NBYTES   # the reserved segment was not leaked


# ----- rank 0's bookkeeping -----------------------------------------------------------------------
def test_spares_hold_budget_but_are_not_counted_as_objects_until_used():
    s = S.Scheduler()
    s.handle(S.WorkerJoined(1, "n1", (1,), 1000, machine="n1/boot"))
    s.handle(S.ClientJoined(7))
    [spare] = s.handle(S.PutRequested(7, 0, 300, ahead=True))
    snap = s.snapshot()["store"]
    assert snap["objects"] == 0 and snap["bytes"] == 0 and snap["ahead"] == 300
    [refused] = s.handle(S.PutRequested(7, 1, 800))
    assert "300 of them set aside for clients' next puts" in refused.reason
    s.handle(S.AheadUsed(8, [spare.ref_id]))   # another client's word counts for nothing
    assert s.snapshot()["store"]["ahead"] == 300
    s.handle(S.AheadUsed(7, [spare.ref_id]))
    snap = s.snapshot()["store"]
    assert snap["objects"] == 1 and snap["bytes"] == 300 and snap["ahead"] == 0
    assert snap["nodes"]["n1"]["bytes"] == 300


# ----- the client's spares ------------------------------------------------------------------------
class Worker:
    """Stands in for rank 0 and a worker rank: hands out numbered reservations, records the rest."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.next = 0
        self.released: list[int] = []
        self.committed: list[int] = []
        self.refuse = False
        self.asked: list[int] = []   # count of each reservation request

    def reserve(self, node, nbytes, count=1):
        time.sleep(self.delay)
        if self.refuse:
            raise RuntimeError("full")
        self.asked.append(count)
        out = []
        for _ in range(count):
            self.next += 1
            out.append(datalink.Reservation(WORLD, None, 1, node or "n1", self.next, 3, nbytes,
                                            None))
        return out

    def ahead(self) -> PutAhead:
        return PutAhead(self.reserve, self.released.append,
                        lambda res, meta: self.committed.append(res.id))


def filled(worker: Worker, nbytes: int) -> datalink.Reservation:
    return worker.reserve(None, nbytes)[0]


def test_a_put_commits_and_keeps_one_spare_of_its_size_ahead():
    w = Worker()
    ahead = w.ahead()
    first = filled(w, 100)
    ahead.put_done(None, first, ("pickle",))
    until(lambda: ahead.spares.get((None, 100)), "a spare")
    assert w.committed == [first.id] and w.asked == [1, 1]
    assert ahead.take(None, 200) is None and ahead.take("n2", 100) is None
    spare = ahead.take(None, 100)
    assert spare is not None and spare.id == 2
    ahead.close()
    assert w.released == []   # the spare was taken: nothing else was held


def test_puts_faster_than_refills_keep_more_spares_ahead(monkeypatch):
    monkeypatch.setattr("colocate.store.putahead.HELD", 400)
    w = Worker(delay=0.05)
    ahead = w.ahead()
    ahead.put_done(None, filled(w, 100), ("pickle",))
    until(lambda: ahead.spares.get((None, 100)), "a spare")
    taken = [ahead.take(None, 100) for _ in range(6)]   # back to back: each waits, depth grows
    assert all(r is not None for r in taken)
    assert max(w.asked) == 4 and ahead.depth[(None, 100)] == 4   # HELD // 100: no more
    ahead.close()


def test_spares_unused_for_a_while_are_given_back(monkeypatch):
    monkeypatch.setattr("colocate.store.putahead.IDLE", 0.2)
    w = Worker()
    ahead = w.ahead()
    ahead.put_done(None, filled(w, 100), ("pickle",))
    until(lambda: w.released, "the idle spare to be released")
    assert not ahead.spares and not ahead.wanted
    ahead.close()


def test_give_back_waits_for_a_reservation_in_progress():
    w = Worker(delay=0.3)
    ahead = w.ahead()
    ahead.put_done(None, datalink.Reservation(WORLD, None, 1, "n1", 99, 3, 100, None),
                   ("pickle",))
    until(lambda: ahead.busy is not None, "the reservation to start")
    assert ahead.give_back() == 1   # the one in progress, released by the thread when done
    assert w.released == [1] and not ahead.spares
    ahead.close()


def test_a_refused_spare_is_not_asked_for_again_until_the_next_put():
    w = Worker()
    w.refuse = True
    ahead = w.ahead()
    ahead.put_done(None, datalink.Reservation(WORLD, None, 1, "n1", 99, 3, 100, None),
                   ("pickle",))
    until(lambda: not ahead.wanted, "the refusal")
    assert not ahead.spares and w.committed == [99]
    ahead.close()


def test_close_sends_queued_commits_and_releases_spares():
    w = Worker()
    ahead = w.ahead()
    ahead.put_done(None, filled(w, 100), ("pickle",))
    until(lambda: ahead.spares, "a spare")
    until(lambda: ahead.busy is None, "the thread to rest")
    spare_id = ahead.spares[(None, 100)][0].id
    ahead.close()
    assert w.released == [spare_id]
    late = filled(w, 100)
    ahead.put_done(None, late, ("pickle",))   # after close: committed at once, nothing ahead
    assert w.committed[-1] == late.id and not ahead.wanted


def test_a_put_waits_for_the_spare_of_its_size_on_its_way():
    w = Worker(delay=0.3)
    ahead = w.ahead()
    ahead.put_done(None, datalink.Reservation(WORLD, None, 1, "n1", 99, 3, 100, None),
                   ("pickle",))
    t0 = time.monotonic()
    spare = ahead.take(None, 100)   # the reservation is under way: wait, don't double it
    assert spare is not None and time.monotonic() - t0 < 5
    assert ahead.take(None, 200) is None   # nothing of that size coming: no wait
    ahead.close()


def test_nothing_is_kept_ahead_of_very_large_puts(monkeypatch):
    monkeypatch.setattr("colocate.store.putahead.LARGEST", 1000)
    w = Worker()
    ahead = w.ahead()
    ahead.put_done(None, datalink.Reservation(WORLD, None, 1, "n1", 99, 3, 5000, None),
                   ("pickle",))
    until(lambda: w.committed == [99], "the commit")
    assert not ahead.wanted and not ahead.spares and w.next == 0
    ahead.close()
