"""What the launcher tests give their batch jobs: a real host program, and batch files to run.

Shared by the single-node Slurm tests (tests/integration/test_slurm.py) and the virtual
cluster's (tests/cluster/test_launchers_cross_node.py); importable as ``launching`` because the
tests folder is on ``sys.path`` (as for ``fakes``).
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def host_program(seconds: int, node: bool = False) -> list[str]:
    """A real host program (stress-ng, else a Python busy loop) that first prints the CPUs it
    may use (``grep Cpus_allowed_list``), after ``HOST <hostname>`` when ``node``."""
    if shutil.which("stress-ng"):
        work = f"exec stress-ng --cpu 1 --timeout {seconds} --metrics-brief"
    else:
        work = (f"exec {shlex.quote(sys.executable)} -c 'import time; t = time.time() + "
                f"{seconds}\nwhile time.time() < t: pass'")
    where = "echo HOST $(hostname) $(grep Cpus_allowed_list /proc/self/status)" if node else (
        "grep Cpus_allowed_list /proc/self/status")
    return ["sh", "-c", f"{where}; {work}"]


def data_copy(tmp_path: Path, name: str) -> Path:
    """A test batch and its function file copied into ``tmp_path``: its ``output: runs/..``
    (relative to the batch file) then lands in the test's directory, not in tests/data."""
    for f in (name, "where_fn.py"):
        shutil.copy(DATA / f, tmp_path / f)
    return tmp_path / name
