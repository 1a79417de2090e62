"""Pickling of calls and results: plain values take the C pickler, the rest cloudpickle."""

import pickle

import pytest

from colocate import messages
from colocate.store import Ref


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
