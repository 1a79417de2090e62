"""The launcher supervisor (python -m colocate.launch with mpiexec ...), no batch system needed.

A stand-in `colocate` (tests/data/fake_colocate.py) keeps these independent of the runtime: they
check the supervisor's sequence, binding, signal handling and exit codes.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "data" / "fake_colocate.py"
SCRIPT = REPO / "launchers" / "mpiexec" / "colocate-with.sh"
HOST = "import os, sys, time; print('HOST', sorted(os.sched_getaffinity(0)), flush=True); " \
       "time.sleep(float(sys.argv[1])); sys.exit(int(sys.argv[2]))"

needs_2_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")


def start(tmp_path, host_seconds=1.0, host_rc=0, run_seconds=0.5, colocate=None, **env):
    (tmp_path / "b.yaml").write_text("name: b\n")
    environ = {**os.environ, "COLOCATE_HOST_NCORES": "1", "FAKE_RUN_SECONDS": str(run_seconds),
               "COLOCATE_COMMAND": colocate or f"{sys.executable} {FAKE}",
               "COLOCATE_PYTHON": sys.executable, **env}
    return subprocess.Popen(["bash", str(SCRIPT), "b.yaml", "--", sys.executable, "-c", HOST,
                             str(host_seconds), str(host_rc)], cwd=tmp_path, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=90):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def address(tmp_path):
    found = [p for p in tmp_path.glob("colocate-*.address") if p.suffix == ".address"]
    return found[0] if found else None


@needs_2_cpus
def test_host_and_batch_on_disjoint_cpus(tmp_path):
    # The host outlives the batch (0.5 s once the world is up), even on a loaded machine:
    # a host that ends first makes the supervisor drain the world with SIGTERM instead.
    rc, out = finish(start(tmp_path, host_seconds=6.0))
    first, spare = sorted(os.sched_getaffinity(0))[0], sorted(os.sched_getaffinity(0))[1:]
    assert rc == 0, out
    assert f"HOST [{first}]" in out
    run = json.loads(Path(f"{address(tmp_path)}.run.json").read_text())
    assert run["client_affinity"] == spare
    assert [r["affinity"] for r in run["world"]["ranks"]] == [spare] * run["world"]["size"]
    assert Path(f"{address(tmp_path)}.ended").read_text() == "stop"    # colocate stop was used
    assert "host exit 0, batch exit 0, colocate exit 0; exit 0" in out


@needs_2_cpus
def test_sigterm_drains_colocate_and_waits_for_the_host(tmp_path):
    proc = start(tmp_path, host_seconds=4, run_seconds=60)
    deadline = time.monotonic() + 60
    while not (address(tmp_path) and Path(f"{address(tmp_path)}.run.json").exists()):
        assert time.monotonic() < deadline and proc.poll() is None, "batch never started"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    rc, out = finish(proc)
    assert Path(f"{address(tmp_path)}.ended").read_text() == "TERM"
    assert "SIGTERM received: draining colocate" in out
    assert "host exit 0, batch exit 1" in out and rc == 1, out         # the fake's "interrupted"


@needs_2_cpus
def test_host_failure_wins_and_a_dead_world_is_reported(tmp_path):
    rc, out = finish(start(tmp_path, host_rc=5))
    assert rc == 5, out
    rc, out = finish(start(tmp_path, host_seconds=0.5, colocate="false",
                           COLOCATE_START_TIMEOUT="20"))
    assert rc == 4, out                                                # world never came up
    assert "colocate exited with 1 before it was ready" in out and "HOST [" in out


def test_bad_layout_is_explained(tmp_path):
    n = len(os.sched_getaffinity(0))
    rc, out = finish(start(tmp_path, COLOCATE_HOST_NCORES=str(n)))
    assert rc == 2 and f"the host job uses {n} CPUs (COLOCATE_HOST_NCORES={n})" in out, out
    assert "so no CPU is left for colocate" in out and "COLOCATE_HOST_NCORES to fewer" in out
