"""A worker rank's loop: relay work from rank 0 to the executor child and outcomes back.

The rank itself never runs user code (unless ``executor.isolation: inline``). It reads
``Dispatch`` batches from rank 0, hands them to its warm child, and sends ``Done`` batches back.
While the child computes, the rank sleeps in ``select`` on the child's pipe and its bell, so it
does not compete with the child for the core (and on the pipe to the child when work waits for
room in it: the rank never blocks on its child). It enforces task timeouts (killing the child),
turns child deaths into ``CRASHED``/``MEMORY`` outcomes, and restarts the child at once.

Its :class:`~colocate.worker.confinement.Confinement` keeps the child in a cgroup (memory limit per
task) and runs the interference guard, which pauses the child while the host wants the core;
the paused time does not count against the task's timeout, and rank 0 places nothing new here.

The rank also holds stored objects (:class:`~colocate.store.server.StoreServer`, served by its own
threads on a data port): they live here, not in the child, so a crashing child loses none, and
the child maps them read-only to call functions on them.

A client holding a lease on this rank sends its lone tasks to the rank's task port and gets
their results from there (:class:`~colocate.worker.lease.LeaseDesk`); they run in the same executor.

Reads: ``Dispatch``, ``KillRunning``, ``TakeBack``, ``DropObjects``, ``StartLease``, ``EndLease``,
``MoveOut`` (leaving: copy the stored objects elsewhere), ``Shutdown`` from rank 0; leased tasks
from clients; outcomes from the child. Writes: ``WorkerHello``, ``Done`` (with the objects each
task kept), ``Heartbeat``, ``PauseCores``, ``LeaseEnded``, ``DirectDone``, ``Leaving``,
``MovedOut`` to rank 0; leased results to clients; work to the child.
"""

from __future__ import annotations

import logging
import os
import select
import time
from typing import Any

from colocate.child import run_work
from colocate.child.direct import RUNNING
from colocate.store import CONTEXT_ENV, Context, check_transport, set_context, world_id
from colocate.store.server import StoreServer
from colocate.wire import mpi
from colocate.wire.bell import Bell
from colocate.wire.messages import (
    Dispatch,
    Done,
    DropObjects,
    EndLease,
    Heartbeat,
    KillRunning,
    Leaving,
    MovedOut,
    MoveOut,
    Outcome,
    PauseCores,
    Shutdown,
    StartLease,
    Status,
    TakeBack,
    Work,
    WorkerHello,
    dumps,
)
from colocate.worker.childhandle import ChildHandle
from colocate.worker.confinement import Confinement
from colocate.worker.lease import LeaseDesk
from colocate.world.idle import Backoff

log = logging.getLogger("colocate.worker")

# Outcomes of short tasks sent ahead share one Done: each message to rank 0 costs a wake-up of
# it and of the client, so per-task messages cap throughput at a few thousand tasks a second.
# Waiting longer adds latency to a stream of results; a lone task's result is never held.
COALESCE_WAIT = 0.002   # seconds an outcome may wait for the next ones
COALESCE_MAX = 64       # outcomes that are sent at once, without waiting


