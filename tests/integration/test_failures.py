"""The failure matrix, after CPython's ``test_concurrent_futures`` deadlock tests.

Arguments and results are pickled, then unpickled, each time in some process: an object that
raises, exits or crashes at either step must fail its own future in time with an exception
that says which step and which side, never hang it, and never take the world down. The same
holds for functions that raise, exit, crash, are killed or run past their timeout. After every
failure the world must serve the next tasks on both of its workers.

Client-side exits and crashes kill the client process itself, so those cases run a client in a
subprocess and check that the world survives it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pytest

from colocate import (
    Executor,
    RemoteError,
    SerializationError,
    TaskTimeout,
    WorkerCrashed,
)
from colocate.testing import crash_at, mark_and_wait, wait_for_file

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(90)

BOUND = 30.0        # seconds any failure may take to reach its future
QUICK = 15.0        # what we assert it took at most (generous for 2 loaded cores)


# ----- misbehaving code (runs in whichever process calls or unpickles it) -------------------------
def raise_error(text):
    raise ValueError(text)


def hard_exit(code):
    os._exit(code)


def soft_exit(code):
    sys.exit(code)


def segfault():
    ctypes.string_at(0)


def signal_self(signum):
    os.kill(os.getpid(), signum)


class ErrorAtPickle:
    def __reduce__(self):
        raise ValueError("ErrorAtPickle refuses to be pickled")


class SoftExitAtPickle:
    def __reduce__(self):
        sys.exit(6)


class ExitAtPickle:
    def __reduce__(self):
        os._exit(7)


class CrashAtPickle:
    def __reduce__(self):
        segfault()


class ErrorAtUnpickle:
    def __reduce__(self):
        return raise_error, ("ErrorAtUnpickle refuses to be unpickled",)


class SoftExitAtUnpickle:
    def __reduce__(self):
        return soft_exit, (5,)


class ExitAtUnpickle:
    def __reduce__(self):
        return hard_exit, (5,)


class CrashAtUnpickle:
    def __reduce__(self):
        return segfault, ()


def identity(x):
    return x


def return_instance(cls):
    return cls()


def square(x):
    return x * x


def meet(mine, other):
    """Finish only when the other task of the pair runs at the same time."""
    Path(mine).touch()
    time.sleep(0.01)   # keeps the function "long": never sent ahead, one per worker
    return wait_for_file(other, 20.0)


def attempt(log, fail_first_with=None):
    """Log an attempt; fail on the first one as asked, succeed after."""
    with open(log, "a") as f:
        f.write("x")
    if os.path.getsize(log) == 1:
        if fail_first_with == "exit":
            os._exit(1)
        if fail_first_with == "sleep":
            time.sleep(60)
        if fail_first_with is not None:
            raise fail_first_with("first attempt fails")
    return "ok"


class FlakyError(Exception):
    pass


class LockedError(Exception):
    def __init__(self, text):
        super().__init__(text)
        self.lock = threading.Lock()   # cannot be pickled


def raise_locked():
    raise LockedError("holds a lock")


# ----- fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def ex(server, tmp_path):
    """An executor on the shared world; at teardown, both workers must serve a fresh client."""
    executor = Executor(address=server)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)
    assert_world_serves(server, tmp_path / "after")


def assert_world_serves(address: str, directory: Path) -> None:
    """Both workers of the shared world run tasks (two that must run at once), in time."""
    directory.mkdir(exist_ok=True)
    flags = [str(directory / "a"), str(directory / "b")]
    with Executor(address=address) as ex:
        a = ex.submit(meet, flags[0], flags[1])
        b = ex.submit(meet, flags[1], flags[0])
        assert a.result(timeout=BOUND) and b.result(timeout=BOUND), "a worker does not serve"
        assert {a.info.rank, b.info.rank} == {1, 2}
        assert ex.submit(square, 12).result(timeout=BOUND) == 144


def fails_with(fut, kind, bound=BOUND):
    """The future's exception (which must be a ``kind``), and the seconds it took to arrive."""
    start = time.monotonic()
    exc = fut.exception(timeout=bound)
    took = time.monotonic() - start
    assert isinstance(exc, kind), f"expected {kind.__name__}, got {exc!r}"
    assert took < QUICK, f"the failure took {took:.1f} s to arrive"
    return exc


def assert_next_task_works(ex):
    assert ex.submit(square, 7).result(timeout=BOUND) == 49


# ----- arguments ---------------------------------------------------------------------------------
def test_error_pickling_arguments_fails_the_future_at_once(ex):
    fut = ex.submit(identity, ErrorAtPickle())
    assert fut.done(), "the future must fail in submit(), before anything is sent"
    err = fut.exception(timeout=0)
    assert isinstance(err, SerializationError)
    assert (err.stage, err.side) == ("arguments", "client")
    assert "ErrorAtPickle refuses" in str(err)
    assert_next_task_works(ex)


