"""Object store bandwidth against raw mpi4py, and what passing a large array by reference saves.

Run: ``python bench/store.py [--quick] [--json OUT]`` (``--quick``: fewer sizes and repetitions,
under a minute; the default takes a few minutes). Exit code 0 when it ran (the verdict is
printed, not enforced: numbers depend on the machine and on whoever else uses it), 2 on a set-up
error.

What it measures, in one run on one machine:

* **raw MPI**: ``mpiexec -n 2`` of this script in ``--raw-mpi`` mode: rank 0 ``Send``s a numpy
  buffer of each size to rank 1, which ``Recv``s it into the same buffer every time
  (``raw``, as osu_bw does) or into a new ``np.empty`` each time (``raw fresh``, as a program
  that receives new arrays does). One-way bandwidth, the final acknowledgement amortized over the
  repetitions.
* **store**: a world of one worker rank (``mpiexec -n 2 colocate serve``) and this process as
  its client. ``put`` (each object is freed before the next put, so segments are reused as in a
  steady state; after the first, a put fills the segment reserved ahead for its size, see
  ``colocate/store/putahead.py``), then, in a loop of their own over one stored object, ``get`` (a
  new array) and ``get(out=)`` (into an existing array), through shared memory (client and
  worker on one machine, ``store.transport: auto``) and through TCP (``store.transport: tcp``,
  the path between nodes, here over loopback).
* **by reference vs by value**: one large array feeds N tasks that each sum it; by value every
  task carries the pickled array (client -> rank 0 -> worker -> executor); by reference the
  array is put once and each task carries a ``Ref`` that the executor maps without a copy.

Ratios: ``put`` against ``raw`` (both write into memory that is already there), ``get`` against
``raw fresh`` (both produce a new array), ``get(out=)`` against ``raw``. The target is >= 70 %
for sizes of 1 MiB and more, through shared memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cloudpickle
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _world import (  # noqa: E402
    START_TIMEOUT,
    bench_world,
    clean_env,
    machine,
    median_of,
    write_json,
)

from colocate.testing import kill_tagged, wait_gone  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # executors cannot import this

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "store.json"
KiB, MiB = 1 << 10, 1 << 20
FULL_SIZES = [KiB, 16 * KiB, 256 * KiB, MiB, 4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB]
QUICK_SIZES = [KiB, 64 * KiB, MiB, 16 * MiB, 64 * MiB, 256 * MiB]
TARGET = 0.70
RAW_TIMEOUT = 300.0


def reps_for(size: int, quick: bool) -> int:
    """Repetitions per size: enough bytes to time, fewer for big buffers."""
    budget = (256 if quick else 1024) * MiB
    return max(3 if quick else 5, min(50 if quick else 200, budget // size))


def bandwidth(size: int, seconds: list[float]) -> float:
    """Bytes per second from the median time."""
    return size / statistics.median(seconds)


# ----- raw MPI (runs as `mpiexec -n 2 python bench/store.py --raw-mpi ...`) ----------------------
def raw_mpi_main(sizes: list[int], quick: bool) -> None:
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    rows = []
    for size in sizes:
        reps = reps_for(size, quick)
        row = {"size": size, "reps": reps}
        buf = np.ones(size, np.uint8) if rank == 0 else np.empty(size, np.uint8)
        for mode in ("raw", "raw_fresh"):
            times = []
            for _ in range(3):   # trials; the median trial's per-message time counts
                comm.Barrier()
                start = time.perf_counter()
                for _ in range(reps):
                    if rank == 0:
                        comm.Send(buf, 1)
                    else:
                        comm.Recv(np.empty(size, np.uint8) if mode == "raw_fresh" else buf, 0)
                if rank == 1:
                    comm.send(None, 0)
                else:
                    comm.recv(source=1)
                times.append((time.perf_counter() - start) / reps)
            row[mode] = bandwidth(size, times)
        rows.append(row)
    if rank == 0:
        print(json.dumps(rows), flush=True)


def run_raw(sizes: list[int], quick: bool, tag: str) -> list[dict]:
    cmd = ["mpiexec", "-n", "2", sys.executable, str(Path(__file__).resolve()), "--raw-mpi",
           "--sizes", ",".join(map(str, sizes))] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, env=clean_env(tag), capture_output=True, text=True,
                          timeout=RAW_TIMEOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"raw MPI run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----- the store ---------------------------------------------------------------------------------
def total(a):
    return float(a.sum())


def measure_store(address: Path, sizes: list[int], quick: bool, transport: str) -> list[dict]:
    """Puts and gets through a client of its own, whose ``store.transport`` is ``transport``."""
    import colocate
    config = address.parent / f"store-{transport}.yaml"
    config.write_text(f"store:\n  transport: {transport}\n")
    with colocate.Executor(address=address, config=str(config)) as ex:
        return _measure_store(ex, sizes, quick)


def _measure_store(ex, sizes: list[int], quick: bool) -> list[dict]:
    rows = []
    for size in sizes:
        reps = reps_for(size, quick)
        src = np.ones(size, np.uint8)
        out = np.empty(size, np.uint8)
        puts, gets, gets_out = [], [], []
        ex.free(ex.put(src))   # warm: connection, a pooled segment of this size
        ex.status()
        for _ in range(reps):   # puts, each object freed before the next (a time-step loop)
            t0 = time.perf_counter()
            ref = ex.put(src)
            puts.append(time.perf_counter() - t0)
            ex.free(ref)
            ex.status()   # a round trip through rank 0: the free has been passed on
        # Gets of one object, in a loop of their own: nothing else (such as the segment a put
        # reserves ahead for the next one) shares the two cores with them.
        ref = ex.put(src)
        ex.status()
        for _ in range(reps):
            t1 = time.perf_counter()
            got = ref.get()
            t2 = time.perf_counter()
            ref.get(out=out)
            t3 = time.perf_counter()
            assert got.nbytes == size and out[-1] == 1
            del got
            gets.append(t2 - t1)
            gets_out.append(t3 - t2)
        ex.free(ref)
        ex.status()
        rows.append({"size": size, "reps": reps, "put": bandwidth(size, puts),
                     "get": bandwidth(size, gets), "get_out": bandwidth(size, gets_out),
                     "put_ms": statistics.median(puts) * 1e3,
                     "get_ms": statistics.median(gets) * 1e3})
    return rows


def by_reference(ex, size: int, tasks: int) -> dict:
    a = np.random.default_rng(0).random(size // 8)
    expect = float(a.sum())
    ex.submit(total, np.ones(4)).result(60)   # warm: function cached, executor up
    t0 = time.perf_counter()
    by_value = list(ex.map(total, [a] * tasks))
    t1 = time.perf_counter()
    ref = ex.put(a)
    t2 = time.perf_counter()
    by_ref = list(ex.map(total, [ref] * tasks))
    t3 = time.perf_counter()
    ex.free(ref)
    assert all(abs(v - expect) < 1e-6 * abs(expect) for v in by_value + by_ref)
    value_s, ref_s = t1 - t0, t3 - t1
    return {"array_bytes": a.nbytes, "tasks": tasks, "by_value_s": value_s,
            "by_reference_s": ref_s, "put_s": t2 - t1, "saved_s": value_s - ref_s,
            "speedup": value_s / ref_s}


# ----- report ------------------------------------------------------------------------------------
def human(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"


def gbs(x: float) -> str:
    return f"{x / 1e9:.2f}"


def ratios_of(r: dict, s: dict) -> dict:
    """Store against raw MPI, like with like (see the module's docstring)."""
    return {"put": s["put"] / r["raw"], "get": s["get"] / r["raw_fresh"],
            "get_out": s["get_out"] / r["raw"]}


def medians(rounds: list[tuple[list, list, list]]) -> tuple[list, list, list]:
    """Per size and figure, the median over rounds; a ratio is the median of each round's own
    ratio (raw MPI and the store measured side by side in that round)."""
    raw, shm, tcp = [], [], []
    for i in range(len(rounds[0][0])):
        for out, kind in ((raw, 0), (shm, 1), (tcp, 2)):
            out.append({**median_of([rd[kind][i] for rd in rounds]), "rounds": len(rounds)})
        shm[-1]["ratios"] = median_of([ratios_of(rd[0][i], rd[1][i]) for rd in rounds])
    return raw, shm, tcp


def table(raw: list[dict], shm: list[dict], tcp: list[dict]) -> tuple[str, dict]:
    lines = ["| size | raw MPI | raw MPI fresh | put shm | get shm | get(out=) shm | put tcp "
             "| get tcp | put/raw | get/raw fresh | get(out=)/raw |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    worst = {"put": None, "get": None, "get_out": None}
    for r, s, t in zip(raw, shm, tcp, strict=True):
        ratios = s.setdefault("ratios", ratios_of(r, s))
        if r["size"] >= MiB:
            for k, v in ratios.items():
                worst[k] = v if worst[k] is None else min(worst[k], v)
        lines.append(
            f"| {human(r['size'])} | {gbs(r['raw'])} | {gbs(r['raw_fresh'])} | {gbs(s['put'])} "
            f"| {gbs(s['get'])} | {gbs(s['get_out'])} | {gbs(t['put'])} | {gbs(t['get'])} "
            f"| {ratios['put']:.0%} | {ratios['get']:.0%} | {ratios['get_out']:.0%} |")
    return "\n".join(lines), worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repetitions (<60 s)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    ap.add_argument("--rounds", type=int, default=None,
                    help="repeat every measurement N times and report medians (default 3; 1 "
                         "with --quick): this VM's bandwidth drifts by 30 %% between minutes")
    ap.add_argument("--raw-mpi", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_mpi:
        raw_mpi_main([int(s) for s in args.sizes.split(",")], args.quick)
        return 0

    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    tag = f"bench-store-{uuid.uuid4().hex[:10]}"
    started = time.time()
    import colocate
    rounds_n = args.rounds or (1 if args.quick else 3)
    rounds: list[tuple[list, list, list]] = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        world = bench_world(2, Path(tmp))
        try:
            world.wait_ready(START_TIMEOUT)
            # Size by size, raw MPI and the store close together in time: the load of a
            # shared machine drifts, and ratios should compare like with like.
            for n in range(rounds_n):
                raw, shm, tcp = [], [], []
                for size in sizes:
                    print(f"round {n + 1}/{rounds_n}, {human(size)}: raw mpi4py Send/Recv, "
                          "store through shared memory, store through TCP ...", flush=True)
                    raw += run_raw([size], args.quick, tag)
                    shm += measure_store(world.address, [size], args.quick, "auto")
                    tcp += measure_store(world.address, [size], args.quick, "tcp")
                rounds.append((raw, shm, tcp))
            print("one array feeding many tasks ...", flush=True)
            with colocate.Executor(address=world.address) as ex:
                feed = by_reference(ex, (16 if args.quick else 64) * MiB,
                                    8 if args.quick else 16)
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as e:
            print(f"set-up error: {e}", file=sys.stderr)
            world.stop(sweep=True)
            kill_tagged(tag)
            return 2
        finally:
            code = world.stop(sweep=True)
            left = wait_gone(world.tag) + wait_gone(tag)
    raw, shm, tcp = medians(rounds) if len(rounds) > 1 else rounds[0]
    text, worst = table(raw, shm, tcp)
    met = all(v is not None and v >= TARGET for v in worst.values())
    verdict = "PASS" if met else "MISS"
    print()
    print(f"Bandwidth in GB/s (1 GB = 1e9 bytes), median of {rounds_n} round(s); ratios through "
          "shared memory (the median of each round's own ratio).")
    print(text)
    print()
    print(f"{feed['tasks']} tasks summing one {human(feed['array_bytes'])} array: by value "
          f"{feed['by_value_s']:.2f} s, by reference {feed['by_reference_s']:.2f} s (put "
          f"{feed['put_s'] * 1e3:.0f} ms included): {feed['saved_s']:.2f} s saved, "
          f"{feed['speedup']:.1f}x")
    print(f"{verdict}: worst ratio for >= 1 MiB: put {worst['put']:.0%}, get {worst['get']:.0%}, "
          f"get(out=) {worst['get_out']:.0%} (target {TARGET:.0%})")
    result = {"machine": machine(), "quick": args.quick, "started": started,
              "seconds": time.time() - started, "rounds": rounds, "raw": raw, "shm": shm,
              "tcp": tcp,
              "by_reference": feed, "table": text,
              "verdict": {"result": verdict, "target": TARGET, "worst": worst},
              "world_exit_code": code, "leftover_processes": [p.pid for p in left]}
    write_json(args.json, result, indent=1)
    print(f"({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
