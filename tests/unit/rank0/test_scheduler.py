"""The scheduler state machine, event by event, with exact instruction lists."""

import pickle

import pytest

from colocate.rank0 import scheduler as S
from colocate.wire.messages import Outcome, ResultMsg, Status, TaskInfo, TaskMsg, TaskOptions, Work

FN = b"h" * 16
FN_BYTES = b"pickled-fn"


def task(i, fn_bytes=None, **opts):
    return TaskMsg(i, FN, fn_bytes, b"args%d" % i, TaskOptions(**opts))


def sched(workers=1, **kw):
    s = S.Scheduler(**kw)
    for r in range(1, workers + 1):
        assert s.handle(S.WorkerJoined(r, "n1", (r,), 1000)) == []
    assert s.handle(S.ClientJoined(7)) == []
    return s


def work(i, fn_bytes=None, timeout=None, memory=None):
    return Work(i, FN, fn_bytes, b"args%d" % i, timeout, memory)


def ok(gid, started=1.0, finished=1.001):
    return Outcome(gid, Status.OK, b"res%d" % gid, started, finished)


def test_first_task_ships_function_then_only_hash():
    s = sched()
    assert s.handle(S.Submitted(7, [task(0, FN_BYTES), task(1)])) == [
        S.SendWork(1, [work(0, FN_BYTES)])]
    out = s.handle(S.WorkerDone(1, [ok(0)]))
    info = TaskInfo("n1", 1, (1,), 1.0, 1.001, 1)
    assert out == [S.SendWork(1, [work(1)]), S.Deliver(7, [ResultMsg(0, Status.OK, b"res0", info)])]


def test_short_functions_are_sent_ahead_up_to_prefetch():
    s = sched(prefetch=3, prefetch_below=0.01)
    s.handle(S.Submitted(7, [task(i, FN_BYTES if i == 0 else None) for i in range(6)]))
    out = s.handle(S.WorkerDone(1, [ok(0)]))   # 1 ms: short, so prefetch kicks in
    assert out[0] == S.SendWork(1, [work(1), work(2), work(3)])


def test_tasks_sent_ahead_add_up_to_about_20_ms_of_work():
    s = sched(prefetch=256, prefetch_below=0.01)
    s.handle(S.Submitted(7, [task(i, FN_BYTES if i == 0 else None) for i in range(40)]))
    out = s.handle(S.WorkerDone(1, [ok(0, 1.0, 1.004)]))   # 4 ms each: 5 of them ahead
    assert out[0] == S.SendWork(1, [work(i) for i in range(1, 6)])
    s = sched(prefetch=8, prefetch_below=0.01)
    s.handle(S.Submitted(7, [task(i, FN_BYTES if i == 0 else None) for i in range(40)]))
    out = s.handle(S.WorkerDone(1, [ok(0, 1.0, 1.00001)]))   # 10 µs: prefetch caps it
    assert out[0] == S.SendWork(1, [work(i) for i in range(1, 9)])


def test_long_functions_are_not_sent_ahead():
    s = sched(prefetch=3, prefetch_below=0.01)
    s.handle(S.Submitted(7, [task(i, FN_BYTES if i == 0 else None) for i in range(4)]))
    out = s.handle(S.WorkerDone(1, [ok(0, 1.0, 2.0)]))
    assert out[0] == S.SendWork(1, [work(1)])


def test_least_loaded_worker_and_round_robin_between_clients():
    s = sched(workers=2)
    s.handle(S.ClientJoined(8))
    out = s.handle(S.Submitted(7, [task(i, FN_BYTES if i == 0 else None) for i in range(4)]))
    assert out == [S.SendWork(1, [work(0, FN_BYTES)]), S.SendWork(2, [work(1, FN_BYTES)])]
    s.handle(S.Submitted(8, [TaskMsg(0, FN, None, b"c8", TaskOptions())]))
    assert s.handle(S.WorkerDone(1, [ok(0, 1.0, 2.0)]))[0] == S.SendWork(1, [work(2)])
    # client 8 gets the next free slot although client 7 still has a task queued
    out = s.handle(S.WorkerDone(2, [ok(1, 1.0, 2.0)]))
    assert out[0] == S.SendWork(2, [Work(4, FN, None, b"c8", None, None)])


