"""A discrete-event simulation of rank 0 and W workers on N nodes: when does rank 0 saturate?

Run: ``python bench/simulate.py [--quick] [--nodes 1000] [--cores 64] [--tasks 1,0.1]
[--horizon 20] [--json OUT]`` (a few minutes for 1,000 nodes; ``--quick``: 16 nodes, seconds).

Rank 0 and each node leader are serial servers: a message waits until the one before it is
handled. What handling costs is measured on this machine, not assumed:

* the scheduler's part: the real :class:`colocate.rank0.scheduler.Scheduler`, driven by the
simulated
  messages; each ``handle`` call's wall time is the time rank 0 is busy with it;
* a message's (de)serialization: ``pickle`` of the wire form
(:func:`colocate.wire.messages.to_wire`)
  of the real ``Dispatch``/``Done``/``Submit``/``Results`` messages, timed here, per message and
  per task;
* the MPI library's part: ``--mpi-us`` per message sent or received (default 4.5 µs, half the
  9 µs round trip of a small pickled object between two mpi4py ranks measured on this kind of
  machine, ``/work/shared/ARCHITECTURE.md``); links add ``--latency-us`` (2 µs) and the bytes
  over ``--gbps`` (100 Gbit/s) between nodes.

Workers run their tasks back to back (what was sent ahead waits at the worker), plus
``--worker-us`` (40 µs, a parent/child pipe round trip) between tasks, and report each task's
outcome in its own ``Done``. One client keeps every core's worth of tasks, plus a batch, queued
at rank 0 (batches of 64, as ``map`` sends them), each ``Deliver`` costing rank 0 a send.

Two designs:

``flat``  (today's runtime) rank 0 places every task on a worker rank.
``node``  (the next step, simulated only) rank 0 sends batches of tasks to one leader per node,
          up to the leader's free slots (its cores plus ``--slack`` tasks, in batches of at
          least ``--min-batch``), and leaders place them on their cores with the same real
          scheduler, one per node. Every ``--flush-us`` (10 ms) a leader sends what finished
          straight to the client (as leases do today) and only the count to rank 0, which
          frees that many slots. Rank 0's per-task work is then a queue pop, a list append and
          (de)serializing the task once (timed in the simulation like everything else). The
          client is taken to keep up (one Python client would not, at 640,000 results/s).

Utilization: the cores' time running tasks over the second half of the horizon (after the
ramp), divided by cores x that time. The question is answered for each task length: the busy
fraction of rank 0 (and of the busiest leader) tells whether it saturated.
"""

from __future__ import annotations

import argparse
import heapq
import pickle
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _world import machine, write_json  # noqa: E402

from colocate.rank0 import scheduler as S  # noqa: E402
from colocate.wire.messages import (  # noqa: E402
    Dispatch,
    Done,
    Outcome,
    ResultMsg,
    Results,
    Status,
    Submit,
    TaskInfo,
    TaskMsg,
    TaskOptions,
    Work,
    to_wire,
)

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "simulate.json"
FN = b"f" * 16
BATCH = 64
CLIENT = 1
US = 1e-6


def wire_costs() -> dict:
    """Seconds to pickle + unpickle each per-task message: (per message, per task) pairs."""
    def timed(msg) -> float:
        wire = to_wire(msg)
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            pickle.loads(pickle.dumps(wire, protocol=5))
        return (time.perf_counter() - t0) / n

    work = Work(1, FN, None, b"\x80\x05N.", None, None)
    out = Outcome(1, Status.OK, b"\x80\x05N.", 1.0, 2.0)
    task = TaskMsg(1, FN, None, b"\x80\x05N.", TaskOptions())
    res = ResultMsg(1, Status.OK, b"\x80\x05N.", TaskInfo("n1", 1, (1,), 1.0, 2.0, 1))
    costs = {}
    for name, make, item in (("dispatch", Dispatch, work), ("done", Done, out),
                             ("submit", Submit, task), ("results", Results, res)):
        one, many = timed(make([item])), timed(make([item] * BATCH))
        per_task = max(0.0, (many - one) / (BATCH - 1))
        costs[name] = (max(0.0, one - per_task), per_task)
    return costs


