"""Workers that join a running world over TCP (``colocate join``), leave it on SIGTERM, or die.

Each test starts a real world (``mpiexec -n 2 colocate serve``: rank 0 and one worker rank) and
real ``colocate join`` processes beside it, tagged as the world's so that none may be left behind.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

import colocate
from colocate.errors import WorkerLost

pytestmark = pytest.mark.timeout(150)
cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import tests

JOINED = 2   # the first joined worker's id in a world of 2 ranks


def colocate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "colocate", *args]


class Joiner:
    """One ``colocate join`` process."""

    def __init__(self, world, tmp_path: Path, *args: str, env: dict | None = None) -> None:
        self.log_path = tmp_path / f"join-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            colocate_cmd("join", "--address", str(world.address), *args),
            env={**world.env, "COLOCATE_LOG": "info", **(env or {})}, stdout=self._log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"colocate join did not exit within {timeout:g} s:\n{self.log()}")


class Kit:
    """A test's worlds and ``colocate join`` processes, with the waits they need.

    Every joiner is killed at teardown if still running; the worlds are ``world_factory``'s,
    which may leave no process behind.
    """

    def __init__(self, world_factory, tmp_path: Path, wait_until) -> None:
        self.world_factory, self.tmp_path, self.wait_until = world_factory, tmp_path, wait_until
        self.trace = tmp_path / "runs"   # one line per run of `record`
        self.made: list[Joiner] = []

    def world(self, **env: str):
        return self.world_factory(ranks=2, env=env or None)

    def join(self, world, *args: str) -> Joiner:
        j = Joiner(world, self.tmp_path, *(args or ("--cores", "1")))
        self.made.append(j)
        return j

    def wait_joined(self, ex, count: int) -> None:
        """Wait, bounded, until the world has ``count`` workers."""
        self.wait_until(lambda: len(workers(ex)) == count, 60, f"{count} workers in the world")

    def start_long(self, ex, seconds: float, **options) -> list:
        """One long task per worker; returns once both have started."""
        run = ex.options(**options) if options else ex
        futures = [run.submit(record, str(self.trace), i, seconds) for i in range(2)]
        self.wait_until(lambda: len(self.runs()) == 2, 60, "both long tasks to start")
        return futures

    def runs(self) -> list[int]:
        return [int(x) for x in self.trace.read_text().split()] if self.trace.exists() else []

    def close(self) -> None:
        for j in self.made:
            if j.proc.poll() is None:
                j.proc.kill()
                j.proc.wait(10)


@pytest.fixture
def kit(world_factory, tmp_path, wait_until):
    k = Kit(world_factory, tmp_path, wait_until)
    yield k
    k.close()


def workers(ex) -> dict[int, dict]:
    return {w["rank"]: w for w in ex.status()["workers"]}


def record(path: str, key: int, seconds: float) -> int:
    """A task that leaves a trace of each run (to count runs), then works for a while."""
    import os
    import time
    with open(path, "a") as f:
        f.write(f"{key}\n")
    time.sleep(seconds)
    return os.getpid()


def test_a_joined_worker_runs_tasks_shows_in_status_and_leaves_on_sigterm(kit):
    world = kit.world()
    joiner = kit.join(world)
    with colocate.Executor(address=world.address) as ex:
        kit.wait_joined(ex, 2)
        joined = workers(ex)[JOINED]
        assert joined["cores"] == [1]
        status = subprocess.run(colocate_cmd("status", "--address", str(world.address),
                                             "--json"), env=world.env, capture_output=True,
                                text=True, timeout=30)
        assert JOINED in [w["rank"] for w in json.loads(status.stdout)["workers"]]
        ran_on = set()
        deadline = time.monotonic() + 60
        while JOINED not in ran_on and time.monotonic() < deadline:
            futures = [ex.submit(time.sleep, 0.05) for _ in range(8)]
            for f in futures:
                f.result(timeout=60)
            ran_on |= {f.info.rank for f in futures}
        assert ran_on == {1, JOINED}
        joiner.proc.send_signal(signal.SIGTERM)
        assert joiner.wait() == 0, joiner.log()
        kit.wait_joined(ex, 1)
        assert ex.submit(pow, 2, 10).result(timeout=60) == 1024   # the world goes on
    assert "worker 2 leaving (SIGTERM from the batch system)" in joiner.log()
    assert "worker lost" not in world.log()   # it left; it was not lost


def test_sigterm_gives_back_what_was_sent_ahead_and_nothing_runs_twice(kit):
    world = kit.world()
    joiner = kit.join(world)
    with colocate.Executor(address=world.address) as ex:
        kit.wait_joined(ex, 2)
        # Short tasks are sent ahead to both workers (they run well under prefetch_below).
        futures = [ex.submit(record, str(kit.trace), i, 0.0005) for i in range(3000)]
        kit.wait_until(lambda: any(f.done() and f.info.rank == JOINED for f in futures), 60,
                   "a task done on the joined worker")
        joiner.proc.send_signal(signal.SIGTERM)
        results = [f.result(timeout=120) for f in futures]   # none fails, none is lost
        assert joiner.wait() == 0, joiner.log()
    runs = collections.Counter(kit.runs())
    assert sorted(runs) == list(range(3000))
    assert set(runs.values()) == {1}, [k for k, n in runs.items() if n > 1][:10]
    assert len(set(results)) >= 2    # both workers ran some
    back = re.search(r"leaving \(SIGTERM from the batch system\): (\d+) task\(s\) sent ahead "
                     "go back", joiner.log())
    assert back, joiner.log()
    print("given back:", back[1])


def test_a_running_task_finishes_within_the_grace_before_the_worker_leaves(kit):
    world = kit.world()
    joiner = kit.join(world)
    with colocate.Executor(address=world.address) as ex:
        kit.wait_joined(ex, 2)
        long = kit.start_long(ex, 3.0)   # one per worker
        joiner.proc.send_signal(signal.SIGTERM)
        assert all(isinstance(f.result(timeout=60), int) for f in long)
        assert sorted(f.info.rank for f in long) == [1, JOINED]
        assert joiner.wait() == 0, joiner.log()
    assert sorted(kit.runs()) == [0, 1]


def test_a_killed_joined_worker_fails_only_its_task_and_the_world_serves_on(kit):
    # Under MPICH a lost worker *rank* ends the world; a joined worker is outside the MPI world.
    world = kit.world()
    joiner = kit.join(world)
    with colocate.Executor(address=world.address) as ex:
        kit.wait_joined(ex, 2)
        long = kit.start_long(ex, 4.0)
        joiner.proc.kill()
        errors = [f.exception(timeout=60) for f in long]
        lost = [e for e in errors if e is not None]
        assert len(lost) == 1 and isinstance(lost[0], WorkerLost), errors
        assert "joined worker 2 on" in str(lost[0]) and "exited" in str(lost[0])
        kit.wait_joined(ex, 1)
        assert ex.submit(pow, 3, 3).result(timeout=60) == 27
    assert world.proc.poll() is None


def test_join_refusals_say_why(kit, tmp_path, subprocess_env):
    world = kit.world()
    data = json.loads(world.address.read_text())
    data["token"] = "0" * len(data["token"])
    forged = tmp_path / "forged.address"
    forged.write_text(json.dumps(data))
    forged.chmod(0o600)
    out = subprocess.run(colocate_cmd("join", "--address", str(forged), "--cores", "1"),
                         env=world.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "refused this worker: wrong token" in out.stderr, out.stderr
    out = subprocess.run(colocate_cmd("join"), env=subprocess_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "expected --address FILE" in out.stderr
    bad = os.sched_getaffinity(0)
    out = subprocess.run(colocate_cmd("join", "--address", str(world.address), "--cores",
                                      str(max(bad) + 64)), env=world.env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "not among the CPUs this process may use" in out.stderr
    with colocate.Executor(address=world.address) as ex:
        assert len(workers(ex)) == 1


def test_several_cores_make_one_joined_worker_each(kit):
    world = kit.world()
    joiner = kit.join(world, "--cores", "0-1")
    with colocate.Executor(address=world.address) as ex:
        kit.wait_joined(ex, 3)
        assert sorted(w["cores"][0] for r, w in workers(ex).items() if r >= JOINED) == [0, 1]
        joiner.proc.send_signal(signal.SIGTERM)
        assert joiner.wait() == 0, joiner.log()
        kit.wait_joined(ex, 1)


def test_a_vanished_joined_worker_is_lost_after_the_heartbeat_timeout_and_its_task_retried(kit):
    # SIGSTOP: no FIN, no heartbeats, as when a node drops off the network.
    world = kit.world(COLOCATE_SERVER_HEARTBEAT_TIMEOUT="3")
    joiner = kit.join(world)
    with colocate.Executor(address=world.address) as ex:
        kit.wait_joined(ex, 2)
        long = kit.start_long(ex, 2.0, retries=1)
        joiner.proc.send_signal(signal.SIGSTOP)
        start = time.monotonic()
        kit.wait_joined(ex, 1)
        assert time.monotonic() - start < 3 + 2 + 10   # heartbeat timeout, a tick, slack
        assert all(isinstance(f.result(timeout=60), int) for f in long)   # retried elsewhere
        assert {f.info.rank for f in long} == {1}
        assert sorted(f.info.attempts for f in long) == [1, 2]
        assert "was silent for" in ex.status()["lost"][JOINED]
    joiner.proc.send_signal(signal.SIGCONT)   # it finds its link closed, and exits
    assert joiner.wait() != 0
