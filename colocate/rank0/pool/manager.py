"""The pool manager: rank 0's side of a pool, which runs the policy's decisions on the batch system.

Every ``pool.interval`` seconds rank 0 calls :meth:`PoolManager.tick` with what it knows of its
joined workers; the manager lists the pool's jobs and the idle nodes with the backend's commands,
asks :func:`~colocate.rank0.pool.policy.decide`, runs the submits and cancels, and logs each with
its reason. A command that fails is logged with what it printed and tried again on the next tick:
rank 0 keeps serving whatever the batch system does. :meth:`stop` cancels every job of the pool
(rank 0 calls it when the world stops, by any path it controls).

The manager's own state is only the jobs it submitted and when; everything else is read back
from the batch system each tick, so jobs of the same name found there (a rank 0 that restarted)
are adopted.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .backends import JobState, JobTemplate, backend
from .policy import CancelJob, Job, Policy, SubmitJob, View, decide

log = logging.getLogger("colocate.pool")

COMMAND_TIMEOUT = 30.0   # seconds a batch-system command may take
# A job that ends before any of its workers joined has failed (a broken environment, a wrong
# address, a node that cannot reach rank 0). After this many in a row the pool holds off,
# doubling the wait each time, so a broken set-up never turns into a stream of submissions.
FAILED_IN_A_ROW = 2
HOLD_MAX = 600.0         # seconds, the longest the pool holds off

# Variables of the MPI launch rank 0 runs in: a pool job inherits the environment it was
# submitted from (sbatch --export=ALL), and these would make its workers try to join that MPI job.
# The batch job's own variables too: sbatch reads some of them as options (from an srun step with
# a host file, SLURM_HOSTFILE pinned every pool job to rank 0's node, where it never started).
# SLURM_CONF stays: it says which Slurm to talk to.
_MPI_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "MPIR_", "OMPI_", "MPICH_", "I_MPI_", "SLURM_")
_KEEP = ("SLURM_CONF",)


@dataclass(frozen=True)
class JobWorkers:
    """What rank 0 knows of one pool job's joined workers."""

    cores: int = 0
    idle_since: float | None = None
    tasks_done: int = 0


@dataclass(frozen=True)
class CommandResult:
    """A command's outcome: exit code and what it printed."""

    code: int
    out: str
    err: str


