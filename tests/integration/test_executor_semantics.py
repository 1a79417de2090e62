"""One ``concurrent.futures`` suite, after CPython's ``test_concurrent_futures``, run on colocate.

Every test runs against the shared world (``Executor(address=…)``); the ones marked
``both_kinds`` also against a local world started by ``Executor(max_workers=1)``.

Remote functions live in this module and are pickled by value (the executor children cannot
import test modules). Tasks that must stay busy wait for a release file, never a fixed sleep.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import cloudpickle
import pytest

import colocate
from colocate import Executor, TaskInterrupted
from colocate.testing import mark_and_wait, wait_for_file

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)

both_kinds = pytest.mark.parametrize("kind", ["server", "local"])

RESULT_TIMEOUT = 30.0   # the bound on every wait for a result: a hang fails, never blocks


# ----- remote functions ------------------------------------------------------------------------
def square(x):
    return x * x


def add(x, y):
    return x + y


def sleep_and_return(seconds, value):
    time.sleep(seconds)
    return value


def takes_timeout(x, *, timeout):
    return (x, timeout)


class CustomError(Exception):
    def __init__(self, code, text):
        super().__init__(code, text)
        self.code = code
        self.text = text


def raise_custom(code):
    raise CustomError(code, "custom failure")


def raise_value_error(text):
    raise ValueError(text)


def whoami(x):
    return (x, os.getpid())


# ----- fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def kind() -> str:
    return "server"


@pytest.fixture
def make_executor(kind, request):
    """A factory of executors of the kind under test; all are shut down at teardown."""
    made: list[Executor] = []
    if kind == "server":
        address = request.getfixturevalue("server")

        def make() -> Executor:
            ex = Executor(address=address)
            made.append(ex)
            return ex
    else:
        request.getfixturevalue("colocate_env")

        def make() -> Executor:
            ex = Executor(max_workers=1)
            made.append(ex)
            return ex
    yield make
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)
    for ex in made:
        world = getattr(ex, "_world", None)
        if world is not None:
            assert world.proc.wait(20) == 0, world.tail()


@pytest.fixture
def ex(make_executor) -> Executor:
    return make_executor()


@pytest.fixture
def release(tmp_path) -> Path:
    """A release file for blocked tasks; created at teardown so nothing stays blocked."""
    path = tmp_path / "release"
    yield path
    path.touch()


# ----- submit / result ---------------------------------------------------------------------------
@both_kinds
def test_submit_result(ex):
    fut = ex.submit(pow, 2, 10)
    assert isinstance(fut, cf.Future) and isinstance(fut, colocate.Future)
    assert fut.result(timeout=RESULT_TIMEOUT) == 1024
    assert ex.submit(add, 1, y=2).result(timeout=RESULT_TIMEOUT) == 3
    assert ex.submit(lambda: "lambda").result(timeout=RESULT_TIMEOUT) == "lambda"
    offset = 7
    assert ex.submit(lambda x: x + offset, 1).result(timeout=RESULT_TIMEOUT) == 8


def test_submit_many_and_large_payload(ex):
    futs = [ex.submit(square, i) for i in range(500)]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futs] == [i * i for i in range(500)]
    blob = os.urandom(4 << 20)
    assert ex.submit(bytes.__len__, blob).result(timeout=RESULT_TIMEOUT) == len(blob)
    assert ex.submit(lambda b: b[::-1], blob).result(timeout=RESULT_TIMEOUT) == blob[::-1]


def test_submit_rejects_a_non_callable(ex):
    with pytest.raises(TypeError):
        ex.submit(42)


def test_executor_argument_checks(server):
    with pytest.raises(ValueError):
        Executor(max_workers=0)
    with pytest.raises(ValueError):
        Executor(max_workers=-1)
    with pytest.raises(ValueError):
        Executor(max_workers=1, address=server)


def test_done_callbacks_run_and_may_submit(ex):
    # Callbacks run in the thread that read the result (here the connection's thread);
    # submitting from one must not deadlock.
    chain: list[int] = []
    finished = threading.Event()

    def step(fut):
        chain.append(fut.result())
        if len(chain) < 5:
            ex.submit(square, len(chain) + 1).add_done_callback(step)
        else:
            finished.set()
    ex.submit(square, 1).add_done_callback(step)
    assert finished.wait(RESULT_TIMEOUT), f"the callback chain stopped at {chain}"
    assert chain == [1, 4, 9, 16, 25]
    done = ex.submit(square, 2)
    done.result(timeout=RESULT_TIMEOUT)
    seen = []
    done.add_done_callback(seen.append)   # on a done future: called at once
    assert seen == [done]


def test_a_lone_result_is_read_by_the_waiting_thread(ex):
    # The latency-bound case: a caller waiting for its only task reads the socket itself (one
    # wake-up instead of two), so the future's callbacks run in that caller's thread.
    ran_in = []
    fut = ex.submit(sleep_and_return, 0.2, 1)
    fut.add_done_callback(lambda f: ran_in.append(threading.get_ident()))
    assert fut.result(timeout=RESULT_TIMEOUT) == 1
    assert ran_in == [threading.get_ident()]


def test_a_callback_in_the_reading_caller_may_submit(ex):
    follow = []
    fut = ex.submit(sleep_and_return, 0.2, 3)
    fut.add_done_callback(lambda f: follow.append(ex.submit(square, f.result())))
    assert fut.result(timeout=RESULT_TIMEOUT) == 3
    assert follow[0].result(timeout=RESULT_TIMEOUT) == 9


def test_result_timeout_while_the_caller_reads(ex, release):
    fut = ex.submit(wait_for_file, str(release))
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.3)
    assert time.monotonic() - start < 5.0
    assert ex.submit(square, 6).result(timeout=RESULT_TIMEOUT) == 36   # the other worker
    release.touch()
    assert fut.result(timeout=RESULT_TIMEOUT) is True


def test_replies_reach_other_threads_while_a_caller_reads(ex, release):
    # The main thread reads the socket for its task; the status reply another thread waits
    # for arrives meanwhile and must reach it (only then is the task released).
    fut = ex.submit(wait_for_file, str(release))
    got = {}

    def ask():
        got["status"] = ex.status()
        release.touch()
    asker = threading.Thread(target=ask)
    asker.start()
    assert fut.result(timeout=RESULT_TIMEOUT) is True
    asker.join(RESULT_TIMEOUT)
    assert sorted(w["rank"] for w in got["status"]["workers"]) == [1, 2]


def test_a_queued_task_wakes_the_connection_thread_after_lone_round_trips(make_executor,
                                                                          monkeypatch):
    # While callers read their lone results, the connection thread sleeps away from the
    # socket; a task queued behind a direct send must wake it, not wait out its idle sleep.
    from colocate.client import connection as _connection
    monkeypatch.setattr(_connection, "IDLE_WAIT", 120.0)
    ex = make_executor()
    for i in range(20):
        assert ex.submit(square, i).result(timeout=RESULT_TIMEOUT) == i * i
    futs = [ex.submit(square, i) for i in range(3)]   # the first goes direct, the rest queue
    done, pending = cf.wait(futs, timeout=RESULT_TIMEOUT)
    assert not pending, "queued tasks waited for the connection thread's idle sleep"


def test_no_stale_references_to_arguments(ex):
    # As in CPython: the executor keeps nothing alive once a task is done.
    class Big:
        pass
    obj = Big()
    ref = weakref.ref(obj)
    assert ex.submit(id, obj).result(timeout=RESULT_TIMEOUT)
    del obj
    gc.collect()
    assert ref() is None, "the executor keeps a task's argument alive"


def test_cancel_a_done_future_fails(ex):
    fut = ex.submit(square, 3)
    assert fut.result(timeout=RESULT_TIMEOUT) == 9
    assert not fut.cancel() and not fut.cancelled()


# ----- map ---------------------------------------------------------------------------------------
@both_kinds
@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_keeps_order(ex, chunksize):
    got = list(ex.map(square, range(20), chunksize=chunksize, timeout=RESULT_TIMEOUT))
    assert got == [i * i for i in range(20)]
    got = list(ex.map(add, range(10), range(100, 105), chunksize=chunksize))
    assert got == [i + 100 + i for i in range(5)]   # stops at the shortest input
    assert list(ex.map(square, [], chunksize=chunksize)) == []


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_order_survives_uneven_run_times(ex, chunksize):
    delays = [0.05 if i % 4 == 0 else 0.0 for i in range(12)]
    got = list(ex.map(sleep_and_return, delays, range(12), chunksize=chunksize,
                      timeout=RESULT_TIMEOUT))
    assert got == list(range(12))


@both_kinds
@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_consumes_an_infinite_input_lazily(ex, chunksize):
    it = ex.map(square, itertools.count(), chunksize=chunksize, timeout=RESULT_TIMEOUT)
    assert list(itertools.islice(it, 10)) == [i * i for i in range(10)]
    it.close()   # cancels what was submitted ahead; must not hang


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_buffersize_bounds_what_is_taken_from_the_input(ex, chunksize):
    taken = []

    def inputs():
        for i in itertools.count():
            taken.append(i)
            yield i
    it = ex.map(square, inputs(), chunksize=chunksize, buffersize=2, timeout=RESULT_TIMEOUT)
    assert len(taken) <= 2 * chunksize + 1
    for n in range(1, 8):
        assert next(it) == (n - 1) ** 2
        # n results consumed: at most the chunk in hand plus `buffersize` chunks ahead
        assert len(taken) <= (n // chunksize + 3) * chunksize + 1
    it.close()


def test_map_argument_checks(ex):
    with pytest.raises(ValueError):
        ex.map(square, range(3), chunksize=0)
    with pytest.raises(ValueError):
        ex.map(square, range(3), buffersize=0)


def test_map_timeout_raises_timeout_error(ex, release):
    it = ex.map(wait_for_file, [str(release)] * 2, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        next(it)
    took = time.monotonic() - start
    assert took < 10.0, f"map's 0.5 s timeout took {took:.1f} s"
    release.touch()


# ----- as_completed / wait -----------------------------------------------------------------------
def test_as_completed(ex):
    futs = {ex.submit(sleep_and_return, 0.01 * (i % 3), i): i for i in range(10)}
    seen = [f.result() for f in cf.as_completed(futs, timeout=RESULT_TIMEOUT)]
    assert sorted(seen) == list(range(10))


def test_as_completed_timeout(ex, release):
    futs = [ex.submit(square, 3), ex.submit(wait_for_file, str(release))]
    done = []
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        for f in cf.as_completed(futs, timeout=1.0):
            done.append(f.result())
    assert done == [9]
    assert time.monotonic() - start < 10.0
    release.touch()
    assert futs[1].result(timeout=RESULT_TIMEOUT) is True


def test_wait_all_first_completed_first_exception(ex, release, tmp_path):
    quick = [ex.submit(square, i) for i in range(4)]
    done, not_done = cf.wait(quick, timeout=RESULT_TIMEOUT, return_when=cf.ALL_COMPLETED)
    assert done == set(quick) and not not_done

    blocked = ex.submit(wait_for_file, str(release))
    fast = ex.submit(square, 5)
    done, not_done = cf.wait([blocked, fast], timeout=RESULT_TIMEOUT,
                             return_when=cf.FIRST_COMPLETED)
    assert fast in done and blocked in not_done

    failing = ex.submit(raise_value_error, "first exception")
    done, not_done = cf.wait([blocked, failing], timeout=RESULT_TIMEOUT,
                             return_when=cf.FIRST_EXCEPTION)
    assert failing in done and blocked in not_done
    assert isinstance(failing.exception(), ValueError)

    done, not_done = cf.wait([blocked], timeout=0.2)
    assert not done and not_done == {blocked}
    release.touch()
    assert blocked.result(timeout=RESULT_TIMEOUT) is True


# ----- shutdown ----------------------------------------------------------------------------------
@both_kinds
def test_shutdown_wait_waits_for_every_task(make_executor):
    ex = make_executor()
    futs = [ex.submit(sleep_and_return, 0.05, i) for i in range(6)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futs)
    assert [f.result(timeout=0) for f in futs] == list(range(6))


def test_shutdown_without_wait_still_completes_tasks(make_executor):
    ex = make_executor()
    futs = [ex.submit(sleep_and_return, 0.05, i) for i in range(4)]
    start = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - start < 5.0
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futs] == list(range(4))


@both_kinds
def test_submit_and_map_after_shutdown_raise(make_executor):
    ex = make_executor()
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)
    with pytest.raises(RuntimeError):
        ex.map(square, range(3))
    ex.shutdown()   # a second shutdown is harmless


def test_options_view_refuses_tasks_after_shutdown(make_executor):
    ex = make_executor()
    view = ex.options(timeout=5)
    ex.shutdown()
    try:
        fut = view.submit(square, 2)
    except RuntimeError:
        return
    # Either refused (above) or completed; a future that stays pending forever is the bug.
    fut.result(timeout=2)


@both_kinds
def test_shutdown_cancel_futures_cancels_unsent_tasks(make_executor, tmp_path, release,
                                                      wait_until):
    ex = make_executor()
    workers = ex.max_workers or 1
    started = [tmp_path / f"started{i}" for i in range(workers)]
    blockers = [ex.submit(mark_and_wait, str(s), str(release), i)
                for i, s in enumerate(started)]
    wait_until(lambda: all(s.exists() for s in started), RESULT_TIMEOUT, "the blockers to run")
    # More than the client keeps in flight (256), fewer than make submit() wait (4 x 256):
    # the tail stays unsent in the client's outbox.
    queued = [ex.submit(square, i) for i in range(800)]
    stopper = threading.Thread(target=ex.shutdown, kwargs={"wait": True,
                                                           "cancel_futures": True})
    stopper.start()
    wait_until(lambda: queued[-1].cancelled(), RESULT_TIMEOUT, "the unsent tasks' cancellation")
    release.touch()
    stopper.join(RESULT_TIMEOUT)
    assert not stopper.is_alive(), "shutdown(wait=True, cancel_futures=True) did not return"
    assert [b.result(timeout=0) for b in blockers] == list(range(workers))
    cancelled = 0
    for i, fut in enumerate(queued):
        assert fut.done()
        if fut.cancelled():
            cancelled += 1
        elif fut.exception() is not None:
            assert isinstance(fut.exception(), TaskInterrupted), fut.exception()
        else:
            assert fut.result() == i * i
    assert cancelled >= 800 - 256


@both_kinds
def test_context_manager_shuts_down(make_executor):
    with make_executor() as ex:
        futs = [ex.submit(sleep_and_return, 0.02, i) for i in range(3)]
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == [0, 1, 2]
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def test_local_world_stops_with_its_executor(colocate_env):
    ex = Executor(max_workers=1)
    proc = ex.world.proc
    assert ex.submit(square, 4).result(timeout=RESULT_TIMEOUT) == 16
    ex.shutdown(wait=True)
    assert proc.poll() == 0, f"the local world's mpiexec: {proc.poll()}"


# ----- exceptions --------------------------------------------------------------------------------
@both_kinds
def test_exception_keeps_type_and_carries_remote_traceback(ex):
    fut = ex.submit(raise_custom, 17)
    with pytest.raises(CustomError) as caught:
        fut.result(timeout=RESULT_TIMEOUT)
    err = caught.value
    assert (err.code, err.text) == (17, "custom failure")
    cause = err.__cause__
    assert cause is not None, "the remote traceback must be the exception's cause"
    text = str(cause)
    info = fut.info
    assert info is not None
    assert f"rank {info.rank}" in text and info.node in text, text
    assert "raise_custom" in text and "CustomError" in text, text

    with pytest.raises(ValueError, match="plain") as caught:
        ex.submit(raise_value_error, "plain").result(timeout=RESULT_TIMEOUT)
    assert "raise_value_error" in str(caught.value.__cause__)


def test_exception_in_map_stops_iteration_with_that_exception(ex):
    def maybe_fail(i):
        if i == 3:
            raise KeyError(i)
        return i
    it = ex.map(maybe_fail, range(6), timeout=RESULT_TIMEOUT)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(KeyError):
        next(it)


# ----- options -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"timeout": 0}, {"timeout": -1}, {"timeout": "5"},
    {"timeout": True},
    {"retries": -1}, {"retries": 1.5}, {"retries": True}, {"retries": "2"},
    {"cores": 0}, {"cores": 2.0}, {"gpus": -1},
    {"memory": "lots"}, {"memory": -5},
])
def test_options_argument_checks(ex, kwargs):
    with pytest.raises(ValueError):
        ex.options(**kwargs)


def test_options_reject_unknown_names(ex):
    with pytest.raises(TypeError):
        ex.options(timeuot=5)


def test_options_do_not_collide_with_function_kwargs(ex):
    view = ex.options(timeout=10, retries=1)
    assert isinstance(view, Executor)
    assert view.submit(takes_timeout, 1, timeout=30).result(timeout=RESULT_TIMEOUT) == (1, 30)
    assert ex.submit(takes_timeout, 2, timeout=7).result(timeout=RESULT_TIMEOUT) == (2, 7)
    assert list(view.map(square, range(4))) == [0, 1, 4, 9]
    # a view is independent: the executor it came from keeps its own options
    assert ex.options(timeout=None).submit(square, 3).result(timeout=RESULT_TIMEOUT) == 9


# ----- clients -----------------------------------------------------------------------------------
CLIENT_SCRIPT = """
import sys
from colocate import Executor

