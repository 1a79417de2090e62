"""Stream: one send per frame when nothing is queued, frames read in place, partial frames kept."""

import select
import socket
import time

import pytest

from colocate.wire.framing import HEADER, frame
from colocate.wire.messages import (
    ResultMsg,
    Results,
    Submit,
    TaskInfo,
    TaskMsg,
    TaskOptions,
    from_wire,
    results_wire,
    to_wire,
)
from colocate.wire.stream import Stream


@pytest.fixture
def pair():
    listener = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    listener.close()
    yield Stream(a), Stream(b)
    a.close()
    b.close()


def receive_all(stream: Stream, count: int, bound: float = 10.0) -> list:
    got, deadline = [], time.monotonic() + bound
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(got)} of {count} objects within {bound} s"
        select.select([stream], [], [], left)
        got += stream.receive()
    return got


def test_a_frame_split_across_reads_is_kept_until_whole(pair):
    a, b = pair
    data = frame(to_wire(Submit([TaskMsg(7, b"h" * 16, None, b"args", TaskOptions(), None, ())])))
    a.sock.setblocking(True)
    a.sock.sendall(data[:5])              # not even the header
    time.sleep(0.05)
    assert b.receive() == [] and bytes(b._in) == data[:5]
    a.sock.sendall(data[5:HEADER.size + 3])
    time.sleep(0.05)
    assert b.receive() == [] and bytes(b._in) == data[:HEADER.size + 3]
    a.sock.sendall(data[HEADER.size + 3:] + data[:HEADER.size + 1])   # the rest, and a next part
    (msg,) = receive_all(b, 1)
    assert type(msg) is Submit and msg.tasks[0].id == 7
    assert bytes(b._in) == data[:HEADER.size + 1]


def test_several_frames_in_one_read_come_out_in_order(pair):
    a, b = pair
    a.sock.setblocking(True)
    a.sock.sendall(b"".join(frame(i) for i in range(50)) + frame("x")[:4])
    time.sleep(0.05)
    assert receive_all(b, 50) == list(range(50))
    assert len(b._in) == 4


def test_what_the_kernel_does_not_take_is_queued_then_flushed(pair):
    a, b = pair
    big = b"y" * (16 << 20)   # more than the socket buffers hold
    a.send(big)
    assert a.pending   # the fast path queued the rest instead of blocking or dropping it
    a.send("after")    # queued behind it, in order
    got, deadline = [], time.monotonic() + 30
    while len(got) < 2:
        assert time.monotonic() < deadline
        select.select([b], [a] if a.pending else [], [], 1.0)
        a.flush()
        got += b.receive()
    assert got == [big, "after"] and not a.pending


def test_results_built_as_plain_tuples_read_as_results():
    info = ("node", 3, (1,), 1.0, 2.0, 1)
    got = from_wire(results_wire([(5, 0, b"p", info)]))
    assert got == Results([ResultMsg(5, 0, b"p", TaskInfo(*info))])
    assert type(got.results[0].info) is TaskInfo
    assert got == from_wire(to_wire(Results([ResultMsg(5, 0, b"p", TaskInfo(*info))])))
