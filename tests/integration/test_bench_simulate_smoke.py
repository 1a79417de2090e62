"""Smoke test of ``bench/simulate.py --quick``: both designs run on the real scheduler.

No speed assertions beyond sanity: the costs are measured on a shared machine.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(180)


def test_quick_run_writes_rows(run_bench):
    stdout, data = run_bench("simulate", "--quick", "--nodes", "4", "--tasks", "0.05",
                             timeout=150.0)
    assert "| design | nodes x cores |" in stdout, stdout
    assert [r["design"] for r in data["rows"]] == ["flat", "node"]
    for row in data["rows"]:
        assert row["workers"] == 4 * 64 and row["tasks_done"] > row["workers"], row
        assert 0.5 < row["utilization"] <= 1.0 + 1e-9, row   # a quiet world is mostly busy
        assert 0.0 < row["rank0_busy"] < 1.0, row
    assert set(data["wire_costs_us"]) == {"dispatch", "done", "submit", "results"}
