"""The indexed placement against a brute-force reference, on seeded random event sequences.

:class:`Reference` is the scheduler with the placement it had before the indexes (a scan of
every worker per task, copied verbatim, and no index at all). Both schedulers get the same
random events (workers joining, pausing, dying and coming back; clients submitting one-core,
multi-core, GPU, memory and locality tasks, cancelling, leaving; outcomes of every kind; puts and
frees; leases granted and ended) and must give out exactly the same instructions, event by
event, and end every step in the same state. "As good" is therefore "the same": the indexes
break ties as the scan did (join order). After every event the indexes are also checked against
the scheduler's state recomputed by brute force.
"""

from __future__ import annotations

import random
from collections import deque  # noqa: F401  (the copied methods use it)

import pytest

from colocate.rank0 import scheduler as S
from colocate.rank0.events import SendWork
from colocate.rank0.records import TaskRecord as _Task  # noqa: F401
from colocate.rank0.records import WorkerRecord as _Worker  # noqa: F401
from colocate.rank0.scheduler import AHEAD_SECONDS  # noqa: F401
from colocate.wire.messages import Outcome, Status, TaskMsg, TaskOptions, Work


class _NoIndex:
    """Takes the scheduler's notices and keeps nothing."""

    def __init__(self):
        self.room_changed = set()
        self.changed = set()

    def join(self, worker, gpus, seq=None):
        pass

    def leave(self, worker):
        pass

    def refile(self, worker):
        pass

    def warmed(self, worker, fn):
        pass


