"""The run directory journal: records, result files, torn lines, resume selection, summary."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from fakes import FakeInfo

from colocate.batch import RunDir, iter_records, parse_batch
from colocate.batch.journal import INLINE_LIMIT, RESULTS
from colocate.errors import ConfigError, WorkerCrashed

BATCH = """
name: j
function: json:dumps
tasks:
  product: {obj: [1, 2, 3, 4, 5]}
"""


def spec_of(text: str = BATCH):
    return parse_batch(text, source="j.yaml", check_output=False)


def info(started: float = 100.0, finished: float = 102.0, cores=(0,), attempts: int = 1):
    return FakeInfo("node1", 1, list(cores), started, finished, attempts)


@pytest.fixture
def spec():
    return spec_of()


@pytest.fixture
def rd(tmp_path, spec):
    with RunDir.create(tmp_path / "run", spec) as run:
        yield run


def lines(rd: RunDir) -> list[dict]:
    return list(iter_records(rd.path / RESULTS))


def test_create_writes_copy_meta_and_task_list(rd, spec):
    assert (rd.path / "batch.yaml").read_text() == BATCH
    meta = json.loads((rd.path / "meta.json").read_text())
    assert meta["name"] == "j" and meta["task_count"] == 5 and len(meta["sessions"]) == 1
    assert (rd.path / "tasks.txt").read_text().split() == [t.task_id for t in spec.tasks]
    assert (rd.path / "results").is_dir() and (rd.path / RESULTS).read_bytes() == b""


def test_record_holds_call_status_result_and_worker(rd, spec):
    task = spec.tasks[0]
    rd.record(task, "ok", result={"x": (1, 2)}, info=info(cores=(3, 4)))
    (rec,) = lines(rd)
    assert rec["task_id"] == task.task_id and rec["block"] == "dumps"
    assert rec["function"] == "json:dumps" and rec["kwargs"] == {"obj": 1} and rec["args"] == []
    assert rec["status"] == "ok" and rec["result"] == {"x": [1, 2]}
    assert rec["worker"] == {"node": "node1", "rank": 1, "cores": [3, 4]}
    assert (rec["started"], rec["finished"], rec["attempts"]) == (100.0, 102.0, 1)
    assert rec["error"] is None and rec["result_file"] is None


def test_failure_record_has_type_message_traceback(rd, spec):
    try:
        raise ValueError("bad input 7")
    except ValueError as exc:
        rd.record(spec.tasks[0], "failed", error=exc, info=info())
    crash = WorkerCrashed("executor died", worker="rank 2 on n1, cores [3]", attempts=2,
                          exitcode=-9)
    rd.record(spec.tasks[1], "failed", error=crash)
    first, second = lines(rd)
    assert first["error"]["type"] == "ValueError" and first["error"]["module"] == "builtins"
    assert first["error"]["message"] == "bad input 7"
    assert "raise ValueError" in first["error"]["traceback"]
    assert second["error"]["type"] == "WorkerCrashed" and second["attempts"] == 2
    assert second["error"]["worker"] == "rank 2 on n1, cores [3]" and second["worker"] is None


def test_numpy_result_goes_to_npy_written_before_its_record(rd, spec, monkeypatch):
    arr = np.arange(12.0).reshape(3, 4)
    task = spec.tasks[0]
    npy = rd.path / "results" / f"{task.task_id}.npy"
    real = rd._journal
    seen = []

    class Spy:
        def write(self, data):
            seen.append(npy.exists())
            return real.write(data)

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(rd, "_journal", Spy())
    rec = rd.record(task, "ok", result=arr, info=info())
    assert seen == [True]
    assert rec["result_file"] == f"results/{task.task_id}.npy" and rec["result_kind"] == "npy"
    assert rec["result"] is None
    np.testing.assert_array_equal(rd.load_result(rec), arr)
    assert not list((rd.path / "results").glob(".*tmp"))


def test_other_results_pickle_scalars_json_large_json_file(rd, spec):
    recs = [rd.record(spec.tasks[0], "ok", result={1, 2}),
            rd.record(spec.tasks[1], "ok", result=np.float64(2.5)),
            rd.record(spec.tasks[2], "ok", result=list(range(INLINE_LIMIT))),
            rd.record(spec.tasks[3], "ok", result=np.array(["a", None], dtype=object))]
    assert recs[0]["result_kind"] == "pickle" and rd.load_result(recs[0]) == {1, 2}
    assert recs[1]["result"] == 2.5 and recs[1]["result_file"] is None
    assert recs[2]["result_file"].endswith(".json")
    assert rd.load_result(recs[2]) == list(range(INLINE_LIMIT))
    assert recs[3]["result_kind"] == "pickle" and list(rd.load_result(recs[3])) == ["a", None]


def test_unstorable_result_is_recorded_as_failed(rd, spec):
    import threading
    rec = rd.record(spec.tasks[0], "ok", result=threading.Lock())
    assert rec["status"] == "failed" and "could not be stored" in rec["error"]["message"]


def test_torn_last_line_is_ignored_then_cut_before_resume(tmp_path, spec, caplog):
    with RunDir.create(tmp_path / "run", spec) as rd:
        rd.record(spec.tasks[0], "ok", result=1, info=info())
        rd.record(spec.tasks[1], "ok", result=2, info=info())
    journal = tmp_path / "run" / RESULTS
    whole = journal.read_bytes()
    torn = json.dumps({"task_id": spec.tasks[2].task_id, "status": "ok"}).encode()[:25]
    journal.write_bytes(whole + torn)
    assert [r["result"] for r in iter_records(journal)] == [1, 2]
    with caplog.at_level(logging.WARNING, logger="colocate.batch"):
        rd = RunDir.open_for_resume(tmp_path / "run", spec)
    assert "torn" in caplog.text
    with rd:
        assert journal.read_bytes() == whole
        assert [t.task_id for t in rd.pending(spec.tasks)] == [t.task_id for t in spec.tasks[2:]]
        rd.record(spec.tasks[2], "ok", result=3, info=info())
    assert [r["result"] for r in iter_records(journal)] == [1, 2, 3]


def test_complete_garbage_line_is_skipped_not_fatal(tmp_path, spec, caplog):
    with RunDir.create(tmp_path / "run", spec) as rd:
        rd.record(spec.tasks[0], "ok", result=1)
    journal = tmp_path / "run" / RESULTS
    with open(journal, "ab") as f:
        f.write(b"not json\n")
    with caplog.at_level(logging.WARNING, logger="colocate.batch"):
        with RunDir.open_for_resume(tmp_path / "run", spec) as rd:
            rd.record(spec.tasks[1], "ok", result=2)
    assert "not a task record" in caplog.text
    assert [r["result"] for r in iter_records(journal)] == [1, 2]


def test_resume_reruns_failed_and_interrupted_never_ok(tmp_path, spec):
    t = spec.tasks
    with RunDir.create(tmp_path / "run", spec) as rd:
        rd.record(t[0], "ok", result=0)
        rd.record(t[1], "failed", error=ValueError("x"))
        rd.record(t[2], "interrupted", error=RuntimeError("drain"))
        rd.record(t[3], "failed", error=ValueError("x"))
        rd.record(t[3], "ok", result=3)   # a later success supersedes the failure
    with RunDir.open_for_resume(tmp_path / "run", spec) as rd:
        assert [x.task_id for x in rd.pending(t)] == [t[1].task_id, t[2].task_id, t[4].task_id]
        assert [x.task_id for x in rd.pending(t, rerun_failed=False)] == [t[2].task_id,
                                                                          t[4].task_id]
        with pytest.raises(ValueError, match="already recorded as ok"):
            rd.record(t[0], "ok", result=0)
        assert rd.status()[t[3].task_id] == "ok"


def test_duplicate_ok_lines_count_once(tmp_path, spec):
    with RunDir.create(tmp_path / "run", spec) as rd:
        rd.record(spec.tasks[0], "ok", result=0, info=info())
    journal = tmp_path / "run" / RESULTS
    journal.write_bytes(journal.read_bytes() * 2)   # e.g. a copy appended by hand
    summary = RunDir.read(tmp_path / "run").summary()
    assert summary.succeeded == 1 and summary.not_run == 4


def test_resume_with_different_tasks_is_refused(tmp_path, spec):
    RunDir.create(tmp_path / "run", spec).close()
    changed = spec_of(BATCH.replace("5]", "6]"))
    with pytest.raises(ConfigError, match="differ") as e:
        RunDir.open_for_resume(tmp_path / "run", changed)
    assert "1 not in the run" in str(e.value) and "another 'output'" in str(e.value)
    fewer = spec_of(BATCH.replace(", 5]", "]"))
    with pytest.raises(ConfigError, match="1 of the run's tasks missing"):
        RunDir.open_for_resume(tmp_path / "run", fewer)
    retimed = spec_of(BATCH + "defaults: {timeout: 5}\n")   # options may change
    with RunDir.open_for_resume(tmp_path / "run", retimed) as rd:
        assert len(rd.pending(retimed.tasks)) == 5
    assert (tmp_path / "run" / "batch.1.yaml").read_text() == retimed.text


def test_create_refuses_an_existing_run_and_resume_needs_one(tmp_path, spec):
    RunDir.create(tmp_path / "run", spec).close()
    with pytest.raises(ConfigError, match="already holds a run"):
        RunDir.create(tmp_path / "run", spec)
    with pytest.raises(ConfigError, match="not a colocate run directory"):
        RunDir.open_for_resume(tmp_path / "elsewhere", spec)


def test_one_writer_at_a_time(tmp_path, spec):
    with RunDir.create(tmp_path / "run", spec):
        with pytest.raises(ConfigError, match="in use by another colocate run"):
            RunDir.open_for_resume(tmp_path / "run", spec)
    RunDir.open_for_resume(tmp_path / "run", spec).close()


def test_summary_counts_and_core_seconds(tmp_path, spec):
    t = spec.tasks
    with RunDir.create(tmp_path / "run", spec) as rd:
        rd.record(t[0], "ok", result=0, info=info(10.0, 12.0, cores=(0,)))
        rd.record(t[1], "ok", result=1, info=info(10.0, 13.0, cores=(1, 2), attempts=2))
        rd.record(t[2], "failed", error=ValueError("x"), info=info(10.0, 11.0))
        rd.record(t[3], "interrupted", error=RuntimeError("drain"), info=info(10.0, 10.5))
        summary = rd.write_summary()
    assert (summary.total, summary.succeeded, summary.failed, summary.interrupted,
            summary.not_run, summary.retried) == (5, 2, 1, 1, 1, 1)
    assert summary.core_seconds == pytest.approx(2 + 3 * 2 + 1 + 0.5)
    assert summary.wall_time >= 0 and summary.sessions == 1
    assert not summary.complete and summary.exit_code == 1
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["succeeded"] == 2 and on_disk["exit_code"] == 1
    assert on_disk["core_seconds"] == pytest.approx(summary.core_seconds)


def test_exit_codes(tmp_path, spec):
    with RunDir.create(tmp_path / "run", spec) as rd:
        for task in spec.tasks[:4]:
            rd.record(task, "ok", result=0)
        assert rd.summary().exit_code == 3
        rd.record(spec.tasks[4], "ok", result=0)
        assert rd.summary().exit_code == 0 and rd.summary().complete


def test_read_only_open_cannot_write(tmp_path, spec):
    RunDir.create(tmp_path / "run", spec).close()
    rd = RunDir.read(tmp_path / "run")
    with pytest.raises(ValueError, match="not open for writing"):
        rd.record(spec.tasks[0], "ok", result=0)


def test_unknown_task_is_rejected(rd):
    other = spec_of(BATCH.replace("5]", "99]")).tasks[4]
    with pytest.raises(ValueError, match="not part of the run"):
        rd.record(other, "ok", result=0)
