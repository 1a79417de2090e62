"""Conformance: colocate's ``Executor`` against ``ProcessPoolExecutor``, corner case by corner case.

One parametrised suite, after CPython's ``test_concurrent_futures``: every test runs against
``colocate.Executor`` and ``concurrent.futures.ProcessPoolExecutor`` alike, both with one
worker, so that any difference between them shows as a failure of one parameter.

colocate's executors connect (``address=``) to one local world per module, started by
``Executor(max_workers=1)`` (so that a test may shut its executor down without stopping the
world); the test of an executor collected without shutdown starts its own local world, since
that world's end is what it checks.

Remote functions live in this module: ``ProcessPoolExecutor`` pickles them by reference (its
workers import this module), colocate by value (its executor children cannot). Tasks that must
stay busy wait for a release file, never a fixed sleep. With one worker both executors run a
client's tasks in order, so a task submitted last, once done, proves that every earlier task
that was going to run has run. Tasks meant to stay queued take 10 ms, above colocate's
``scheduler.prefetch_below``: short tasks are sent ahead to a busy worker (like the one call
``ProcessPoolExecutor`` keeps in its call queue), and a call sent ahead is running.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import sys
import threading
import time
import uuid
import weakref
from pathlib import Path

import cloudpickle
import psutil
import pytest

import colocate
from colocate.testing import mark_and_wait, wait_for_file

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(90)

RESULT_TIMEOUT = 30.0   # the bound on every wait for a result: a hang fails, never blocks
KINDS = ["colocate", "process"]
# ProcessPoolExecutor moves calls into its call queue (max_workers + 1 places) before a worker
# takes them; such a call can no longer be cancelled. colocate hands a busy worker none ahead
# of tasks as long as ``record``. The tests allow the larger of the two.
HANDED_OVER = 2


# ----- remote functions ------------------------------------------------------------------------
def square(x):
    return x * x


def record(directory, value):
    """Leave a trace that this call ran (a file named after ``value``); 10 ms long."""
    Path(directory, f"ran-{value}").touch()
    time.sleep(0.01)
    return value


def fail(text):
    raise KeyError(text)


class Box:
    """A result object that a weak reference can watch."""

    def __init__(self, value):
        self.value = value


def boxed(value):
    return Box(value)


def first_blocks(directory, release, value):
    """Call 0 blocks until released; every call leaves a trace."""
    Path(directory, f"ran-{value}").touch()
    if value == 0:
        wait_for_file(release, 60.0)
    time.sleep(0.01)
    return value


# ----- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_world(subprocess_env, assert_no_leftovers):
    """The address file of one local world (one worker), owned by a module-wide executor."""
    tag = f"conformance-{uuid.uuid4().hex[:12]}"
    with pytest.MonkeyPatch.context() as mp:
        env = subprocess_env(tag)
        for name in list(os.environ):
            if name not in env:
                mp.delenv(name)
        for name, value in env.items():
            mp.setenv(name, value)
        owner = colocate.Executor(max_workers=1)
        try:
            assert owner.submit(square, 3).result(timeout=RESULT_TIMEOUT) == 9
            yield owner.world.path
        finally:
            owner.shutdown(wait=True, cancel_futures=True)
    assert_no_leftovers(tag)


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def make_executor(kind, request):
    """A factory of one-worker executors of the kind under test; shut down at teardown."""
    made: list[cf.Executor] = []

    def make() -> cf.Executor:
        if kind == "colocate":
            ex = colocate.Executor(address=request.getfixturevalue("local_world"))
        else:
            ex = cf.ProcessPoolExecutor(max_workers=1)
        made.append(ex)
        return ex
    yield make
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def release(tmp_path) -> Path:
    """A release file for blocked tasks; created at teardown so nothing stays blocked."""
    path = tmp_path / "release"
    yield path
    path.touch()


@pytest.fixture
def busy(make_executor, tmp_path, release, wait_until):
    """``(executor, blocker)``: the executor's one worker runs ``blocker`` until released."""
    ex = make_executor()
    started = tmp_path / "started"
    blocker = ex.submit(mark_and_wait, str(started), str(release), "blocker", 60.0)
    wait_until(started.exists, RESULT_TIMEOUT, "the blocking task to start")
    return ex, blocker