class Reference(S.Scheduler):
    """The scheduler deciding placement by scanning every worker (the code before issue 17)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._index = self.leases.index = _NoIndex()

    def _cannot_run(self, msg):
        if msg.fn_hash not in self.fns:
            return "the function was never sent to this server (client protocol error)"
        opts = msg.options
        if not self.workers or (opts.cores <= 1 and not opts.gpus and not opts.memory):
            return ""
        per_node = {}
        for w in self.workers.values():
            per_node[w.node] = per_node.get(w.node, 0) + len(w.cores)
        most_cores = max(per_node.values())
        if opts.cores > most_cores:
            return (f"the task asks for {opts.cores} cores, but the most any node offers is "
                    f"{most_cores} (its worker ranks' spare cores); ask for fewer cores or "
                    f"start more worker ranks per node")
        most_gpus = max((len(g) for g in self.node_gpus.values()), default=0)
        if opts.gpus > most_gpus:
            return (f"the task asks for {opts.gpus} GPU(s), but the most any node has is "
                    f"{most_gpus}; check `colocate info` or co_location.gpus")
        if opts.memory:
            budget = max(self.node_budget.values())
            if opts.memory > budget:
                return (f"the task asks for {opts.memory} bytes of memory, but the largest "
                        f"node budget for functions is {budget} bytes; ask for less or raise "
                        f"co_location.memory_budget")
        return ""

    # ----- copied from colocate/rank0/scheduler.py before the indexes -----------------------------
    def _dispatch(self) -> None:
        if self.draining or not self.workers:
            return
        batches: dict[int, list[Work]] = {}
        blocked = 0
        while self.turn and blocked < len(self.turn):
            client = self.turn[0]
            queue = self.queues[client]
            task = queue[0]
            placed = self._place(task)
            if placed is None:       # head of this client's queue does not fit now: next client
                self.turn.rotate(-1)
                blocked += 1
                continue
            blocked = 0
            worker, helpers, gpus = placed
            queue.popleft()
            self.turn.rotate(-1)
            if not queue:
                self.turn.remove(client)
            task.rank = worker.rank
            worker.assigned[task.gid] = task
            if task.opts.memory:
                self.node_reserved[worker.node] += task.opts.memory
            task.helpers = helpers
            task.cores = ()
            if helpers:
                for h in helpers:
                    h.lent_to = task.gid
                task.cores = tuple(sorted(c for w in (worker, *helpers) for c in w.cores))
            task.gpus = tuple(gpus)
            for g in gpus:
                self.gpus_free[worker.node].remove(g)
            fn_bytes = None
            if task.fn_hash not in worker.fns:
                fn_bytes = self.fns[task.fn_hash]
                worker.fns.add(task.fn_hash)
            timeout = task.opts.timeout if task.opts.timeout is not None else self.default_timeout
            batches.setdefault(worker.rank, []).append(
                Work(task.gid, task.fn_hash, fn_bytes, task.args, timeout, task.opts.memory,
                     task.cores, task.gpus))
        for rank, work in batches.items():
            self._out.append(SendWork(rank, work))
        if self.turn and self.leases.held:   # something waits: leased slots come back
            for worker in self.workers.values():
                self._end_lease(worker, wanted=True)

    def _usable(self, worker: _Worker) -> bool:
        return not worker.paused and worker.lent_to is None and not worker.lease

    def _place(self, task: _Task) -> tuple[_Worker, list[_Worker], list[str]] | None:
        """Choose where ``task`` runs: a worker, the workers lending it cores, its GPUs."""
        opts = task.opts
        if opts.cores > 1 or opts.gpus:
            return self._place_exclusive(task)
        mean = self.mean_runtime.get(task.fn_hash)
        depth = 1
        if mean is not None and mean < self.prefetch_below:   # short: send some ahead, up to
            depth = max(1, min(self.prefetch, round(AHEAD_SECONDS / max(mean, 1e-6))))   # ~20 ms
        best: _Worker | None = None
        best_key: tuple[int, int, int] | None = None
        for worker in self.workers.values():
            load = len(worker.assigned)
            if not self._usable(worker) or load >= depth or not self._memory_fits(worker, task):
                continue
            remote = 0 if task.prefer is None or worker.node == task.prefer else 1
            key = (remote, load, 0 if task.fn_hash in worker.fns else 1)
            if best_key is None or key < best_key:
                best, best_key = worker, key
        return None if best is None else (best, [], [])

    def _place_exclusive(self, task: _Task) -> tuple[_Worker, list[_Worker], list[str]] | None:
        """Place a task that needs several cores or GPUs: alone, with lent cores.

        It runs on an idle worker of a node where enough other idle workers lend their cores
        and enough GPUs are free.
        """
        opts = task.opts
        idle: dict[str, list[_Worker]] = {}
        for worker in self.workers.values():
            if self._usable(worker) and not worker.assigned:
                idle.setdefault(worker.node, []).append(worker)
        for node, free in sorted(idle.items(), key=lambda kv: kv[0] != task.prefer):
            if len(self.gpus_free.get(node, ())) < opts.gpus:
                continue
            free.sort(key=lambda w: (0 if task.fn_hash in w.fns else 1, w.rank))
            chosen: list[_Worker] = []
            have = 0
            for w in free:
                if have >= opts.cores:
                    break
                chosen.append(w)
                have += len(w.cores)
            if have < opts.cores or not self._memory_fits(chosen[0], task):
                continue
            return chosen[0], chosen[1:], self.gpus_free[node][:opts.gpus]
        return None

    def _memory_fits(self, worker: _Worker, task: _Task) -> bool:
        memory = task.opts.memory
        return not memory or memory <= self.books.room(worker.node)

    def _cannot_run(self, msg: TaskMsg) -> str:
        if msg.fn_hash not in self.fns:
            return "the function was never sent to this server (client protocol error)"
        opts = msg.options
        if not self.workers or (opts.cores <= 1 and not opts.gpus and not opts.memory):
            return ""   # (any worker can run it: the common case, checked per task)
        per_node: dict[str, int] = {}
        for w in self.workers.values():
            per_node[w.node] = per_node.get(w.node, 0) + len(w.cores)
        most_cores = max(per_node.values())
        if opts.cores > most_cores:
            return (f"the task asks for {opts.cores} cores, but the most any node offers is "
                    f"{most_cores} (its worker ranks' spare cores); ask for fewer cores or "
                    f"start more worker ranks per node")
        most_gpus = max((len(g) for g in self.node_gpus.values()), default=0)
        if opts.gpus > most_gpus:
            return (f"the task asks for {opts.gpus} GPU(s), but the most any node has is "
                    f"{most_gpus}; check `colocate info` or co_location.gpus")
        if opts.memory:
            budget = max(self.node_budget.values())
            if opts.memory > budget:
                return (f"the task asks for {opts.memory} bytes of memory, but the largest "
                        f"node budget for functions is {budget} bytes; ask for less or raise "
                        f"co_location.memory_budget")
        return ""



# ----- the random world ----------------------------------------------------------------------
FNS = [bytes([65 + i]) * 16 for i in range(3)]
NODES = ["n1", "n2", "n3", "n4"]
GPU_NODES = {"n1": ("0", "1"), "n3": ("0", "1", "2")}
STATUSES = [Status.OK] * 6 + [Status.RAISED, Status.CRASHED, Status.TIMEOUT]


class Driver:
    """Random events for a world of ``nodes`` (read from the reference's state)."""

    def __init__(self, rng: random.Random, ref: S.Scheduler, nodes: int, max_workers: int):
        self.rng = rng
        self.ref = ref
        self.nodes = NODES[:nodes]
        self.max_workers = max_workers
        self.next_rank = 1
        self.clients = []
        self.next_client = 7
        self.next_id = 0
        self.req = 0
        self.ended = []      # (rank, lease) whose EndLease came: answered later
        self.refs = []
        self.clock = 1.0

    def join(self, rank=None):
        if rank is None:
            rank, self.next_rank = self.next_rank, self.next_rank + 1
        node = self.rng.choice(self.nodes)
        cores = (rank * 2, rank * 2 + 1) if self.rng.random() < 0.2 else (rank * 2,)
        return S.WorkerJoined(rank, node, cores, 1000, self.clock, GPU_NODES.get(node, ()),
                              machine=f"{node}/boot", leases=self.rng.random() < 0.7)

    def task(self):
        r = self.rng
        self.next_id += 1
        fn = r.choice(FNS)
        kind = r.random()
        opts = TaskOptions()
        if kind < 0.12:
            opts = TaskOptions(cores=r.choice([2, 3]))
        elif kind < 0.2:
            opts = TaskOptions(gpus=r.choice([1, 2]), cores=r.choice([1, 1, 2]))
        elif kind < 0.35:
            opts = TaskOptions(memory=r.choice([100, 300, 600]))
        if r.random() < 0.3:
            opts = opts._replace(retries=1)
        prefer = r.choice(self.nodes + ["nX"]) if r.random() < 0.25 else None
        return TaskMsg(self.next_id, fn, b"pickled-" + fn, b"a%d" % self.next_id, opts, prefer)

    def outcome(self, gid, status):
        started = self.clock
        self.clock += self.rng.choice([0.0005, 0.002, 0.5])
        return Outcome(gid, status, b"r", started, self.clock,
                       "OSError" if status == Status.RAISED else "")

    def event(self):
        r, ref = self.rng, self.ref
        workers = sorted(ref.workers)
        roll = r.random()
        if len(workers) < 2 or (roll < 0.06 and self.next_rank <= self.max_workers):
            return self.join()
        if not self.clients or roll < 0.09:
            if len(self.clients) < 3:
                self.clients.append(self.next_client)
                self.next_client += 1
                return S.ClientJoined(self.clients[-1])
        if roll < 0.11 and self.ended:
            return S.LeaseClosed(*self.ended.pop(0), done=r.randint(0, 2))
        if roll < 0.40:
            client = r.choice(self.clients)
            return S.Submitted(client, [self.task() for _ in range(r.choice([1, 1, 1, 3, 8]))])
        busy = [w for w in workers if ref.workers[w].assigned]
        if roll < 0.72 and busy:
            rank = r.choice(busy)
            gids = list(ref.workers[rank].assigned)
            n = r.randint(1, len(gids))
            outs = [self.outcome(g, r.choice(STATUSES)) for g in gids[:n]]
            if r.random() < 0.2:   # cut off: the rest come back unstarted
                outs += [Outcome(g, Status.REQUEUE, b"", 0.0, 0.0) for g in gids[n:]]
            return S.WorkerDone(rank, outs, self.clock)
        if roll < 0.78:
            return S.WorkerPaused(r.choice(workers), r.random() < 0.5)
        if roll < 0.82:
            self.req += 1
            node = r.choice(self.nodes) if r.random() < 0.3 else None
            return S.PutRequested(r.choice(self.clients), self.req, r.choice([50, 200, 500]),
                                  node, near=r.choice(["", "n2/boot"]))
        if roll < 0.85 and ref.objects:
            oid = r.choice(sorted(ref.objects))
            return S.FreeRequested(ref.objects[oid].client, [oid])
        if roll < 0.87:
            client = r.choice(self.clients)
            return S.CancelRequested(client, [t.cid for t in ref.queues.get(client, ())][::2])
        if roll < 0.89 and len(self.clients) > 1:
            client = self.clients.pop(r.randrange(len(self.clients)))
            return S.ClientLeft(client)
        if roll < 0.93:
            lost = r.choice(workers)
            return S.WorkerGone(lost, "gone")
        back = sorted(set(ref.lost) - set(ref.workers))
        if roll < 0.95 and back:   # a lost rank comes back (as a worker joining from elsewhere)
            return self.join(r.choice(back))
        return S.HeardFrom(r.choice(workers), self.clock)

    def saw(self, out):
        for ins in out:
            if isinstance(ins, S.CloseLease):
                self.ended.append((ins.rank, ins.lease))


def check_index(s: S.Scheduler) -> None:
    """The indexes agree with the scheduler's state, recomputed by brute force."""
    index = s._index
    idle = {n: 0 for n in index.nodes}
    for w in s.workers.values():
        usable = not w.paused and w.lent_to is None and not w.lease
        level = len(w.assigned) if usable else -1
        assert w.level == level, (w.rank, w.level, level)
        if level >= 0:
            assert index.all.members[level].get(w.seq) is w
            assert index.nodes[w.node].members[level].get(w.seq) is w
            for fn in w.fns:
                assert index.warm[fn].members[level].get(w.seq) is w
        if level == 0:
            idle[w.node] += len(w.cores)
    assert idle == index.idle_cores
    filed = sum(len(m) for m in index.all.members)
    assert filed == sum(1 for w in s.workers.values() if w.level >= 0)
    by_rank = {}
    for oid, obj in s.objects.items():   # the objects filed by the rank holding them
        by_rank.setdefault(obj.rank, set()).add(oid)
    assert {r: set(ids) for r, ids in s.held.items() if ids} == by_rank
    assert s.free_gpus == sum(len(g) for g in s.gpus_free.values())


def state(s: S.Scheduler):
    return (s.snapshot(), {g: (t.rank, t.attempts, t.cores, t.gpus) for g, t in s.tasks.items()},
            {c: [t.gid for t in q] for c, q in s.queues.items()}, list(s.turn))


@pytest.mark.parametrize("seed", range(60))
def test_indexed_placement_decides_as_the_scan_did(seed):
    rng = random.Random(seed)
    shape = rng.choice([(1, 3), (2, 6), (4, 12), (4, 24)])   # (nodes, workers at most)
    kw = {"leases": rng.random() < 0.5, "prefetch": rng.choice([1, 4, 256]),
          "prefetch_below": 0.005}
    ref, new = Reference(**kw), S.Scheduler(**kw)
    driver = Driver(rng, ref, *shape)
    placed = 0
    for step in range(400):
        ev = driver.event()
        want = ref.handle(ev)
        got = new.handle(ev)
        assert got == want, (seed, step, ev)
        assert state(new) == state(ref), (seed, step, ev)
        check_index(new)
        driver.saw(want)
        placed += sum(len(i.work) for i in want if isinstance(i, S.SendWork))
    assert placed > 50, placed   # the sequence did place work


def test_big_worlds_with_memory_full_nodes_decide_as_the_scan_did():
    """Many workers on nodes whose memory fills: the walk past SKIP_LIMIT and the node scan."""
    from colocate.rank0 import placement as _placement
    for seed in range(3):
        rng = random.Random(1000 + seed)
        ref, new = Reference(), S.Scheduler()
        for rank in range(1, 401):   # 8 nodes of 50 one-core workers, 1000 bytes each
            ev = S.WorkerJoined(rank, f"m{(rank - 1) // 50}", (rank,), 1000)
            assert ref.handle(ev) == new.handle(ev)
        for ev in (S.ClientJoined(7),):
            assert ref.handle(ev) == new.handle(ev)
        gid = 0
        cut = 0
        walked = _placement.Placement._on_roomy_nodes

        def counting(self, *a, _walked=walked):
            nonlocal cut
            cut += 1
            return _walked(self, *a)

        _placement.Placement._on_roomy_nodes = counting
        try:
            for step in range(300):
                if rng.random() < 0.6:
                    msgs = []
                    for _ in range(rng.choice([1, 10, 40])):
                        gid += 1
                        mem = rng.choice([None, 250, 400, 1000])
                        msgs.append(TaskMsg(gid, FNS[gid % 2], b"fn", b"", TaskOptions(
                            memory=mem), rng.choice([None, None, "m3"])))
                    ev = S.Submitted(7, msgs)
                else:
                    busy = [w for w in ref.workers.values() if w.assigned]
                    if not busy:
                        continue
                    w = rng.choice(busy)
                    ev = S.WorkerDone(w.rank, [Outcome(g, Status.OK, b"", 1.0, 1.5)
                                               for g in list(w.assigned)[:1]])
                assert new.handle(ev) == ref.handle(ev), (seed, step)
                assert state(new) == state(ref)
            check_index(new)
        finally:
            _placement.Placement._on_roomy_nodes = walked
        assert cut > 0, "the node scan past SKIP_LIMIT was never taken"