def test_error_pickling_the_function_fails_the_future_at_once(ex):
    lock = threading.Lock()
    fut = ex.submit(lambda: lock.locked())
    assert fut.done()
    err = fut.exception(timeout=0)
    assert isinstance(err, SerializationError)
    assert (err.stage, err.side) == ("function", "client")
    assert_next_task_works(ex)


@pytest.mark.parametrize("cls, text", [
    (ErrorAtUnpickle, "ErrorAtUnpickle refuses"),
    (SoftExitAtUnpickle, "SystemExit"),
])
def test_error_unpickling_arguments_in_the_executor(ex, cls, text):
    err = fails_with(ex.submit(identity, cls()), SerializationError)
    assert (err.stage, err.side) == ("arguments", "worker")
    assert text in str(err)
    assert "rank" in str(err.__cause__)
    assert_next_task_works(ex)


@pytest.mark.parametrize("cls, code", [(ExitAtUnpickle, 5), (CrashAtUnpickle, -11)])
def test_exit_or_crash_unpickling_arguments_in_the_executor(ex, cls, code):
    err = fails_with(ex.submit(identity, cls()), WorkerCrashed)
    assert err.exitcode == code
    assert_next_task_works(ex)


# ----- results -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, text", [
    (ErrorAtPickle, "ErrorAtPickle refuses"),
    (SoftExitAtPickle, "SystemExit"),
])
def test_error_pickling_the_result_in_the_executor(ex, cls, text):
    err = fails_with(ex.submit(return_instance, cls), SerializationError)
    assert (err.stage, err.side) == ("result", "worker")
    assert text in str(err)
    assert_next_task_works(ex)


@pytest.mark.parametrize("cls, code", [(ExitAtPickle, 7), (CrashAtPickle, -11)])
def test_exit_or_crash_pickling_the_result_in_the_executor(ex, cls, code):
    err = fails_with(ex.submit(return_instance, cls), WorkerCrashed)
    assert err.exitcode == code
    assert_next_task_works(ex)


def test_error_unpickling_the_result_in_the_client(ex):
    err = fails_with(ex.submit(return_instance, ErrorAtUnpickle), SerializationError)
    assert (err.stage, err.side) == ("result", "client")
    assert "ErrorAtUnpickle refuses" in str(err)
    assert_next_task_works(ex)


def test_exit_unpickling_the_result_in_the_client_fails_only_its_future(ex):
    # SystemExit is a BaseException: it must fail this future, not the connection (CPython's
    # pool breaks instead; here the other futures and the executor go on).
    other = ex.submit(square, 6)
    err = fails_with(ex.submit(return_instance, SoftExitAtUnpickle), SerializationError)
    assert (err.stage, err.side) == ("result", "client")
    assert "SystemExit" in str(err)
    assert other.result(timeout=BOUND) == 36
    assert_next_task_works(ex)


# ----- the function ------------------------------------------------------------------------------
def test_function_raises(ex):
    err = fails_with(ex.submit(raise_error, "plain"), ValueError)
    assert str(err) == "plain"
    assert "raise_error" in str(err.__cause__)
    assert_next_task_works(ex)


def test_function_raises_an_unpicklable_exception(ex):
    err = fails_with(ex.submit(raise_locked), RemoteError)
    assert "LockedError" in str(err) and "holds a lock" in str(err)
    assert "raise_locked" in str(err.__cause__)
    assert_next_task_works(ex)


def test_function_calls_sys_exit(ex):
    # As in CPython: SystemExit raised by the function is the function's exception.
    err = fails_with(ex.submit(soft_exit, 4), SystemExit)
    assert err.code == 4
    assert_next_task_works(ex)


def test_function_calls_os_exit(ex):
    fut = ex.submit(hard_exit, 3)
    err = fails_with(fut, WorkerCrashed)
    assert err.exitcode == 3
    assert "exit code 3" in str(err) and "hard_exit" in str(err)
    assert fut.info.rank in (1, 2) and err.worker == fut.info.where()
    assert_next_task_works(ex)


@pytest.mark.parametrize("how", ["ctypes", "kill"])
def test_function_segfaults(ex, how):
    fut = ex.submit(segfault) if how == "ctypes" else ex.submit(signal_self, signal.SIGSEGV)
    err = fails_with(fut, WorkerCrashed)
    assert err.exitcode == -11
    assert "SIGSEGV" in str(err)
    assert_next_task_works(ex)


def test_function_is_sigkilled(ex):
    err = fails_with(ex.submit(signal_self, signal.SIGKILL), WorkerCrashed)
    assert err.exitcode == -9
    assert "SIGKILL" in str(err)
    assert_next_task_works(ex)


def test_function_runs_past_its_timeout(ex):
    fut = ex.options(timeout=1).submit(time.sleep, 60)
    err = fails_with(fut, TaskTimeout)
    assert isinstance(err, TimeoutError)
    assert "timeout" in str(err) and err.attempts == 1
    assert ex.options(timeout=20).submit(square, 5).result(timeout=BOUND) == 25
    assert_next_task_works(ex)


