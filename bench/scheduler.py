"""Rank 0's pure scheduler at cluster scale: decisions per second, memory, and rare events, by W.

Run: ``python bench/scheduler.py [--quick] [--workers 1,16,256,4096,65536] [--mixes ...]
[--seconds S] [--json OUT]`` (a few minutes with the defaults; ``--quick``: small worlds, a few
seconds, the suite's smoke test). Exit code 0 when it ran, whether or not the targets were met.

No MPI and no processes: the real :class:`colocate.rank0.scheduler.Scheduler` is driven event by
event, as the server loop drives it, with simulated one-core workers (``WorkerJoined``) on nodes of
64 cores (node budget 32 GiB for functions; every fourth node has 4 GPUs) and one client. A
*decision* is a task's ``Submitted`` and its ``WorkerDone``: the bench submits batches of 64
tasks, answers every ``SendWork`` with a ``WorkerDone`` of OK outcomes (1 ms each, so short
functions are sent ahead as in a real world), and counts tasks per second of wall time until
``--seconds`` have passed. The task messages are built before the clock starts (the server
decodes them in its loop, not in the scheduler); the outcomes inside it.

Mixes (each task of a batch):

``noop``      one core, nothing else;
``cores``     ``cores=min(4, W)`` (it runs alone, on 3 lent cores of its node);
``memory``    ``memory=1 GiB`` (32 such tasks fill a node's budget);
``gpu``       ``gpus=1`` (only every fourth node has GPUs);
``locality``  its Ref argument lives on one of up to 16 nodes (``prefer``), stored there first;
``mix``       the five above in turn.

Per W it also measures, on the ``noop`` world: rank-0 memory per worker (``tracemalloc``, the
scheduler's allocations while W workers join, divided by W; below 64 workers that includes
the books of a whole node, so the target is checked from W = 64 on) and per queued task
(every worker busy, then 10,000 more tasks, built inside the window: rank 0 holds their decoded
messages too);
the time of one ``WorkerGone`` (a rank with a running task and its share of ``--objects``
stored objects, 100,000 by default spread over the ranks, at least one each; median of 5) and
of pausing all
ranks of one node (up to 64 ``WorkerPaused`` events).

Targets (issue 17): >= 100,000 decisions/s for ``noop`` at every W, within 1.5x between the
smallest and largest W; the other mixes within 3x of ``noop`` at the same W; <= 2 KiB of rank-0
memory per worker. The verdict says PASS or MISS per target and does not change the exit code.
``--rounds N`` runs everything N times in turn and reports the median of each cell (and each
round's own table and verdict: the targets are for one run). Results: a table on stdout, JSON
in ``bench/results/scheduler.json`` (the medians, and every round under ``rounds``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _world import machine, write_json  # noqa: E402

from colocate.rank0 import scheduler as S  # noqa: E402
from colocate.wire.messages import Outcome, Status, TaskMsg, TaskOptions  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "scheduler.json"
GiB = 1 << 30
CORES_PER_NODE = 64
NODE_BUDGET = 32 * GiB
GPUS = ("0", "1", "2", "3")
BATCH = 64
CLIENT = 1
FN = b"f" * 16
MIXES = ("noop", "cores", "memory", "gpu", "locality", "mix")
FULL_WORKERS = (1, 16, 256, 4096, 65536)
QUICK_WORKERS = (1, 64, 1024)
TARGET_RATE, TARGET_SPREAD, TARGET_MIX, TARGET_BYTES = 100_000, 1.5, 3.0, 2048


def node_of(rank: int) -> str:
    return f"n{(rank - 1) // CORES_PER_NODE:05d}"


def join(s: S.Scheduler, workers: int, gpu_nodes: bool = True) -> None:
    """Let ``workers`` one-core workers join, 64 to a node (every fourth node with GPUs)."""
    for rank in range(1, workers + 1):
        node = node_of(rank)
        gpus = GPUS if gpu_nodes and int(node[1:]) % 4 == 0 else ()
        s.handle(S.WorkerJoined(rank, node, (rank % CORES_PER_NODE,), NODE_BUDGET, 0.0, gpus,
                                machine=node))


def world(workers: int, gpu_nodes: bool = True) -> S.Scheduler:
    """A scheduler that has seen ``workers`` one-core workers join, and one client."""
    s = S.Scheduler()
    join(s, workers, gpu_nodes)
    s.handle(S.ClientJoined(CLIENT))
    return s


def options(mix: str, i: int, workers: int, homes: list[str]) -> tuple[TaskOptions, str | None]:
    if mix == "mix":
        mix = MIXES[i % 5]
    if mix == "cores":
        return TaskOptions(cores=min(4, workers)), None
    if mix == "memory":
        return TaskOptions(memory=GiB), None
    if mix == "gpu":
        return TaskOptions(gpus=1), None
    if mix == "locality":
        return TaskOptions(), homes[i % len(homes)]
    return TaskOptions(), None


def batches(mix: str, workers: int, homes: list[str], count: int) -> list[list[TaskMsg]]:
    out = []
    for b in range(count):
        msgs = []
        for i in range(BATCH):
            opts, prefer = options(mix, b * BATCH + i, workers, homes)
            msgs.append(TaskMsg(b * BATCH + i, FN, None, b"", opts, prefer))
        out.append(msgs)
    return out


def place_homes(s: S.Scheduler, workers: int) -> list[str]:
    """Store one 1 MiB object on each of up to 16 nodes; the locality tasks prefer them."""
    nodes = sorted({node_of(r) for r in range(1, workers + 1)})
    homes = nodes[::max(1, len(nodes) // 16)][:16]
    for i, node in enumerate(homes):
        s.handle(S.PutRequested(CLIENT, i, 1 << 20, node=node))
    return homes


def run_batch(s: S.Scheduler, msgs: list[TaskMsg], clock: list[float]) -> int:
    """Submit one batch and answer every SendWork until all of it is done; returns tasks done."""
    done = 0
    pending = s.handle(S.Submitted(CLIENT, msgs))
    while pending:
        nxt = []
        for ins in pending:
            if type(ins) is S.SendWork:
                t = clock[0]
                clock[0] = t + 0.001 * len(ins.work)
                outs = [Outcome(w.gid, Status.OK, b"", t, t + 0.001) for w in ins.work]
                nxt += s.handle(S.WorkerDone(ins.rank, outs))
            elif type(ins) is S.Deliver:
                done += len(ins.results)
        pending = nxt
    return done


def first_batch(s: S.Scheduler) -> None:
    """Ship the function once (and learn its run time) before anything is measured."""
    run_batch(s, [TaskMsg(-1, FN, b"fn", b"", TaskOptions())], [0.0])


def rate(workers: int, mix: str, seconds: float) -> dict:
    s = world(workers)
    homes = place_homes(s, workers)
    first_batch(s)
    pool = batches(mix, workers, homes, 64)
    clock = [1.0]
    run_batch(s, pool[0], clock)   # warm-up
    tasks, batches_run = 0, 0
    t0 = time.perf_counter()
    while True:
        tasks += run_batch(s, pool[batches_run % len(pool)], clock)
        batches_run += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and batches_run >= 2:
            break
    assert s.queued() == 0 and len(s.tasks) == 0, "the bench left work behind"
    return {"workers": workers, "mix": mix, "tasks": tasks, "seconds": elapsed,
            "tasks_per_s": tasks / elapsed, "us_per_task": 1e6 * elapsed / tasks}


def memory_and_events(workers: int, queued: int, objects: int) -> dict:
    tracemalloc.start()
    s = S.Scheduler()
    before = tracemalloc.get_traced_memory()[0]
    join(s, workers, gpu_nodes=False)
    per_worker = (tracemalloc.get_traced_memory()[0] - before) / workers
    tracemalloc.stop()
    s.handle(S.ClientJoined(CLIENT))
    first_batch(s)
    slow = b"s" * 16   # no known run time, then 1 s: one task per worker, nothing sent ahead
    stored = store_objects(s, workers, slow, objects)
    busy = [TaskMsg(10**9 + i, slow, None, b"", TaskOptions()) for i in range(workers)]
    for i in range(0, len(busy), 4096):
        s.handle(S.Submitted(CLIENT, busy[i:i + 4096]))
    assert s.queued() == 0
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    msgs = [TaskMsg(i, slow, None, b"", TaskOptions()) for i in range(queued)]
    s.handle(S.Submitted(CLIENT, msgs))
    del msgs
    per_task = (tracemalloc.get_traced_memory()[0] - before) / queued
    tracemalloc.stop()
    assert s.queued() == queued
    lost = []
    for rank in range(workers, max(0, workers - 5), -1):   # each has a running task and objects
        t0 = time.perf_counter()
        s.handle(S.WorkerGone(rank, "bench"))
        lost.append(time.perf_counter() - t0)
    assert s.books.objects_lost == min(5, workers) * (stored // workers), (
        "the lost ranks held objects")
    s = world(workers, gpu_nodes=False)
    first_batch(s)
    ranks = [r for r in range(1, workers + 1) if node_of(r) == node_of(workers)]
    t0 = time.perf_counter()
    for rank in ranks:
        s.handle(S.WorkerPaused(rank, True))
    pause = time.perf_counter() - t0
    return {"workers": workers, "bytes_per_worker": per_worker, "bytes_per_queued_task": per_task,
            "worker_lost_us": 1e6 * statistics.median(lost), "objects_stored": stored,
            "objects_per_lost_rank": stored // workers, "pause_node_us": 1e6 * pause,
            "pause_node_ranks": len(ranks)}


def store_objects(s: S.Scheduler, workers: int, fn: bytes, objects: int) -> int:
    """Have every worker keep ``objects // workers`` (at least one) 1 KiB objects; returns all.

    One task of ``fn`` per worker, each ending OK after 1 s with its objects kept (``keep()``).
    """
    each = max(1, objects // workers)
    msgs = [TaskMsg(10**8 + i, fn, b"fn2" if i == 0 else None, b"", TaskOptions())
            for i in range(workers)]
    sent = []
    for i in range(0, len(msgs), 4096):
        sent += [ins for ins in s.handle(S.Submitted(CLIENT, msgs[i:i + 4096]))
                 if type(ins) is S.SendWork]
    assert sum(len(ins.work) for ins in sent) == workers, "one task per worker"
    oid = 1
    for ins in sent:
        outs = []
        for w in ins.work:
            kept = tuple(((oid + k) << 17 | ins.rank, 1024) for k in range(each))
            oid += each
            outs.append(Outcome(w.gid, Status.OK, b"", 0.0, 1.0, kept=kept))
        s.handle(S.WorkerDone(ins.rank, outs))
    assert len(s.objects) == each * workers
    return each * workers


def verdict(rows: list[dict], mem: list[dict]) -> list[tuple[str, bool, str]]:
    noop = {r["workers"]: r["tasks_per_s"] for r in rows if r["mix"] == "noop"}
    out = []
    if noop:
        low, high = min(noop.values()), max(noop.values())
        out.append((f"noop >= {TARGET_RATE:,}/s at every W", low >= TARGET_RATE,
                    f"lowest {low:,.0f}/s"))
        first, last = noop[min(noop)], noop[max(noop)]
        spread = max(first, last) / min(first, last)
        out.append((f"noop smallest vs largest W within {TARGET_SPREAD}x",
                    spread <= TARGET_SPREAD, f"{spread:.2f}x (all W: {high / low:.2f}x)"))
        worst = min(((r["tasks_per_s"] / noop[r["workers"]], r) for r in rows
                     if r["mix"] != "noop" and r["workers"] in noop), default=None,
                    key=lambda x: x[0])
        if worst is not None:
            ratio, r = worst
            out.append((f"other mixes within {TARGET_MIX}x of noop", 1 / ratio <= TARGET_MIX,
                        f"worst {1 / ratio:.2f}x ({r['mix']} at W={r['workers']:,})"))
    whole = [m for m in mem if m["workers"] >= CORES_PER_NODE]   # (W=1 carries a node's books)
    if whole:
        most = max(m["bytes_per_worker"] for m in whole)
        out.append((f"<= {TARGET_BYTES} B of rank-0 memory per worker (W >= {CORES_PER_NODE})",
                    most <= TARGET_BYTES, f"most {most:,.0f} B"))
    return out


def table(rows: list[dict], mem: list[dict], checks: list[tuple[str, bool, str]]) -> str:
    mixes = [m for m in MIXES if any(r["mix"] == m for r in rows)]
    sizes = sorted({r["workers"] for r in rows})
    by = {(r["workers"], r["mix"]): r for r in rows}
    out = ["decisions/s (a submit and its done)", "",
           "| workers | " + " | ".join(mixes) + " |", "|---:|" + "---:|" * len(mixes)]
    for w in sizes:
        cells = [f"{by[w, m]['tasks_per_s']:,.0f}" if (w, m) in by else "" for m in mixes]
        out.append(f"| {w:,} | " + " | ".join(cells) + " |")
    if mem:
        out += ["", "| workers | B/worker | B/queued task | objects stored (per rank) "
                "| one WorkerGone (µs) | pause one node's ranks (µs) |",
                "|---:|---:|---:|---:|---:|---:|"]
        for m in mem:
            out.append(f"| {m['workers']:,} | {m['bytes_per_worker']:,.0f} | "
                       f"{m['bytes_per_queued_task']:,.0f} | {m['objects_stored']:,} "
                       f"({m['objects_per_lost_rank']:,}) | {m['worker_lost_us']:,.0f} | "
                       f"{m['pause_node_us']:,.0f} ({m['pause_node_ranks']} ranks) |")
    out.append("")
    for name, ok, detail in checks:
        out.append(f"{'PASS' if ok else 'MISS'}  {name}: {detail}")
    return "\n".join(out)


def median_rows(rounds: list[list[dict]], key: tuple[str, ...]) -> list[dict]:
    """Rows of several rounds, each number the median of its rounds (the first round's order)."""
    out = []
    for i, first in enumerate(rounds[0]):
        same = [r[i] for r in rounds]
        assert all(tuple(x[k] for k in key) == tuple(first[k] for k in key) for x in same)
        row = {}
        for k, v in first.items():
            values = [x[k] for x in same]
            if k in key or not isinstance(v, (int, float)):
                row[k] = v
            elif all(isinstance(x, int) for x in values):   # (counts stay counts)
                row[k] = statistics.median_low(values)
            else:
                row[k] = statistics.median(values)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", help="world sizes, comma-separated (default 1,16,256,4096,65536)")
    p.add_argument("--mixes", default=",".join(MIXES), help=f"of {', '.join(MIXES)}")
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per row (1)")
    p.add_argument("--queued", type=int, default=10_000, help="tasks queued for bytes/task")
    p.add_argument("--objects", type=int, default=100_000,
                   help="objects stored (spread over the ranks) when WorkerGone is timed")
    p.add_argument("--rounds", type=int, default=1,
                   help="run everything this many times; the table is the median per cell")
    p.add_argument("--quick", action="store_true", help="small worlds, short rows")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args(argv)
    mixes = args.mixes.split(",")
    unknown = sorted(set(mixes) - set(MIXES))
    if unknown:
        p.error(f"unknown mix(es) {unknown}; the mixes are {list(MIXES)}")
    sizes = FULL_WORKERS
    if args.quick:
        sizes, args.seconds, args.queued, args.objects = QUICK_WORKERS, 0.05, 1000, 10_000
    if args.workers:
        try:
            sizes = tuple(int(x) for x in args.workers.split(","))
        except ValueError:
            p.error(f"--workers takes comma-separated integers, got {args.workers!r}")
    t0 = time.monotonic()
    rounds = []
    for r in range(args.rounds):
        load = os.getloadavg()[0]
        rows, mem = [], []
        for w in sizes:
            for mix in mixes:
                rows.append(rate(w, mix, args.seconds))
                print(f"round {r + 1}/{args.rounds} W={w:>6,} {mix:>8}: "
                      f"{rows[-1]['tasks_per_s']:>10,.0f} decisions/s", flush=True)
            mem.append(memory_and_events(w, args.queued, args.objects))
        checks = verdict(rows, mem)
        if args.rounds > 1:
            print(f"\nround {r + 1} (load {load:.2f} -> {os.getloadavg()[0]:.2f})")
            print(table(rows, mem, checks))
        rounds.append({"loadavg_1min": [load, os.getloadavg()[0]], "rows": rows, "memory": mem,
                       "verdict": [{"target": n, "result": "PASS" if ok else "MISS",
                                    "detail": d} for n, ok, d in checks]})
    rows = median_rows([x["rows"] for x in rounds], ("workers", "mix"))
    mem = median_rows([x["memory"] for x in rounds], ("workers",))
    checks = verdict(rows, mem)
    print()
    if args.rounds > 1:
        print(f"median of {args.rounds} rounds, cell by cell")
    print(table(rows, mem, checks))
    result = {"bench": "scheduler", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "elapsed_s": time.monotonic() - t0,
              "machine": machine(), "batch": BATCH, "cores_per_node": CORES_PER_NODE,
              "rows": rows, "memory": mem,
              "verdict": [{"target": n, "result": "PASS" if ok else "MISS", "detail": d}
                          for n, ok, d in checks],
              "rounds": rounds}
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