class Sim:
    """The event loop: a heap of (time, order, action, args)."""

    def __init__(self, args: argparse.Namespace, task_s: float, costs: dict) -> None:
        self.a = args
        self.task_s = task_s
        self.costs = costs
        self.now = 0.0
        self.heap: list = []
        self.order = 0
        self.busy_core = 0.0      # task seconds run inside the measured window
        self.window = (args.horizon / 2, args.horizon)
        self.done = 0

    def at(self, t: float, action, *args) -> None:
        self.order += 1
        heapq.heappush(self.heap, (t, self.order, action, args))

    def run(self) -> None:
        end = self.window[1]
        while self.heap:
            t, _, action, args = heapq.heappop(self.heap)
            if t > end:
                break
            self.now = t
            action(*args)

    def ran(self, start: float, end: float) -> None:
        lo, hi = max(start, self.window[0]), min(end, self.window[1])
        if hi > lo:
            self.busy_core += hi - lo

    def link(self, nbytes: int) -> float:
        return self.a.latency_us * US + nbytes * 8 / (self.a.gbps * 1e9)

    def msg_cost(self, kind: str, tasks: int) -> float:
        per_msg, per_task = self.costs[kind]
        return self.a.mpi_us * US + per_msg + per_task * tasks


class Server:
    """A serial process (rank 0 or a leader): messages wait their turn; records busy time."""

    def __init__(self, sim: Sim, handle) -> None:
        self.sim = sim
        self.handle = handle     # (message) -> seconds it keeps this process busy
        self.inbox: deque = deque()
        self.free_at = 0.0
        self.busy = 0.0
        self.running = False

    def receive(self, msg) -> None:
        self.inbox.append(msg)
        if not self.running:
            self.running = True
            self.sim.at(max(self.sim.now, self.free_at), self._next)

    def _next(self) -> None:
        msg = self.inbox.popleft()
        took = self.handle(msg)
        lo, hi = max(self.sim.now, self.sim.window[0]), min(self.sim.now + took,
                                                            self.sim.window[1])
        self.busy += max(0.0, hi - lo)
        self.free_at = self.sim.now + took
        if self.inbox:
            self.sim.at(self.free_at, self._next)
        else:
            self.running = False


class Worker:
    """A worker rank: runs what it was sent, one after the other; reports each outcome."""

    def __init__(self, sim: Sim, rank: int, report) -> None:
        self.sim, self.rank, self.report = sim, rank, report
        self.todo: deque = deque()
        self.busy = False

    def take(self, work: list[Work]) -> None:
        self.todo.extend(work)
        if not self.busy:
            self._start()

    def _start(self) -> None:
        w = self.todo.popleft()
        self.busy = True
        start = self.sim.now + self.sim.a.worker_us * US
        end = start + self.sim.task_s
        self.sim.ran(start, end)   # (counted now: it may end past the horizon)
        self.sim.at(end, self._finish, w, start, end)

    def _finish(self, w: Work, start: float, end: float) -> None:
        self.sim.done += 1
        self.report(self.rank, Outcome(w.gid, Status.OK, b"", start, end))
        self.busy = False
        if self.todo:
            self._start()


class Client:
    """Keeps ``target`` tasks outstanding at rank 0, in batches of 64."""

    def __init__(self, sim: Sim, send, target: int) -> None:
        self.sim, self.send, self.target = sim, send, target
        self.outstanding = 0
        self.next_id = 0
        self.first = True

    def top_up(self) -> None:
        while self.target - self.outstanding >= BATCH or self.first:
            msgs = [TaskMsg(self.next_id + i, FN, b"fn" if self.first else None, b"",
                            TaskOptions()) for i in range(BATCH)]
            self.first = False
            self.next_id += BATCH
            self.outstanding += BATCH
            self.send(msgs)

    def results(self, n: int) -> None:
        self.outstanding -= n
        self.top_up()


