"""Across two nodes of the virtual cluster: object store against raw MPI, and a task round trip.

Run (as root, with the cluster of tests/cluster/up.sh up)::

    sudo bash tests/cluster/up.sh 3
    python bench/cluster.py [--quick] [--json OUT]

The nodes are network and UTS namespaces of one machine (tests/cluster/up.sh): their traffic
crosses veth pairs and a bridge, in the kernel, not a physical network. What the numbers show is
the software path of each side (TCP framing and copies, MPI over UCX's TCP transport), on a link
far faster than most real ones and with every process sharing this machine's cores.

What it measures, in one run, between vnode1 and vnode2:

* **raw MPI**: ``srun`` of this script in ``--raw-mpi`` mode, rank 0 on vnode1 and rank 1 on
  vnode2, MPICH over UCX with ``UCX_TLS=self,tcp`` (else UCX would see one machine and use
  shared memory between the namespaces): ``Send`` of a numpy buffer of each size into the same
  buffer (one-way bandwidth, the final acknowledgement amortized), and the round trip of a small
  pickled object (``send``/``recv``).
  Rank 0 runs on CPU 0, rank 1 on CPU 1 (see ``PINNING``).
* **colocate**: a world of rank 0 on vnode1 and one worker rank on vnode2 (``srun``), and a
  client on vnode1 (``--client`` mode, through tests/cluster/on.sh): ``put(a, node="vnode2")``
  and ``get`` of the same sizes over the store's TCP data port; and the round trip of a no-op
  task sent one at a time (the client gets the worker slot leased: client on vnode1 -> worker
  rank on vnode2 -> executor -> back).

Exit code 0 when it ran (numbers are printed, not judged), 2 when the cluster is not up or a step
failed (the message says which).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _world import machine, write_json  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # executors cannot import this

DEFAULT_JSON = HERE / "results" / "cluster.json"
CONF = Path(os.environ.get("COLOCATE_CLUSTER_STATE", "/var/tmp/colocate-cluster")) / "slurm.conf"
ON = REPO / "tests" / "cluster" / "on.sh"
MiB = 1 << 20
FULL_SIZES = [MiB, 16 * MiB, 64 * MiB, 256 * MiB]
QUICK_SIZES = [MiB, 16 * MiB, 64 * MiB]
A, B = "vnode1", "vnode2"
STEP_TIMEOUT = 300.0
# PINNING: every virtual node claims all of this machine's CPUs, so Slurm binds the first task of
# each node to CPU 0 on every node: two "nodes" then share one CPU, and a round trip waits for the
# scheduler (measured: 12 ms instead of tens of us). The sender side (raw rank 0, the client) runs
# on CPU 0 and the receiver side (raw rank 1; the worker rank, its executor, and the idle rank 0)
# on CPU 1, as on two real nodes.


def reps_for(size: int, quick: bool) -> int:
    budget = (256 if quick else 1024) * MiB
    return max(3, min(20 if quick else 50, budget // size))


def env(**extra: str) -> dict[str, str]:
    drop = ("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "SLURM_", "COLOCATE_")
    out = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    path = [str(REPO), os.environ.get("PYTHONPATH")]
    out.update({"SLURM_CONF": str(CONF), "UCX_TLS": "self,tcp",
                "PYTHONPATH": os.pathsep.join(filter(None, path)),
                "COLOCATE_CO_LOCATION_SPARE_CORES": "all", "COLOCATE_GUARD_ENABLED": "false",
                "COLOCATE_LOG": "warning"})
    out.update(extra)
    return out


# ----- raw MPI (srun, one rank on each node) -----------------------------------------------------
def raw_mpi_main(sizes: list[int], quick: bool) -> None:
    import socket

    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    os.sched_setaffinity(0, {rank % os.cpu_count()})   # see PINNING
    hosts = comm.allgather(socket.gethostname())
    rows = []
    for size in sizes:
        reps = reps_for(size, quick)
        buf = np.ones(size, np.uint8) if rank == 0 else np.empty(size, np.uint8)
        trials = []
        for _ in range(3):
            comm.Barrier()
            start = time.perf_counter()
            for _ in range(reps):
                if rank == 0:
                    comm.Send(buf, 1)
                else:
                    comm.Recv(buf, 0)
            if rank == 1:
                comm.send(None, 0)
            else:
                comm.recv(source=1)
            trials.append((time.perf_counter() - start) / reps)
        rows.append({"size": size, "reps": reps, "raw": size / statistics.median(trials)})
    rtts = []
    for _ in range(2000 if not quick else 500):
        t0 = time.perf_counter()
        if rank == 0:
            comm.send(("x", 1), 1)
            comm.recv(source=1)
        else:
            comm.send(comm.recv(source=0), 0)
        rtts.append(time.perf_counter() - t0)
    if rank == 0:
        print(json.dumps({"hosts": hosts, "rows": rows,
                          "rtt_us": statistics.median(rtts) * 1e6}), flush=True)


def run_raw(sizes: list[int], quick: bool, tmp: Path) -> dict:
    hosts = tmp / "raw.hosts"
    hosts.write_text(f"{A}\n{B}\n")
    cmd = ["srun", "--distribution=arbitrary", "--ntasks=2", "--mpi=pmi2", "--time=10",
           "--exclusive", "--cpus-per-task=2", "--cpu-bind=none", sys.executable,
           str(Path(__file__).resolve()), "--raw-mpi", "--sizes", ",".join(map(str, sizes)),
           *(["--quick"] * quick)]
    proc = subprocess.run(cmd, env=env(SLURM_HOSTFILE=str(hosts)), capture_output=True,
                          text=True, timeout=STEP_TIMEOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"raw MPI step failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----- colocate (client on vnode1, worker rank on vnode2) ----------------------------------------
def noop():
    return None


def client_main(address: str, sizes: list[int], quick: bool) -> None:
    import socket

    import colocate
    os.sched_setaffinity(0, {0})   # see PINNING
    rows = []
    with colocate.Executor(address=address) as ex:
        for size in sizes:
            reps = reps_for(size, quick)
            src = np.ones(size, np.uint8)
            ex.free(ex.put(src, node=B))   # warm: the data connection
            puts, gets = [], []
            for _ in range(reps):
                t0 = time.perf_counter()
                ref = ex.put(src, node=B)
                puts.append(time.perf_counter() - t0)
                t1 = time.perf_counter()
                got = ref.get()
                gets.append(time.perf_counter() - t1)
                assert got.nbytes == size and got[-1] == 1 and ref.node == B
                del got
                ex.free(ref)
            rows.append({"size": size, "reps": reps, "put": size / statistics.median(puts),
                         "get": size / statistics.median(gets)})
        for _ in range(50):   # warm: function cached, the lease granted
            ex.submit(noop).result()
        rtts = []
        for _ in range(1000 if not quick else 300):
            t0 = time.perf_counter()
            f = ex.submit(noop)
            f.result()
            rtts.append(time.perf_counter() - t0)
        worker = f.info.node
        leased = [w["node"] for w in ex.status()["workers"] if w["leased_to"] is not None]
    print(json.dumps({"client": socket.gethostname(), "worker": worker, "leased": leased,
                      "rows": rows, "rtt_us": statistics.median(rtts) * 1e6}), flush=True)


def run_colocate(sizes: list[int], quick: bool, tmp: Path) -> dict:
    hosts = tmp / "world.hosts"
    hosts.write_text(f"{A}\n{B}\n")
    address = tmp / "world.address"
    log = open(tmp / "world.log", "wb")
    world = subprocess.Popen(
        ["srun", "--distribution=arbitrary", "--ntasks=2", "--mpi=pmi2", "--time=10",
         "--exclusive", "--cpus-per-task=2", "--cpu-bind=none", "--job-name=bench-cluster",
         sys.executable, "-m", "colocate", "serve", "--address-file", str(address)],
        env=env(SLURM_HOSTFILE=str(hosts), COLOCATE_CO_LOCATION_SPARE_CORES="1-1"), stdout=log,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, delay = time.monotonic() + 90, 0.05
        while not address.exists():
            if world.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the world did not come up:\n"
                                   f"{(tmp / 'world.log').read_text()[-2000:]}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        cmd = ["bash", str(ON), A, sys.executable, str(Path(__file__).resolve()), "--client",
               str(address), "--sizes", ",".join(map(str, sizes)), *(["--quick"] * quick)]
        proc = subprocess.run(cmd, env=env(), capture_output=True, text=True,
                              timeout=STEP_TIMEOUT, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"the client on {A} failed ({proc.returncode}):\n"
                               f"{proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run([sys.executable, "-m", "colocate", "stop", "--address", str(address)],
                       env=env(), capture_output=True, timeout=60)
        try:
            world.wait(60)
        except subprocess.TimeoutExpired:
            subprocess.run(["scancel", "--name=bench-cluster"], env=env(), timeout=30)
            world.wait(30)
        log.close()


# ----- report ------------------------------------------------------------------------------------
def human(n: int) -> str:
    return f"{n // MiB} MiB"


def table(raw: dict, co: dict) -> str:
    lines = [f"between {A} and {B} (namespaces of one machine; MPI: UCX over TCP)",
             f"{'size':>8} {'raw MPI Send':>13} {'put':>9} {'get':>9} {'put/raw':>8} "
             f"{'get/raw':>8}"]
    for r, c in zip(raw["rows"], co["rows"], strict=True):
        lines.append(f"{human(r['size']):>8} {r['raw'] / 1e9:>9.2f} GB/s "
                     f"{c['put'] / 1e9:>4.2f} GB/s {c['get'] / 1e9:>4.2f} GB/s "
                     f"{c['put'] / r['raw']:>7.0%} {c['get'] / r['raw']:>7.0%}")
    lines.append(f"round trip: raw MPI send/recv {raw['rtt_us']:.0f} us; colocate no-op task, "
                 f"client on {co['client']}, worker on {co['worker']} "
                 f"(leased: {', '.join(co['leased']) or 'no'}) {co['rtt_us']:.0f} us")
    return "\n".join(lines)


def cluster_up() -> str | None:
    """``None`` when vnode1 and vnode2 are idle, else why not."""
    if not CONF.exists():
        return f"no virtual cluster ({CONF} missing): run `sudo bash tests/cluster/up.sh 3`"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=env(),
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot ask the cluster's Slurm ({e}): is tests/cluster/up.sh up?"
    states = dict(line.split() for line in out.splitlines() if line.strip())
    if states.get(A) != "idle" or states.get(B) != "idle":
        return (f"expected {A} and {B} idle, found {states or 'no nodes'}: run "
                f"`sudo bash tests/cluster/up.sh 3`")
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    ap.add_argument("--raw-mpi", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes
             else QUICK_SIZES if args.quick else FULL_SIZES)
    if args.raw_mpi:
        raw_mpi_main(sizes, args.quick)
        return 0
    if args.client:
        client_main(args.client, sizes, args.quick)
        return 0
    why = cluster_up()
    if why:
        print(f"bench/cluster.py: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as d:
        try:
            raw = run_raw(sizes, args.quick, Path(d))
            co = run_colocate(sizes, args.quick, Path(d))
        except (RuntimeError, subprocess.SubprocessError, OSError) as e:
            print(f"bench/cluster.py: {e}", file=sys.stderr)
            return 2
    print(table(raw, co))
    data = {"machine": machine(), "nodes": [A, B], "quick": args.quick,
            "note": "virtual nodes: network and UTS namespaces of one machine "
                    "(tests/cluster/up.sh), veth pairs and a bridge",
            "command": "python bench/cluster.py" + (" --quick" if args.quick else ""),
            "raw_mpi": raw, "colocate": co}
    write_json(args.json, data, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
