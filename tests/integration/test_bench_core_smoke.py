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


# At the defaults a world refuses to start while other work keeps every core busy (spare cores
# auto), and the guard pauses its executor while others use the spare core, as on a shared
# 2-core machine: the smoke test, which checks the plumbing, uses any core and no guard.
ANY_CORE = ("--set", "COLOCATE_CO_LOCATION_SPARE_CORES=all",
            "--set", "COLOCATE_GUARD_ENABLED=false")


def test_quick_run_writes_rows(run_bench):
    stdout, data = run_bench("core", "--quick", *ANY_CORE)
    assert "PASS" in stdout or "MISS" in stdout, stdout

    assert {"cpu_model", "cores", "kernel", "python", "mpi4py", "mpich",
            "colocate_git"} <= set(data["machine"])
    assert data["verdict"]["result"] in ("PASS", "MISS")
    rows = {r["system"]: r for r in data["rows"]}
    assert {"raw", "pyfloor_block", "pyfloor_poll", "colocate", "colocate_serve",
            "colocate_tuned", "colocate_inline", "peer"} <= set(rows), (sorted(rows),
                                                                       data["skipped"])
    assert data["judged"] == "colocate" and not data["skipped"], data["skipped"]
    assert {"roundtrip", "roundtrip_pyfloor", "roundtrip_peer", "throughput", "idle_cpu",
            "wakeup"} == set(data["verdict"]["checks"]), data["verdict"]
    for name in ("pyfloor_block", "pyfloor_poll"):
        assert all(_positive(rows[name]["roundtrip_us"][p]) for p in ("p50", "p99")), rows[name]
        assert len(rows[name]["cores"]) == 2, rows[name]

    raw = rows["raw"]
    for key in ("roundtrip_us", "numpy_roundtrip_us"):
        assert all(_positive(raw[key][p]) for p in ("p50", "p99")), raw
    assert _cpu(raw["idle_cpu_max_rank_pct"]), raw

    for name in ("colocate", "colocate_serve", "colocate_tuned", "colocate_inline", "peer"):
        row = rows[name]
        for key in ("roundtrip_us", "wakeup_us"):
            assert all(_positive(row[key][p]) for p in ("p50", "p99", "max")), (name, row[key])
        assert {"submit", "map_1"} <= set(row["throughput"]), (name, row["throughput"])
        assert all(_positive(v) for v in row["throughput"].values()), (name, row["throughput"])
        ranks = {r: v for r, v in row["idle_cpu_pct"].items() if r.startswith("rank")}
        assert {"rank 0", "rank 1"} <= set(ranks), (name, row["idle_cpu_pct"])
        assert all(_cpu(v) for v in row["idle_cpu_pct"].values()), (name, row["idle_cpu_pct"])
        assert _positive(row["cpu_per_roundtrip_us"].get("rank 1")), (name, row)
        assert _cpu(row["cpu_during_submit_pct"].get("rank 0")), (name, row)
    for name in ("colocate", "colocate_serve", "colocate_tuned"):
        for key in ("idle_cpu_pct", "cpu_per_roundtrip_us", "cpu_during_submit_pct"):
            assert any(r.startswith("child of rank") for r in rows[name][key]), (name, key)
    assert rows["colocate"]["settings"] == {"COLOCATE_LOG": "warning",
                                            "COLOCATE_CO_LOCATION_SPARE_CORES": "all",
                                            "COLOCATE_GUARD_ENABLED": "false"}
    assert rows["peer"]["serializer"]["workers"].startswith("cloudpickle"), rows["peer"]
    assert all(_positive(v) for v in data["ratios"].values()), data["ratios"]


def test_rounds_report_medians(run_bench):
    stdout, data = run_bench("core", "--quick", "--no-inline", "--no-tuned", *ANY_CORE,
                             "--rounds", "2",
                             "--roundtrips", "50", "--tasks", "500", "--wakeups", "1",
                             "--idle", "0.5")
    assert "the median of 2 rounds" in stdout, stdout
    assert not data["skipped"], data["skipped"]
    assert data["rounds"] == 2 and len(data["round_rows"]) == 2
    rows = {r["system"]: r for r in data["rows"]}
    each = [{r["system"]: r for r in rr} for rr in data["round_rows"]]
    for name in ("raw", "colocate", "peer"):
        p50s = [rr[name]["roundtrip_us"]["p50"] for rr in each]
        assert rows[name]["roundtrip_us"]["p50"] == pytest.approx(sum(p50s) / 2), name