def flat(sim: Sim, nodes: int, cores: int) -> dict:
    """Today's runtime: rank 0 places every task on a worker rank."""
    sched = S.Scheduler()
    workers: dict[int, Worker] = {}
    node_of = {}
    a = sim.a

    def rank0(msg) -> float:
        extra = sim.msg_cost(*msg[1])
        t0 = time.perf_counter()
        out = sched.handle(msg[0])
        extra += time.perf_counter() - t0
        for ins in out:
            if type(ins) is S.SendWork:
                extra += sim.msg_cost("dispatch", len(ins.work))
                t = sim.now + extra + sim.link(100 * len(ins.work))
                sim.at(t, workers[ins.rank].take, ins.work)
            elif type(ins) is S.Deliver:
                extra += sim.msg_cost("results", len(ins.results))
                sim.at(sim.now + extra + a.latency_us * US, client.results, len(ins.results))
        return extra

    server = Server(sim, rank0)

    def report(rank: int, out: Outcome) -> None:
        sim.at(sim.now + sim.link(100), server.receive,
               (S.WorkerDone(rank, [out], sim.now), ("done", 1)))

    for r in range(1, nodes * cores + 1):
        node_of[r] = f"n{(r - 1) // cores}"
        sched.handle(S.WorkerJoined(r, node_of[r], (r % cores,), 1 << 34))
        workers[r] = Worker(sim, r, report)
    sched.handle(S.ClientJoined(CLIENT))
    client = Client(sim, lambda msgs: sim.at(sim.now + a.latency_us * US, server.receive,
                                             (S.Submitted(CLIENT, msgs), ("submit", len(msgs)))),
                    nodes * cores + BATCH)
    sim.at(0.0, client.top_up)
    sim.run()
    return {"rank0_busy": server.busy / (sim.window[1] - sim.window[0]), "leader_busy": None}


def hierarchical(sim: Sim, nodes: int, cores: int) -> dict:
    """Rank 0 sends batches to one leader per node; leaders place on their cores."""
    a = sim.a
    queue: deque = deque()                      # task messages waiting at rank 0
    credits = [cores + a.slack] * nodes         # free slots per leader, as rank 0 counts them
    hungry: deque = deque(range(nodes))         # leaders with at least --min-batch credits
    listed = [True] * nodes
    leaders: list[Server] = []
    scheds: list[S.Scheduler] = []
    pending: list[list[ResultMsg]] = [[] for _ in range(nodes)]
    flushing = [False] * nodes

    def dispatch() -> float:
        extra = 0.0
        while queue and hungry:
            n = hungry.popleft()
            k = min(credits[n], len(queue))
            batch = [queue.popleft() for _ in range(k)]
            credits[n] -= k
            listed[n] = credits[n] >= a.min_batch
            if listed[n]:
                hungry.append(n)
            extra += sim.msg_cost("submit", k)
            sim.at(sim.now + extra + sim.link(100 * k), leaders[n].receive, ("work", batch))
        return extra

    def rank0(msg) -> float:
        t0 = time.perf_counter()   # (its own work, timed whole: the sim's pushes too)
        return work0(msg) + time.perf_counter() - t0

    def work0(msg) -> float:
        kind, payload = msg
        if kind == "submit":
            queue.extend(payload)
            extra = sim.msg_cost("submit", len(payload))
        else:   # node n has finished this many (its results went to the client directly)
            n, count = payload
            credits[n] += count
            if not listed[n] and credits[n] >= a.min_batch:
                listed[n] = True
                hungry.append(n)
            extra = sim.msg_cost("done", 0)
        return extra + dispatch()

    top = Server(sim, rank0)

    def leader_handle(n: int):
        def handle(msg) -> float:
            kind, payload = msg
            if kind == "work":
                ev = S.Submitted(CLIENT, payload)
                extra = 0.0
            elif kind == "flush":
                flushing[n] = False
                results, pending[n] = pending[n], []
                extra = sim.msg_cost("results", len(results)) + sim.msg_cost("done", 0)
                sim.at(sim.now + extra + sim.link(100 * len(results)), client.results,
                       len(results))
                sim.at(sim.now + extra + sim.link(16), top.receive,
                       ("credits", (n, len(results))))
                return extra
            else:
                ev = S.WorkerDone(payload[0], [payload[1]], sim.now)
                extra = sim.msg_cost("done", 1) - a.mpi_us * US + 1 * US   # (on the node)
            t0 = time.perf_counter()
            out = scheds[n].handle(ev)
            extra += time.perf_counter() - t0
            for ins in out:
                if type(ins) is S.SendWork:
                    extra += sim.msg_cost("dispatch", len(ins.work)) - a.mpi_us * US + 1 * US
                    sim.at(sim.now + extra + 1 * US, workers[ins.rank].take, ins.work)
                elif type(ins) is S.Deliver:
                    pending[n].extend(ins.results)
                    if not flushing[n]:
                        flushing[n] = True
                        sim.at(sim.now + a.flush_us * US, leaders[n].receive, ("flush", None))
            return extra
        return handle

    workers: dict[int, Worker] = {}
    for n in range(nodes):
        leaders.append(Server(sim, leader_handle(n)))
        s = S.Scheduler()
        for c in range(cores):
            rank = n * cores + c + 1
            s.handle(S.WorkerJoined(rank, f"n{n}", (c,), 1 << 34))
            workers[rank] = Worker(sim, rank, lambda r, out, n=n: sim.at(
                sim.now + 1 * US, leaders[n].receive, ("done", (r, out))))
        s.handle(S.ClientJoined(CLIENT))
        s.fns[FN] = b"fn"
        scheds.append(s)
    client = Client(sim, lambda msgs: sim.at(sim.now + a.latency_us * US, top.receive,
                                             ("submit", msgs)),
                    nodes * (cores + a.slack) + BATCH)
    sim.at(0.0, client.top_up)
    sim.run()
    span = sim.window[1] - sim.window[0]
    return {"rank0_busy": top.busy / span, "leader_busy": max(x.busy for x in leaders) / span}