def test_crash_is_retried_then_reported_with_attempts():
    s = sched()
    s.handle(S.Submitted(7, [task(0, FN_BYTES, retries=1)]))
    crash = Outcome(0, Status.CRASHED, pickle.dumps(-11), 1.0, 1.5)
    assert s.handle(S.WorkerDone(1, [crash])) == [S.SendWork(1, [work(0)])]
    out = s.handle(S.WorkerDone(1, [crash]))
    assert out == [S.Deliver(7, [ResultMsg(0, Status.CRASHED, crash.payload,
                                           TaskInfo("n1", 1, (1,), 1.0, 1.5, 2))])]
    assert s.retried == 1


def test_raised_exceptions_are_retried_only_when_listed():
    s = sched()
    s.handle(S.Submitted(7, [task(0, FN_BYTES, retries=2, retry_on=("OSError",)),
                             task(1, retries=2)]))
    raised = Outcome(0, Status.RAISED, b"e", 1.0, 2.0, "OSError")
    assert s.handle(S.WorkerDone(1, [raised]))[0] == S.SendWork(1, [work(0)])
    other = Outcome(0, Status.RAISED, b"e", 1.0, 2.0, "ValueError")
    out = s.handle(S.WorkerDone(1, [other]))
    assert out[0] == S.SendWork(1, [work(1)])
    assert out[1].results[0].status == Status.RAISED


def test_requeued_work_is_not_an_attempt_and_goes_first():
    s = sched(prefetch=4, prefetch_below=0.01)
    s.handle(S.Submitted(7, [task(0, FN_BYTES)]))
    s.handle(S.WorkerDone(1, [ok(0)]))
    s.handle(S.Submitted(7, [task(1, timeout=5.0), task(2), task(3)]))
    back = [Outcome(1, Status.TIMEOUT, b"5", 1.0, 6.0), Outcome(2, Status.REQUEUE, b"", 0, 0),
            Outcome(3, Status.REQUEUE, b"", 0, 0)]
    out = s.handle(S.WorkerDone(1, back))
    assert out[0] == S.SendWork(1, [work(2), work(3)])
    assert out[1].results[0].status == Status.TIMEOUT and out[1].results[0].info.attempts == 1


def test_worker_lost_retries_running_and_requeues_the_rest():
    s = sched(workers=2, prefetch=4, prefetch_below=0.01)
    s.handle(S.Submitted(7, [task(0, FN_BYTES)]))
    s.handle(S.WorkerDone(1, [ok(0)]))
    s.handle(S.Submitted(7, [task(i, retries=1) for i in (1, 2, 3)]))
    out = s.handle(S.WorkerGone(1, "gone"))
    assert out[0] == S.ForgetWorker(1, "gone")
    assert out[1] == S.SendWork(2, [work(1, FN_BYTES), work(2), work(3)]) or out[1].rank == 2


def test_last_worker_lost_fails_queued_tasks_instead_of_hanging():
    s = sched(workers=1)
    s.handle(S.Submitted(7, [task(0, FN_BYTES), task(1)]))
    out = s.handle(S.WorkerGone(1, "gone"))
    delivered = {r.id: r.status for r in out[-1].results}
    assert delivered == {0: Status.LOST, 1: Status.LOST}


def test_silent_worker_is_declared_lost_on_tick():
    s = sched(heartbeat_timeout=10)
    assert s.handle(S.Tick(5.0)) == []
    out = s.handle(S.Tick(11.0))
    assert isinstance(out[0], S.ForgetWorker) and "silent for 11 s" in out[0].reason


