"""Smoke test of ``bench/store.py --quick``: it runs, cleans up, and writes its JSON rows.

No speed assertions: the numbers depend on the machine and on whoever else uses it.
"""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.timeout(240)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_quick_run_writes_rows(run_bench):
    stdout, data = run_bench("store", "--quick", "--rounds", "2")
    assert "PASS" in stdout or "MISS" in stdout, stdout
    assert "| size | raw MPI |" in stdout

    assert {"cpu_model", "kernel", "cores"} <= set(data["machine"])
    assert data["verdict"]["result"] in ("PASS", "MISS")
    assert data["world_exit_code"] == 0 and data["leftover_processes"] == []
    sizes = [r["size"] for r in data["raw"]]
    assert sizes[0] == 1024 and sizes[-1] == 256 << 20
    for kind in ("shm", "tcp"):
        assert [r["size"] for r in data[kind]] == sizes
        for row in data[kind]:
            for key in ("put", "get", "get_out"):
                assert _number(row[key]) and row[key] > 0, (kind, row)
    for row in data["raw"]:
        assert _number(row["raw"]) and _number(row["raw_fresh"]), row
    assert len(data["rounds"]) == 2 and all(r["rounds"] == 2 for r in data["shm"])
    for i, row in enumerate(data["shm"]):   # the table shows each figure's median over rounds
        puts = sorted(rd[1][i]["put"] for rd in data["rounds"])
        assert row["put"] == pytest.approx(sum(puts) / 2)
        assert set(row["ratios"]) == {"put", "get", "get_out"}
    feed = data["by_reference"]
    assert feed["tasks"] >= 2 and _number(feed["by_value_s"]) and _number(feed["by_reference_s"])
