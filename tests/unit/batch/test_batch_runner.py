"""The batch runner over a fake executor: recording, failures, bounds, drain, progress output."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import BrokenExecutor
from dataclasses import replace

import numpy as np
import pytest
from fakes import FakeExecutor

from colocate.batch import Progress, RunDir, iter_records, parse_batch, run_batch
from colocate.batch.journal import RESULTS
from colocate.errors import TaskInterrupted


def make_spec(fn, n: int = 10, extra: str = ""):
    """A batch of ``n`` calls fn(obj=i) (the YAML names json:dumps; we swap in ``fn``)."""
    text = (f"name: r\nfunction: json:dumps\n{extra}"
            f"tasks:\n  product: {{obj: {list(range(n))}}}\n")
    spec = parse_batch(text, source="r.yaml", check_output=False)
    return replace(spec, functions={"json:dumps": fn})


def records(rd: RunDir) -> list[dict]:
    return list(iter_records(rd.path / RESULTS))


def run(tmp_path, spec, ex=None, **kw):
    ex = ex or FakeExecutor(max_workers=2)
    with ex, RunDir.create(tmp_path / "run", spec) as rd:
        summary = run_batch(ex, spec, rd, progress=False, **kw)
        return summary, records(rd), rd


def test_all_results_recorded_with_worker_info(tmp_path):
    spec = make_spec(lambda obj: obj * obj if obj % 2 else np.full(3, obj), n=6)
    summary, recs, rd = run(tmp_path, spec)
    assert summary.succeeded == 6 and summary.exit_code == 0 and summary.complete
    assert sorted(r["task_id"] for r in recs) == sorted(t.task_id for t in spec.tasks)
    by_arg = {r["kwargs"]["obj"]: r for r in recs}
    assert by_arg[3]["result"] == 9
    np.testing.assert_array_equal(rd.load_result(by_arg[4]), np.full(3, 4))
    assert all(r["worker"]["node"] == "fake-node" and r["attempts"] == 1 for r in recs)
    assert all(r["finished"] >= r["started"] for r in recs)
    assert summary.core_seconds >= 0


def test_failures_are_recorded_with_their_error(tmp_path):
    def fn(obj):
        if obj == 2:
            raise ValueError(f"cannot handle {obj}")
        return obj

    summary, recs, _ = run(tmp_path, make_spec(fn, n=4))
    assert (summary.succeeded, summary.failed, summary.exit_code) == (3, 1, 1)
    (bad,) = [r for r in recs if r["status"] == "failed"]
    assert bad["kwargs"] == {"obj": 2} and bad["error"]["type"] == "ValueError"
    assert bad["error"]["message"] == "cannot handle 2"
    assert "raise ValueError" in bad["error"]["traceback"]


def test_retried_tasks_and_options_reach_the_executor(tmp_path):
    seen: set[int] = set()
    lock = threading.Lock()

    def flaky(obj):
        with lock:
            first = obj not in seen
            seen.add(obj)
        if first and obj == 1:
            raise OSError("transient")
        return obj

    ex = FakeExecutor(max_workers=2)
    spec = make_spec(flaky, n=3,
                     extra="defaults: {retries: 2, retry_on: [OSError], timeout: 5, cores: 1}\n")
    summary, recs, _ = run(tmp_path, spec, ex)
    assert summary.succeeded == 3 and summary.retried == 1
    assert [r["attempts"] for r in recs if r["kwargs"]["obj"] == 1] == [2]
    assert ex.options_seen == [{"cores": 1, "timeout": 5.0, "retries": 2,
                                "retry_on": (OSError,)}]


def test_in_flight_is_bounded(tmp_path):
    spec = make_spec(lambda obj: time.sleep(0.001) or obj, n=120)
    ex = FakeExecutor(max_workers=2)
    summary, _, _ = run(tmp_path, spec, ex, max_in_flight=5)
    assert summary.succeeded == 120 and ex.submitted == 120
    assert ex.max_outstanding <= 5


def test_default_bound_is_four_per_worker(tmp_path):
    ex = FakeExecutor(max_workers=3)
    summary, _, _ = run(tmp_path, make_spec(lambda obj: time.sleep(0.001) or obj, n=100), ex)
    assert summary.succeeded == 100 and ex.max_outstanding <= 12


def test_drain_stops_submitting_and_resume_finishes(tmp_path):
    drain = threading.Event()

    def fn(obj):
        if obj == 4:
            drain.set()
        time.sleep(0.01)
        return obj

    spec = make_spec(fn, n=40)
    ex = FakeExecutor(max_workers=2)
    with ex, RunDir.create(tmp_path / "run", spec) as rd:
        summary = run_batch(ex, spec, rd, progress=False, drain_event=drain, max_in_flight=6)
        first = records(rd)
    assert ex.submitted < 40, "kept submitting after the drain"
    assert summary.not_run > 0 and summary.failed == 0 and summary.exit_code == 3
    assert all(r["status"] == "ok" for r in first)
    assert summary.succeeded == len(first) >= 5   # tasks 0-4 and the ones running with 4
    with FakeExecutor(max_workers=2) as ex2, RunDir.open_for_resume(tmp_path / "run", spec) as rd:
        summary2 = run_batch(ex2, spec, rd, progress=False)
        final = records(rd)
    assert ex2.submitted == 40 - len(first)
    assert summary2.succeeded == 40 and summary2.exit_code == 0 and summary2.sessions == 2
    ids = [r["task_id"] for r in final]
    assert len(ids) == len(set(ids)) == 40
    assert {r["kwargs"]["obj"]: r["result"] for r in final} == {i: i for i in range(40)}


def test_drain_timeout_bounds_the_wait_for_running_tasks(tmp_path):
    drain = threading.Event()
    release = threading.Event()

    def fn(obj):
        if obj == 0:
            drain.set()
            release.wait(10)
        return obj

    spec = make_spec(fn, n=4)
    ex = FakeExecutor(max_workers=2)
    with RunDir.create(tmp_path / "run", spec) as rd:
        t0 = time.monotonic()
        summary = run_batch(ex, spec, rd, progress=False, drain_event=drain, drain_timeout=0.3)
        elapsed = time.monotonic() - t0
        release.set()
        ex.shutdown()
    assert elapsed < 5 and summary.exit_code == 3
    cut = [r for r in records(rd) if r["kwargs"]["obj"] == 0]
    assert [r["status"] for r in cut] == ["interrupted"], "the task still running is cut off"
    assert summary.interrupted == 1


def test_interrupted_and_broken_executor(tmp_path):
    class Breaking(FakeExecutor):
        def _submit(self, fn, args, kwargs, opts):
            if kwargs["obj"] == 5:
                raise BrokenExecutor("world is gone")
            return super()._submit(fn, args, kwargs, opts)

    def fn(obj):
        if obj == 1:
            raise TaskInterrupted("drained by the server")
        return obj

    summary, recs, _ = run(tmp_path, make_spec(fn, n=10), Breaking(max_workers=1),
                           max_in_flight=1)
    assert [r["status"] for r in recs] == ["ok", "interrupted", "ok", "ok", "ok"]
    assert summary.error == "BrokenExecutor: world is gone"
    assert summary.interrupted == 1 and summary.not_run == 5 and summary.exit_code == 3


def test_submit_error_fails_only_that_task(tmp_path):
    class Picky(FakeExecutor):
        def _submit(self, fn, args, kwargs, opts):
            if kwargs["obj"] == 2:
                raise TypeError("cannot pickle '_thread.lock' object")
            return super()._submit(fn, args, kwargs, opts)

    summary, recs, _ = run(tmp_path, make_spec(lambda obj: obj, n=4), Picky())
    assert summary.succeeded == 3 and summary.failed == 1
    (bad,) = [r for r in recs if r["status"] == "failed"]
    assert bad["error"]["type"] == "TypeError" and bad["worker"] is None


def test_rerun_failed_false_keeps_failures(tmp_path):
    calls = []

    def fn(obj):
        calls.append(obj)
        if obj == 0:
            raise ValueError("no")
        return obj

    spec = make_spec(fn, n=3)
    run(tmp_path, spec)
    calls.clear()
    with FakeExecutor() as ex, RunDir.open_for_resume(tmp_path / "run", spec) as rd:
        summary = run_batch(ex, spec, rd, progress=False, rerun_failed=False)
    assert calls == [] and summary.failed == 1


def test_log_progress_has_no_control_characters(tmp_path):
    clock = iter(range(0, 10_000, 3)).__next__
    out = io.StringIO()
    spec = make_spec(lambda obj: obj, n=8)
    progress = Progress(8, name="r", mode="log", stream=out, interval=5, clock=clock)
    with FakeExecutor() as ex, RunDir.create(tmp_path / "run", spec) as rd:
        run_batch(ex, spec, rd, progress=progress)
    text = out.getvalue()
    assert "8/8 done (8 ok, 0 failed)" in text
    assert "succeeded     8" in text and "core-seconds" in text
    assert not any(c in text for c in "\r\x1b\b")


def test_bar_mode_writes_a_bar(tmp_path):
    out = io.StringIO()
    spec = make_spec(lambda obj: obj, n=3)
    with FakeExecutor() as ex, RunDir.create(tmp_path / "run", spec) as rd:
        run_batch(ex, spec, rd, progress=Progress(3, name="r", mode="bar", stream=out))
    assert "3/3" in out.getvalue() and "ok=3 failed=0" in out.getvalue()


def test_progress_rejects_unknown_mode():
    with pytest.raises(ValueError, match="bar, log, off"):
        Progress(1, mode="fancy")
