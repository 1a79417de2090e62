"""Smoke test of ``bench/interference.py --quick``: it runs, cleans up, and writes its JSON rows.

No speed assertions: the numbers depend on the machine and on whoever else uses it.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

BENCH = Path(__file__).resolve().parents[2] / "bench" / "interference.py"
TAG_VAR = "CLTEST_WORLD"   # the conftest's tag: every process the bench starts inherits it


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.skipif(shutil.which("stress-ng") is None,
                    reason="stress-ng is not installed (the host program; Debian: apt-get "
                    "install stress-ng, as .ci/run does)")
def test_quick_run_writes_rows(tmp_path, subprocess_env, assert_no_leftovers):
    out = tmp_path / "interference.json"
    tag = f"bench-{uuid.uuid4().hex[:12]}"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                          env=subprocess_env(tag), capture_output=True, text=True, timeout=220,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert_no_leftovers(tag)
    assert "PASS" in proc.stdout or "MISS" in proc.stdout, proc.stdout

    data = json.loads(out.read_text())
    assert {"cpu_model", "kernel", "cores", "stress_ng"} <= set(data["machine"])
    assert data["verdict"]["result"] in ("PASS", "MISS")
    rows = {r["config"]: r for r in data["rows"]}
    assert {"alone", "a", "b", "alone2", "c"} <= set(rows), sorted(rows)
    for row in rows.values():
        assert row["runs"] >= 1 and _number(row["rate"]["mean"]) and row["rate"]["mean"] > 0, row
        assert _number(row["background_cores"]["mean"]), row
    for name in ("a", "b", "c"):
        row = rows[name]
        assert _number(row["slowdown_pct"]) and _number(row["slowdown_se_pct"]), row
        for key in ("harvest_task", "harvest_cpu", "overhead_cores"):
            assert _number(row[key]["mean"]) and row[key]["mean"] >= 0, (name, key, row[key])
    assert (tmp_path / "interference.png").exists() or "no plot" in proc.stdout
