"""The object store on real worlds: round trips, refs as arguments, results kept remote, the
budget, freeing (explicit, by garbage collection, by disconnecting), and lost worker ranks.

Most tests use the shared world (one machine: large objects go through shared memory); one
world runs with ``store.transport: tcp``, the path objects take between nodes.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import sys

import cloudpickle
import numpy as np
import pytest

import colocate
from colocate import Executor, ObjectLost, Ref, StoreFull, WorkerCrashed
from colocate.testing import crash

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import tests

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0   # bound on every wait for the server's view to change
MiB = 1 << 20


# ----- remote functions --------------------------------------------------------------------------
def describe(a, scale=1.0):
    """What a function sees of an array argument."""
    return {"type": type(a).__name__, "sum": float(np.asarray(a).sum()) * scale,
            "writeable": bool(a.flags.writeable), "shape": a.shape, "dtype": str(a.dtype)}


def nested_get(box):
    return float(box["ref"].get().sum())


def make_and_keep(n):
    import numpy as np

    import colocate
    return {"ref": colocate.keep(np.arange(n, dtype=np.float64)), "n": n}


def keep_and_fail(n):
    import numpy as np

    import colocate
    colocate.keep(np.ones(n))
    raise ValueError("after keep")


# ----- helpers -----------------------------------------------------------------------------------
def stored(ex) -> int:
    return ex.status()["store"]["bytes"]


def arrays():
    big = np.random.default_rng(1).random((600, 700))   # 3.2 MiB: a shared-memory segment
    return [
        np.arange(10, dtype=np.int8),
        big,
        np.asfortranarray(big[:300]),
        big[::3, 1::2],                                    # not contiguous
        np.array(2.5),                                     # 0-d
        np.zeros((0, 4), dtype=np.float32),
        np.arange(400_000, dtype=">i4").reshape(400, 1000),  # big-endian
        np.array([(1, 2.0)] * 50_000, dtype=[("a", "<i2"), ("b", "<f8")]),
        np.array([1, "two", None], dtype=object),          # pickled
    ]


def assert_same(a, b):
    assert type(b) is np.ndarray and b.dtype == a.dtype and b.shape == a.shape
    if a.dtype.hasobject:
        assert b.tolist() == a.tolist()
    else:
        assert np.array_equal(a, b)


# ----- tests -------------------------------------------------------------------------------------
def test_arrays_and_objects_round_trip(server):
    with Executor(address=server) as ex:
        for a in arrays():
            ref = ex.put(a)
            assert isinstance(ref, Ref) and ref.nbytes >= (0 if a.dtype.hasobject else a.nbytes)
            back = ref.get()
            assert_same(a, back)
            assert back.flags.writeable and not np.shares_memory(back, a)
            assert_same(a, ex.get(ref))
        for obj in ({"a": [1, 2], "b": "x"}, "text", 12345, None, [np.ones(3)] * 2):
            back = ex.put(obj).get()
            if isinstance(obj, list):
                assert all(np.array_equal(x, y) for x, y in zip(obj, back, strict=True))
            else:
                assert back == obj


def test_get_into_an_existing_array(server):
    with Executor(address=server) as ex:
        for a in (np.arange(100.0), np.random.default_rng(2).random((512, 512))):
            ref = ex.put(a)
            out = np.empty_like(a)
            assert ref.get(out=out) is out and np.array_equal(out, a)
            with pytest.raises(ValueError, match="shape"):
                ref.get(out=np.empty(3))


def test_a_ref_is_small_and_picklable(server):
    with Executor(address=server) as ex:
        ref = ex.put(np.zeros(MiB))
        data = pickle.dumps(ref)
        assert len(data) < 500
        assert np.array_equal(pickle.loads(data).get(), np.zeros(MiB))


def test_refs_as_arguments_reach_the_function_as_read_only_arrays(server):
    a = np.random.default_rng(3).random((512, 512))
    small = np.arange(5.0)
    with Executor(address=server) as ex:
        big_ref, small_ref = ex.put(a), ex.put(small)
        seen = ex.submit(describe, big_ref, scale=2.0).result(WAIT)
        assert seen == {"type": "ndarray", "sum": pytest.approx(a.sum() * 2), "writeable": False,
                        "shape": (512, 512), "dtype": "float64"}
        assert ex.submit(describe, a=small_ref).result(WAIT)["sum"] == 10.0
        assert [d["sum"] for d in ex.map(describe, [small_ref, big_ref])] == [
            10.0, pytest.approx(a.sum())]
        # A Ref nested in a container stays a Ref; the function reads it itself.
        assert ex.submit(nested_get, {"ref": big_ref}).result(WAIT) == pytest.approx(a.sum())


def test_a_function_keeps_its_result_remote(server):
    with Executor(address=server) as ex:
        before = stored(ex)
        got = ex.submit(make_and_keep, 500_000).result(WAIT)
        ref = got["ref"]
        assert isinstance(ref, Ref) and got["n"] == 500_000 and ref.nbytes == 4_000_000
        assert stored(ex) == before + 4_000_000
        assert np.array_equal(ref.get(), np.arange(500_000, dtype=np.float64))
        # Passed on to another task, it is read where it lies.
        assert ex.submit(describe, ref).result(WAIT)["sum"] == pytest.approx(
            np.arange(500_000).sum())
        # The same object coming back again is the same Ref, still owned once.
        del got
        gc.collect()
        assert stored(ex) == before + 4_000_000
        del ref
        gc.collect()
        colocate_wait(lambda: stored(ex) == before, "the kept object to be freed")


def test_a_failed_task_keeps_nothing(server):
    with Executor(address=server) as ex:
        before = stored(ex)
        with pytest.raises(ValueError, match="after keep"):
            ex.submit(keep_and_fail, 100_000).result(WAIT)
        assert stored(ex) == before


def test_free_and_garbage_collection_release_the_memory(server):
    with Executor(address=server) as ex:
        before = stored(ex)
        a, b = ex.put(np.ones(2 * MiB, np.uint8)), ex.put(np.ones(MiB, np.uint8))
        assert stored(ex) == before + 3 * MiB
        ex.free(a)
        colocate_wait(lambda: stored(ex) == before + MiB, "free() to release 2 MiB")
        with pytest.raises(ObjectLost, match="freed"):
            a.get()
        ex.free(a)   # twice: nothing happens
        del b
        gc.collect()
        colocate_wait(lambda: stored(ex) == before, "the collected Ref to release 1 MiB")


def test_a_task_keeps_its_arguments_alive(server, tmp_path):
    with Executor(address=server) as ex:
        ref = ex.put(np.ones(MiB, np.uint8))
        fut = ex.submit(describe, ref)
        del ref
        gc.collect()
        assert fut.result(WAIT)["sum"] == MiB


def test_repeated_puts_of_one_size_fill_segments_reserved_ahead(server, monkeypatch):
    monkeypatch.setattr("colocate.store.putahead.IDLE", 1.0)
    with Executor(address=server) as ex:
        before = stored(ex)

        def ahead():
            return ex.status()["store"]["ahead"]

        refs = [ex.put(np.full(MiB, 0, np.uint8))]
        colocate_wait(lambda: ahead() == MiB, "a segment of this size reserved ahead")
        for i in range(1, 4):
            refs.append(ex.put(np.full(MiB, i, np.uint8)))   # fills a spare
            assert stored(ex) == before + (i + 1) * MiB
            # Puts that found no spare ready make the size keep more of them.
            colocate_wait(lambda: ahead() >= MiB, "the next ones reserved ahead")
        # Tasks see the data at once (the commit may still be on its way), so do reads over
        # the data port (they wait for it).
        sums = [f.result(WAIT)["sum"] for f in [ex.submit(describe, r) for r in refs]]
        assert sums == [i * MiB for i in range(4)]
        for i, r in enumerate(refs):
            assert colocate.store.datalink._fetch_stream(r, None).tolist() == [i] * MiB
            assert (r.get() == i).all()
        colocate_wait(lambda: ahead() == 0, "the unused spare to be given back")
        ex.free(refs.pop())
        colocate_wait(lambda: stored(ex) == before + 3 * MiB, "the free to pass")


def test_a_disconnecting_client_releases_its_objects(server):
    with Executor(address=server) as watcher:
        before = stored(watcher)
        with Executor(address=server) as ex:
            keep = [ex.put(np.ones(MiB, np.uint8)) for _ in range(3)]
            # A put into a segment reserved ahead tells rank 0 with the client's next message:
            # after a round trip of ``ex``, every client sees the objects.
            assert stored(ex) == stored(watcher) == before + 3 * MiB
        colocate_wait(lambda: stored(watcher) == before, "the departed client's objects to go")
        del keep


def test_the_store_survives_a_crashing_executor(server):
    a = np.arange(300_000.0)
    with Executor(address=server) as ex:
        refs = [ex.put(a, node=None) for _ in range(2)]   # one per worker (least held)
        for _ in range(2):
            with pytest.raises(WorkerCrashed):
                ex.submit(crash, 3).result(WAIT)
        for ref in refs:
            assert np.array_equal(ref.get(), a)
            assert ex.submit(describe, ref).result(WAIT)["sum"] == a.sum()


def test_put_on_a_named_node_and_on_an_unknown_one(server):
    with Executor(address=server) as ex:
        node = ex.status()["workers"][0]["node"]
        assert ex.put(1, node=node).node == node
        with pytest.raises(ValueError, match="no worker rank on node 'nowhere'"):
            ex.put(1, node="nowhere")


def test_budget_overflow_names_node_size_and_budget(world_factory):
    world = world_factory(2, env={"COLOCATE_CO_LOCATION_MEMORY_BUDGET": "8MiB"})
    with Executor(address=world.address) as ex:
        node = ex.status()["workers"][0]["node"]
        with pytest.raises(StoreFull) as err:
            ex.put(np.zeros(2 * MiB))   # 16 MiB
        text = str(err.value)
        for part in (f"node {node}", "16777216 bytes", "budget for functions is 8388608 bytes",
                     "co_location.memory_budget"):
            assert part in text, text
        first = ex.put(np.zeros(MiB // 2))   # 4 MiB fits
        with pytest.raises(StoreFull, match="4194304 are held by stored objects"):
            ex.put(np.zeros(MiB))
        ex.free(first)
        colocate_wait(lambda: stored(ex) == 0, "the budget to be free again")
        assert ex.put(np.zeros(MiB)).get().shape == (MiB,)


def test_objects_travel_over_tcp_as_between_nodes(world_factory, monkeypatch):
    world = world_factory(2, env={"COLOCATE_STORE_TRANSPORT": "tcp"})
    monkeypatch.setenv("COLOCATE_STORE_TRANSPORT", "tcp")   # this client's side
    with Executor(address=world.address) as ex:
        for a in arrays():
            assert_same(a, ex.put(a).get())
        big = np.random.default_rng(4).random((1000, 1000))
        ref = ex.put(big)
        out = np.empty_like(big)
        assert ref.get(out=out) is out and np.array_equal(out, big)
        seen = ex.submit(describe, ref).result(WAIT)
        assert seen["sum"] == pytest.approx(big.sum()) and seen["shape"] == (1000, 1000)
        kept = ex.submit(make_and_keep, 100_000).result(WAIT)["ref"]
        assert kept.get()[-1] == 99_999


def test_a_lost_worker_makes_its_refs_fail_clearly(world_factory):
    world = world_factory(3)
    with Executor(address=world.address) as ex:
        ref = ex.put(np.ones(MiB))
        small = ex.put(np.ones(10), node=ref.node)
        victim = ref.where.pid
        assert small.rank == ref.rank or small.where.pid != victim
        os.kill(victim, signal.SIGKILL)
        colocate_wait(lambda: not _alive(victim), f"rank {ref.rank} (pid {victim}) to die")
        for r in (ref, small) if small.rank == ref.rank else (ref,):
            with pytest.raises(ObjectLost, match=rf"worker rank {ref.rank} on .* is lost with|"
                                                 rf"\(worker {ref.rank}\), which is gone: "):
                r.get()


# ----- utilities ---------------------------------------------------------------------------------
def colocate_wait(predicate, what):
    """Poll ``predicate`` with growing intervals, failing after ``WAIT`` seconds."""
    import time
    deadline = time.monotonic() + WAIT
    delay = 0.01
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_public_names():
    assert colocate.Ref is Ref and callable(colocate.keep)
    assert issubclass(StoreFull, MemoryError) and issubclass(ObjectLost, LookupError)
