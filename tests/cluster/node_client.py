"""A client that runs on one node of the virtual cluster (via on.sh) and prints JSON.

    python node_client.py ACTION ADDRESS_FILE [ARGS...]

Actions (each prints one JSON object on its last line of stdout):
  where ADDR               this client's node, and the node of 3 tasks run side by side
  lease ADDR NODE          get a worker slot on NODE leased to this client; report its tasks
  store ADDR NODE          put arrays on NODE, get them back here; sha256 of each both ways
  wrong-token ADDR         connect with a token one character off; the error it gets
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time
import uuid

import numpy as np

import colocate


def _host(_=None):
    import socket
    import time
    time.sleep(1.0)
    return socket.gethostname()


def where(addr: str) -> dict:
    with colocate.Executor(address=addr) as ex:
        futs = [ex.submit(_host, i) for i in range(3)]
        got = [(f.result(timeout=60), f.info.node, f.info.rank) for f in futs]
    return {"me": socket.gethostname(), "tasks": got}


def lease(addr: str, node: str) -> dict:
    """Steer a lease to a worker on ``node``: a task with a Ref there caches the function there.

    A lone task goes to the worker with the function cached (placement), and a client that sends
    lone tasks gets that worker leased (the scheduler); tasks then go straight to it.
    """
    marker = uuid.uuid4().hex   # a function no worker has cached yet

    def probe(x, _m=marker):
        import socket
        return socket.gethostname(), (x if isinstance(x, int) else int(x[0]))

    with colocate.Executor(address=addr) as ex:
        ref = ex.put(np.arange(4), node=node)
        first = ex.submit(probe, ref)
        first.result(timeout=60)
        out, leased = [], None
        for i in range(40):
            f = ex.submit(probe, i)
            out.append([*f.result(timeout=60), f.info.node, f.info.rank])
            if leased is None:
                leased = next((w for w in ex.status()["workers"] if w["leased_to"] is not None),
                              None)
            elif i >= 10:
                break
        return {"me": socket.gethostname(), "first": [first.info.node, first.info.rank],
                "leased": leased, "tasks": out}


DTYPES = ("uint8", "int32", "float64", "complex128", "bool")


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8)).hexdigest()


def store(addr: str, node: str) -> dict:
    rng = np.random.default_rng(7)
    rows = []
    with colocate.Executor(address=addr) as ex:
        for dtype in DTYPES:
            for n in (1, 4099, 1 << 20):
                a = (rng.integers(0, 2, n).astype(bool) if dtype == "bool"
                     else rng.integers(0, 255, n).astype(dtype))
                ref = ex.put(a, node=node)
                back = ref.get()
                rows.append({"dtype": dtype, "n": n, "node": ref.node, "sent": digest(a),
                             "back": digest(back), "back_dtype": str(back.dtype),
                             "shape": list(back.shape)})
                ex.free(ref)
    return {"me": socket.gethostname(), "rows": rows}


def wrong_token(addr: str) -> dict:
    data = json.load(open(addr))
    data["token"] = ("0" if data["token"][0] != "0" else "1") + data["token"][1:]
    bad = f"/tmp/colocate-cluster-wrong-{uuid.uuid4().hex[:8]}.address"
    with open(bad, "w") as f:
        json.dump(data, f)
    started = time.monotonic()
    try:
        with colocate.Executor(address=bad):
            return {"me": socket.gethostname(), "error": None}
    except Exception as e:   # noqa: BLE001 - the test asserts on the type
        return {"me": socket.gethostname(), "error": type(e).__name__, "message": str(e),
                "seconds": time.monotonic() - started}
    finally:
        import os
        os.unlink(bad)


if __name__ == "__main__":
    action, *args = sys.argv[1:]
    result = {"where": where, "lease": lease, "store": store, "wrong-token": wrong_token}[
        action](*args)
    print(json.dumps(result))
