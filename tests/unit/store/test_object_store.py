"""The object store's pure parts: the codec, Ref pickling and ownership hooks, and the
scheduler's bookkeeping (budget, placement of puts and of tasks by data locality, frees, lost
workers, objects kept by tasks), event by event."""

import pickle

import numpy as np
import pytest

from colocate import store
from colocate.rank0 import scheduler as S
from colocate.wire.messages import Outcome, Status, StoreAddress, TaskMsg, TaskOptions, Work

FN = b"h" * 16
WHERE = StoreAddress("127.0.0.1", 1234, "m/boot", 99)


# ----- codec -------------------------------------------------------------------------------------
ARRAYS = [
    np.arange(12, dtype=np.int64).reshape(3, 4),
    np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
    np.arange(40, dtype=np.float64).reshape(5, 8)[::2, 1::3],          # not contiguous
    np.array(3.5),                                                      # 0-d
    np.zeros((0, 3), dtype=np.int16),                                   # empty
    np.array([1 + 2j, 3 - 4j], dtype=">c16"),                          # big-endian complex
    np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "<i4"), ("b", "<f8")]),  # structured
    np.array(["x", "yz"], dtype="U2"),
    np.arange(6).astype("datetime64[s]"),
    np.array([True, False]),
]


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype}-{a.shape}")
def test_arrays_round_trip_as_raw_buffers(arr):
    meta, view = store.encode(arr)
    assert meta[0] == "ndarray" and view.nbytes == arr.nbytes
    back = store.decode(meta, bytes(view))
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert np.array_equal(back, arr) and back.flags.writeable
    view_only = store.decode(meta, bytes(view), copy=False)
    assert np.array_equal(view_only, arr) and not view_only.flags.writeable


def test_contiguous_arrays_are_not_copied_and_orders_are_kept():
    c = np.arange(6.0).reshape(2, 3)
    f = np.asfortranarray(c)
    for arr, order in ((c, "C"), (f, "F")):
        meta, view = store.encode(arr)
        assert meta[3] == order
        assert np.shares_memory(np.frombuffer(view, dtype=np.uint8), arr)
        back = store.decode(meta, bytes(view))
        assert np.array_equal(back, arr)
        assert back.flags.f_contiguous if order == "F" else back.flags.c_contiguous


def test_decode_with_an_offset_and_into_out():
    arr = np.arange(10, dtype=np.int32)
    meta, view = store.encode(arr)
    buf = b"\0" * 64 + bytes(view)
    assert np.array_equal(store.decode(meta, buf, offset=64), arr)
    out = np.empty_like(arr)
    assert store.decode(meta, buf, offset=64, out=out) is out and np.array_equal(out, arr)


@pytest.mark.parametrize("obj", [{"a": [1, 2]}, "text", None, 3.5,
                                 np.array([1, None], dtype=object),
                                 np.ma.masked_array([1, 2], mask=[0, 1])])
def test_other_objects_are_pickled(obj):
    meta, view = store.encode(obj)
    assert meta[0] == "pickle"
    back = store.decode(meta, bytes(view))
    if isinstance(obj, np.ndarray):
        assert type(back) is type(obj) and back.tolist() == obj.tolist()
    else:
        assert back == obj


def test_check_out_names_the_mismatch():
    meta, _ = store.encode(np.zeros((2, 3)))
    store.check_out(meta, np.empty((2, 3)))
    with pytest.raises(ValueError, match=r"dtype float64 and shape \(2, 3\)"):
        store.check_out(meta, np.empty((3, 2)))
    with pytest.raises(ValueError, match="writable"):
        ro = np.empty((2, 3))
        ro.flags.writeable = False
        store.check_out(meta, ro)
    with pytest.raises(ValueError, match="pickled"):
        store.check_out(("pickle", "dict"), np.empty(1))


# ----- Ref ---------------------------------------------------------------------------------------
def ref(i=65536, node="n1", nbytes=800):
    return store.Ref("w1", i, node, 1, nbytes, ("ndarray", np.dtype("f8"), (100,), "C"), WHERE, 7)


def test_ref_pickles_small_and_compares_by_id():
    r = ref()
    data = pickle.dumps(r)
    assert len(data) < 400
    back = pickle.loads(data)
    assert back == r and hash(back) == hash(r) and back is not r
    assert (back.node, back.rank, back.nbytes, back.fd, back.where) == ("n1", 1, 800, 7, WHERE)
    assert back.shape == (100,) and back.dtype == np.float64 and back.kind == "ndarray"
    assert "float64 array (100,)" in repr(back) and "rank 1 of n1" in repr(back)


