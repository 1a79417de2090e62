"""Kill a process running a batch (SIGKILL at a random moment); resume must lose nothing and
record nothing twice, giving exactly the results of an uninterrupted run."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeExecutor

from colocate.batch import RunDir, cmd_run, iter_records, load_batch, run_batch
from colocate.batch.journal import RESULTS

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"   # (fakes.py, for the drivers)
N_TASKS = 90

KERNELS = """
import time
import numpy as np

def work(i):
    time.sleep(0.003)
    if i % 3 == 0:
        return np.arange(i, i + 50, dtype=float)   # .npy file
    if i % 3 == 1:
        return {"i": i, "sq": i * i}                # inline JSON
    return {i, -i - 1}                              # pickle file
"""

DRIVER = """
import sys
from fakes import FakeExecutor
from colocate.batch import RunDir, load_batch, run_batch

spec = load_batch(sys.argv[1])
rd = RunDir.create(sys.argv[2], spec)
with FakeExecutor(max_workers=2) as ex:
    run_batch(ex, spec, rd, progress=False)
"""


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "k.py").write_text(KERNELS)
    (tmp_path / "driver.py").write_text(DRIVER)
    batch = tmp_path / "b.yaml"
    batch.write_text(textwrap.dedent(f"""\
        name: kill
        function: k.py:work
        tasks: {{product: {{i: {list(range(N_TASKS))}}}}}
        """))
    return tmp_path, batch


def run_to_end(spec, path: Path, resume: bool) -> None:
    rd = RunDir.open_for_resume(path, spec) if resume else RunDir.create(path, spec)
    with rd, FakeExecutor(max_workers=2) as ex:
        run_batch(ex, spec, rd, progress=False)


def complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def results_by_task(path: Path) -> dict[str, object]:
    rd = RunDir.read(path)
    ok = [r for r in iter_records(path / RESULTS) if r["status"] == "ok"]
    ids = [r["task_id"] for r in ok]
    assert len(ids) == len(set(ids)), "a task was recorded as ok twice"
    return {r["task_id"]: rd.load_result(r) for r in ok}


def same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b


@pytest.mark.timeout(300)
def test_sigkill_at_a_random_moment_then_resume(setup):
    tmp_path, batch = setup
    spec = load_batch(batch)
    run_to_end(spec, tmp_path / "reference", resume=False)
    reference = results_by_task(tmp_path / "reference")
    assert len(reference) == N_TASKS

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    for round_ in range(3):
        run = tmp_path / f"run{round_}"
        journal = run / RESULTS
        target = rng.randrange(1, 60)
        proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(batch),
                                 str(run)], env=env, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 30
            while (complete_lines(journal) < target and proc.poll() is None
                   and time.monotonic() < deadline):
                time.sleep(0.001)
            assert time.monotonic() < deadline, f"driver too slow (seed {seed})"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=10)
        before = complete_lines(journal)
        run_to_end(spec, run, resume=True)
        got = results_by_task(run)
        context = f"seed {seed}, round {round_}, killed after {before} records"
        assert set(got) == set(reference), context
        assert all(same(got[k], reference[k]) for k in reference), context
        assert all(r["status"] == "ok" for r in iter_records(journal)), context
        summary = RunDir.read(run).summary()
        assert summary.succeeded == N_TASKS and summary.exit_code == 0, context


SLOW = """
import time

def slow(i):
    time.sleep(0.05)
    return i
"""

RUN_DRIVER = """
import sys
from fakes import FakeExecutor
from colocate.batch import cmd_run

sys.exit(cmd_run(sys.argv[1], lambda n: FakeExecutor(max_workers=2), progress="log"))
"""


@pytest.mark.timeout(120)
def test_sigterm_drains_then_resume_finishes(tmp_path):
    (tmp_path / "s.py").write_text(SLOW)
    (tmp_path / "run_driver.py").write_text(RUN_DRIVER)
    batch = tmp_path / "s.yaml"
    batch.write_text(f"function: s.py:slow\ntasks: {{product: {{i: {list(range(40))}}}}}\n"
                     f"output: {tmp_path / 'run'}\n")
    journal = tmp_path / "run" / RESULTS
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run_driver.py"), str(batch)],
                            env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while complete_lines(journal) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 3, err
    assert "SIGTERM: draining" in err and "--resume" in err
    first = list(iter_records(journal))
    assert 2 <= len(first) < 40 and all(r["status"] == "ok" for r in first)
    code = cmd_run(None, lambda n: FakeExecutor(max_workers=4), resume=tmp_path / "run",
                   progress=False, stream=io.StringIO())
    assert code == 0
    ids = [r["task_id"] for r in iter_records(journal)]
    assert len(ids) == len(set(ids)) == 40