address, tag = sys.argv[1], sys.argv[2]
with Executor(address=address) as ex:
    got = list(ex.map(lambda x: (tag, x * x), range(300), timeout=60))
assert got == [(tag, x * x) for x in range(300)], got[:5]
print("client", tag, "ok")
"""


def test_several_clients_at_once(server, tmp_path, subprocess_env):
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    procs = [subprocess.Popen([sys.executable, str(script), server, f"proc{i}"],
                              env=subprocess_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    errors: list[BaseException] = []
    results: dict[str, list] = {}

    def thread_client(name):
        try:
            with Executor(address=server) as ex:
                futs = [ex.submit(lambda x, n=name: (n, x + 1), i) for i in range(300)]
                results[name] = [f.result(timeout=60) for f in futs]
        except BaseException as e:   # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=thread_client, args=(f"thread{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a client thread hangs"
    assert not errors, errors
    for i in range(3):
        assert results[f"thread{i}"] == [(f"thread{i}", x + 1) for x in range(300)]
    for i, p in enumerate(procs):
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, out
        assert f"client proc{i} ok" in out


# ----- future.info -------------------------------------------------------------------------------
@both_kinds
def test_future_info_is_sane(ex, kind):
    before = time.time()
    fut = ex.submit(sleep_and_return, 0.05, "x")
    assert fut.result(timeout=RESULT_TIMEOUT) == "x"
    after = time.time()
    info = fut.info
    assert isinstance(info, colocate.TaskInfo)
    assert info.node == socket.gethostname()
    expected_ranks = {1, 2} if kind == "server" else {1}
    assert info.rank in expected_ranks
    assert info.cores and set(info.cores) <= os.sched_getaffinity(0)
    assert before - 1 <= info.started <= info.finished <= after + 1
    assert info.finished - info.started >= 0.04
    assert info.attempts == 1
    assert fut.info.where().startswith(f"rank {info.rank} on {info.node}")


def test_info_is_none_until_done(ex, release):
    fut = ex.submit(wait_for_file, str(release))
    assert fut.info is None
    release.touch()
    assert fut.result(timeout=RESULT_TIMEOUT) is True
    assert fut.info is not None


def test_both_workers_serve(ex, tmp_path):
    # Two tasks that only finish when both run at once: the world uses both its workers.
    flags = [tmp_path / f"w{i}" for i in range(2)]

    def meet(mine, other):
        Path(mine).touch()
        return wait_for_file(other, 20.0), os.getpid()
    a = ex.submit(meet, str(flags[0]), str(flags[1]))
    b = ex.submit(meet, str(flags[1]), str(flags[0]))
    (met_a, pid_a), (met_b, pid_b) = a.result(timeout=RESULT_TIMEOUT), b.result(RESULT_TIMEOUT)
    assert met_a and met_b and pid_a != pid_b
    assert {a.info.rank, b.info.rank} == {1, 2}
    assert ex.max_workers == 2