def simulate(args, design: str, nodes: int, cores: int, task_s: float, costs: dict) -> dict:
    sim = Sim(args, task_s, costs)
    t0 = time.perf_counter()
    extra = (flat if design == "flat" else hierarchical)(sim, nodes, cores)
    span = sim.window[1] - sim.window[0]
    return {"design": design, "nodes": nodes, "cores": cores, "workers": nodes * cores,
            "task_s": task_s, "horizon_s": args.horizon, "tasks_done": sim.done,
            "utilization": sim.busy_core / (nodes * cores * span), **extra,
            "wall_s": time.perf_counter() - t0}


def table(rows: list[dict]) -> str:
    out = ["| design | nodes x cores | task | utilization | rank 0 busy | busiest leader busy |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        leader = "" if r["leader_busy"] is None else f"{100 * r['leader_busy']:.0f} %"
        out.append(f"| {r['design']} | {r['nodes']:,} x {r['cores']} | {r['task_s'] * 1e3:g} ms"
                   f" | {100 * r['utilization']:.1f} % | {100 * r['rank0_busy']:.0f} % "
                   f"| {leader} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--cores", type=int, default=64)
    p.add_argument("--tasks", default="1,0.1", help="task lengths in seconds (1,0.1)")
    p.add_argument("--designs", default="flat,node")
    p.add_argument("--horizon", type=float, default=0.0,
                   help="simulated seconds (default: 10 task lengths, at least 1 s)")
    p.add_argument("--mpi-us", type=float, default=4.5)
    p.add_argument("--latency-us", type=float, default=2.0)
    p.add_argument("--gbps", type=float, default=100.0)
    p.add_argument("--worker-us", type=float, default=40.0)
    p.add_argument("--slack", type=int, default=64, help="tasks a leader holds beyond its cores")
    p.add_argument("--min-batch", type=int, default=16, help="fewest tasks sent to a leader")
    p.add_argument("--flush-us", type=float, default=10_000.0)
    p.add_argument("--quick", action="store_true", help="16 nodes, short horizon")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args(argv)
    if args.quick:
        args.nodes = min(args.nodes, 16)
    lengths = [float(x) for x in args.tasks.split(",")]
    costs = wire_costs()
    print("wire costs per message / per task (µs): " + ", ".join(
        f"{k} {1e6 * v[0]:.1f} / {1e6 * v[1]:.2f}" for k, v in costs.items()), flush=True)
    rows = []
    horizon = args.horizon
    for task_s in lengths:
        args.horizon = horizon or max(1.0, 10 * task_s) * (0.25 if args.quick else 1)
        for design in args.designs.split(","):
            rows.append(simulate(args, design, args.nodes, args.cores, task_s, costs))
            r = rows[-1]
            print(f"{design:>4} {r['workers']:,} workers, {task_s * 1e3:g} ms tasks: "
                  f"{100 * r['utilization']:.1f} % busy, rank 0 {100 * r['rank0_busy']:.0f} % "
                  f"({r['tasks_done']:,} tasks, {r['wall_s']:.0f} s)", flush=True)
    print()
    print(table(rows))
    result = {"bench": "simulate", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
              "wire_costs_us": {k: [1e6 * v[0], 1e6 * v[1]] for k, v in costs.items()},
              "settings": {k: getattr(args, k) for k in ("mpi_us", "latency_us", "gbps",
                                                         "worker_us", "slack", "min_batch",
                                                         "flush_us")},
              "rows": rows}
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