def traces(directory: Path) -> set[int]:
    return {int(p.name.split("-", 1)[1]) for p in directory.glob("ran-*")}


def barrier(ex: cf.Executor) -> None:
    """Return once every call submitted before this one has run (one worker, in order)."""
    assert ex.submit(square, 7).result(timeout=RESULT_TIMEOUT) == 49


# ----- shutdown ----------------------------------------------------------------------------------
def test_shutdown_without_wait_returns_at_once_and_queued_work_completes(busy, release,
                                                                         tmp_path):
    ex, blocker = busy
    queued = [ex.submit(record, str(tmp_path), i) for i in range(5)]
    start = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - start < 2.0, "shutdown(wait=False) waited for the work"
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)
    assert not any(f.done() for f in queued)
    release.touch()
    assert blocker.result(timeout=RESULT_TIMEOUT) == "blocker"
    assert [f.result(timeout=RESULT_TIMEOUT) for f in queued] == list(range(5))
    assert traces(tmp_path) == set(range(5))


@pytest.mark.parametrize("wait", [False, True])
def test_shutdown_cancel_futures_cancels_queued_work(busy, release, tmp_path, wait):
    ex, blocker = busy
    queued = [ex.submit(record, str(tmp_path), i) for i in range(10)]
    if wait:   # it returns once the blocker is done: release that from another thread
        threading.Timer(0.5, release.touch).start()
    ex.shutdown(wait=wait, cancel_futures=True)
    if wait:   # (without, ProcessPoolExecutor's manager thread cancels them a moment later)
        assert all(f.done() for f in queued)
    release.touch()
    assert blocker.result(timeout=RESULT_TIMEOUT) == "blocker"
    cf.wait(queued, timeout=RESULT_TIMEOUT)
    cancelled = [f for f in queued if f.cancelled()]
    assert len(cancelled) >= len(queued) - HANDED_OVER, [f._state for f in queued]
    assert cancelled == queued[len(queued) - len(cancelled):], "a later call ran, not an earlier"
    ran = [f for f in queued if not f.cancelled()]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in ran] == list(range(len(ran)))
    for f in cancelled:
        assert f.done()
        with pytest.raises(cf.CancelledError):
            f.result(timeout=0)
    if wait:
        assert traces(tmp_path) == set(range(len(ran)))


def test_submit_and_map_after_shutdown_raise_runtime_error(make_executor):
    ex = make_executor()
    assert ex.submit(square, 2).result(timeout=RESULT_TIMEOUT) == 4
    ex.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 2)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.map(square, range(3))
    ex.shutdown(wait=True)   # a second shutdown is harmless


# ----- map ---------------------------------------------------------------------------------------
def test_map_timeout_expires_and_pending_calls_are_cancelled(make_executor, release, tmp_path):
    ex = make_executor()
    results = ex.map(first_blocks, [str(tmp_path)] * 10, [str(release)] * 10, range(10),
                     timeout=0.5)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        next(results)
    assert 0.4 < time.monotonic() - start < 10.0
    release.touch()
    barrier(ex)
    ran = traces(tmp_path)
    assert 0 in ran
    assert len(ran) <= 1 + HANDED_OVER, f"calls after the timeout ran: {sorted(ran)}"
    with pytest.raises(StopIteration):   # the iterator is finished
        next(results)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_iterator_holds_no_reference_to_a_yielded_result(make_executor, chunksize):
    # bpo-14406: once the caller drops an object map() yielded, nothing keeps it alive.
    ex = make_executor()
    seen = []
    for obj in ex.map(boxed, range(8), chunksize=chunksize):
        seen.append(obj.value)
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None, f"map's iterator still holds the result {seen[-1]}"
    assert seen == list(range(8))


