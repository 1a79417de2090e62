"""A worker rank's executor child, driven directly (a real child process, no MPI).

The rank must never block on its child: work larger than the pipe goes to a child that is busy
computing without stalling the caller, and is delivered whole once the child reads again.
Outcomes written before the child dies are never lost; the death is charged to the task that
was running, and work sent ahead comes back unstarted.
"""

from __future__ import annotations

import os
import select
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from colocate.testing import wait_for_file
from colocate.wire.messages import FunctionPickler, Status, Work, dumps, loads
from colocate.wire.pipe import PIPE_SIZE
from colocate.worker.childhandle import ChildHandle

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)

BOUND = 30.0   # seconds any wait on the child may take (a hang fails, never blocks)


# ----- remote functions --------------------------------------------------------------------------
def value_after_file(path, value):
    """Block until ``path`` exists (bounded); returns ``value``."""
    wait_for_file(path, BOUND)
    return value


def echo(value):
    return value


def die(code):
    os._exit(code)


# ----- helpers -----------------------------------------------------------------------------------
class Driver:
    """Builds Work items and runs the loop a worker rank runs around its child."""

    def __init__(self, child: ChildHandle) -> None:
        self.child = child
        self.pickler = FunctionPickler()
        self.fn_store: dict[bytes, bytes] = {}
        self.gid = 0

    def work(self, fn, *args) -> Work:
        fn_hash, fn_bytes = self.pickler(fn)
        self.fn_store[fn_hash] = fn_bytes
        self.gid += 1
        return Work(self.gid, fn_hash, fn_bytes, dumps((args, {})), None, None)

    def run_until_idle(self):
        """Flush and collect until the child holds nothing or dies; returns (outcomes, died)."""
        child = self.child
        got = []
        deadline = time.monotonic() + BOUND
        while child.busy:
            assert time.monotonic() < deadline, "the child did not finish its work in time"
            ready, writable, _ = select.select([child.from_child],
                                               [child.to_child] if child.writing else [], [],
                                               1.0)
            if writable:
                child.flush()
            if ready:
                outcomes, died = child.collect()
                got += outcomes
                if died is not None:
                    return got, died
        return got, None


@pytest.fixture
def child():
    ep = ChildHandle({"cores": None, "priority": "normal", "threads": 1})
    ep.start()
    yield ep
    ep.kill()


# ----- tests -------------------------------------------------------------------------------------
def test_work_larger_than_the_pipe_never_blocks_the_rank(child, tmp_path):
    drv = Driver(child)
    release = tmp_path / "release"
    child.send([drv.work(value_after_file, str(release), "first")], drv.fn_store)
    big = os.urandom(4 * PIPE_SIZE)
    started = time.monotonic()
    for _ in range(3):   # the child computes: none of this may wait for it
        child.send([drv.work(echo, big)], drv.fn_store)
        child.flush()
    assert time.monotonic() - started < 5.0
    assert child.writing, "work beyond the pipe should wait in the outbox"
    Path(release).touch()
    outcomes, died = drv.run_until_idle()
    assert died is None
    assert [o.status for o in outcomes] == [Status.OK] * 4
    assert loads(outcomes[0].payload) == "first"
    assert all(loads(o.payload) == big for o in outcomes[1:])   # results beyond the pipe, too
    assert not child.writing


def test_outcomes_written_before_a_crash_are_kept(child):
    drv = Driver(child)
    work = [drv.work(echo, 1), drv.work(echo, 2), drv.work(die, 7), drv.work(echo, 4)]
    child.send(work, drv.fn_store)
    outcomes, died = drv.run_until_idle()
    assert [(o.gid, loads(o.payload)) for o in outcomes] == [(work[0].gid, 1), (work[1].gid, 2)]
    assert died is not None and died.status == Status.CRASHED
    rest = child.fail_held(died)
    assert [(o.gid, o.status) for o in rest] == [(work[2].gid, Status.CRASHED),
                                                 (work[3].gid, Status.REQUEUE)]
    child.send([drv.work(echo, 5)], drv.fn_store)   # the fresh child serves
    outcomes, died = drv.run_until_idle()
    assert died is None and [loads(o.payload) for o in outcomes] == [5]


def test_work_sent_to_a_dead_child_is_accounted_for_by_its_death(child):
    drv = Driver(child)
    os.kill(child.pid, 9)
    child.proc.wait(timeout=BOUND)
    work = drv.work(echo, os.urandom(2 * PIPE_SIZE))
    child.send([work], drv.fn_store)   # a broken pipe: must not raise
    assert not child.writing
    outcomes, died = drv.run_until_idle()
    assert outcomes == [] and died is not None and died.status == Status.CRASHED
    assert [(o.gid, o.status) for o in child.fail_held(died)] == [(work.gid, Status.CRASHED)]
