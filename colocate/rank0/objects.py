"""The object store's books, held by rank 0's scheduler: who holds each object, whose, how big.

:class:`StoreBook` is an object the scheduler holds (``Scheduler.books``), not part of it. It owns
the store's records (``objects``, ``held``, ``node_stored``, ``gone``, ``moving``, ``unmoved``,
``moved``, ``objects_lost``) and the objects waiting to be discarded (``drops``); it reads, never
changes, the scheduler's ``workers`` (but for each worker's ``stored`` bytes, which it keeps),
its clients (a client is known while it has a queue), ``node_budget`` and ``node_reserved``; and
it tells the placement indexes which nodes' free memory changed (``room_changed``). Its event
methods return the instruction to carry out, if any; the scheduler sends it. Only these records
pass through rank 0, never the data: a ``put`` is granted an id and a worker rank here, and the
client sends the bytes to that rank itself. Objects count against the same per-node memory
budget as the memory reserved by running tasks (:meth:`StoreBook.room`). ``held`` files the
object ids by the rank holding them, so a lost rank costs its own objects, not a scan of every
object stored.

When a rank goes, ``gone`` remembers, per object it held, the node it was on and why it went
(:data:`GONE_KEPT` of them at most, the oldest forgotten first): a client whose read fails asks
rank 0 (``WhereIs``, answered from :meth:`StoreBook.where_is`), and a task whose arguments name
such an object fails at dispatch with ``ObjectLost`` (:meth:`StoreBook.lost_argument`), not on
a worker.

A joined worker that leaves cleanly (``WorkerLeaving``) first has its objects copied elsewhere:
each is placed as a put would be, on another node with room (``MoveObjects``; the bytes are
charged there at once), the worker sends them through the data path of a put and reports
(``ObjectsMoved``), and only then is it let go (``LetGo``; at once when it holds nothing, so the
common case costs no extra message). A moved object keeps its id; ``moved`` is the forwarding
entry (its segment and data port at the new holder) that answers a client's ``WhereIs`` and
travels in ``Work.moved`` with tasks whose ``Ref`` still names the old holder. An object that
found no room, or whose copy failed, is lost with the worker, and its reason says so.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass, replace

from colocate.rank0.events import (
    LetGo,
    MoveObjects,
    ObjectsMoved,
    PutGranted,
    PutRefused,
    PutRequested,
)
from colocate.rank0.records import WorkerRecord
from colocate.store import human_size

GONE_KEPT = 100_000   # lost objects whose reason is kept (a few hundred bytes each)


@dataclass(frozen=True, slots=True)
class _Gone:
    client: int
    rank: int
    node: str
    why: str


def lost_text(oid: int, gone: _Gone) -> str:
    """What ``ObjectLost`` says of object ``oid``: where it was, why it is gone, what to do."""
    return (f"object {oid} was stored on node {gone.node} (worker {gone.rank}), which is gone: "
            f"{gone.why}. Its data went with it; put it again (ex.put), and keep a copy of what "
            "you cannot lose outside the world")


@dataclass(frozen=True, slots=True)
class _Object:
    client: int
    rank: int
    node: str
    nbytes: int
    ahead: bool = False   # granted ahead of a put (budget held, no data yet)


class StoreBook:
    """The store's books (see the module docstring); the scheduler holds one.

    Args:
        workers: the scheduler's workers by rank (read; each one's ``stored`` is kept here).
        clients: the scheduler's queues by client: the clients it knows (read).
        node_budget: the scheduler's memory budget per node for functions (read).
        node_reserved: the scheduler's memory reserved per node by running tasks (read).
        room_changed: the placement indexes' set of nodes whose free memory may have changed.
    """

    def __init__(self, workers: dict[int, WorkerRecord], clients: Container[int],
                 node_budget: dict[str, int], node_reserved: dict[str, int],
                 room_changed: set[str]) -> None:
        self.workers = workers
        self.clients = clients
        self.node_budget = node_budget
        self.node_reserved = node_reserved
        self.room_changed = room_changed
        self.objects: dict[int, _Object] = {}
        self.held: dict[int, dict[int, None]] = {}   # rank -> ids of the objects it holds
        self.node_stored: dict[str, int] = {}
        self.objects_lost = 0
        self.gone: dict[int, _Gone] = {}   # lost object -> where it was and why (oldest first)
        self.moving: dict[int, dict[int, tuple]] = {}   # leaving rank -> id -> (rank, node, bytes)
        self.unmoved: dict[int, str] = {}  # id -> why it could not be moved off a leaving rank
        self.moved: dict[int, tuple] = {}  # moved object -> (fd, where) at its new holder
        self.drops: dict[int, list[int]] = {}   # rank -> ids it must discard (the scheduler
        self._next_ref = 1                      # sends them and clears this, never rebinds it)

    def room(self, node: str) -> int:
        """Bytes of the node's budget not reserved by running tasks nor held by objects."""
        return self.node_budget[node] - self.node_reserved[node] - self.node_stored[node]

    def add_node(self, node: str) -> None:
        """A worker of ``node`` joined: its stored bytes are counted from here on."""
        self.node_stored.setdefault(node, 0)

    # ----- puts, frees, kept objects -------------------------------------------------------------
    def put(self, ev: PutRequested, draining: bool) -> PutGranted | PutRefused:
        """Where a put goes (its id, rank and node, and spares), or why it cannot be stored."""
        def refuse(reason: str, full: bool = False) -> PutRefused:
            return PutRefused(ev.client, ev.req, reason, full)

        if draining:
            return refuse("the server is draining")
        if ev.client not in self.clients:
            return refuse("unknown client")
        if ev.nbytes < 0:
            return refuse(f"a size of {ev.nbytes} bytes")
        nodes = sorted({w.node for w in self.workers.values()})
        if not nodes:
            return refuse("no worker rank is left in the world")
        if ev.node is not None and ev.node not in nodes:
            return refuse(f"no worker rank on node {ev.node!r}; the nodes are {nodes}")
        candidates = [ev.node] if ev.node is not None else nodes
        fitting = [n for n in candidates if self.room(n) >= ev.nbytes]
        if not fitting:
            node = max(candidates, key=self.room)
            ahead = sum(o.nbytes for o in self.objects.values() if o.ahead and o.node == node)
            return refuse(
                f"cannot store {ev.nbytes} bytes ({human_size(ev.nbytes)}) on node {node}: its "
                f"memory budget for functions is {self.node_budget[node]} bytes "
                f"({human_size(self.node_budget[node])}), of which "
                f"{self.node_stored[node]} are held by stored objects "
                f"({ahead} of them set aside for clients' next puts) and "
                f"{self.node_reserved[node]} reserved by running tasks "
                f"({max(0, self.room(node))} free); free objects you no longer need, put it "
                f"on another node, or raise co_location.memory_budget", full=True)
        near = {w.node for w in self.workers.values() if ev.near and w.machine == ev.near}
        node = max(fitting, key=lambda n: (n in near, self.room(n)))
        worker = min((w for w in self.workers.values() if w.node == node),
                     key=lambda w: (w.stored, w.rank))
        count = 1
        if ev.ahead and ev.count > 1 and ev.nbytes > 0:   # spares: as many as fit
            count = max(1, min(ev.count, self.room(node) // ev.nbytes))
        ids = []
        for _ in range(count):
            ids.append(self._next_ref << 16)   # worker-made ids end in their rank, never 0
            self._next_ref += 1
            self._add_object(ids[-1], _Object(ev.client, worker.rank, node, ev.nbytes, ev.ahead))
        return PutGranted(ev.client, ev.req, ids[0], worker.rank, node, tuple(ids[1:]))

    def ahead_used(self, client: int, ids: Iterable[int]) -> None:
        """The client's spares ``ids`` now hold data: objects like any other."""
        for oid in ids:
            obj = self.objects.get(oid)
            if obj is not None and obj.client == client:
                self.objects[oid] = replace(obj, ahead=False)

    def kept(self, worker: WorkerRecord, owner: int | None,
             kept: tuple[tuple[int, int], ...]) -> None:
        """Objects a task stored with ``keep()``: ``owner``'s, else (None) dropped at once.

        The owner is the task's client if it gets an OK result; otherwise nobody can reach them.
        """
        for oid, nbytes in kept:
            if owner is not None:
                self._add_object(oid, _Object(owner, worker.rank, worker.node, nbytes))
            else:
                self.drops.setdefault(worker.rank, []).append(oid)

    def _add_object(self, oid: int, obj: _Object) -> None:
        before = self.objects.get(oid)
        if before is not None and before.rank != obj.rank:   # (filed where it is now)
            del self.held[before.rank][oid]
        self.objects[oid] = obj
        held = self.held.get(obj.rank)
        if held is None:
            held = self.held[obj.rank] = {}
        held[oid] = None
        self.node_stored[obj.node] += obj.nbytes
        self.room_changed.add(obj.node)
        worker = self.workers.get(obj.rank)
        if worker is not None:
            worker.stored += obj.nbytes

    def free(self, ids: Iterable[int]) -> None:
        """Forget the objects ``ids`` (their holders are told to discard them)."""
        for oid in ids:
            obj = self.objects.pop(oid, None)
            if obj is None:
                if self.gone:
                    self.gone.pop(oid, None)
                continue
            if self.moved or self.unmoved:
                self.moved.pop(oid, None)
                self.unmoved.pop(oid, None)
            del self.held[obj.rank][oid]
            self.node_stored[obj.node] -= obj.nbytes
            self.room_changed.add(obj.node)
            worker = self.workers.get(obj.rank)
            if worker is not None:
                worker.stored -= obj.nbytes
                self.drops.setdefault(obj.rank, []).append(oid)

    def client_left(self, client: int) -> None:
        """The client's objects are freed, and the reasons its lost ones went forgotten."""
        self.free([i for i, o in self.objects.items() if o.client == client])
        if self.gone:
            for oid in [i for i, g in self.gone.items() if g.client == client]:
                del self.gone[oid]

    def lose(self, rank: int, why: str = "") -> None:
        """The rank is gone, and the objects it held with it: O(its objects), not O(all)."""
        self._cancel_moves(rank)
        gone = self.gone
        for oid in self.held.pop(rank, ()):
            obj = self.objects.pop(oid)
            self.node_stored[obj.node] -= obj.nbytes
            self.objects_lost += 1
            self.moved.pop(oid, None)
            if not obj.ahead:   # (a spare never held data: nobody reads it)
                text = why or "its worker went away"
                unmoved = self.unmoved.pop(oid, None)
                if unmoved is not None:
                    text += f"; it was not moved to another node: {unmoved}"
                gone[oid] = _Gone(obj.client, rank, obj.node, text)
        while len(gone) > GONE_KEPT:
            del gone[next(iter(gone))]

    def where_is(self, oid: int) -> tuple[str, _Object | None]:
        """``(why it is lost, "")`` or ``("", its record)``; ``("", None)``: freed or unknown."""
        gone = self.gone.get(oid)
        if gone is not None:
            return lost_text(oid, gone), None
        return "", self.objects.get(oid)

    def lost_argument(self, refs: tuple[int, ...]) -> str | None:
        """Why a task naming these objects cannot run (one of them is lost), or None."""
        for oid in refs:
            gone = self.gone.get(oid)
            if gone is not None:
                return lost_text(oid, gone)
        return None

    def relocations(self, refs: tuple[int, ...]) -> tuple:
        """``(id, rank, node, where, fd)`` of the objects among ``refs`` moved since put."""
        out = []
        for oid in refs:
            got = self.moved.get(oid)
            if got is not None:
                obj = self.objects.get(oid)
                if obj is not None:
                    out.append((oid, obj.rank, obj.node, got[1], got[0]))
        return tuple(out)

    # ----- moving the objects of a leaving worker -----------------------------------------------
    def leaving(self, rank: int) -> MoveObjects | LetGo | None:
        """Place each object of the leaving rank on another node with room, or note why not.

        Targets are chosen as a put's would be (the node with the most room, there the worker
        holding least), never on the leaving rank's node (its batch job ends the whole node)
        nor on another leaving rank; their bytes are charged to the target node at once.
        Returns the moves to make, ``LetGo`` when there are none, or None when the rank is
        unknown or already leaving.
        """
        worker = self.workers.get(rank)
        held = [oid for oid in self.held.get(rank, ()) if not self.objects[oid].ahead]
        if worker is None or not held or rank in self.moving:
            if worker is not None and rank not in self.moving:
                return LetGo(rank)
            return None
        leaving = {r for r in self.moving} | {rank}
        targets = [w for w in self.workers.values()
                   if w.node != worker.node and w.rank not in leaving]
        plan: dict[int, tuple[int, str, int]] = {}
        for oid in held:
            obj = self.objects[oid]
            nodes = {w.node for w in targets if self.room(w.node) >= obj.nbytes}
            if not nodes:
                self.unmoved[oid] = self._no_room_text(obj, {w.node for w in targets})
                continue
            node = max(sorted(nodes), key=self.room)
            to = min((w for w in targets if w.node == node), key=lambda w: (w.stored, w.rank))
            plan[oid] = (to.rank, node, obj.nbytes)
            self.node_stored[node] += obj.nbytes
            to.stored += obj.nbytes
            self.room_changed.add(node)
        self.moving[rank] = plan
        if plan:
            return MoveObjects(rank, tuple((oid, r, n) for oid, (r, n, _) in plan.items()))
        return LetGo(rank)

    def objects_moved(self, ev: ObjectsMoved) -> LetGo | None:
        """The copies are made (``done``) or not (``failed``): refile them; the rank may go."""
        plan = self.moving.get(ev.rank)
        if plan is None:
            return None
        for oid, fd, where in ev.done:
            target = plan.pop(oid, None)
            if target is None:
                continue
            obj = self.objects.get(oid)
            if obj is None or obj.rank != ev.rank:   # freed meanwhile: release the copy too
                self._uncharge(target)
                self.drops.setdefault(target[0], []).append(oid)
                continue
            self._refile(oid, obj, target)
            self.moved[oid] = (fd, where)
        for oid, why in ev.failed:
            target = plan.pop(oid, None)
            if target is not None:
                self._uncharge(target)
                self.drops.setdefault(target[0], []).append(oid)   # (a part may have arrived)
                self.unmoved[oid] = f"copying it to worker {target[0]} on {target[1]} failed: {why}"
        for oid, target in plan.items():   # (not reported: treated as failed)
            self._uncharge(target)
            self.unmoved[oid] = "its worker did not report a copy of it"
            self.drops.setdefault(target[0], []).append(oid)
        plan.clear()
        return LetGo(ev.rank) if ev.rank in self.workers else None

    def _refile(self, oid: int, obj: _Object, target: tuple[int, str, int]) -> None:
        """Object ``oid`` now lives at ``target`` (whose node was charged when it was planned)."""
        rank, node, _ = target
        del self.held[obj.rank][oid]
        self.node_stored[obj.node] -= obj.nbytes
        self.room_changed.add(obj.node)
        old = self.workers.get(obj.rank)
        if old is not None:
            old.stored -= obj.nbytes
        self.objects[oid] = replace(obj, rank=rank, node=node)
        self.held.setdefault(rank, {})[oid] = None

    def _uncharge(self, target: tuple[int, str, int]) -> None:
        """Give back what a planned move charged to ``target``."""
        rank, node, nbytes = target
        self.node_stored[node] -= nbytes
        self.room_changed.add(node)
        worker = self.workers.get(rank)
        if worker is not None:
            worker.stored -= nbytes

    def _cancel_moves(self, rank: int) -> None:
        """The leaving rank is gone (or lost) before its moves were reported: undo them."""
        plan = self.moving.pop(rank, None)
        for oid, target in (plan or {}).items():
            self._uncharge(target)
            self.drops.setdefault(target[0], []).append(oid)
            self.unmoved.setdefault(oid, "it was being copied to another node when its "
                                    "worker went")
        for target_plan in self.moving.values():   # a target that goes: no copy arrives there
            for oid, target in list(target_plan.items()):
                if target[0] == rank:
                    del target_plan[oid]
                    self.node_stored[target[1]] -= target[2]
                    self.unmoved[oid] = f"its new holder, worker {rank}, went too"

    def _no_room_text(self, obj: _Object, nodes: set[str]) -> str:
        if not nodes:
            return "no worker on another node was left to take it"
        room = ", ".join(f"{n} {max(0, self.room(n))}" for n in sorted(nodes))
        return (f"no other node had room for its {obj.nbytes} bytes ({human_size(obj.nbytes)}) "
                f"in its memory budget for functions (bytes free: {room})")