# ----- cancel, as_completed, wait ----------------------------------------------------------------
def test_future_cancelled_before_it_runs(busy, release, tmp_path):
    ex, blocker = busy
    queued = [ex.submit(record, str(tmp_path), i) for i in range(5)]
    target = queued[-1]
    called = []
    target.add_done_callback(called.append)
    assert target.cancel() is True
    assert target.cancelled() and target.done() and not target.running()
    assert called == [target], "the callback did not run once, at the cancel"
    with pytest.raises(cf.CancelledError):
        target.result(timeout=0)
    with pytest.raises(cf.CancelledError):
        target.exception(timeout=0)
    assert target.cancel() is True   # cancelling again still says it is cancelled
    late = []
    target.add_done_callback(late.append)
    assert late == [target], "a callback added after the cancel did not run at once"
    assert blocker.cancel() is False, "a running call was cancelled"
    assert blocker.running()
    release.touch()
    assert [f.result(timeout=RESULT_TIMEOUT) for f in queued[:-1]] == list(range(4))
    barrier(ex)
    assert traces(tmp_path) == set(range(4)), "the cancelled call ran"
    assert blocker.result(timeout=0) == "blocker"
    assert blocker.cancel() is False and not blocker.cancelled()


def test_as_completed_and_wait_with_finished_cancelled_and_failing_futures(busy, release,
                                                                           tmp_path):
    ex, blocker = busy
    ok = ex.submit(record, str(tmp_path), 1)
    bad = ex.submit(fail, "boom")
    dropped = ex.submit(record, str(tmp_path), 2)
    assert dropped.cancel()
    finished = cf.Future()
    finished.set_result("already")
    everything = {finished, blocker, ok, bad, dropped}
    # (A future cancelled while still in the client counts as done for wait/as_completed only
    # once the executor has noticed, as in CPython: ``dropped`` may be on either side here.)
    done, not_done = cf.wait(everything, timeout=0.2, return_when=cf.FIRST_EXCEPTION)
    assert finished in done and {blocker, ok, bad} <= not_done
    done, not_done = cf.wait(everything, timeout=0, return_when=cf.FIRST_COMPLETED)
    assert finished in done and {blocker, ok, bad} <= not_done
    early = []
    for fut in cf.as_completed(everything, timeout=RESULT_TIMEOUT):
        early.append(fut)
        if len(early) == 1:
            assert fut in (finished, dropped), "a done future comes first"
            release.touch()
    assert len(early) == len(everything) and set(early) == everything
    done, not_done = cf.wait(everything, timeout=RESULT_TIMEOUT, return_when=cf.FIRST_EXCEPTION)
    assert not not_done
    assert isinstance(bad.exception(timeout=0), KeyError)
    assert ok.result(timeout=0) == 1 and blocker.result(timeout=0) == "blocker"
    assert dropped.cancelled()
    done, not_done = cf.wait(everything, timeout=RESULT_TIMEOUT)
    assert done == everything and not not_done
    assert traces(tmp_path) == {1}


# ----- life cycle and arguments ------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_an_executor_collected_without_shutdown_leaves_nothing_running(kind, colocate_env,
                                                                       wait_until):
    if kind == "colocate":
        ex = colocate.Executor(max_workers=1)   # its own local world: its end is the check
        assert ex.submit(square, 5).result(timeout=RESULT_TIMEOUT) == 25
        procs = ex.world.processes()
        threads = [ex.thread]
    else:
        ex = cf.ProcessPoolExecutor(max_workers=1)
        assert ex.submit(square, 5).result(timeout=RESULT_TIMEOUT) == 25
        procs = [psutil.Process(p.pid) for p in ex._processes.values()]
        threads = [ex._executor_manager_thread]
    assert procs and all(p.is_running() for p in procs)
    ref = weakref.ref(ex)
    del ex
    gc.collect()
    assert ref() is None, "something still refers to the executor"

    def running(p):   # a process may be reaped between the two questions
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def ended():
        return not any(running(p) for p in procs) and not any(t.is_alive() for t in threads)
    wait_until(ended, 60.0, "the collected executor's processes and threads to end")


@pytest.mark.parametrize("bad", [0, -1])
def test_max_workers_argument_checks(kind, bad):
    make = colocate.Executor if kind == "colocate" else cf.ProcessPoolExecutor
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        make(max_workers=bad)
