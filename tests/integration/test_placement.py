"""Placement on a real world: pinning, priority and environment as a function sees them,
multi-core tasks, and GPUs from a configured inventory (no GPU needed)."""

import sys

import cloudpickle
import pytest

from colocate import Executor

pytestmark = pytest.mark.timeout(120)
cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import tests


def where():
    import os

    from colocate.colocation.sandbox import describe_self
    me = describe_self()
    return {"affinity": sorted(os.sched_getaffinity(0)), "policy": me["policy"],
            "omp": os.environ.get("OMP_NUM_THREADS"),
            "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}


@pytest.fixture
def two_workers(world_factory):
    env = {"COLOCATE_CO_LOCATION_GPUS": "[g0, g1]", "COLOCATE_CO_LOCATION_SPARE_CORES": "0-1"}
    world = world_factory(3, env=env)
    with Executor(address=world.address) as ex:
        yield ex


def test_function_sees_its_pinning_priority_and_thread_limits(two_workers):
    seen = [two_workers.submit(where).result(30) for _ in range(4)]
    assert all(len(s["affinity"]) == 1 for s in seen), seen
    assert all(s["policy"] in ("SCHED_IDLE", "SCHED_OTHER") for s in seen)
    assert all(s["omp"] == "1" and s["gpus"] is None for s in seen), seen


def test_task_asking_two_cores_gets_both_then_they_return(two_workers):
    f = two_workers.options(cores=2).submit(where)
    got = f.result(30)
    assert got["affinity"] == [0, 1] and got["omp"] == "2", got
    assert f.info.cores == (0, 1)
    after = [two_workers.submit(where).result(30) for _ in range(4)]
    assert all(len(s["affinity"]) == 1 and s["omp"] == "1" for s in after), after


def test_gpus_come_from_the_configured_inventory(two_workers):
    one = two_workers.options(gpus=1).submit(where).result(30)
    both = two_workers.options(gpus=2).submit(where).result(30)
    assert one["gpus"] in ("g0", "g1") and both["gpus"] == "g0,g1"
    with pytest.raises(Exception, match="3 GPU"):
        two_workers.options(gpus=3).submit(where).result(30)


def test_rank_0_stays_on_the_spare_cores(world_factory):
    import psutil
    world = world_factory(2, env={"COLOCATE_CO_LOCATION_SPARE_CORES": "1"})
    serving = [p for p in psutil.Process(world.proc.pid).children(recursive=True)
               if "serve" in p.cmdline() and p.environ().get("PMI_RANK") == "0"]
    assert len(serving) == 1, serving
    assert serving[0].cpu_affinity() == [1]