def run_command(cmd: Sequence[str]) -> CommandResult:
    """Run a batch-system command, bounded by :data:`COMMAND_TIMEOUT`, without MPI's variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_MPI_PREFIXES) or k in _KEEP}
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              env=env)
    except FileNotFoundError:
        return CommandResult(127, "", f"{cmd[0]}: command not found")
    except subprocess.TimeoutExpired:
        return CommandResult(124, "", f"no answer within {COMMAND_TIMEOUT:g} s")
    return CommandResult(done.returncode, done.stdout, done.stderr)


class PoolManager:
    """Grows and shrinks one world's pool through its batch system.

    Args:
        pool: the configuration's ``pool`` section.
        name: the jobs' name, unique to the world (they are found again by it).
        command: what each job runs on each of its nodes (``colocate join ...``).
        output: where the jobs' output goes, or ``None`` for the batch system's default.
        run: runs one command (:func:`run_command`; another runner for another transport).
        clock: the time, in seconds, for the policy's timeouts.
    """

    def __init__(self, pool: Mapping[str, Any], name: str, command: Sequence[str],
                 output: str | None = None,
                 run: Callable[[Sequence[str]], CommandResult] = run_command,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend(pool["backend"])
        self.policy = Policy.from_config(pool)
        self.template = JobTemplate.from_config(pool, name=name, output=output)
        self.command = list(command)
        self.run = run
        self.clock = clock
        self.submitted: dict[str, float] = {}   # job id -> when this manager submitted it
        self.jobs: list[JobState] = []           # as the batch system last listed them
        self.joined_ever: set[str] = set()       # jobs some worker of which has joined
        self.failed_jobs = 0                     # jobs in a row that ended with none joined
        self.hold_until = 0.0                    # no submission before this time
        self.cancelled: set[str] = set()         # jobs this manager cancelled
        self.interval = float(pool["interval"])  # the hold after failed jobs grows from it

    @property
    def enabled(self) -> bool:
        """Whether this pool may ever submit a job (``max_jobs`` above 0)."""
        return self.policy.max_jobs > 0

    def tick(self, queued: int, free_cores: int,
             joined: Mapping[str, JobWorkers] | None = None) -> list[SubmitJob | CancelJob]:
        """List the jobs, decide, and act; returns the decisions taken."""
        if not self.enabled:
            return []
        joined = joined or {}
        listed = self._list()
        if listed is None:
            return []
        self.jobs = listed
        now = self.clock()
        for job in listed:            # adopt jobs of this pool that another rank 0 submitted
            self.submitted.setdefault(job.id, now)
        self.joined_ever |= {jid for jid, j in joined.items() if j.cores}
        for jid in set(self.submitted) - {j.id for j in listed}:
            del self.submitted[jid]   # the batch system no longer lists it: ended
            self._ended(jid, now)
        idle = self._idle_nodes()
        view = View(now=now, queued=queued, free_cores=free_cores, idle_nodes=idle,
                    jobs=tuple(Job(j.id, j.state, self.submitted[j.id],
                                   joined.get(j.id, JobWorkers()).idle_since,
                                   joined.get(j.id, JobWorkers()).cores) for j in listed))
        decisions = decide(view, self.policy)
        if now < self.hold_until:
            decisions = [d for d in decisions if not isinstance(d, SubmitJob)]
        for d in decisions:
            if isinstance(d, CancelJob):
                self._cancel([d.job], d.reason)
            else:
                for _ in range(d.count):
                    if not self._submit(d.reason):
                        break
        return decisions

    def _ended(self, jid: str, now: float) -> None:
        if jid in self.joined_ever or jid in self.cancelled:
            self.failed_jobs = 0
            return
        self.failed_jobs += 1
        if self.failed_jobs >= FAILED_IN_A_ROW:
            hold = min(HOLD_MAX, self.interval * 2 ** self.failed_jobs)
            self.hold_until = now + hold
            where = f" (its output: {self.template.output})" if self.template.output else ""
            log.error("pool: job %s ended before any of its workers joined, %d such job(s) in a "
                      "row%s; no new job for %.0f s. Check that `colocate join` can run there "
                      "and reach this world", jid, self.failed_jobs, where, hold)

    def stop(self) -> list[str]:
        """CancelJob every job of the pool that the batch system lists; returns their ids."""
        listed = self._list()
        ids = sorted({*(j.id for j in listed or ()), *self.submitted})
        if ids:
            self._cancel(ids, "the world is stopping")
        self.submitted.clear()
        return ids

    def status(self, joined: Mapping[str, JobWorkers] | None = None) -> list[dict]:
        """One row per job as last listed: id, state, nodes, workers' cores, tasks done."""
        joined = joined or {}
        return [{"id": j.id, "state": j.state, "nodes": list(j.nodes),
                 "cores": joined.get(j.id, JobWorkers()).cores,
                 "tasks_done": joined.get(j.id, JobWorkers()).tasks_done} for j in self.jobs]

    # ----- the commands --------------------------------------------------------------------------
    def _call(self, cmd: Sequence[str], what: str) -> str | None:
        done = self.run(cmd)
        if done.code != 0:
            log.warning("pool: %s failed (exit %d): %s; trying again on the next tick", what,
                        done.code, (done.err or done.out).strip()[-400:])
            return None
        return done.out

    def _list(self) -> list[JobState] | None:
        out = self._call(self.backend.query(self.template), "listing the pool's jobs")
        if out is None:
            return None
        try:
            return self.backend.jobs(out, name=self.template.name)
        except ValueError as e:
            log.warning("pool: %s", e)
            return None

    def _idle_nodes(self) -> int | None:
        out = self._call(self.backend.idle(self.template), "counting idle nodes")
        if out is None:
            return None
        try:
            return self.backend.idle_nodes(out)
        except ValueError as e:
            log.warning("pool: %s; growing by the queue alone", e)
            return None

    def _submit(self, reason: str) -> bool:
        out = self._call(self.backend.submit(self.template, self.command), "submitting a job")
        if out is None:
            return False
        try:
            jid = self.backend.job_id(out)
        except ValueError as e:
            log.warning("pool: %s", e)
            return False
        self.submitted[jid] = self.clock()
        log.info("pool: submitted job %s: %s", jid, reason)
        return True

    def _cancel(self, ids: list[str], reason: str) -> None:
        if self._call(self.backend.cancel(ids), f"cancelling job(s) {', '.join(ids)}") is None:
            return
        for jid in ids:
            self.cancelled.add(jid)
            log.info("pool: cancelled job %s: %s", jid, reason)
