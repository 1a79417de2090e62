"""The batch systems' commands for a pool: submit, list, cancel its jobs, and count idle nodes.

Pure, like :mod:`colocate.launch`: each backend builds argument lists and parses what the
command printed; the pool manager runs them. A pool job runs one ``colocate join`` per node:

- **Slurm**: ``sbatch --wrap "srun --ntasks-per-node=1 CMD"``. ``--signal=TERM@GRACE`` warns the
  workers ``grace`` seconds before the time limit, as preemption's SIGTERM does before
  ``GraceTime`` runs out, so they leave without losing a task. ``--time-min`` lets the backfill
  scheduler shorten the job to fit an idle hole. Jobs are found again by their name.
- **PBS** (PBS Pro and OpenPBS): ``qsub -l select=N:mpiprocs=1 -- CMD`` (``pbsdsh`` on several
  nodes), ``qstat -f -F json``, ``qdel``, ``pbsnodes -a -F json``. PBS has no ``time_min`` and
  no QOS; ``partition`` is the queue.
- **Flux**: ``flux batch --wrap flux run``, ``flux jobs``, ``flux cancel``,
  ``flux resource list``. Flux has no ``time_min``, QOS or account; ``partition`` is the queue.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from colocate import launch as L
from colocate.errors import ConfigError

from .policy import ENDING, PENDING, RUNNING

Cmd = list[str]


# ----- durations ---------------------------------------------------------------------------------
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: Any, key: str) -> int:
    """Seconds in ``D-HH:MM:SS``, ``HH:MM:SS``, ``MM:SS``, or ``90s``, ``30m``, ``2h``, ``1d``.

    A bare number is refused: Slurm reads it as minutes, most people as seconds.

    Raises:
        ConfigError: naming ``key``, what was found and the forms that are accepted.
    """
    expected = ("expected a duration such as '1:00:00', '2-00:00:00', '45:00', '90s', '30m' "
                "or '2h'")
    if isinstance(text, bool) or not isinstance(text, str):
        hint = ""
        if isinstance(text, int | float) and not isinstance(text, bool):
            hint = (f" (YAML reads an unquoted 1:00:00 as 3600: quote it, or write '{text}s' "
                    f"or '{text}m')")
        raise ConfigError(f"{expected}, found {text!r}{hint}", key=key)
    s = text.strip()
    m = re.fullmatch(r"(\d+)\s*([smhd])", s)
    if m:
        seconds = int(m[1]) * _UNITS[m[2]]
    else:
        m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", s)
        if not m or int(m[4]) >= 60 or (m[2] is not None and int(m[3]) >= 60):
            raise ConfigError(f"{expected}, found {text!r}", key=key)
        days, hours, minutes, secs = (int(g) if g else 0 for g in m.groups())
        if m[2] is None and m[1] is None:
            hours, minutes = 0, int(m[3])   # "MM:SS"
        seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    if seconds <= 0:
        raise ConfigError(f"{expected} longer than 0, found {text!r}", key=key)
    return seconds


def clock(seconds: int) -> str:
    """``HH:MM:SS`` (hours may exceed 24), what Slurm and PBS read as a time limit."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


