"""Pickling of calls and results: plain values take the C pickler, the rest cloudpickle."""

import pickle

import pytest

from colocate.store import Ref
from colocate.wire import messages


@pytest.mark.parametrize("args, kwargs", [((1, 2.5, "s", b"b", None, True, 1j), {"k": 3}),
                                          ((), {})])
def test_plain_calls_take_the_c_pickler_and_round_trip(args, kwargs):
    data = messages.dumps_plain_call(args, kwargs)
    assert data is not None and pickle.loads(data) == (args, kwargs)


REF = Ref("w", 65536, "n", 1, 8, ("pickle", "int"), None)


@pytest.mark.parametrize("args, kwargs", [(([1],), {}), ((1,), {"f": len}),
                                          ((lambda: 1,), {}), ((1,), {"r": None, "x": (1,)}),
                                          ((REF,), {})])
def test_anything_else_is_left_to_cloudpickle(args, kwargs):
    # Containers may hold functions or Refs (which must be seen while pickling): not plain.
    assert messages.dumps_plain_call(args, kwargs) is None


def test_results_pickle_the_same_either_way():
    for value in (3, 2.5, "x", None, b"\0", [1, 2], {"a": (1,)}, lambda: 7):
        back = pickle.loads(messages.dumps(value))
        assert back() == 7 if callable(back) else back == value


# ----- the wire form of the per-task messages -----------------------------------------------------
M = messages
WIRE_CASES = [
    M.Submit([M.TaskMsg(1, b"h" * 16, b"fn", b"args", M.TaskOptions(), None),
              M.TaskMsg(2, b"h" * 16, None, b"args",
                        M.TaskOptions(5.0, 2, 3, 1 << 20, 1, ("mod.Err",)), "node01")]),
    M.Results([M.ResultMsg(1, M.Status.OK, b"p", M.TaskInfo("n", 1, (0, 1), 1.0, 2.0, 1)),
               M.ResultMsg(2, M.Status.LOST, b"why", None)]),
    M.Dispatch([M.Work(7, b"h" * 16, None, b"a", None, None),
                M.Work(8, b"h" * 16, b"fn", b"a", 2.0, 1 << 30, (2, 3), ("0",))]),
    M.Done([M.Outcome(7, M.Status.TIMEOUT, b"p", 1.0, 2.0),
            M.Outcome(8, 0, b"p", 1.0, 2.0, "mod.Err", ((65536, 8),))]),
]


@pytest.mark.parametrize("msg", WIRE_CASES, ids=lambda m: type(m).__name__)
def test_per_task_messages_cross_the_wire_as_plain_tuples_and_come_back_equal(msg):
    wire = M.to_wire(msg)
    data = pickle.dumps(wire, protocol=M.PROTOCOL)
    # Only builtins inside: no class is looked up by name when it is unpickled.
    assert b"colocate" not in data
    back = M.from_wire(pickle.loads(data))
    assert type(back) is type(msg) and back == msg
    for new, old in zip(back[0], msg[0], strict=True):
        assert type(new) is type(old)
        assert [type(f) for f in new if isinstance(f, tuple)] == \
            [type(f) for f in old if isinstance(f, tuple)]


def test_other_messages_cross_the_wire_as_themselves():
    for msg in (M.Cancel([1, 2]), M.Heartbeat(), M.FreeRefs([3])):
        assert M.to_wire(msg) is msg and M.from_wire(msg) is msg
