"""A stand-in for the `colocate` command line, to test the launchers without the runtime.

    fake_colocate.py serve --address-file PATH [--config FILE]   (under mpiexec or srun)
    fake_colocate.py run BATCH --address PATH
    fake_colocate.py stop --address PATH

`serve` gathers every rank's host, CPU affinity and COLOCATE_CO_LOCATION_SPARE_CORES at rank 0,
writes them as JSON to the address file (mode 0600), and runs until `stop` (a PATH.stop file) or
SIGTERM, then writes PATH.ended ("stop" or "TERM") and all ranks exit 0. `run` records its own
affinity and the world's in PATH.run.json, then "works" for FAKE_RUN_SECONDS (default 1) and
exits 0, or 1 if the world ends first (interrupted), 2 if the batch file does not exist.
"""

import json
import os
import signal
import socket
import sys
import time


def _arg(name, default=None):
    if name in sys.argv:
        return sys.argv[sys.argv.index(name) + 1]
    return default


def serve():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    got = []
    signal.signal(signal.SIGTERM, lambda s, f: got.append("TERM"))
    me = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(),
          "affinity": sorted(os.sched_getaffinity(0)),
          "spare_env": os.environ.get("COLOCATE_CO_LOCATION_SPARE_CORES")}
    ranks = comm.gather(me, root=0)
    path = _arg("--address-file")
    if rank == 0:
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"size": comm.Get_size(), "ranks": ranks}, f)
        os.replace(tmp, path)
        print(f"fake serve: ready, {comm.Get_size()} ranks", flush=True)
        while not got and not os.path.exists(path + ".stop"):
            time.sleep(0.1)
        why = got[0] if got else "stop"
        if why == "TERM":
            time.sleep(float(os.environ.get("FAKE_DRAIN_SECONDS", "0.5")))
        with open(path + ".ended", "w") as f:
            f.write(why)
        for r in range(1, comm.Get_size()):
            comm.send("stop", dest=r, tag=7)
        print(f"fake serve: ended by {why}", flush=True)
    else:
        while not comm.Iprobe(source=0, tag=7):
            time.sleep(0.1)
        comm.recv(source=0, tag=7)
    return 0


def run():
    batch = sys.argv[2]
    path = _arg("--address")
    if not os.path.exists(batch):
        print(f"fake run: no batch file {batch}", file=sys.stderr)
        return 2
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return 3
        time.sleep(0.1)
    with open(path) as f:
        world = json.load(f)
    out = {"batch": batch, "client_affinity": sorted(os.sched_getaffinity(0)), "world": world}
    with open(path + ".run.json", "w") as f:
        json.dump(out, f)
    end = time.monotonic() + float(os.environ.get("FAKE_RUN_SECONDS", "1"))
    while time.monotonic() < end:
        if os.path.exists(path + ".ended"):
            print("fake run: interrupted", flush=True)
            return 1
        time.sleep(0.1)
    print("fake run: done", flush=True)
    return 0


def stop():
    path = _arg("--address")
    open(path + ".stop", "w").close()
    deadline = time.monotonic() + 20
    while not os.path.exists(path + ".ended"):
        if time.monotonic() > deadline:
            return 1
        time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit({"serve": serve, "run": run, "stop": stop}[sys.argv[1]]())