def test_collecting_sees_nested_refs_and_prefers_the_heaviest_node():
    a, b, c = ref(1, "n1", 100), ref(2, "n2", 5000), ref(3, "n1", 10)
    with store.collecting() as found:
        pickle.dumps(((a, {"x": [b]}), {"k": c}))
    assert found == [a, b, c]
    assert store.preferred_node(found) == "n2"
    assert store.preferred_node([]) is None
    pickle.dumps(a)   # outside the block nothing is collected
    assert found == [a, b, c]


def test_adopting_routes_unpickled_refs_to_the_owner():
    seen = []

    class Owner:
        def adopt_ref(self, fields):
            seen.append(fields)
            return "adopted"

    data = pickle.dumps([ref()])
    with store.adopting(Owner()):
        assert pickle.loads(data) == ["adopted"]
    assert seen[0][:3] == ("w1", 65536, "n1")
    assert isinstance(pickle.loads(data)[0], store.Ref)


def test_keep_outside_a_worker_says_what_to_use():
    with pytest.raises(RuntimeError, match=r"ex\.put"):
        store.keep(1)


def test_resolve_leaves_calls_without_refs_alone():
    args, kwargs = (1, [ref()]), {"a": 2}
    assert store.resolve(args, kwargs) == (args, kwargs)   # nested refs are not resolved


def test_context_round_trips_through_the_environment():
    ctx = store.Context("w1", "secret", "n1", 3, WHERE, "tcp")
    back = store.Context.from_env(ctx.to_env())
    assert (back.world, back.token, back.node, back.rank, back.where, back.transport) == (
        "w1", "secret", "n1", 3, WHERE, "tcp")


def test_transport_setting_is_checked():
    assert store.check_transport("auto") == "auto"
    with pytest.raises(ValueError, match="store.transport"):
        store.check_transport("shm")


# ----- scheduler bookkeeping ---------------------------------------------------------------------
def sched(nodes=("n1",), budget=1000, per_node=1):
    s = S.Scheduler()
    rank = 1
    for node in nodes:
        for _ in range(per_node):
            s.handle(S.WorkerJoined(rank, node, (rank,), budget, machine=f"{node}/boot"))
            rank += 1
    s.handle(S.ClientJoined(7))
    return s


def test_put_is_granted_and_counted_against_the_node_budget():
    s = sched()
    assert s.handle(S.PutRequested(7, 0, 600)) == [S.PutGranted(7, 0, 1 << 16, 1, "n1")]
    snap = s.snapshot()["store"]
    assert snap["bytes"] == 600 and snap["nodes"]["n1"]["objects"] == 1
    assert s.snapshot()["workers"][0]["stored"] == 600


def test_put_that_does_not_fit_names_node_size_and_budget():
    s = sched()
    s.handle(S.PutRequested(7, 0, 600))
    [refused] = s.handle(S.PutRequested(7, 1, 500))
    assert isinstance(refused, S.PutRefused) and refused.full and refused.req == 1
    for text in ("500 bytes", "node n1", "budget for functions is 1000 bytes",
                 "600 are held by stored objects", "400 free"):
        assert text in refused.reason, refused.reason


def test_put_on_an_unknown_node_is_a_plain_refusal():
    [refused] = sched().handle(S.PutRequested(7, 0, 10, node="nX"))
    assert not refused.full and "no worker rank on node 'nX'" in refused.reason


def test_put_goes_to_the_asked_node_else_the_clients_machine_else_the_most_room():
    s = sched(nodes=("n1", "n2"))
    assert s.handle(S.PutRequested(7, 0, 100, node="n1"))[0].node == "n1"
    assert s.handle(S.PutRequested(7, 1, 100, near="n1/boot"))[0].node == "n1"
    assert s.handle(S.PutRequested(7, 2, 100))[0].node == "n2"   # n1 holds 200 already


def test_put_picks_the_worker_holding_least_on_its_node():
    s = sched(per_node=2)
    assert s.handle(S.PutRequested(7, 0, 100))[0].rank == 1
    assert s.handle(S.PutRequested(7, 1, 100))[0].rank == 2
    assert s.handle(S.PutRequested(7, 2, 50))[0].rank == 1


def test_stored_objects_and_task_reservations_share_the_budget():
    s = sched()
    s.handle(S.PutRequested(7, 0, 700))
    msg = TaskMsg(0, FN, b"fn", b"args", TaskOptions(memory=400))
    assert s.handle(S.Submitted(7, [msg])) == []   # 700 + 400 > 1000: waits
    gid = s.handle(S.FreeRequested(7, [1 << 16]))
    assert gid == [S.SendWork(1, [Work(0, FN, b"fn", b"args", None, 400)]),
                   S.DiscardObjects(1, [1 << 16])]
    [refused] = s.handle(S.PutRequested(7, 1, 700))   # 400 reserved by the running task
    assert refused.full and "400 reserved by running tasks" in refused.reason


