"""Smoke tests of ``bench/soak.py`` and ``bench/memory.py``: they run, check, clean up, and write
their JSON. No speed assertions: the numbers depend on the machine and on whoever else uses it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], env=env,
                          capture_output=True, text=True, timeout=280, stdin=subprocess.DEVNULL)


def test_a_small_soak_passes_every_check(tmp_path, subprocess_env, assert_no_leftovers):
    tag = f"soak-{uuid.uuid4().hex[:12]}"
    out = tmp_path / "soak.json"
    proc = _run("soak.py", ["--tasks", "1500", "--json", str(out)], subprocess_env(tag))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert_no_leftovers(tag)
    data = json.loads(out.read_text())
    failed = [c for c in data["checks"] if not c["pass"]]
    assert data["ok"] and not failed, failed
    counts = data["counts"]
    assert counts["submitted"] == 1500 == counts["succeeded"] + sum(counts["failed"].values())


def test_memory_bench_measures_a_bounded_rank_0(tmp_path, subprocess_env, assert_no_leftovers):
    tag = f"membench-{uuid.uuid4().hex[:12]}"
    out = tmp_path / "memory.json"
    proc = _run("memory.py", ["--quick", "--json", str(out)], subprocess_env(tag))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert_no_leftovers(tag)
    data = json.loads(out.read_text())
    (row,) = data["per_task"]
    assert row["queued"] == 2000 and row["rank0_rss_queued_mib"] > 0, row
    bound = data["bound"]
    assert bound["tasks"] == 5000, bound
    # Backpressure: rank 0 never holds more than one client's max_inflight (plus the watcher's).
    assert bound["peak_queued"] <= bound["max_inflight"], bound
