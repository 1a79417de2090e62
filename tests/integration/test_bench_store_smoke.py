"""Smoke test of ``bench/store.py --quick``: it runs, cleans up, and writes its JSON rows.

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

BENCH = Path(__file__).resolve().parents[2] / "bench" / "store.py"


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_quick_run_writes_rows(tmp_path, subprocess_env, assert_no_leftovers):
    out = tmp_path / "store.json"
    tag = f"bench-{uuid.uuid4().hex[:12]}"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                          env=subprocess_env(tag), capture_output=True, text=True, timeout=220,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert_no_leftovers(tag)
    assert "PASS" in proc.stdout or "MISS" in proc.stdout, proc.stdout
    assert "| size | raw MPI |" in proc.stdout

    data = json.loads(out.read_text())
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
    feed = data["by_reference"]
    assert feed["tasks"] >= 2 and _number(feed["by_value_s"]) and _number(feed["by_reference_s"])
