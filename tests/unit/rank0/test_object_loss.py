"""The scheduler's books of lost objects (where each was, why it went) and what they decide:
the answer to a client whose read failed, and tasks whose arguments name a lost object failing
at dispatch, instruction by instruction."""

from colocate.rank0 import objects as _storebook
from colocate.rank0 import scheduler as S
from colocate.wire.messages import (
    ResultMsg,
    Status,
    StoreAddress,
    TaskInfo,
    TaskMsg,
    TaskOptions,
    Work,
    dumps,
)

FN = b"h" * 16
WHERE = StoreAddress("127.0.0.1", 1234, "n1/boot", 99)
WHY = "joined worker 2 on pool-a left (SIGTERM from the batch system)"


def world(nodes=("n1", "pool-a")):
    s = S.Scheduler()
    for rank, node in enumerate(nodes, start=1):
        s.handle(S.WorkerJoined(rank, node, (rank,), 1000, machine=f"{node}/boot"))
    s.handle(S.ClientJoined(7))
    return s


def put(s, node, nbytes=100, req=0):
    [granted] = s.handle(S.PutRequested(7, req, nbytes, node=node))
    return granted


def test_a_lost_rank_records_where_each_of_its_objects_was_and_why():
    s = world()
    a, b = put(s, "pool-a", req=0), put(s, "n1", req=1)
    s.handle(S.WorkerGone(a.rank, WHY))
    lost, obj = s.where_is(a.ref_id)
    assert obj is None and lost == _storebook.lost_text(a.ref_id, s.gone[a.ref_id])
    assert lost == (f"object {a.ref_id} was stored on node pool-a (worker 2), which is gone: "
                    f"{WHY}. Its data went with it; put it again (ex.put), and keep a copy of "
                    "what you cannot lose outside the world")
    assert s.where_is(b.ref_id) == ("", s.objects[b.ref_id])   # still held
    assert s.where_is(12345) == ("", None)                     # never stored
    assert s.lost_argument((b.ref_id, a.ref_id)) == lost
    assert s.lost_argument((b.ref_id,)) is None


def test_a_task_naming_a_lost_object_fails_at_dispatch_and_is_never_sent():
    s = world()
    a, b = put(s, "pool-a", req=0), put(s, "n1", req=1)
    s.handle(S.WorkerGone(a.rank, WHY))
    text = s.where_is(a.ref_id)[0]
    lost = TaskMsg(0, FN, b"fn", b"args", TaskOptions(), "pool-a", (b.ref_id, a.ref_id))
    fine = TaskMsg(1, FN, None, b"args", TaskOptions(), "n1", (b.ref_id,))
    assert s.handle(S.Submitted(7, [lost, fine])) == [
        S.SendWork(1, [Work(1, FN, b"fn", b"args", None, None)]),
        S.Deliver(7, [ResultMsg(0, Status.NO_OBJECT, dumps(text), None)])]
    assert s.queued() == 0 and list(s.tasks) == [1]


def test_a_task_whose_object_is_lost_while_it_waits_fails_when_its_turn_comes():
    s = world()
    a = put(s, "pool-a")
    busy = [TaskMsg(i, FN, b"fn" if i == 0 else None, b"x", TaskOptions()) for i in range(2)]
    s.handle(S.Submitted(7, busy))                     # both workers busy
    waiting = TaskMsg(2, FN, None, b"args", TaskOptions(), "pool-a", (a.ref_id,))
    assert s.handle(S.Submitted(7, [waiting])) == []   # waits for a slot
    out = s.handle(S.WorkerGone(a.rank, WHY))          # takes its task and its object
    text = s.where_is(a.ref_id)[0]
    assert out == [S.ForgetWorker(2, WHY), S.Deliver(7, [
        ResultMsg(1, Status.LOST, dumps(WHY), TaskInfo("pool-a", 2, (2,), 0.0, 0.0, 1)),
        ResultMsg(2, Status.NO_OBJECT, dumps(text), None)])]


def test_freeing_a_lost_object_or_leaving_forgets_it_and_spares_are_never_recorded():
    s = world()
    a, b = put(s, "pool-a", req=0), put(s, "pool-a", req=1)
    [spare] = s.handle(S.PutRequested(7, 2, 100, node="pool-a", ahead=True))
    s.handle(S.WorkerGone(a.rank, WHY))
    assert sorted(s.gone) == [a.ref_id, b.ref_id]   # not the spare: it never held data
    assert s.handle(S.FreeRequested(7, [a.ref_id])) == []
    assert list(s.gone) == [b.ref_id]
    s.handle(S.ClientLeft(7))
    assert s.gone == {}
    assert spare.ref_id not in s.gone