def test_free_and_client_departure_release_objects():
    s = sched(per_node=2)
    ids = [s.handle(S.PutRequested(7, i, 10))[0].ref_id for i in range(3)]
    assert s.handle(S.FreeRequested(7, [ids[0], 999])) == [S.DiscardObjects(1, [ids[0]])]
    assert s.handle(S.FreeRequested(7, [ids[0]])) == []   # twice: nothing more
    assert s.handle(S.ClientLeft(7)) == [S.DiscardObjects(2, [ids[1]]),
                                         S.DiscardObjects(1, [ids[2]])]
    assert s.snapshot()["store"]["bytes"] == 0


def test_lost_worker_loses_its_objects_and_their_bytes():
    s = sched(per_node=2)
    a = s.handle(S.PutRequested(7, 0, 10))[0]
    s.handle(S.PutRequested(7, 1, 20))
    out = s.handle(S.WorkerGone(a.rank, "gone"))
    assert not any(isinstance(i, S.DiscardObjects) for i in out)
    snap = s.snapshot()["store"]
    assert snap["bytes"] == 20 and snap["lost"] == 1 and snap["objects"] == 1
    assert s.handle(S.FreeRequested(7, [a.ref_id])) == []


def test_lost_worker_touches_only_the_objects_it_held():
    """WorkerLost goes through the objects filed under the lost rank, not through all of them."""
    s = sched(nodes=("n1", "n2"), per_node=2)
    s.handle(S.Submitted(7, [TaskMsg(0, FN, b"fn", b"a", TaskOptions())]))
    kept = tuple(((i << 16) | 1, 1) for i in range(1, 201))   # 200 kept on rank 1 (n1) ...
    s.handle(S.WorkerDone(1, [Outcome(0, Status.OK, b"r", 1.0, 2.0, kept=kept)]))
    for i in range(3):   # ... and puts on n2's ranks
        s.handle(S.PutRequested(7, i, 10, node="n2"))
    assert s.snapshot()["store"]["objects"] == 203
    seen = []

    class Watched(dict):   # the object records, noting every scan of them
        def items(self):
            seen.append("items")
            return super().items()

        def values(self):
            seen.append("values")
            return super().values()

        def __iter__(self):
            seen.append("iter")
            return super().__iter__()

    s.books.objects = Watched(s.books.objects)
    s.handle(S.WorkerGone(2, "gone"))   # holds nothing: nothing is lost
    assert seen == [] and len(s.objects) == 203
    s.handle(S.WorkerGone(1, "gone"))
    assert seen == [] and len(s.objects) == 3
    snap = s.snapshot()["store"]
    assert snap["lost"] == 200 and snap["nodes"]["n1"]["bytes"] == 0
    assert s.held.get(1) is None and sorted(r for r, ids in s.held.items() if ids) == [3, 4]


def test_tasks_prefer_the_node_holding_their_data():
    s = sched(nodes=("n1", "n2"))
    msgs = [TaskMsg(i, FN, b"fn" if i == 0 else None, b"a", TaskOptions(), "n2")
            for i in range(2)]
    out = s.handle(S.Submitted(7, msgs))
    assert [i.rank for i in out if isinstance(i, S.SendWork)] == [2, 1]   # n2 first, then n1


def test_objects_kept_by_a_task_belong_to_its_client_or_are_dropped():
    s = sched()
    s.handle(S.Submitted(7, [TaskMsg(0, FN, b"fn", b"a", TaskOptions())]))
    kept = ((5 << 16) | 1, 300)
    s.handle(S.WorkerDone(1, [Outcome(0, Status.OK, b"r", 1.0, 2.0, kept=(kept,))]))
    assert s.snapshot()["store"]["bytes"] == 300
    assert s.handle(S.ClientLeft(7)) == [S.DiscardObjects(1, [kept[0]])]
    s.handle(S.ClientJoined(8))
    s.handle(S.Submitted(8, [TaskMsg(0, FN, None, b"a", TaskOptions())]))
    failed = Outcome(1, Status.RAISED, b"e", 1.0, 2.0, "ValueError", kept=(((6 << 16) | 1, 5),))
    out = s.handle(S.WorkerDone(1, [failed]))
    assert S.DiscardObjects(1, [(6 << 16) | 1]) in out
    assert s.snapshot()["store"]["bytes"] == 0
