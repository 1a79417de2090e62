"""Smoke test of ``bench/interference.py --quick``: it runs, cleans up, and writes its JSON rows.

No speed assertions: the numbers depend on the machine and on whoever else uses it.
"""

from __future__ import annotations

import math
import shutil

import pytest

pytestmark = pytest.mark.timeout(240)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.skipif(shutil.which("stress-ng") is None,
                    reason="stress-ng is not installed (the host program; Debian: apt-get "
                    "install stress-ng, as .ci/run does)")
def test_quick_run_writes_rows(run_bench, tmp_path):
    stdout, data = run_bench("interference", "--quick")
    assert "PASS" in stdout or "MISS" in stdout, stdout

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
    assert (tmp_path / "interference.png").exists() or "no plot" in stdout