def test_rejects_tasks_that_cannot_fit_any_node():
    s = sched()
    out = s.handle(S.Submitted(7, [task(0, FN_BYTES, memory=5000), task(1, cores=4)]))
    statuses = [r.status for r in out[0].results]
    assert statuses == [Status.REJECTED, Status.REJECTED]
    assert b"memory_budget" in out[0].results[0].payload


def test_memory_budget_holds_back_tasks_until_memory_is_free():
    s = sched(workers=2)
    out = s.handle(S.Submitted(7, [task(0, FN_BYTES, memory=600), task(1, memory=600)]))
    assert out == [S.SendWork(1, [work(0, FN_BYTES, memory=600)])]
    out = s.handle(S.WorkerDone(1, [ok(0, 1.0, 2.0)]))
    assert out[0] == S.SendWork(1, [work(1, memory=600)])


def test_cancel_drops_queued_tasks_only():
    s = sched()
    s.handle(S.Submitted(7, [task(0, FN_BYTES), task(1), task(2)]))
    out = s.handle(S.CancelRequested(7, [0, 2]))
    assert out == [S.Deliver(7, [ResultMsg(2, Status.CANCELLED, b"", None)])]


def test_drain_interrupts_queued_waits_for_running_then_exits():
    s = sched()
    s.handle(S.Submitted(7, [task(0, FN_BYTES), task(1)]))
    out = s.handle(S.DrainRequested())
    assert [r.status for r in out[0].results] == [Status.INTERRUPTED]
    assert s.handle(S.DrainDeadline()) == [S.CutOff(1, Status.INTERRUPTED)]
    out = s.handle(S.WorkerDone(1, [Outcome(0, Status.INTERRUPTED, b"", 1.0, 2.0)]))
    assert out[-1] == S.Exit() and out[0].results[0].status == Status.INTERRUPTED


def test_drain_takes_back_tasks_sent_ahead_and_they_end_unstarted():
    s = sched(workers=2, prefetch=8)
    s.mean_runtime[FN] = 0.001   # short: sent ahead
    s.handle(S.Submitted(7, [task(i, FN_BYTES if i == 0 else None) for i in range(4)]))
    assert {r: len(w.assigned) for r, w in s.workers.items()} == {1: 2, 2: 2}
    out = s.handle(S.DrainRequested())
    assert out == [S.ReturnAhead(1), S.ReturnAhead(2)]
    back = Outcome(2, Status.REQUEUE, b"", 0.0, 0.0)
    out = s.handle(S.WorkerDone(1, [ok(0), back]))
    statuses = {r.id: (r.status, r.info is None) for r in out[0].results}
    assert statuses == {0: (Status.OK, False), 2: (Status.INTERRUPTED, True)}   # never started
    assert S.Exit() not in out
    out = s.handle(S.WorkerDone(2, [ok(1), Outcome(3, Status.REQUEUE, b"", 0.0, 0.0)]))
    assert out[-1] == S.Exit()


def test_tasks_that_arrive_during_a_drain_are_interrupted_not_left_queued():
    s = sched()
    s.handle(S.Submitted(7, [task(0, FN_BYTES)]))
    s.handle(S.DrainRequested())
    out = s.handle(S.Submitted(7, [task(1)]))   # sent before the client heard of the drain
    assert [r.status for r in out[0].results] == [Status.INTERRUPTED] and s.queued() == 0
    out = s.handle(S.WorkerDone(1, [ok(0)]))
    assert out[-1] == S.Exit()


def test_client_leaving_drops_its_queue_and_results():
    s = sched()
    s.handle(S.Submitted(7, [task(0, FN_BYTES), task(1)]))
    assert s.handle(S.ClientLeft(7)) == []
    assert s.handle(S.WorkerDone(1, [ok(0)])) == []
    assert s.queued() == 0 and not s.tasks


@pytest.mark.parametrize("paused", [True, False])
def test_paused_workers_get_no_new_work(paused):
    s = sched()
    s.handle(S.WorkerPaused(1, paused))
    out = s.handle(S.Submitted(7, [task(0, FN_BYTES)]))
    assert (out == []) == paused


