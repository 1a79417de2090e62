"""Smoke test of ``bench/core.py --quick``: it runs, cleans up, and writes its JSON rows.

No speed assertions: the numbers depend on the machine and on whoever else uses it.
"""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.timeout(240)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _cpu(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def test_quick_run_writes_rows(run_bench):
    stdout, data = run_bench("core", "--quick")
    assert "PASS" in stdout or "MISS" in stdout, stdout

    assert {"cpu_model", "cores", "kernel", "python", "mpi4py", "mpich",
            "colocate_git"} <= set(data["machine"])
    assert data["verdict"]["result"] in ("PASS", "MISS")
    rows = {r["system"]: r for r in data["rows"]}
    assert {"raw", "colocate", "colocate_inline", "peer"} <= set(rows), sorted(rows)

    raw = rows["raw"]
    for key in ("roundtrip_us", "numpy_roundtrip_us"):
        assert all(_positive(raw[key][p]) for p in ("p50", "p99")), raw
    assert _cpu(raw["idle_cpu_max_rank_pct"]), raw

    for name in ("colocate", "colocate_inline", "peer"):
        row = rows[name]
        for key in ("roundtrip_us", "wakeup_us"):
            assert all(_positive(row[key][p]) for p in ("p50", "p99", "max")), (name, row[key])
        assert {"submit", "map_1"} <= set(row["throughput"]), (name, row["throughput"])
        assert all(_positive(v) for v in row["throughput"].values()), (name, row["throughput"])
        ranks = {r: v for r, v in row["idle_cpu_pct"].items() if r.startswith("rank")}
        assert {"rank 0", "rank 1"} <= set(ranks), (name, row["idle_cpu_pct"])
        assert all(_cpu(v) for v in row["idle_cpu_pct"].values()), (name, row["idle_cpu_pct"])
    assert any(r.startswith("child of rank") for r in rows["colocate"]["idle_cpu_pct"])
    assert rows["peer"]["serializer"]["workers"].startswith("cloudpickle"), rows["peer"]
    assert all(_positive(v) for v in data["ratios"].values()), data["ratios"]


def test_rounds_report_medians(run_bench):
    stdout, data = run_bench("core", "--quick", "--no-inline", "--rounds", "2",
                             "--roundtrips", "50", "--tasks", "500", "--wakeups", "1",
                             "--idle", "0.5")
    assert "the median of 2 rounds" in stdout, stdout
    assert data["rounds"] == 2 and len(data["round_rows"]) == 2
    rows = {r["system"]: r for r in data["rows"]}
    each = [{r["system"]: r for r in rr} for rr in data["round_rows"]]
    for name in ("raw", "colocate", "peer"):
        p50s = [rr[name]["roundtrip_us"]["p50"] for rr in each]
        assert rows[name]["roundtrip_us"]["p50"] == pytest.approx(sum(p50s) / 2), name
