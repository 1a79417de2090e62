"""Rank 0's placement indexes: where a task can go, found without a scan of every worker.

Held by :class:`colocate.rank0.scheduler.Scheduler` (it runs on rank 0, inside the pure state
machine): :class:`Placement` owns the indexes and reads, never changes, a node's free memory (a
function of the store's books) and the scheduler's per-node free GPUs. The scheduler tells it of
every change that matters (a worker joins or goes; its load, pause, lent cores or lease change;
it caches a function; ``room_changed``: a node's free memory changes) and asks it where a task
goes (:meth:`Placement.best` for one core, :meth:`Placement.exclusive` for a task that runs
alone); the scheduler then takes the worker, the lent cores and the GPUs. The answer is
the one a scan of every worker in join order gives (the rules in the scheduler's docstring),
found in O(log W) amortized:

* a one-core task goes to the usable worker (not paused, lent or leased) with the smallest
  ``(not on the preferred node, tasks it holds, function not cached, join order)`` among those
  holding fewer than the send-ahead depth, on a node whose free memory holds the task's
  reservation;
* a task for several cores or GPUs goes to the first node, preferred node first, then in the
  join order of each node's first idle worker, with enough idle cores, free GPUs and memory;
  there its idle workers, those with the function cached first, then by rank, lend their cores.

What it keeps:
  * :class:`_Levels` for all workers, for each node, and for each function (the workers that
    cached it): per load level, the usable workers filed there and a heap of their join numbers
    (entries of workers that moved are dropped lazily, when they reach the top; a heap is built
    only when asked for, and dropped when its level empties);
  * per node, the cores of its idle usable workers; a heap of nodes by the join number of their
    first idle worker (all nodes, and those with a free GPU), refreshed for the nodes changed
    since the last multi-core or GPU task;
  * a heap of nodes by free memory, refreshed likewise, to find the nodes a reservation fits.

A worker's move costs O(1 + functions it cached). A one-core task without a reservation costs
O(log W) plus the empty load levels below the lowest one in use (at most the send-ahead depth).
A reservation that the best worker's node cannot hold walks the workers in order, skipping those
on nodes without room; past :data:`SKIP_LIMIT` of them it looks at every node with room instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from heapq import heapify, heappop, heappush
from operator import attrgetter

from colocate.rank0.records import TaskRecord, WorkerRecord

Placed = tuple[WorkerRecord, list[WorkerRecord], list[str]]   # a worker, those lending cores, GPUs

_rank = attrgetter("rank")
SKIP_LIMIT = 64   # workers skipped for want of memory before the nodes with room are looked at


def in_order(heap: list) -> Iterator:
    """The entries of a heap, smallest first, without changing it (O(log k) per entry)."""
    if not heap:
        return
    todo = [(heap[0], 0)]
    n = len(heap)
    while todo:
        value, i = heappop(todo)
        yield value
        j = 2 * i + 1
        if j < n:
            heappush(todo, (heap[j], j))
            if j + 1 < n:
                heappush(todo, (heap[j + 1], j + 1))


class _Levels:
    """Usable workers by load level: members (join number -> worker) and a lazy heap per level.

    A level's heap is built the first time it is asked for its first worker, and dropped when
    the level empties: heaps nobody asks for (the workers that cached a function, when the first
    in line always has it; one node's, when no task prefers it or runs alone) cost nothing to
    keep. A build costs O(members), each added since the level was last empty: O(1) amortized.
    """

    __slots__ = ("heaps", "members")

    def __init__(self) -> None:
        self.heaps: list[list[int] | None] = []   # None: not built (nobody asked since empty)
        self.members: list[dict[int, WorkerRecord]] = []

    def add(self, level: int, worker: WorkerRecord) -> None:
        while len(self.members) <= level:
            self.heaps.append(None)
            self.members.append({})
        members, heap = self.members[level], self.heaps[level]
        members[worker.seq] = worker
        if heap is not None:
            heappush(heap, worker.seq)
            if len(heap) > 2 * len(members) + 16:   # mostly stale: rebuild, amortized O(1)
                heap[:] = members
                heapify(heap)

    def remove(self, level: int, worker: WorkerRecord) -> None:
        members = self.members[level]
        del members[worker.seq]
        if not members:
            self.heaps[level] = None

    def heap(self, level: int) -> list[int]:
        """The heap of join numbers at ``level`` (members present), built if it was not."""
        heap = self.heaps[level]
        if heap is None:
            heap = self.heaps[level] = list(self.members[level])
            heapify(heap)
        return heap

    def first(self, level: int) -> WorkerRecord | None:
        """The worker with the smallest join number at ``level``."""
        if level >= len(self.members):
            return None
        members = self.members[level]
        if not members:
            return None
        heap = self.heaps[level]
        if heap is None:
            heap = self.heap(level)
        while heap[0] not in members:
            heappop(heap)
        return members[heap[0]]

    def first_where(self, level: int, fits: Callable[[WorkerRecord], bool],
                    limit: int) -> tuple[WorkerRecord | None, bool]:
        """The first worker at ``level`` (join order) that ``fits``; looks at most at ``limit``.

        Returns ``(worker or None, whether the limit cut the walk short)``.
        """
        if level >= len(self.members) or not self.members[level]:
            return None, False
        members = self.members[level]
        seen = 0
        for seq in in_order(self.heap(level)):
            worker = members.get(seq)
            if worker is None:   # (an entry of a worker that moved)
                continue
            if fits(worker):
                return worker, False
            seen += 1
            if seen >= limit:
                return None, True
        return None, False


class Placement:
    """The indexes (see the module docstring), kept by the scheduler that owns the workers.

    Args:
        room: the free memory of a node (bytes), as the store's books count it.
        gpus_free: the scheduler's per-node lists of free GPU ids (read).
        room_changed: where the scheduler and the books note the nodes whose free memory may
            have changed (the indexes empty it when they catch up).
    """

    def __init__(self, room: Callable[[str], int], gpus_free: dict[str, list[str]],
                 room_changed: set[str] | None = None) -> None:
        self.room = room
        self.gpus_free = gpus_free
        self.all = _Levels()
        self.nodes: dict[str, _Levels] = {}
        self.warm: dict[bytes, _Levels] = {}
        self.idle_cores: dict[str, int] = {}
        self.gpu_nodes: set[str] = set()
        self.by_first_idle: list[tuple[int, str]] = []       # (join number, node), lazy
        self.first_idle: dict[str, int] = {}                 # ... and the valid entries
        self.gpu_by_first_idle: list[tuple[int, str]] = []   # (those with a free GPU)
        self.gpu_first_idle: dict[str, int] = {}
        self.by_room: list[tuple[int, str]] = []             # (-free bytes, node), lazy
        self.changed: set[str] = set()        # nodes whose first idle worker may have changed
        self.room_changed: set[str] = set() if room_changed is None else room_changed
        self._seq = 0

    # ----- changes -------------------------------------------------------------------------------
    def join(self, worker: WorkerRecord, gpus: bool, seq: int | None = None) -> None:
        """File a new worker (``seq``: the join number of the worker it replaces, if any)."""
        if seq is None:
            seq, self._seq = self._seq, self._seq + 1
        worker.seq = seq
        worker.level = -1
        if worker.node not in self.nodes:
            self.nodes[worker.node] = _Levels()
            self.idle_cores[worker.node] = 0
        worker.pools = (self.all, self.nodes[worker.node])
        if gpus:
            self.gpu_nodes.add(worker.node)
        self.room_changed.add(worker.node)
        self.refile(worker)

    def leave(self, worker: WorkerRecord) -> None:
        """Forget a worker that is lost (or replaced)."""
        self._unfile(worker)
        worker.level = -1
        self.changed.add(worker.node)

    def refile(self, worker: WorkerRecord) -> None:
        """File the worker under its load now, or nowhere when it is not usable."""
        if worker.paused or worker.lent_to is not None or worker.lease:
            level = -1
        else:
            level = len(worker.assigned)
        old = worker.level
        if level == old:
            return
        # (the hot path of every decision, twice: _Levels.add and .remove, inlined)
        seq = worker.seq
        if old >= 0:
            for levels in worker.pools:
                members = levels.members[old]
                del members[seq]
                if not members:
                    levels.heaps[old] = None
            if old == 0:
                self.idle_cores[worker.node] -= len(worker.cores)
                self.changed.add(worker.node)
        worker.level = level
        if level < 0:
            return
        for levels in worker.pools:
            try:
                members = levels.members[level]
            except IndexError:   # (a load no worker of this pool had yet)
                levels.add(level, worker)
                continue
            members[seq] = worker
            heap = levels.heaps[level]
            if heap is not None:
                heappush(heap, seq)
                if len(heap) > (len(members) << 1) + 16:   # mostly stale: rebuild, O(1) amortized
                    heap[:] = members
                    heapify(heap)
        if level == 0:
            self.idle_cores[worker.node] += len(worker.cores)
            self.changed.add(worker.node)

    def warmed(self, worker: WorkerRecord, fn: bytes) -> None:
        """The worker has just cached ``fn`` (call before it is refiled)."""
        levels = self.warm.get(fn)
        if levels is None:
            levels = self.warm[fn] = _Levels()
        if worker.level >= 0:
            levels.add(worker.level, worker)
        worker.pools = (*worker.pools, levels)

    def _unfile(self, worker: WorkerRecord) -> None:
        level = worker.level
        if level < 0:
            return
        for levels in worker.pools:
            members = levels.members[level]
            if members.pop(worker.seq, None) is not None and not members:
                levels.heaps[level] = None
        if level == 0:
            self.idle_cores[worker.node] -= len(worker.cores)
            self.changed.add(worker.node)

    # ----- one-core tasks ------------------------------------------------------------------------
    def best(self, fn: bytes, depth: int, prefer: str | None,
             memory: int | None) -> WorkerRecord | None:
        """The worker a one-core task goes to, or None when none can take it now."""
        if memory and self.most_room() < memory:   # (no node has room: the common refusal)
            return None
        if prefer is not None:
            levels = self.nodes.get(prefer)
            if levels is not None and (not memory or self.room(prefer) >= memory):
                worker = self._best_on(levels, fn, depth)
                if worker is not None:
                    return worker
        warm = self.warm.get(fn)
        for level in range(min(depth, len(self.all.members))):
            if not self.all.members[level]:
                continue
            if not memory:
                worker = self.all.first(level)
                if fn in worker.fns or warm is None:
                    return worker
                return warm.first(level) or worker
            worker = self._fitting(fn, warm, level, memory)
            if worker is not None:
                return worker
        return None

    def _best_on(self, levels: _Levels, fn: bytes, depth: int) -> WorkerRecord | None:
        """The best worker of one node (at most its own workers are looked at)."""
        for level in range(min(depth, len(levels.members))):
            members = levels.members[level]
            if not members:
                continue
            worker = levels.first(level)
            if fn in worker.fns:
                return worker
            warm = min((s for s, w in members.items() if fn in w.fns), default=None)
            return worker if warm is None else members[warm]
        return None

    def _fitting(self, fn: bytes, warm: _Levels | None, level: int,
                 memory: int) -> WorkerRecord | None:
        """The best worker at ``level`` on a node with ``memory`` bytes free (warm first)."""
        room = self.room
        first = (warm if warm is not None and level < len(warm.members)
                 and warm.members[level] else self.all).first(level)
        if room(first.node) >= memory:   # (the first in line fits: the walk below starts there)
            return first

        def fits(w: WorkerRecord) -> bool:
            return room(w.node) >= memory

        if warm is not None:
            worker, cut = warm.first_where(level, fits, SKIP_LIMIT)
            if worker is not None:
                return worker
            if cut:   # many warm workers on full nodes come first: look at the nodes with room
                return self._on_roomy_nodes(fn, level, memory)
        worker, cut = self.all.first_where(level, fits, SKIP_LIMIT)
        return self._on_roomy_nodes(fn, level, memory) if cut else worker

    def _on_roomy_nodes(self, fn: bytes, level: int, memory: int) -> WorkerRecord | None:
        """The best worker at ``level`` among the nodes with room: O(nodes with room)."""
        best, best_key = None, None
        for node in self.roomy(memory):
            levels = self.nodes[node]
            worker = levels.first(level)
            if worker is None:
                continue
            key = (0, worker.seq)
            if fn not in worker.fns:
                warm = min((s for s, w in levels.members[level].items() if fn in w.fns),
                           default=None)
                key = (1, worker.seq) if warm is None else (0, warm)
            if best_key is None or key < best_key:
                best, best_key = levels.members[level][key[1]], key
        return best

    def _rooms(self) -> list[tuple[int, str]]:
        """The heap of nodes by free memory, brought up to date (its top entry valid)."""
        heap = self.by_room
        if self.room_changed:
            for node in self.room_changed:
                heappush(heap, (-self.room(node), node))
            self.room_changed.clear()
            if len(heap) > 2 * len(self.nodes) + 16:
                heap[:] = [(-self.room(n), n) for n in self.nodes]
                heapify(heap)
        while heap and self.room(heap[0][1]) != -heap[0][0]:   # (an old entry of a node)
            heappop(heap)
        return heap

    def most_room(self) -> int:
        """The most memory any node has free (bytes; 0 without nodes)."""
        heap = self._rooms()
        return -heap[0][0] if heap else 0

    def roomy(self, memory: int) -> list[str]:
        """The nodes with at least ``memory`` bytes free, most free first."""
        heap = self._rooms()
        out, seen = [], set()
        for free, node in in_order(heap):
            if -free < memory:
                break
            if node not in seen and self.room(node) == -free:
                seen.add(node)
                out.append(node)
        return out

    # ----- tasks that run alone ------------------------------------------------------------------
    def exclusive_nodes(self, gpus: bool) -> Iterable[str]:
        """Nodes with an idle usable worker (and a free GPU), in join order of their first one."""
        if self.changed:   # (re-file the nodes changed since the last call)
            nodes, gpu_nodes, note = self.nodes, self.gpu_nodes, self._note_first
            for node in self.changed:
                first = nodes[node].first(0)
                if first is None:
                    self.first_idle.pop(node, None)
                    self.gpu_first_idle.pop(node, None)
                    continue
                if self.first_idle.get(node) != first.seq:
                    note(self.by_first_idle, self.first_idle, node, first.seq)
                if node in gpu_nodes:
                    note(self.gpu_by_first_idle, self.gpu_first_idle, node,
                         first.seq if self.gpus_free[node] else None)
            self.changed.clear()
        heap, filed = ((self.gpu_by_first_idle, self.gpu_first_idle) if gpus
                       else (self.by_first_idle, self.first_idle))
        if len(heap) > 2 * len(filed) + 16:
            heap[:] = [(seq, n) for n, seq in filed.items()]
            heapify(heap)
        while heap and filed.get(heap[0][1]) != heap[0][0]:
            heappop(heap)
        if len(filed) <= 1:   # (none, or one: its entry is on top)
            return (heap[0][1],) if heap else ()
        return (node for seq, node in in_order(heap) if filed.get(node) == seq)

    @staticmethod
    def _note_first(heap: list[tuple[int, str]], filed: dict[str, int], node: str,
                    seq: int | None) -> None:
        if seq is None:
            filed.pop(node, None)
        elif filed.get(node) != seq:
            filed[node] = seq
            heappush(heap, (seq, node))

    def idle_on(self, node: str) -> list[WorkerRecord]:
        """The idle usable workers of ``node``."""
        levels = self.nodes.get(node)
        if levels is None or not levels.members:
            return []
        return list(levels.members[0].values())

    def exclusive(self, task: TaskRecord) -> Placed | None:
        """Place a task that needs several cores or GPUs: alone, with lent cores.

        It runs on an idle worker of a node where enough other idle workers lend their cores
        and enough GPUs are free: the preferred node if it can, else the first such node.
        """
        idle = self.all.members
        if not idle or not idle[0]:   # (the common refusal: no idle worker)
            return None
        prefer = task.prefer
        if prefer is not None and prefer in self.nodes:
            placed = self._exclusive_on(prefer, task)
            if placed is not None:
                return placed
        for node in self.exclusive_nodes(task.opts.gpus > 0):
            if node != prefer:
                placed = self._exclusive_on(node, task)
                if placed is not None:
                    return placed
        return None

    def _exclusive_on(self, node: str, task: TaskRecord) -> Placed | None:
        """Where on ``node`` the task runs alone, or None when the node cannot take it now.

        Its idle workers with the function cached first, then by rank, lend their cores.
        """
        opts = task.opts
        cores = opts.cores
        if self.idle_cores[node] < (cores if cores > 1 else 1):
            return None
        free_gpus = self.gpus_free[node]
        if len(free_gpus) < opts.gpus or (opts.memory and opts.memory > self.room(node)):
            return None
        idle = self.nodes[node].members[0].values()
        fn = task.fn_hash
        if cores <= 1:   # (one worker: the first warm one, else the first by rank; no sort)
            first = min((w for w in idle if fn in w.fns), key=_rank, default=None)
            return first or min(idle, key=_rank), [], free_gpus[:opts.gpus]
        warm = sorted((w for w in idle if fn in w.fns), key=_rank)
        have = 0
        for i, w in enumerate(warm):
            have += len(w.cores)
            if have >= cores:
                return w if i == 0 else warm[0], warm[1:i + 1], free_gpus[:opts.gpus]
        chosen = warm + sorted((w for w in idle if fn not in w.fns), key=_rank)
        for i in range(len(warm), len(chosen)):
            have += len(chosen[i].cores)
            if have >= cores:
                return chosen[0], chosen[1:i + 1], free_gpus[:opts.gpus]
        return chosen[0], chosen[1:], free_gpus[:opts.gpus]