# ----- what a pool job looks like ----------------------------------------------------------------
@dataclass(frozen=True)
class JobTemplate:
    """The shape of every job of one pool.

    Attributes:
        name: the job name; the pool finds its jobs again by it, so it is unique to the world.
        nodes: nodes per job.
        time: time limit in seconds.
        time_min: the least time limit the scheduler may shorten the job to (Slurm), or ``None``.
        grace: seconds between the warning signal and the end, for the workers to leave.
        partition: partition (Slurm) or queue (PBS, Flux), or ``None`` for the default.
        qos: quality of service (Slurm), or ``None``.
        account: account to charge (Slurm, PBS), or ``None``.
        options: extra options for the submit command, as given.
        output: where the job's output goes (the batch system's patterns allowed), or ``None``.
    """

    name: str
    nodes: int = 1
    time: int = 3600
    time_min: int | None = None
    grace: int = 30
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    options: tuple[str, ...] = ()
    output: str | None = None

    @classmethod
    def from_config(cls, section: Mapping[str, Any], name: str,
                    output: str | None = None) -> JobTemplate:
        """The template of a configuration's ``pool`` section.

        Raises:
            ConfigError: a value of the section is not what a batch system accepts.
        """
        time = parse_duration(section["time"], "pool.time")
        time_min = (None if section["time_min"] is None
                    else parse_duration(section["time_min"], "pool.time_min"))
        if time_min is not None and time_min > time:
            raise ConfigError(f"time_min {section['time_min']!r} is longer than time "
                              f"{section['time']!r}; expected time_min <= time",
                              key="pool.time_min")
        grace = section["grace"]
        if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
            raise ConfigError(f"expected seconds >= 0, found {grace!r}", key="pool.grace")
        if grace >= time:
            raise ConfigError(f"grace {grace!r} s is not shorter than the job's time {time} s; "
                              "expected the workers' warning to come before the end",
                              key="pool.grace")
        for key in ("partition", "qos", "account"):
            value = section[key]
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"expected a name, found {value!r}", key=f"pool.{key}")
        options = section["options"]
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise ConfigError(f"expected a list of option strings such as ['--exclusive'], "
                              f"found {options!r}", key="pool.options")
        return cls(name=name, nodes=section["nodes_per_job"], time=time, time_min=time_min,
                   grace=int(grace), partition=section["partition"], qos=section["qos"],
                   account=section["account"], options=tuple(options), output=output)


@dataclass(frozen=True)
class JobState:
    """A pool job as the batch system lists it (``state``: ``pending``, ``running``, ``ending``)."""

    id: str
    state: str
    nodes: tuple[str, ...] = ()


def _unreadable(what: str, expected: str, out: str) -> ValueError:
    return ValueError(f"could not read {what} from its output: expected {expected}, found "
                      f"{out[:200]!r}")


# ----- Slurm -------------------------------------------------------------------------------------
_SLURM_STATES = {
    PENDING: {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
              "RESV_DEL_HOLD"},
    RUNNING: {"RUNNING", "SUSPENDED"},
}


class Slurm:
    """sbatch, squeue, scancel and sinfo."""

    name = "slurm"

    def submit(self, t: JobTemplate, cmd: Sequence[str]) -> Cmd:
        """``sbatch`` of one pool job that runs ``cmd`` once on each of its nodes."""
        cmd = L._command(cmd, "worker command")
        step = ["srun", f"--nodes={t.nodes}", "--ntasks-per-node=1", *cmd]
        args = ["sbatch", "--parsable", f"--job-name={t.name}", f"--nodes={t.nodes}",
                "--ntasks-per-node=1", f"--time={clock(t.time)}", f"--signal=TERM@{t.grace}"]
        if t.time_min is not None:
            args.append(f"--time-min={clock(t.time_min)}")
        for flag, value in (("partition", t.partition), ("qos", t.qos), ("account", t.account),
                            ("output", t.output)):
            if value is not None:
                args.append(f"--{flag}={value}")
        return [*args, *t.options, f"--wrap={L.shell_join(step)}"]

    def job_id(self, out: str) -> str:
        """The id ``sbatch --parsable`` printed (``ID`` or ``ID;CLUSTER``)."""
        m = re.fullmatch(r"\s*(\d+)(?:;\S+)?\s*", out)
        if not m:
            raise _unreadable("sbatch's job id", "'1234' or '1234;cluster'", out)
        return m[1]

    def cancel(self, ids: Iterable[str]) -> Cmd:
        """``scancel`` of these jobs (Slurm then signals their steps and ends them)."""
        return ["scancel", *_ids(ids)]

    def query(self, t: JobTemplate) -> Cmd:
        """``squeue`` of the pool's jobs still known to Slurm."""
        return ["squeue", "--noheader", f"--name={t.name}", "--format=%i|%T|%N"]

    def jobs(self, out: str, name: str | None = None) -> list[JobState]:
        """The jobs in the output of :meth:`query` (which already picked them by ``name``)."""
        return _job_lines(out, "squeue's jobs", _SLURM_STATES)

    def idle(self, t: JobTemplate) -> Cmd:
        """``sinfo`` of the idle, responding nodes where the pool's jobs may go."""
        args = ["sinfo", "--noheader", "--Node", "--responding", "--states=idle", "--format=%N"]
        return args + ([f"--partition={t.partition}"] if t.partition else [])

    def idle_nodes(self, out: str) -> int:
        """How many nodes the output of :meth:`idle` names (a node of two partitions once)."""
        return len({line.strip() for line in out.splitlines() if line.strip()})


