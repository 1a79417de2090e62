"""Smoke test of ``bench/core.py --quick``: it runs, cleans up, and writes its JSON rows.

No speed assertions: the numbers depend on the machine and on whoever else uses it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

BENCH = Path(__file__).resolve().parents[2] / "bench" / "core.py"


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _cpu(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def test_quick_run_writes_rows(tmp_path, subprocess_env, assert_no_leftovers):
    out = tmp_path / "core.json"
    tag = f"bench-{uuid.uuid4().hex[:12]}"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                          env=subprocess_env(tag), capture_output=True, text=True, timeout=220,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert_no_leftovers(tag)
    assert "PASS" in proc.stdout or "MISS" in proc.stdout, proc.stdout

    data = json.loads(out.read_text())
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