def test_crash_among_tasks_sent_ahead_costs_only_that_task(ex, tmp_path, wait_until):
    # A quick function is sent ahead to busy workers; when the executor crashes on one of
    # them, only that task may fail: the others sent along are requeued and succeed.
    assert [f.result(timeout=BOUND) for f in [ex.submit(crash_at, i, -1) for i in range(50)]]
    for round_ in range(3):
        release = tmp_path / f"release{round_}"
        flags = [tmp_path / f"started{round_}-{w}" for w in range(2)]
        blockers = [ex.submit(mark_and_wait, str(flag), str(release)) for flag in flags]
        wait_until(lambda flags=flags: all(f.exists() for f in flags), BOUND,
                   "both workers to be busy")
        futs = [ex.submit(crash_at, i, 20) for i in range(40)]
        release.touch()
        assert all(b.result(timeout=BOUND) for b in blockers)
        failed = [i for i, fut in enumerate(futs) if fut.exception(timeout=BOUND) is not None]
        assert failed == [20], f"tasks that failed with the crash of task 20: {failed}"
        assert [futs[i].result() for i in range(40) if i != 20] == [
            i for i in range(40) if i != 20]
    assert_next_task_works(ex)


# ----- retries -----------------------------------------------------------------------------------
def test_crash_is_retried(ex, tmp_path):
    log = tmp_path / "attempts"
    fut = ex.options(retries=2).submit(attempt, str(log), "exit")
    assert fut.result(timeout=BOUND) == "ok"
    assert fut.info.attempts == 2
    assert log.read_text() == "xx"


def test_crash_without_retries_is_final(ex, tmp_path):
    log = tmp_path / "attempts"
    err = fails_with(ex.submit(attempt, str(log), "exit"), WorkerCrashed)
    assert err.attempts == 1 and log.read_text() == "x"


def test_timeout_is_retried(ex, tmp_path):
    log = tmp_path / "attempts"
    fut = ex.options(timeout=1, retries=1).submit(attempt, str(log), "sleep")
    assert fut.result(timeout=BOUND) == "ok"
    assert fut.info.attempts == 2


def test_crashes_past_the_retries_fail(ex, tmp_path):
    fut = ex.options(retries=2).submit(hard_exit, 2)
    err = fails_with(fut, WorkerCrashed)
    assert err.attempts == 3 and fut.info.attempts == 3
    assert "after 3 attempts" in str(err)


def test_exception_is_not_retried(ex, tmp_path):
    log = tmp_path / "attempts"
    fut = ex.options(retries=2).submit(attempt, str(log), FlakyError)
    fails_with(fut, FlakyError)
    assert fut.info.attempts == 1 and log.read_text() == "x"


@pytest.mark.parametrize("retry_on", [
    [FlakyError], ["test_failures.FlakyError"], [ValueError, FlakyError],
])
def test_exception_listed_in_retry_on_is_retried(ex, tmp_path, retry_on):
    log = tmp_path / "attempts"
    fut = ex.options(retries=2, retry_on=retry_on).submit(attempt, str(log), FlakyError)
    assert fut.result(timeout=BOUND) == "ok"
    assert fut.info.attempts == 2 and log.read_text() == "xx"


def test_retry_on_other_exception_is_not_retried(ex, tmp_path):
    log = tmp_path / "attempts"
    fut = ex.options(retries=2, retry_on=[KeyError]).submit(attempt, str(log), FlakyError)
    fails_with(fut, FlakyError)
    assert log.read_text() == "x"


# ----- client processes that die -----------------------------------------------------------------
CLIENT = """
import ctypes, os, sys
from colocate import Executor

class ExitAtPickle:
    def __reduce__(self):
        os._exit(7)

class CrashAtPickle:
    def __reduce__(self):
        ctypes.string_at(0)

class ExitAtUnpickle:
    def __reduce__(self):
        return os._exit, (8,)

class CrashAtUnpickle:
    def __reduce__(self):
        return ctypes.string_at, (0,)

address, case = sys.argv[1], sys.argv[2]
ex = Executor(address=address)
assert ex.submit(abs, -1).result(timeout=30) == 1
print("connected", flush=True)
if case.endswith("AtPickle"):
    ex.submit(abs, globals()[case]())
else:
    ex.submit(globals()[case]).result(timeout=30)
print("survived", flush=True)
"""


@pytest.mark.parametrize("case, code", [
    ("ExitAtPickle", 7),          # arguments, pickled in the client
    ("CrashAtPickle", -11),
    ("ExitAtUnpickle", 8),        # result, unpickled in the client
    ("CrashAtUnpickle", -11),
])
def test_client_that_dies_does_not_harm_the_world(server, tmp_path, subprocess_env, case, code):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    proc = subprocess.run([sys.executable, str(script), server, case], env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert "connected" in proc.stdout, proc.stderr
    assert "survived" not in proc.stdout
    assert proc.returncode == code, proc.stderr
    assert_world_serves(server, tmp_path / "after")
