"""``python -m colocate.launch pin``, for real: it binds to the CPUs asked for, then execs.

The launchers' pure command builders are unit-tested in tests/unit/launch/test_launch.py.
"""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)

AFFINITY = "import os; print(sorted(os.sched_getaffinity(0)))"


def _pin(args, env=None):
    out = subprocess.run([sys.executable, "-m", "colocate.launch", "pin", *args],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, **(env or {})})
    return out.returncode, out.stdout.strip(), out.stderr


def test_pin_binds_then_execs():
    cpu = max(os.sched_getaffinity(0))
    assert _pin(["--cores", str(cpu), "--", sys.executable, "-c", AFFINITY]) == (
        0, f"[{cpu}]", "")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_pin_per_task_uses_the_local_id():
    a, b = sorted(os.sched_getaffinity(0))[:2]
    rc, out, _ = _pin(["--cores", f"{a},{b}", "--per-task", "2", "--", sys.executable, "-c",
                       AFFINITY], {"SLURM_LOCALID": "1"})
    assert (rc, out) == (0, f"[{b}]")


def test_pin_explains_failures():
    rc, _, err = _pin(["--cores", "1000", "--", "true"])
    assert rc == 1 and "cannot bind to CPUs 1000" in err and "this process may use" in err
    rc, _, err = _pin(["--cores", "0", "--", "/nonexistent/prog"])
    assert rc == 127 and "cannot run '/nonexistent/prog'" in err