def _job_lines(out: str, what: str, states: Mapping[str, set[str]]) -> list[JobState]:
    """Jobs from ``ID|STATE|NODES`` lines (squeue's and flux jobs' formats of :meth:`query`)."""
    found = []
    for line in out.splitlines():
        if not line.strip():
            continue
        parts = line.strip().split("|")
        if len(parts) != 3 or not parts[0]:
            raise _unreadable(what, "'ID|STATE|NODES' lines", out)
        jobid, state, nodes = parts
        found.append(JobState(jobid, _state(state.upper(), states), tuple(_slurm_hosts(nodes))))
    return found


def _slurm_hosts(nodes: str) -> list[str]:
    """Node names of a Slurm host list such as ``n[1-3,7],gpu2`` (``(null)`` while pending)."""
    nodes = nodes.strip()
    if not nodes or nodes.startswith("("):
        return []
    hosts = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]+)\])?(?:,|$)", nodes):
        prefix, ranges = m[1], m[2]
        if ranges is None:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{i:0{width}d}")
    return hosts


# ----- PBS ---------------------------------------------------------------------------------------
_PBS_STATES = {PENDING: {"Q", "H", "W", "T", "M"}, RUNNING: {"R", "S", "U", "B"}}


class PBS:
    """qsub, qstat, qdel and pbsnodes (PBS Pro, OpenPBS)."""

    name = "pbs"

    def submit(self, t: JobTemplate, cmd: Sequence[str]) -> Cmd:
        """``qsub`` of one pool job that runs ``cmd`` once on each of its nodes."""
        cmd = L._command(cmd, "worker command")
        args = ["qsub", "-N", t.name, "-l", f"select={t.nodes}:mpiprocs=1", "-l",
                "place=scatter", "-l", f"walltime={clock(t.time)}"]
        if t.partition:
            args += ["-q", t.partition]
        if t.account:
            args += ["-A", t.account]
        if t.output:
            args += ["-j", "oe", "-o", t.output]
        run = cmd if t.nodes == 1 else ["pbsdsh", "--", *cmd]
        return [*args, *t.options, "--", *run]

    def job_id(self, out: str) -> str:
        """The id ``qsub`` printed (``1234.server``)."""
        m = re.fullmatch(r"\s*(\d+(?:\[\d*\])?(?:\.\S+)?)\s*", out)
        if not m:
            raise _unreadable("qsub's job id", "'1234.server'", out)
        return m[1]

    def cancel(self, ids: Iterable[str]) -> Cmd:
        """``qdel`` of these jobs."""
        return ["qdel", *_ids(ids)]

    def query(self, t: JobTemplate) -> Cmd:
        """``qstat`` of every job, as JSON (the pool's are picked by name in :meth:`jobs`)."""
        return ["qstat", "-f", "-F", "json"]

    def jobs(self, out: str, name: str | None = None) -> list[JobState]:
        """The jobs named ``name`` (all when ``None``) in the output of :meth:`query`."""
        data = _json(out, "qstat -f -F json", '{"Jobs": {...}}')
        found = []
        for jobid, job in (data.get("Jobs") or {}).items():
            if name is not None and job.get("Job_Name") != name:
                continue
            hosts = [h.split("/")[0] for h in str(job.get("exec_host", "")).split("+") if h]
            found.append(JobState(jobid, _state(str(job.get("job_state", "")), _PBS_STATES),
                                  tuple(dict.fromkeys(hosts))))
        return found

    def idle(self, t: JobTemplate) -> Cmd:
        """``pbsnodes`` of every node, as JSON."""
        return ["pbsnodes", "-a", "-F", "json"]

    def idle_nodes(self, out: str) -> int:
        """Nodes that are ``free`` and run no job, in the output of :meth:`idle`."""
        data = _json(out, "pbsnodes -a -F json", '{"nodes": {...}}')
        return sum(1 for node in (data.get("nodes") or {}).values()
                   if node.get("state") == "free" and not node.get("jobs"))


