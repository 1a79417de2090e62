"""The scheduler's object-store books: which worker rank holds each object, whose it is, how big.

Part of :class:`colocate.rank0.scheduler.Scheduler` (a mixin: it works on the scheduler's state,
``workers``, ``queues``, ``objects``, ``node_budget``/``node_reserved``/``node_stored``,
``_drops`` and ``_out``). Only these records pass through rank 0, never the data: a ``put`` is
granted an id and a worker rank here, and the client sends the bytes to that rank itself.
Objects count against the same per-node memory budget as the memory reserved by running tasks.
``held`` files the object ids by the rank holding them, so a lost rank costs its own objects, not
a scan of every object stored.

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

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from colocate.rank0.events import (
    AheadUsed,
    FreeRequested,
    LetGo,
    MoveObjects,
    ObjectsMoved,
    PutGranted,
    PutRefused,
    PutRequested,
    WorkerLeaving,
)
from colocate.store import human_size

if TYPE_CHECKING:
    from colocate.rank0.scheduler import _Worker


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
    """Object-store events and records of the scheduler (see the module docstring)."""

    def _on_PutRequested(self, ev: PutRequested) -> None:
        def refuse(reason: str, full: bool = False) -> None:
            self._out.append(PutRefused(ev.client, ev.req, reason, full))

        if self.draining:
            return refuse("the server is draining")
        if ev.client not in self.queues:
            return refuse("unknown client")
        if ev.nbytes < 0:
            return refuse(f"a size of {ev.nbytes} bytes")
        nodes = sorted({w.node for w in self.workers.values()})
        if not nodes:
            return refuse("no worker rank is left in the world")
        if ev.node is not None and ev.node not in nodes:
            return refuse(f"no worker rank on node {ev.node!r}; the nodes are {nodes}")
        candidates = [ev.node] if ev.node is not None else nodes
        fitting = [n for n in candidates if self._room(n) >= ev.nbytes]
        if not fitting:
            node = max(candidates, key=self._room)
            ahead = sum(o.nbytes for o in self.objects.values() if o.ahead and o.node == node)
            return refuse(
                f"cannot store {ev.nbytes} bytes ({human_size(ev.nbytes)}) on node {node}: its "
                f"memory budget for functions is {self.node_budget[node]} bytes "
                f"({human_size(self.node_budget[node])}), of which "
                f"{self.node_stored[node]} are held by stored objects "
                f"({ahead} of them set aside for clients' next puts) and "
                f"{self.node_reserved[node]} reserved by running tasks "
                f"({max(0, self._room(node))} free); free objects you no longer need, put it "
                f"on another node, or raise co_location.memory_budget", full=True)
        near = {w.node for w in self.workers.values() if ev.near and w.machine == ev.near}
        node = max(fitting, key=lambda n: (n in near, self._room(n)))
        worker = min((w for w in self.workers.values() if w.node == node),
                     key=lambda w: (w.stored, w.rank))
        count = 1
        if ev.ahead and ev.count > 1 and ev.nbytes > 0:   # spares: as many as fit
            count = max(1, min(ev.count, self._room(node) // ev.nbytes))
        ids = []
        for _ in range(count):
            ids.append(self._next_ref << 16)   # worker-made ids end in their rank, never 0
            self._next_ref += 1
            self._add_object(ids[-1], _Object(ev.client, worker.rank, node, ev.nbytes, ev.ahead))
        self._out.append(PutGranted(ev.client, ev.req, ids[0], worker.rank, node,
                                    tuple(ids[1:])))

    def _on_FreeRequested(self, ev: FreeRequested) -> None:
        self._free(ev.ids)

    def _on_AheadUsed(self, ev: AheadUsed) -> None:
        for oid in ev.ids:
            obj = self.objects.get(oid)
            if obj is not None and obj.client == ev.client:
                self.objects[oid] = replace(obj, ahead=False)

    def _kept(self, worker: _Worker, owner: int | None,
              kept: tuple[tuple[int, int], ...]) -> None:
        """Objects a task stored with ``keep()``: ``owner``'s, else (None) dropped at once.

        The owner is the task's client if it gets an OK result; otherwise nobody can reach them.
        """
        for oid, nbytes in kept:
            if owner is not None:
                self._add_object(oid, _Object(owner, worker.rank, worker.node, nbytes))
            else:
                self._drops.setdefault(worker.rank, []).append(oid)

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
        self._index.room_changed.add(obj.node)
        worker = self.workers.get(obj.rank)
        if worker is not None:
            worker.stored += obj.nbytes

    def _free(self, ids: list[int]) -> None:
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
            self._index.room_changed.add(obj.node)
            worker = self.workers.get(obj.rank)
            if worker is not None:
                worker.stored -= obj.nbytes
                self._drops.setdefault(obj.rank, []).append(oid)

    def _lose_objects(self, rank: int, why: str = "") -> None:
        """The rank is gone, and the objects it held with it: O(its objects), not O(all)."""
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

    # ----- moving the objects of a leaving worker -----------------------------------------------
    def _on_WorkerLeaving(self, ev: WorkerLeaving) -> None:
        """Place each object of the leaving rank on another node with room, or note why not.

        Targets are chosen as a put's would be (the node with the most room, there the worker
        holding least), never on the leaving rank's node (its batch job ends the whole node)
        nor on another leaving rank; their bytes are charged to the target node at once.
        """
        worker = self.workers.get(ev.rank)
        held = [oid for oid in self.held.get(ev.rank, ()) if not self.objects[oid].ahead]
        if worker is None or not held or ev.rank in self.moving:
            if worker is not None and ev.rank not in self.moving:
                self._out.append(LetGo(ev.rank))
            return
        leaving = {r for r in self.moving} | {ev.rank}
        targets = [w for w in self.workers.values()
                   if w.node != worker.node and w.rank not in leaving]
        plan: dict[int, tuple[int, str, int]] = {}
        for oid in held:
            obj = self.objects[oid]
            nodes = {w.node for w in targets if self._room(w.node) >= obj.nbytes}
            if not nodes:
                self.unmoved[oid] = self._no_room_text(obj, {w.node for w in targets})
                continue
            node = max(sorted(nodes), key=self._room)
            to = min((w for w in targets if w.node == node), key=lambda w: (w.stored, w.rank))
            plan[oid] = (to.rank, node, obj.nbytes)
            self.node_stored[node] += obj.nbytes
            to.stored += obj.nbytes
            self._index.room_changed.add(node)
        self.moving[ev.rank] = plan
        if plan:
            self._out.append(MoveObjects(ev.rank, tuple((oid, r, n) for oid, (r, n, _)
                                                        in plan.items())))
        else:
            self._out.append(LetGo(ev.rank))

    def _on_ObjectsMoved(self, ev: ObjectsMoved) -> None:
        """The copies are made (``done``) or not (``failed``): refile them; the rank may go."""
        plan = self.moving.get(ev.rank)
        if plan is None:
            return
        for oid, fd, where in ev.done:
            target = plan.pop(oid, None)
            if target is None:
                continue
            obj = self.objects.get(oid)
            if obj is None or obj.rank != ev.rank:   # freed meanwhile: release the copy too
                self._uncharge(target)
                self._drops.setdefault(target[0], []).append(oid)
                continue
            self._refile(oid, obj, target)
            self.moved[oid] = (fd, where)
        for oid, why in ev.failed:
            target = plan.pop(oid, None)
            if target is not None:
                self._uncharge(target)
                self._drops.setdefault(target[0], []).append(oid)   # (a part may have arrived)
                self.unmoved[oid] = f"copying it to worker {target[0]} on {target[1]} failed: {why}"
        for oid, target in plan.items():   # (not reported: treated as failed)
            self._uncharge(target)
            self.unmoved[oid] = "its worker did not report a copy of it"
            self._drops.setdefault(target[0], []).append(oid)
        plan.clear()
        if ev.rank in self.workers:
            self._out.append(LetGo(ev.rank))

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

    def _refile(self, oid: int, obj: _Object, target: tuple[int, str, int]) -> None:
        """Object ``oid`` now lives at ``target`` (whose node was charged when it was planned)."""
        rank, node, _ = target
        del self.held[obj.rank][oid]
        self.node_stored[obj.node] -= obj.nbytes
        self._index.room_changed.add(obj.node)
        old = self.workers.get(obj.rank)
        if old is not None:
            old.stored -= obj.nbytes
        self.objects[oid] = replace(obj, rank=rank, node=node)
        self.held.setdefault(rank, {})[oid] = None

    def _uncharge(self, target: tuple[int, str, int]) -> None:
        """Give back what a planned move charged to ``target``."""
        rank, node, nbytes = target
        self.node_stored[node] -= nbytes
        self._index.room_changed.add(node)
        worker = self.workers.get(rank)
        if worker is not None:
            worker.stored -= nbytes

    def _cancel_moves(self, rank: int) -> None:
        """The leaving rank is gone (or lost) before its moves were reported: undo them."""
        plan = self.moving.pop(rank, None)
        for oid, target in (plan or {}).items():
            self._uncharge(target)
            self._drops.setdefault(target[0], []).append(oid)
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
        room = ", ".join(f"{n} {max(0, self._room(n))}" for n in sorted(nodes))
        return (f"no other node had room for its {obj.nbytes} bytes ({human_size(obj.nbytes)}) "
                f"in its memory budget for functions (bytes free: {room})")

    def _forget_gone(self, client: int) -> None:
        """A client left: the reasons its lost objects went are nobody's concern now."""
        if self.gone:
            for oid in [i for i, g in self.gone.items() if g.client == client]:
                del self.gone[oid]

    def _room(self, node: str) -> int:
        """Bytes of the node's budget not reserved by running tasks nor held by objects."""
        return self.node_budget[node] - self.node_reserved[node] - self.node_stored[node]