class Worker:
    """State and loop of one worker rank.

    Args:
        comm: the world communicator (rank 0 is the scheduler); ``None`` for a joined worker.
        bell: this rank's bell to rank 0.
        place: ``{"node", "cores", "memory_budget", "detail", "token", "store_host"}`` from the
            world set-up.
        cfg: the effective configuration.
        rank: the id rank 0 knows this worker by (default: its rank in ``comm``).
        box: the link for messages to and from rank 0 (default: an MPI mailbox on ``comm``;
            a joined worker's :class:`~colocate.worker.joined.StreamLink` is its box and bell at
            once).
    """

    def __init__(self, comm: Any, bell: Bell, place: dict, cfg: dict, *, rank: int | None = None,
                 box: Any = None) -> None:
        self.comm = comm
        self.rank = comm.Get_rank() if rank is None else rank
        self.box = mpi.Mailbox(comm) if box is None else box
        self.bell = bell
        self.place = place
        self.cfg = cfg
        self.backoff = Backoff.from_config(cfg["server"])
        self.heartbeat = cfg["server"]["heartbeat"]
        self.fn_store: dict[bytes, bytes] = {}
        self.inline = cfg["executor"]["isolation"] == "inline"
        self.inline_cache: dict = {}
        self.child: ChildHandle | None = None
        self.last_sent = time.monotonic()
        self.unsent: list[Outcome] = []   # finished outcomes held back to share one Done
        self.unsent_since = 0.0
        self.running = True
        self.conf: Confinement | None = None
        self.paused_at: float | None = None
        self.credit: tuple[tuple, float] = ((), 0.0)   # paused seconds of the direct task
        self.widened: int | None = None   # gid of the multi-core task holding lent cores
        self.store: StoreServer | None = None
        self.desk: LeaseDesk | None = None
        # Leaving (a joined worker on SIGTERM, colocate.worker.joined): asked with the grace and
        # why, then under way until ``leave_by``; ``said_leaving`` once ``Leaving`` went to rank 0.
        self.leave_asked: tuple[float, str] | None = None
        self.leave_by: float | None = None
        self.said_leaving = False
        self.left_cleanly = False

    # ----- set-up --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the warm executor child and introduce this rank to the scheduler."""
        co = self.cfg["co_location"]
        token = self.place.get("token", "")
        from colocate.colocation.units import parse_size
        host = self.place.get("store_host", "127.0.0.1")   # data port and task port
        self.store = StoreServer(token, self.rank, host,
                                 parse_size(self.cfg["store"]["pool"], key="store.pool"))
        self.store.start()
        self.desk = LeaseDesk(token, host,
                              (self.place["node"], self.rank, tuple(self.place["cores"])),
                              self._send, self._catch_up)
        ctx = Context(world_id(token), token, self.place["node"], self.rank, self.store.address,
                      check_transport(self.cfg["store"]["transport"]))
        if self.inline:
            set_context(ctx)
        else:
            self.conf = Confinement(self.cfg, self.rank, list(self.place["cores"]),
                                    self.place["memory_budget"], self._paused,
                                    self.place.get("peers", []))
            settings = {
                "cores": list(self.place["cores"]) if co["pinning"] else None,
                "priority": co["priority"],
                "threads": len(self.place["cores"]),
                "hot": self.cfg["executor"]["hot"],
            }
            self.child = ChildHandle(settings, self.conf.group,
                                         env={CONTEXT_ENV: ctx.to_env()})
            self.conf.child_pid = lambda: self.child.pid
            self.child.start()
            self.desk.child = self.child            # the direct path (colocate.child.direct)
            self.desk.take_kept = self.store.take_kept
            self.place["detail"]["sandbox"] = self.child.sandbox
            self.place["detail"].update(self.conf.describe())
        self._send(WorkerHello(self.rank, self.place["node"], tuple(self.place["cores"]),
                               self.place["memory_budget"], self.place["detail"],
                               tuple(self.place.get("gpus", ())), self.store.address,
                               (*self.desk.address, self.desk.local_path)))

    # ----- loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until rank 0 says ``Shutdown`` or disappears."""
        self.start()
        try:
            while self.running:
                self._step()
        finally:
            self._report([], flush=True)
            if self.child is not None:
                self.child.kill()
            if self.conf is not None:
                self.conf.close()
            if self.store is not None:
                self.store.close()
            if self.desk is not None:
                self.desk.close()
            self.box.flush(timeout=2.0)

    def leave(self, grace: float, why: str) -> None:
        """Leave the world without losing a task (safe to call from a signal handler).

        See :mod:`colocate.worker.joined`: pause, give back what was sent ahead, let the running
        task finish within ``grace`` seconds, then say ``Leaving`` and exit on rank 0's answer.
        """
        if self.leave_asked is None:
            self.leave_asked = (grace, why)

    def _leaving(self) -> None:
        """One step of leaving: start it, say so once nothing is left, or give up at the end."""
        now = time.monotonic()
        if self.leave_by is None:
            grace, why = self.leave_asked
            self.leave_by = now + grace
            self._send(PauseCores(True))   # nothing new is placed here from now on
            back = self.child.take_back() if self.child is not None else 0
            running = int(self.child is not None and self.child.busy)
            log.info("worker %d leaving (%s): %d task(s) sent ahead go back, %d running "
                     "task(s) have %g s to finish", self.rank, why, back, running, grace)
        busy = (self.child is not None and self.child.busy) or self.unsent or self.desk.conns
        if not busy and not self.said_leaving:
            self._report([], flush=True)
            self._send(Leaving(f"{self.leave_asked[1]}; every task finished or given back"))
            self.said_leaving = True
        if now >= self.leave_by and self.running:
            log.warning("worker %d: the %g s grace is over; leaving with its running task cut "
                        "off (rank 0 retries it per tasks.retries)", self.rank,
                        self.leave_asked[0])
            self.running = False

    def _step(self) -> None:
        self._catch_up()
        if self.leave_asked is not None and self.running:
            self._leaving()
        if not self.running:
            return
        desk = self.desk
        child = self.child
        now = time.monotonic()
        guard_due = self.conf.tick(now) if self.conf is not None else float("inf")
        if child is not None and child.busy:
            deadline = None if self.paused_at is not None else child.deadline()
            wait = min(self.backoff.cold, guard_due)
            if deadline is not None:
                wait = min(wait, deadline - now)
            # Gathering (outcomes held back to share one Done, the child still busy): do not
            # watch the child's pipe, read what it wrote when the gathering ends. Woken by each
            # outcome, this rank (normal priority) would preempt its SCHED_IDLE child at every
            # task: measured, that cost ~3x the rank's CPU per task and half the throughput.
            gathering = bool(self.unsent)
            if self.unsent:
                wait = min(wait, self.unsent_since + COALESCE_WAIT - now)
            ready, writable, _ = select.select(
                [self.bell, *desk.readers()] if gathering else
                [child.from_child, self.bell, *desk.readers()],
                [child.to_child, *desk.writers()] if child.writing else desk.writers(), [],
                max(0.0, wait))
            if child.to_child in writable:
                child.flush()
            self._leased(ready, writable)
            if child.from_child in ready or (
                    gathering and time.monotonic() >= self.unsent_since + COALESCE_WAIT):
                outcomes, died = child.collect()
                self._notes()
                if died is not None:
                    log.warning("rank %d: %s; starting a new executor", self.rank, died)
                    outcomes += child.fail_held(died)
                    self._direct_lost(died.status, died.payload)
                self._narrow(outcomes)
                self._report(outcomes, flush=died is not None or not child.busy)
                self.backoff.active()
            elif deadline is not None and time.monotonic() >= deadline:
                timeout = child.held[0][0].timeout
                log.warning("rank %d: task exceeded its %g s timeout; killing executor %s",
                            self.rank, timeout, child.pid)
                outcomes = child.cut_off(Status.TIMEOUT, dumps(timeout))
                self._direct_lost(Status.TIMEOUT, dumps(timeout))
                self._narrow(outcomes)
                self._report(outcomes, flush=True)
            if self.bell in ready:
                self._check_bell()
            self._report([], flush=False)
        else:
            self._report([], flush=True)
            delay = min(self.backoff.delay(now), guard_due)
            # The direct path: the child holds a leased connection. Watch its pipe (notes,
            # death) and the running task's deadline; nothing here wakes per task.
            direct = child is not None and desk.handed()
            deadline = self._direct_deadline() if direct else None
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - now))
            if delay == 0.0 and not desk.conns:   # hot, and no leased client to listen to
                os.sched_yield()
            else:
                readers = [self.bell, *desk.readers()]
                writers = desk.writers()
                if direct:
                    readers.append(child.from_child)
                if child is not None and child.writing:
                    writers.append(child.to_child)
                ready, writable, _ = select.select(readers, writers, [], delay)
                if delay == 0.0 and not ready:
                    os.sched_yield()
                if child is not None and child.to_child in writable:
                    child.flush()
                if direct and child.from_child in ready:
                    outcomes, died = child.collect()
                    self._notes()
                    if died is not None:
                        log.warning("rank %d: %s; starting a new executor", self.rank, died)
                        outcomes += child.fail_held(died)
                        self._direct_lost(died.status, died.payload)
                    self._report(outcomes, flush=True)
                elif deadline is not None and time.monotonic() >= deadline:
                    self._direct_timeout()
                self._leased(ready, writable)
                if self.bell in ready:
                    self._check_bell()
        if time.monotonic() - self.last_sent > self.heartbeat:
            self._send(Heartbeat(*self.desk.tally()))
            self.store.trim()

    # ----- the direct path (colocate.child.direct) ------------------------------------------------
    def _notes(self) -> None:
        """Hand the child's notes on leased connections to the desk."""
        if self.child.notes:
            notes, self.child.notes = self.child.notes, []
            self.desk.noted(notes)

    def _direct_lost(self, status: Status, payload: bytes) -> None:
        """The child died or was killed (and restarted): answer for its direct task, go on."""
        self.desk.child_died(status, payload)
        self.desk.rehand()

    def _direct_deadline(self) -> float | None:
        """When the child's direct task times out (paused time not counted), if it can."""
        if self.paused_at is not None:
            return None
        st, lease, cid, started, timeout = self.child.slot()[:5]
        if st != RUNNING or timeout < 0:
            return None
        key, credit = self.credit
        return started + timeout + (credit if key == (lease, cid, started) else 0.0)

    def _direct_timeout(self) -> None:
        timeout = self.child.slot()[4]
        log.warning("rank %d: a leased task exceeded its %g s timeout; killing executor %s",
                    self.rank, timeout, self.child.pid)
        outcomes = self.child.cut_off(Status.TIMEOUT, dumps(timeout))
        self._direct_lost(Status.TIMEOUT, dumps(timeout))
        self._report(outcomes, flush=True)

    def _catch_up(self) -> None:
        """Handle every message rank 0 has sent so far."""
        got = self.box.poll()
        while got is not None:
            self._handle(got[1])
            if not self.running:
                return
            got = self.box.poll()

    def _leased(self, ready: list, writable: list) -> None:
        """Take leased clients' tasks from the task port (and push their results out)."""
        work = self.desk.ready(ready, writable)
        if work:
            self.backoff.active()
            self._run(work)

    def _check_bell(self) -> None:
        if self.bell.drain():
            self.backoff.active()
            return
        # Rank 0 closed our bell. On a clean stop its Shutdown is on its way: wait for it a
        # moment, so only a real loss of rank 0 is reported as one.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            got = self.box.poll()
            if got is not None:
                self._handle(got[1])
                if not self.running:
                    return
            else:
                time.sleep(0.001)
        log.error("rank %d: rank 0 is gone (its bell closed without a shutdown); exiting",
                  self.rank)
        self.running = False

    def _handle(self, msg: Any) -> None:
        self.backoff.active()
        kind = type(msg)
        if kind is Dispatch:
            if self.leave_by is not None:   # sent before rank 0 saw us pause: give it back
                self._report([Outcome(w.gid, Status.REQUEUE, b"", 0.0, 0.0) for w in msg.work],
                             flush=True)
                return
            self._run(msg.work)
        elif kind is StartLease:
            self.desk.start(msg)
        elif kind is EndLease:
            self.desk.end(msg.lease)
        elif kind is KillRunning:
            child = self.child
            if child is not None and (child.busy or (
                    self.desk.handed() and child.slot()[0] == RUNNING)):
                outcomes = child.cut_off(Status(msg.status), dumps("cut off by the drain"))
                self._direct_lost(Status(msg.status), dumps("cut off by the drain"))
                self._narrow(outcomes)
                self._report(outcomes, flush=True)
        elif kind is TakeBack:   # (inline: nothing waits, each task ran as it came)
            if self.child is not None:
                self.child.take_back()
        elif kind is DropObjects:
            self.store.drop(msg.ids)
        elif kind is MoveOut:
            self._move_out(msg.moves)
        elif kind is Shutdown:
            self.left_cleanly = self.said_leaving
            self.running = False
        else:
            log.error("rank %d: unexpected message %r", self.rank, kind.__name__)

    def _move_out(self, moves: list[tuple]) -> None:
        """Leaving: copy objects to the workers rank 0 chose, within the grace; say how it went."""
        done, failed = [], []
        for oid, rank, node, where in moves:
            if where is None:
                failed.append((oid, f"worker {rank} on {node} has no data port"))
            elif self.leave_by is not None and time.monotonic() >= self.leave_by:
                failed.append((oid, f"the {self.leave_asked[0]:g} s grace was over"))
            else:
                try:
                    done.append((oid, rank, self.store.push(oid, where, rank, node)))
                except Exception as e:  # noqa: BLE001 - ObjectLost, LookupError: said as why
                    failed.append((oid, f"{type(e).__name__}: {e}"))
        log.info("worker %d leaving: %d object(s) copied to other workers, %d not", self.rank,
                 len(done), len(failed))
        self._send(MovedOut(done, failed))

    def _run(self, work: list[Work]) -> None:
        """Start work (from rank 0 or a leased client) in the executor, or inline."""
        for w in work:
            if w.fn_bytes is not None:
                self.fn_store[w.fn_hash] = w.fn_bytes
        if self.inline:
            self._report([self._run_inline(w) for w in work], flush=True)
            return
        held = [w.memory for w, _ in self.child.held] + [w.memory for w in work]
        self.conf.limit_memory(None if None in held else max(held))
        wide = [w for w in work if w.cores]
        if wide:   # the scheduler sends a multi-core task alone to an idle worker
            self.conf.widen(self.child.pid, wide[0].cores)
            self.widened = wide[0].gid
        self.child.send(work, self.fn_store)

    def _report(self, outcomes: list[Outcome], flush: bool) -> None:
        """Send outcomes to rank 0 (leased tasks' to their clients); short tasks' share messages.

        While the executor still holds work sent ahead, an outcome waits up to
        ``COALESCE_WAIT`` (or until ``COALESCE_MAX`` have gathered) for the next ones. ``flush``
        (the executor is idle, died, or was cut off) sends everything at once, so a lone task's
        result is never delayed and nothing finished is held across a crash.
        """
        if outcomes:
            for i, out in enumerate(outcomes):   # the objects each task kept go with it
                kept = self.store.take_kept(out.gid)
                if kept:
                    outcomes[i] = out._replace(kept=kept)
            outcomes, again = self.desk.route(outcomes)
            if again:
                self._run(again)
        if outcomes:
            if not self.unsent:
                self.unsent_since = time.monotonic()
            self.unsent += outcomes
        if self.unsent and (flush or len(self.unsent) >= COALESCE_MAX
                            or time.monotonic() - self.unsent_since >= COALESCE_WAIT):
            out, self.unsent = self.unsent, []
            self._send(Done(out))

    def _narrow(self, outcomes: list[Outcome]) -> None:
        """Give back lent cores once the multi-core task they served has ended."""
        if self.widened is not None and any(o.gid == self.widened for o in outcomes):
            self.conf.widen(self.child.pid, ())
            self.widened = None

    def _paused(self, paused: bool) -> None:
        """The guard paused or resumed the executor: stop the clock of its task, tell rank 0."""
        now = time.monotonic()
        if not paused and self.leave_by is not None:
            return   # leaving: the cores stay paused at rank 0
        if paused:
            self.paused_at = now
        elif self.paused_at is not None:
            if self.child is not None and self.child.held:
                work, since = self.child.held[0]
                self.child.held[0] = (work, since + (now - self.paused_at))
            if self.child is not None and self.child.skip is not None:
                st, lease, cid, started = self.child.slot()[:4]
                if st == RUNNING:   # the direct task's clock stops too
                    key, credit = self.credit
                    credit = credit if key == (lease, cid, started) else 0.0
                    self.credit = ((lease, cid, started), credit + now - self.paused_at)
            self.paused_at = None
        self._send(PauseCores(paused))

    def _run_inline(self, work) -> Outcome:
        if work.fn_bytes is None:
            work = work._replace(fn_bytes=self.fn_store[work.fn_hash])
        return run_work(work, self.inline_cache, {})

    def _send(self, msg: Any) -> None:
        self.box.send(msg, 0)
        now = time.monotonic()
        if now - self.last_sent > self.backoff.hot:   # rank 0 may be asleep: wake it
            self.bell.ring()
        self.last_sent = now
