"""Rank-0 memory per queued task, and the bound that backpressure puts on it.

Run: ``python bench/memory.py [--queue 20000,100000] [--json OUT]`` (about 1-2 minutes;
``--quick`` for a ~30 s smoke run).

Two parts, each on its own world (``mpiexec -n 2 colocate serve``: rank 0 and one worker):

1. **Bytes per queued task.** The server lets a client keep ``max_inflight`` tasks at rank 0
   (``COLOCATE_CLIENT_MAX_INFLIGHT``, raised here above the largest queue). The one worker is
   held by a blocker task (it waits for a file), so every further task stays queued at rank 0.
   For each queue size Q and argument size, rank 0's RSS before and once ``status()["queued"]``
   reaches Q gives bytes per queued task; the client's RSS gives its cost per pending future.
   Then the blocker is released, the queue drains, and rank 0's RSS after the drain is recorded
   (CPython keeps freed arenas, so it need not fall back).
2. **The bound.** With the default ``max_inflight`` a client ``map``s many no-op tasks; rank 0's
   peak RSS and peak queue are sampled. Backpressure keeps both flat whatever the task count:
   a client holds at most ``4 x max_inflight`` futures, rank 0 at most ``max_inflight`` tasks
   per client.

Every wait is bounded; the worlds are stopped (and their processes killed if need be) on any
error. Results: a table on stdout, JSON in ``bench/results/memory.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _world import START_TIMEOUT, bench_world, machine, rss, write_json  # noqa: E402

from colocate.testing import wait_for_file, wait_until  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "memory.json"
MIB = 1 << 20


def hold_until(path: str, limit: float) -> str:
    """Blocker task: wait until ``path`` exists (at most ``limit`` seconds)."""
    wait_for_file(path, limit)
    return "released"


def noop(x):
    return None


def per_task(queue_sizes: list[int], arg_bytes: list[int], workdir: Path) -> list[dict]:
    """Part 1: rows of rank-0 and client bytes per queued task."""
    import colocate
    top = max(queue_sizes)
    world = bench_world(2, workdir, {"COLOCATE_CLIENT_MAX_INFLIGHT": str(top + 64),
                               "COLOCATE_SERVER_PREFETCH": "0"})
    rows = []
    try:
        world.wait_ready(START_TIMEOUT)
        rank0 = world.ranks_by_number()[0]
        me = psutil.Process()
        with colocate.Executor(address=world.address) as ex:
            ex.submit(noop, 0).result(timeout=60)   # warm: connection, function cache
            for size in arg_bytes:
                payload = b"x" * size
                for q in queue_sizes:
                    release = workdir / f"release-{size}-{q}"
                    blocker = ex.submit(hold_until, str(release), 300.0)
                    wait_until(lambda: ex.status()["running"] >= 1, 30, "the blocker to start")
                    r0_before, me_before = rss(rank0), rss(me)
                    t0 = time.monotonic()
                    futs = [ex.submit(noop, payload) for _ in range(q)]
                    wait_until(lambda q=q: ex.status()["queued"] >= q, 120,
                               f"{q} tasks queued at rank 0")
                    queued_s = time.monotonic() - t0
                    r0_after, me_after = rss(rank0), rss(me)
                    release.touch()
                    blocker.result(timeout=60)
                    t1 = time.monotonic()
                    for f in futs:
                        f.result(timeout=120)
                    drain_s = time.monotonic() - t1
                    del futs
                    wait_until(lambda: ex.status()["queued"] == 0, 30, "queue empty")
                    rows.append({
                        "queued": q, "arg_bytes": size,
                        "rank0_rss_before_mib": r0_before / MIB,
                        "rank0_rss_queued_mib": r0_after / MIB,
                        "rank0_rss_drained_mib": rss(rank0) / MIB,
                        "rank0_bytes_per_task": (r0_after - r0_before) / q,
                        "client_bytes_per_future": (me_after - me_before) / q,
                        "submit_and_queue_s": queued_s, "drain_s": drain_s,
                    })
                    print(f"  queued {q:>7,} x {size:>5} B args: rank 0 "
                          f"{rows[-1]['rank0_bytes_per_task']:7.0f} B/task, client "
                          f"{rows[-1]['client_bytes_per_future']:7.0f} B/future", flush=True)
    finally:
        world.stop()
    return rows


def bound(tasks: int, workdir: Path) -> dict:
    """Part 2: rank-0 peak RSS and queue while one client maps ``tasks`` no-ops (defaults)."""
    import colocate
    world = bench_world(2, workdir)
    try:
        world.wait_ready(START_TIMEOUT)
        rank0 = world.ranks_by_number()[0]
        peak = {"rss": 0, "queued": 0}
        done = threading.Event()

        def sample() -> None:
            with colocate.Executor(address=world.address) as watcher:
                while not done.is_set():
                    peak["rss"] = max(peak["rss"], rss(rank0) or 0)
                    peak["queued"] = max(peak["queued"], watcher.status()["queued"])
                    done.wait(0.1)

        with colocate.Executor(address=world.address) as ex:
            ex.submit(noop, 0).result(timeout=60)
            start = rss(rank0)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.monotonic()
            n = sum(1 for _ in ex.map(noop, range(tasks), timeout=600))
            took = time.monotonic() - t0
            done.set()
            sampler.join(30)
            end = rss(rank0)
            limit = ex.status()["client"]["max_inflight"]
        return {"tasks": n, "seconds": took, "max_inflight": limit,
                "rank0_rss_start_mib": start / MIB, "rank0_rss_peak_mib": peak["rss"] / MIB,
                "rank0_rss_end_mib": end / MIB, "peak_queued": peak["queued"]}
    finally:
        world.stop()


def table(rows: list[dict], b: dict) -> str:
    out = ["queued   arg B   rank-0 RSS before -> queued MiB   rank 0 B/task   client B/future"
           "   after drain MiB"]
    for r in rows:
        out.append(f"{r['queued']:>7,}  {r['arg_bytes']:>6}   {r['rank0_rss_before_mib']:8.1f}"
                   f" -> {r['rank0_rss_queued_mib']:8.1f}        {r['rank0_bytes_per_task']:8.0f}"
                   f"        {r['client_bytes_per_future']:8.0f}       "
                   f"{r['rank0_rss_drained_mib']:8.1f}")
    out.append("")
    out.append(f"bound: {b['tasks']:,} no-ops mapped in {b['seconds']:.1f} s with max_inflight "
               f"{b['max_inflight']}: rank-0 RSS {b['rank0_rss_start_mib']:.1f} -> peak "
               f"{b['rank0_rss_peak_mib']:.1f} -> end {b['rank0_rss_end_mib']:.1f} MiB, peak "
               f"queue {b['peak_queued']:,}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queue", default="20000,100000",
                   help="queue sizes, comma-separated (default 20000,100000)")
    p.add_argument("--arg-bytes", default="8,1024", help="argument sizes (default 8,1024)")
    p.add_argument("--bound-tasks", type=int, default=200_000)
    p.add_argument("--quick", action="store_true", help="small sizes, ~30 s")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args(argv)
    try:
        queues = [int(x) for x in args.queue.split(",")]
        sizes = [int(x) for x in args.arg_bytes.split(",")]
    except ValueError:
        p.error(f"--queue and --arg-bytes take comma-separated integers, got {args.queue!r} and "
                f"{args.arg_bytes!r}")
    if args.quick:
        queues, sizes, args.bound_tasks = [2000], [8], 5000
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="colocate-membench-") as tmp:
        print(f"memory: queue sizes {queues}, argument sizes {sizes} B", flush=True)
        rows = per_task(queues, sizes, Path(tmp))
        print(f"memory: bound with default max_inflight, {args.bound_tasks:,} tasks", flush=True)
        b = bound(args.bound_tasks, Path(tmp))
    print()
    print(table(rows, b))
    result = {"bench": "memory", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "elapsed_s": time.monotonic() - t0,
              "machine": machine(), "per_task": rows, "bound": b}
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