# ----- Flux --------------------------------------------------------------------------------------
_FLUX_STATES = {PENDING: {"DEPEND", "PRIORITY", "SCHED", "NEW"}, RUNNING: {"RUN"}}


class Flux:
    """flux batch, flux jobs, flux cancel and flux resource list."""

    name = "flux"

    def submit(self, t: JobTemplate, cmd: Sequence[str]) -> Cmd:
        """``flux batch`` of one pool job that runs ``cmd`` once on each of its nodes."""
        cmd = L._command(cmd, "worker command")
        args = ["flux", "batch", f"--nodes={t.nodes}", f"--time-limit={t.time}s",
                f"--job-name={t.name}"]
        if t.partition:
            args.append(f"--queue={t.partition}")
        if t.output:
            args.append(f"--output={t.output}")
        return [*args, *t.options, "--wrap", "flux", "run", f"--nodes={t.nodes}",
                "--tasks-per-node=1", *cmd]

    def job_id(self, out: str) -> str:
        """The id ``flux batch`` printed."""
        text = out.strip()
        if not text or len(text.split()) != 1:
            raise _unreadable("flux batch's job id", "one job id", out)
        return text

    def cancel(self, ids: Iterable[str]) -> Cmd:
        """``flux cancel`` of these jobs."""
        return ["flux", "cancel", *_ids(ids)]

    def query(self, t: JobTemplate) -> Cmd:
        """``flux jobs`` of the pool's active jobs."""
        return ["flux", "jobs", "--no-header", f"--name={t.name}",
                "--format={id.f58}|{state}|{nodelist}"]

    def jobs(self, out: str, name: str | None = None) -> list[JobState]:
        """The jobs in the output of :meth:`query` (which already picked them by ``name``)."""
        return _job_lines(out, "flux jobs", _FLUX_STATES)   # Flux writes host lists alike

    def idle(self, t: JobTemplate) -> Cmd:
        """``flux resource list`` of the free nodes."""
        return ["flux", "resource", "list", "--states=free", "--no-header", "--format={nnodes}"]

    def idle_nodes(self, out: str) -> int:
        """The node count in the output of :meth:`idle`."""
        try:
            return sum(int(line) for line in out.split())
        except ValueError:
            raise _unreadable("flux resource list", "node counts", out) from None


BACKENDS = {b.name: b for b in (Slurm, PBS, Flux)}


def backend(name: Any) -> Slurm | PBS | Flux:
    """The backend called ``name`` (the ``pool.backend`` setting).

    Raises:
        ConfigError: no backend has that name.
    """
    if name not in BACKENDS:
        raise ConfigError(f"expected one of {', '.join(BACKENDS)}, found {name!r}",
                          key="pool.backend")
    return BACKENDS[name]()


def _ids(ids: Iterable[str]) -> list[str]:
    ids = [str(i) for i in ids]
    if not ids or not all(i.strip() and not i.startswith("-") for i in ids):
        raise ValueError(f"expected one or more job ids, found {ids!r}")
    return ids


def _state(state: str, states: Mapping[str, set[str]]) -> str:
    """``pending`` or ``running`` for the states listed, else ``ending`` (leaving or unknown)."""
    for ours, theirs in states.items():
        if state in theirs:
            return ours
    return ENDING


def _json(out: str, what: str, expected: str) -> dict:
    try:
        data = json.loads(out)
    except json.JSONDecodeError as e:
        raise ValueError(f"could not read the output of {what}: expected JSON like {expected}, "
                         f"found {out[:200]!r} ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"could not read the output of {what}: expected JSON like {expected}, "
                         f"found {out[:200]!r}")
    return data