def sched_gpus(workers=2, gpus=("0", "1"), **kw):
    s = S.Scheduler(**kw)
    for r in range(1, workers + 1):
        s.handle(S.WorkerJoined(r, "n1", (r,), 1000, 0.0, gpus))
    s.handle(S.ClientJoined(7))
    return s


def test_multi_core_task_borrows_idle_workers_of_its_node():
    s = sched_gpus(workers=3)
    out = s.handle(S.Submitted(7, [task(0, FN_BYTES, cores=2), task(1)]))
    assert out == [S.SendWork(1, [Work(0, FN, FN_BYTES, b"args0", None, None, (1, 2), ())]),
                   S.SendWork(3, [work(1, FN_BYTES)])]
    assert [w["state"] for w in s.snapshot()["workers"]] == ["busy", "lent", "busy"]
    out = s.handle(S.WorkerDone(1, [ok(0, 1.0, 2.0)]))
    assert out[-1].results[0].info.cores == (1, 2)
    assert [w["state"] for w in s.snapshot()["workers"]] == ["idle", "idle", "busy"]


def test_multi_core_task_waits_for_enough_idle_workers():
    s = sched_gpus(workers=2)
    s.handle(S.Submitted(7, [task(0, FN_BYTES)]))
    assert s.handle(S.Submitted(7, [task(1, cores=2)])) == []   # worker 1 is busy
    out = s.handle(S.WorkerDone(1, [ok(0, 1.0, 2.0)]))
    assert out[0] == S.SendWork(1, [Work(1, FN, None, b"args1", None, None, (1, 2), ())])


def test_gpus_are_leased_from_the_node_inventory_and_returned():
    s = sched_gpus(workers=2)
    out = s.handle(S.Submitted(7, [task(0, FN_BYTES, gpus=2), task(1, gpus=1)]))
    assert out == [S.SendWork(1, [Work(0, FN, FN_BYTES, b"args0", None, None, (), ("0", "1"))])]
    out = s.handle(S.WorkerDone(1, [ok(0, 1.0, 2.0)]))
    assert out[0] == S.SendWork(1, [Work(1, FN, None, b"args1", None, None, (), ("0",))])


def test_tasks_asking_more_cores_or_gpus_than_any_node_has_are_rejected():
    s = sched_gpus(workers=2)
    out = s.handle(S.Submitted(7, [task(0, FN_BYTES, cores=3), task(1, gpus=3)]))
    payloads = [pickle.loads(r.payload) for r in out[0].results]
    assert [r.status for r in out[0].results] == [Status.REJECTED, Status.REJECTED]
    assert "most any node offers is 2" in payloads[0] and "3 GPU(s)" in payloads[1]


def test_events_and_instructions_keep_their_dataclass_behaviour():
    """The cheaper __init__ of colocate.rank0.events builds the same frozen, slotted records."""
    import dataclasses

    from colocate.rank0 import events as E

    kinds = [getattr(E, n) for n in dir(E) if isinstance(getattr(E, n), type)
             and dataclasses.is_dataclass(getattr(E, n))]
    assert len(kinds) >= 28
    for kind in kinds:
        params = dataclasses.fields(kind)
        args = [f"v{i}" for i, f in enumerate(params) if f.default is dataclasses.MISSING]
        a, b = kind(*args), kind(*args)
        assert not hasattr(a, "__dict__"), kind   # (slots)
        assert a == b and hash(a) == hash(b)
        for f in params:   # defaults as declared, positional and keyword alike
            want = f.default if f.default is not dataclasses.MISSING else args[params.index(f)]
            assert getattr(a, f.name) == want, (kind, f.name)
        assert kind(**dict(zip([f.name for f in params], args, strict=False))) == a
        assert repr(a).startswith(kind.__name__ + "(")
        if params:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(a, params[0].name, "x")
    with pytest.raises(TypeError, match="outcomes"):
        E.WorkerDone(1)
    assert E.WorkerDone(1, [], now=2.0) == E.WorkerDone(1, [], 2.0) != E.WorkerDone(1, [])