def test_the_oldest_reasons_are_forgotten_past_the_bound(monkeypatch):
    monkeypatch.setattr(_storebook, "GONE_KEPT", 2)
    s = world()
    ids = [put(s, "pool-a", nbytes=10, req=i).ref_id for i in range(3)]
    s.handle(S.WorkerGone(2, WHY))
    assert list(s.gone) == ids[1:]


# ----- moving the objects of a leaving worker ----------------------------------------------------
def stored_on(s, node):
    return s.snapshot()["store"]["nodes"][node]["bytes"]


def test_a_leaving_worker_holding_nothing_is_let_go_at_once():
    s = world()
    put(s, "n1")
    assert s.handle(S.WorkerLeaving(2)) == [S.LetGo(2)]


def test_a_leaving_workers_objects_are_moved_and_found_at_their_new_holder():
    s = world()
    a = put(s, "pool-a")
    assert s.handle(S.WorkerLeaving(2)) == [S.MoveObjects(2, ((a.ref_id, 1, "n1"),))]
    assert stored_on(s, "n1") == 100 and stored_on(s, "pool-a") == 100   # charged at once
    assert s.handle(S.ObjectsMoved(2, ((a.ref_id, 5, WHERE),), ())) == [S.LetGo(2)]
    assert stored_on(s, "n1") == 100 and stored_on(s, "pool-a") == 0
    assert s.handle(S.WorkerGone(2, WHY)) == [S.ForgetWorker(2, WHY)]
    lost, obj = s.where_is(a.ref_id)
    assert lost == "" and (obj.rank, obj.node) == (1, "n1") and s.moved[a.ref_id] == (5, WHERE)
    task = TaskMsg(0, FN, b"fn", b"args", TaskOptions(), "pool-a", (a.ref_id,))
    assert s.handle(S.Submitted(7, [task])) == [S.SendWork(1, [Work(
        0, FN, b"fn", b"args", None, None, (), (), ((a.ref_id, 1, "n1", WHERE, 5),))])]
    assert s.handle(S.FreeRequested(7, [a.ref_id])) == [S.DiscardObjects(1, [a.ref_id])]
    assert s.moved == {} and stored_on(s, "n1") == 0


def test_an_object_without_room_elsewhere_is_lost_with_the_reason():
    s = world()
    a = put(s, "pool-a", nbytes=900)
    put(s, "n1", nbytes=200, req=1)
    assert s.handle(S.WorkerLeaving(2)) == [S.LetGo(2)]   # 900 > the 800 free on n1
    s.handle(S.WorkerGone(2, WHY))
    assert s.where_is(a.ref_id)[0] == (
        f"object {a.ref_id} was stored on node pool-a (worker 2), which is gone: {WHY}; it "
        "was not moved to another node: no other node had room for its 900 bytes (900 B) in "
        "its memory budget for functions (bytes free: n1 800). Its data went with it; put it "
        "again (ex.put), and keep a copy of what you cannot lose outside the world")


def test_a_failed_copy_gives_the_room_back_and_says_why_when_lost():
    s = world()
    a = put(s, "pool-a")
    s.handle(S.WorkerLeaving(2))
    assert s.handle(S.ObjectsMoved(2, (), ((a.ref_id, "ObjectLost: refused"),))) == [
        S.LetGo(2), S.DiscardObjects(1, [a.ref_id])]
    assert stored_on(s, "n1") == 0
    s.handle(S.WorkerGone(2, WHY))
    assert "not moved to another node: copying it to worker 1 on n1 failed: ObjectLost: " \
        "refused" in s.where_is(a.ref_id)[0]


def test_an_object_freed_while_it_moves_is_released_at_both_ends():
    s = world()
    a = put(s, "pool-a")
    s.handle(S.WorkerLeaving(2))
    assert s.handle(S.FreeRequested(7, [a.ref_id])) == [S.DiscardObjects(2, [a.ref_id])]
    assert s.handle(S.ObjectsMoved(2, ((a.ref_id, 5, WHERE),), ())) == [
        S.LetGo(2), S.DiscardObjects(1, [a.ref_id])]
    assert stored_on(s, "n1") == 0 and s.moved == {}


def test_a_leaving_worker_lost_before_its_copies_are_reported_loses_them():
    s = world()
    a = put(s, "pool-a")
    s.handle(S.WorkerLeaving(2))
    assert s.handle(S.WorkerGone(2, WHY)) == [S.ForgetWorker(2, WHY),
                                              S.DiscardObjects(1, [a.ref_id])]
    assert stored_on(s, "n1") == 0
    assert "it was being copied to another node when its worker went" in s.where_is(a.ref_id)[0]
