"""bench/idle_nodes.py --quick on the virtual cluster: it runs, writes its JSON, loses nothing.

No speed is asserted: coverage and start delays depend on the machine (see the README).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "idle_nodes.py"
FIELDS = {"idle_node_s", "covered_node_s", "coverage", "start_delay_p50_s", "start_delay_max_s",
          "grace_s", "tasks_submitted", "tasks_succeeded", "tasks_failed", "tasks_lost",
          "tasks_duplicated"}


def test_the_idle_nodes_bench_runs_quick_and_no_task_is_lost_or_run_twice(cluster, tmp_path):
    out = tmp_path / "idle_nodes.json"
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                          env=cluster.environ(), capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout + done.stderr
    got = json.loads(out.read_text())
    assert FIELDS <= set(got), sorted(FIELDS - set(got))
    assert got["idle_node_s"] > 0 and got["tasks_submitted"] > 0
    assert got["tasks_lost"] == 0 and got["tasks_duplicated"] == 0, got
    assert got["tasks_succeeded"] + got["tasks_failed"] == got["tasks_submitted"], got
