"""A client that starts a local world and leaves it by the path named on its command line.

    python local_world_client.py MODE [ARRAY_MIB]

Modes: ``normal`` (puts, gets and a task, then the end of the ``with`` block and a normal
exit), ``raise-in-with`` (raises inside the block while tasks run), ``raise-at-exit`` (raises at
the top level with the executor never shut down), ``os-exit`` (``os._exit`` while tasks and
stored objects are in flight), ``wait`` (prints ``ready`` with tasks in flight and sleeps, to be
killed by a signal). Prints ``world DIR`` once the world is up, ``ready`` once work is in flight.
"""

import os
import sys
import time

import numpy as np

import colocate


def total(a):
    return float(a.sum())


def main() -> None:
    mode = sys.argv[1]
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    array = np.arange(mib * 2**20 // 8, dtype=np.float64)
    if mode == "normal":
        with colocate.Executor(max_workers=1) as ex:
            print("world", ex.world.dir, flush=True)
            refs = [ex.put(array) for _ in range(3)]
            for ref in refs:
                assert ex.get(ref).shape == array.shape
            assert ex.submit(total, refs[0]).result(timeout=120) == float(array.sum())
        return
    if mode == "raise-in-with":
        with colocate.Executor(max_workers=1) as ex:
            print("world", ex.world.dir, flush=True)
            ex.put(array)
            futures = [ex.submit(time.sleep, 0.5) for _ in range(2)]
            print("ready", flush=True)
            raise RuntimeError("raised inside the with block")
    ex = colocate.Executor(max_workers=1)
    print("world", ex.world.dir, flush=True)
    refs = [ex.put(array) for _ in range(2)]
    futures = [ex.submit(time.sleep, 120) for _ in range(3)]
    futures.append(ex.submit(total, refs[0]))
    print("ready", flush=True)
    if mode == "raise-at-exit":
        raise RuntimeError("raised at the top level; the executor was never shut down")
    if mode == "os-exit":
        os._exit(3)
    time.sleep(600)
    del futures


if __name__ == "__main__":
    main()
