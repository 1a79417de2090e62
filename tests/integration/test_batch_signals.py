"""Ctrl-C and SIGTERM on real worlds: a prompt drain, a stop at once, and a resume after them.

The first signal takes back every task that has not started (queued at rank 0 or sent ahead to a
worker), so a drain lasts at most as long as the tasks already running; a second SIGINT stops
within a second and records the running tasks as interrupted.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DELAY = 1.5    # seconds each task sleeps
TASKS = 12     # on 2 workers: 8 submitted ahead of the running 2 when the signal comes


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def colocate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "colocate", *args]


def start_run(tmp_path: Path, env: dict) -> subprocess.Popen:
    batch = tmp_path / "b.yaml"
    batch.write_text(f"name: sq\nfunction: slow_kernels:slow_square\ntasks:\n"
                     f"  product: {{x: {list(range(TASKS))}, delay: [{DELAY}]}}\noutput: out\n")
    return subprocess.Popen(colocate_cmd("run", str(batch), "-n", "2", "--no-progress"),
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def first_result(tmp_path: Path, proc: subprocess.Popen, wait_until) -> None:
    """Wait until the first result is recorded: the next two tasks have just started."""
    def recorded() -> bool:
        assert proc.poll() is None, proc.communicate()
        return bool(records(tmp_path / "out"))
    wait_until(recorded, 90, "the first result")


@pytest.mark.timeout(240)
def test_first_sigint_drains_within_one_task_and_resume_completes(
        tmp_path, subprocess_env, wait_until, assert_no_leftovers):
    tag = f"drain-{time.time_ns()}"
    env = subprocess_env(tag, PYTHONPATH=f"{REPO / 'tests' / 'data'}:{REPO}")
    proc = start_run(tmp_path, env)
    first_result(tmp_path, proc, wait_until)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - signalled
    assert proc.returncode == 3, err
    # Without the take-back, the 8 tasks already submitted ran too (~6 s more).
    assert took < DELAY + 1.5, f"the drain took {took:.2f} s, a task takes {DELAY} s\n{err}"
    recs = records(tmp_path / "out")
    assert all(r["status"] == "ok" for r in recs), recs   # nothing cut off, nothing fake
    assert 2 <= len(recs) <= 5, recs
    assert "taken back" in err and "--resume out" in err, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["not_run"] == TASKS - len(recs) and summary["interrupted"] == 0, summary
    assert_no_leftovers(tag)

    again = subprocess.run(colocate_cmd("run", "--resume", "out", "-n", "2", "--no-progress"),
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    ok = [r for r in records(tmp_path / "out") if r["status"] == "ok"]
    assert sorted(r["result"] for r in ok) == [x * x for x in range(TASKS)], ok
    assert_no_leftovers(tag)


@pytest.mark.timeout(180)
def test_second_sigint_stops_within_a_second_and_records_running_tasks_interrupted(
        tmp_path, subprocess_env, wait_until, assert_no_leftovers):
    tag = f"stop-{time.time_ns()}"
    env = subprocess_env(tag, PYTHONPATH=f"{REPO / 'tests' / 'data'}:{REPO}")
    proc = start_run(tmp_path, env)
    first_result(tmp_path, proc, wait_until)
    proc.send_signal(signal.SIGINT)
    wait_until(lambda: (tmp_path / "out").exists(), 5, "the run directory")
    time.sleep(0.2)   # let the first signal's message out: two separate signals, in order
    signalled = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - signalled
    assert proc.returncode == 130, err
    assert took < 1.0, f"the stop at once took {took:.2f} s\n{err}"
    recs = records(tmp_path / "out")
    interrupted = [r for r in recs if r["status"] == "interrupted"]
    assert len(interrupted) == 2, recs   # the two that were running, one per worker
    assert all("second signal" in r["error"]["message"] for r in interrupted), interrupted
    assert "stopped at once; 2 task(s) recorded as interrupted" in err, err
    assert_no_leftovers(tag)


@pytest.mark.timeout(180)
def test_serve_drain_takes_back_tasks_sent_ahead(world_factory, wait_until):
    import colocate
    from colocate.errors import TaskInterrupted

    def slow_square(x, delay):   # (defined here: pickled by value for the workers)
        import time
        time.sleep(delay)
        return x * x

    world = world_factory(3)
    with colocate.Executor(address=world.address) as ex:
        list(ex.map(slow_square, range(60), [0.0] * 60))   # short: later calls are sent ahead
        futs = [ex.submit(slow_square, i, 1.0) for i in range(20)]
        wait_until(lambda: sum(w["ahead"] for w in ex.status()["workers"]) >= 10, 30,
                   "tasks sent ahead to the workers")
        signalled = time.monotonic()
        world.proc.send_signal(signal.SIGTERM)
        code = world.wait_exit(30)
        took = time.monotonic() - signalled
        assert code == 0, world.log()
        # Without the take-back the workers ran all they held: ~10 s.
        assert took < 1.0 + 2.0, f"the drain took {took:.2f} s\n{world.log()}"
        outcomes = []
        for f in futs:
            try:
                f.result(timeout=10)
                outcomes.append("ok")
            except TaskInterrupted:
                assert f.info is None   # taken back: never placed, never started
                outcomes.append("back")
    assert outcomes.count("ok") <= 2 + 2 and outcomes.count("back") >= 16, outcomes
