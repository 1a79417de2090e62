"""One row per task out of a run directory: latest record, lazy stored results, rendering."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fakes import FakeInfo

from colocate.batch import LazyArray, RunDir, load, parse_batch
from colocate.batch.journal import RESULTS
from colocate.batch.results import render
from colocate.errors import ConfigError

BATCH = "name: r\nfunction: json:dumps\ntasks:\n  product: {obj: [1, 2, 3, 4]}\n"


@pytest.fixture
def run(tmp_path):
    spec = parse_batch(BATCH, source="r.yaml", check_output=False)
    t = spec.tasks
    info = FakeInfo("n1", 2, [5], 10.0, 12.5, 1)
    with RunDir.create(tmp_path / "run", spec) as rd:
        rd.record(t[0], "failed", error=ValueError("first try"), info=info)
        rd.record(t[0], "ok", result=1.5, info=info)             # the latest record counts
        rd.record(t[1], "ok", result=np.zeros((4, 3), dtype=np.int16), info=info)
        rd.record(t[2], "ok", result={1, 2}, info=info)          # not JSON: pickled
    return tmp_path / "run", t


def test_rows_follow_the_batch_with_the_latest_record_of_each_task(run):
    path, tasks = run
    rows = load(path)
    assert [r["task"] for r in rows] == [t.task_id for t in tasks]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "not run"]
    assert [r["obj"] for r in rows] == [1, 2, 3, 4]   # an unrun task: from the batch copy
    assert rows[0]["result"] == 1.5 and rows[0]["error"] is None
    assert rows[0]["worker"] == "rank 2 on n1" and rows[0]["seconds"] == 2.5
    assert rows[2]["result"].load() == {1, 2}


def test_arrays_are_lazy_also_in_runs_written_before_shape_was_recorded(run):
    path, _ = run
    journal = path / RESULTS
    old = [json.loads(line) for line in journal.read_text().splitlines()]
    for record in old:
        record.pop("result_shape", None)
        record.pop("result_dtype", None)
    journal.write_text("".join(json.dumps(r) + "\n" for r in old))
    array = load(path)[1]["result"]
    assert isinstance(array, LazyArray) and not array._loaded
    assert (array.shape, array.dtype) == ((4, 3), "int16")    # from the .npy header
    assert np.asarray(array).sum() == 0 and array._loaded


def test_render_table_and_csv_cells(run):
    path, _ = run
    rows = load(path)
    table = render(rows, ["obj", "status", "result"]).splitlines()
    assert table[0].split() == ["obj", "status", "result"]
    assert table[2].split() == ["2", "ok", "int16", "(4,", "3)"]
    assert table[4].split() == ["4", "not", "run", "-"]
    assert render(rows, ["obj", "result"], "csv").splitlines()[1] == "1,1.5"


def test_a_run_dir_without_its_journal_says_so(run):
    path, _ = run
    (path / RESULTS).unlink()
    with pytest.raises(ConfigError, match="no results.jsonl.*Restore results.jsonl"):
        load(path)
