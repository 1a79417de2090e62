"""Smoke test of ``bench/scheduler.py --quick``: it runs the pure scheduler and writes its rows.

No speed assertions: the numbers depend on the machine and on whoever else uses it.
"""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.timeout(180)


def test_quick_run_writes_rows(run_bench):
    stdout, data = run_bench("scheduler", "--quick", timeout=150.0)
    assert "| workers | noop | cores | memory | gpu | locality | mix |" in stdout, stdout
    mixes = {"noop", "cores", "memory", "gpu", "locality", "mix"}
    rows = data["rows"]
    assert {(r["workers"], r["mix"]) for r in rows} == {(w, m) for w in (1, 64, 1024)
                                                        for m in mixes}
    for row in rows:
        assert row["tasks"] >= 2 * data["batch"], row   # every task of a batch was done
        assert math.isfinite(row["tasks_per_s"]) and row["tasks_per_s"] > 0, row
    assert [m["workers"] for m in data["memory"]] == [1, 64, 1024]
    for m in data["memory"]:
        assert 0 < m["bytes_per_worker"] < 1 << 20 and 0 < m["bytes_per_queued_task"] < 1 << 20
        assert m["worker_lost_us"] > 0 and m["pause_node_ranks"] == min(64, m["workers"])
        assert m["objects_stored"] >= 10_000 * 0.9 and m["objects_per_lost_rank"] >= 1, m
    assert {v["result"] for v in data["verdict"]} <= {"PASS", "MISS"} and data["verdict"]
