"""Smoke tests of ``bench/soak.py`` and ``bench/memory.py``: they run, check, clean up, and write
their JSON. No speed assertions: the numbers depend on the machine and on whoever else uses it.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(300)


def test_a_small_soak_passes_every_check(run_bench):
    _, data = run_bench("soak", "--tasks", "1500")
    failed = [c for c in data["checks"] if not c["pass"]]
    assert data["ok"] and not failed, failed
    counts = data["counts"]
    assert counts["submitted"] == 1500 == counts["succeeded"] + sum(counts["failed"].values())


def test_memory_bench_measures_a_bounded_rank_0(run_bench):
    _, data = run_bench("memory", "--quick")
    (row,) = data["per_task"]
    assert row["queued"] == 2000 and row["rank0_rss_queued_mib"] > 0, row
    bound = data["bound"]
    assert bound["tasks"] == 5000, bound
    # Backpressure: rank 0 never holds more than one client's max_inflight.
    assert bound["peak_queued"] <= bound["max_inflight"], bound
