"""Launchers: pure functions from a command to a command line, for mpiexec, Slurm, PBS and Flux.

Nothing here does I/O. Every builder takes the facts it needs (cores, nodes, hosts, a job id) as
arguments and returns the command as a list of strings, so the tests compare command lines and a
launcher script can print them (``shell_join``) before running them.

How a co-located run is laid out on each node of an allocation::

    allocated CPUs on the node:  0 1 2 3 4 5 6 7
    host job (ntasks per node):  H H H H H H . .     host_step(...)     bound to the host CPUs
    colocate world:              . . . . . . W W     colocate_step(...) bound to the spare CPUs
                                                     (rank 0, the scheduler, shares them too)

``split_cores`` decides the two sets; the ``slurm_*``, ``pbs_*``, ``flux_*`` and ``mpiexec*``
builders turn them into launch commands. Where a launcher cannot bind to a CPU list itself, the
command is wrapped in ``pin(...)``, which runs ``python -m colocate.launch pin``: it sets the CPU
affinity (one block of cores per local task with ``per_task``) and then execs the command.

The I/O side (reading the allocation, running and supervising the steps, forwarding the
walltime warning) is ``colocate.launch.run``, run as ``python -m colocate.launch``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from colocate.colocation.cpulist import format_cpulist, parse_cpulist
from colocate.errors import ConfigError

Cmd = list[str]

#: Environment variable the colocate world reads its spare cores from (``co_location.spare_cores``).
SPARE_CORES_ENV = "COLOCATE_CO_LOCATION_SPARE_CORES"

#: Job variables srun reads as options; the steps built here must run without them.
SLURM_STEP_UNSET = ("SLURM_NTASKS_PER_NODE", "SLURM_CPUS_PER_TASK")

#: Environment variables that hold a task's index among the tasks of its node, by launcher.
LOCAL_ID_ENVS = ("SLURM_LOCALID", "FLUX_TASK_LOCAL_ID", "MPI_LOCALRANKID", "PMI_LOCAL_RANK",
                 "OMPI_COMM_WORLD_LOCAL_RANK", "PALS_LOCAL_RANKID")

_JOB_ID = re.compile(r"^\d+([_+]\d+)?$")


@dataclass(frozen=True)
class CoreSplit:
    """The CPUs of one node, split between the host job and the colocate world.

    Attributes:
        host: CPU ids for the host job, in task order (siblings of a core next to each other).
        spare: CPU ids left for colocate, ascending.
    """

    host: tuple[int, ...]
    spare: tuple[int, ...]


# ----- CPU lists ---------------------------------------------------------------------------------
def parse_cpu_list(cpus: str | int | Iterable[int]) -> tuple[int, ...]:
    """Parse a CPU list such as ``"0-3,8"`` (the format of ``taskset -c`` and cpusets).

    The launchers' form of :func:`colocate.colocation.cpulist.parse_cpulist`: one CPU id is
    accepted too, an empty list is not, and errors are plain ``ValueError``.

    Args:
        cpus: a list string, one CPU id, or an iterable of CPU ids.

    Returns:
        The CPU ids, ascending and without duplicates.

    Raises:
        ValueError: the text is not a CPU list, a range runs backwards, or an id is negative.
    """
    if isinstance(cpus, int) and not isinstance(cpus, bool):
        cpus = [cpus]
    if isinstance(cpus, str) and not cpus.strip():
        raise ValueError(f"expected a CPU list like '0-3,8', found {cpus!r}")
    try:
        return tuple(parse_cpulist(cpus))
    except ConfigError as e:
        raise ValueError(f"expected a CPU list like '0-3,8': {e}") from None


def format_cpu_list(cpus: Iterable[int]) -> str:
    """Format CPU ids as a compact list, e.g. ``[0, 1, 2, 3, 8]`` -> ``"0-3,8"``."""
    return format_cpulist(parse_cpu_list(cpus))


def env_cpu_list(cpus: Iterable[int]) -> str:
    """``format_cpu_list`` for an environment variable: one CPU as ``"N-N"``.

    colocate reads ``COLOCATE_*`` values as YAML, where a bare ``"3"`` is the integer 3, not a
    CPU list; ``"3-3"`` stays a list on every version.
    """
    text = format_cpu_list(cpus)
    return f"{text}-{text}" if text.isdigit() else text


def cpu_mask(cpus: Iterable[int]) -> str:
    """Return the hexadecimal affinity mask of CPU ids, e.g. ``[0, 2]`` -> ``"0x5"``.

    Raises:
        ValueError: no CPU given.
    """
    ids = parse_cpu_list(cpus)
    if not ids:
        raise ValueError("expected at least one CPU for a mask, found none")
    return hex(sum(1 << c for c in ids))


def split_cores(allowed: Iterable[int], host_count: int, *,
                siblings: Mapping[int, Iterable[int]] | None = None) -> CoreSplit:
    """Split the CPUs of a node between the host job (lowest ids) and colocate (the rest).

    Args:
        allowed: the CPUs the allocation has on the node.
        host_count: how many of them the host job uses.
        siblings: optional ``{cpu: CPUs sharing its core}`` (SMT threads). The host then also
            takes the allowed siblings of its CPUs, so no core is shared with colocate.

    Returns:
        The split. ``host`` lists each host CPU followed by its siblings.

    Raises:
        ValueError: ``host_count`` is not between 1 and the number of allowed CPUs minus one, or
            the siblings of the host CPUs leave no spare CPU.
    """
    cpus = parse_cpu_list(allowed)
    if isinstance(host_count, bool) or not isinstance(host_count, int):
        raise ValueError(f"expected host_count as an integer, found {host_count!r}")
    if not 1 <= host_count < len(cpus):
        raise ValueError(
            f"host_count={host_count} with {len(cpus)} allowed CPUs ({format_cpu_list(cpus)}): "
            f"expected 1 to {len(cpus) - 1}, so that the host job has a core and at least one "
            f"is left for colocate")
    host: list[int] = []
    for cpu in cpus[:host_count]:
        if cpu in host:
            continue
        host.append(cpu)
        for sib in sorted(set((siblings or {}).get(cpu, ())) & set(cpus)):
            if sib not in host:
                host.append(sib)
    spare = tuple(c for c in cpus if c not in host)
    if not spare:
        raise ValueError(
            f"host_count={host_count} takes every allowed CPU ({format_cpu_list(cpus)}) once "
            f"the SMT siblings of its cores are added: lower the host's CPU count")
    return CoreSplit(tuple(host), spare)


def task_cores(cores: Sequence[int], ntasks: int, index: int) -> tuple[int, ...]:
    """Return the CPUs of local task ``index`` when ``ntasks`` tasks share ``cores`` on a node.

    One CPU each when there are as many tasks as CPUs (or a multiple: tasks wrap around), equal
    contiguous blocks when the CPUs divide evenly among the tasks, else every task gets them all.

    Raises:
        ValueError: no cores, ``ntasks`` < 1 or ``index`` outside ``0..ntasks-1``.
    """
    cores = tuple(cores)
    if not cores:
        raise ValueError("expected at least one core to bind tasks to, found none")
    if ntasks < 1:
        raise ValueError(f"expected ntasks >= 1, found {ntasks}")
    if not 0 <= index < ntasks:
        raise ValueError(f"task index {index} out of range for {ntasks} tasks per node")
    n = len(cores)
    if ntasks % n == 0:
        return (cores[index % n],)
    if n % ntasks == 0:
        size = n // ntasks
        return cores[index * size:(index + 1) * size]
    return cores


def slurm_cpu_bind(cores: Sequence[int], ntasks: int) -> str:
    """Return the ``--cpu-bind`` value that gives each of ``ntasks`` tasks per node its cores.

    ``map_cpu:`` when each task gets one CPU, ``mask_cpu:`` otherwise (see ``task_cores``).
    """
    blocks = [task_cores(cores, ntasks, i) for i in range(ntasks)]
    if all(len(b) == 1 for b in blocks):
        return "map_cpu:" + ",".join(str(b[0]) for b in blocks[:len(cores)])
    distinct = list(dict.fromkeys(blocks))
    return "mask_cpu:" + ",".join(cpu_mask(b) for b in distinct)


# ----- generic commands --------------------------------------------------------------------------
def shell_join(cmd: Sequence[str]) -> str:
    """Quote a command for a POSIX shell (for scripts and logs)."""
    return " ".join(shlex.quote(str(a)) for a in cmd)


def _command(cmd: Sequence[str], what: str) -> Cmd:
    if isinstance(cmd, str) or not cmd or not all(isinstance(a, str) for a in cmd):
        raise ValueError(f"expected the {what} as a non-empty list of strings, found {cmd!r}")
    return list(cmd)


def _positive(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected {what} as an integer >= 1, found {value!r}")
    return value


def with_env(cmd: Sequence[str], env: Mapping[str, str]) -> Cmd:
    """Prefix ``cmd`` with ``env NAME=VALUE ...`` (works under every launcher, on every node)."""
    cmd = _command(cmd, "command")
    if not env:
        return cmd
    for name in env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise ValueError(f"expected an environment variable name, found {name!r}")
    return ["env", *(f"{k}={v}" for k, v in env.items()), *cmd]


def pin(cmd: Sequence[str], cores: Iterable[int], *, per_task: int | None = None,
        python: str = "python3") -> Cmd:
    """Wrap ``cmd`` so it runs bound to ``cores`` (for launchers that cannot bind to a CPU list).

    Args:
        cmd: the command to run.
        cores: the CPUs.
        per_task: the number of tasks per node; each task then gets its block of ``cores``
            (``task_cores``) by its local task id (``SLURM_LOCALID``, ``FLUX_TASK_LOCAL_ID``,
            ``MPI_LOCALRANKID``, ...). ``None``: the command gets all of ``cores``.
        python: the Python that has colocate installed.
    """
    cmd = _command(cmd, "command to pin")
    out = [python, "-m", "colocate.launch", "pin", "--cores", format_cpu_list(cores)]
    if per_task is not None:
        out += ["--per-task", str(_positive(per_task, "per_task"))]
    return [*out, "--", *cmd]


# ----- colocate commands -------------------------------------------------------------------------
def serve_command(*, config: str | None = None, address_file: str | None = None,
                  colocate: Sequence[str] = ("colocate",)) -> Cmd:
    """``colocate serve [--config FILE] [--address-file PATH]``."""
    cmd = [*colocate, "serve"]
    if config:
        cmd += ["--config", config]
    if address_file:
        cmd += ["--address-file", address_file]
    return cmd


def run_command(batch: str, *, address: str | None = None, n: int | None = None,
                resume: str | None = None, colocate: Sequence[str] = ("colocate",)) -> Cmd:
    """``colocate run BATCH [-n N] [--resume RUN_DIR] [--address PATH]``."""
    if not batch:
        raise ValueError("expected a batch file (BATCH.yaml), found an empty name")
    cmd = [*colocate, "run", batch]
    if n is not None:
        cmd += ["-n", str(_positive(n, "n"))]
    if resume:
        cmd += ["--resume", resume]
    if address:
        cmd += ["--address", address]
    return cmd


def stop_command(address: str, *, colocate: Sequence[str] = ("colocate",)) -> Cmd:
    """``colocate stop --address PATH``."""
    if not address:
        raise ValueError("expected the address file of the colocate world, found none")
    return [*colocate, "stop", "--address", address]


def world_size(nodes: int, ranks_per_node: int) -> int:
    """Ranks of a colocate world: ``ranks_per_node`` workers on each node plus rank 0."""
    return _positive(nodes, "nodes") * _positive(ranks_per_node, "ranks_per_node") + 1


# ----- mpiexec (no batch system, or inside any allocation) ---------------------------------------
def mpiexec(cmd: Sequence[str], n: int, *, ppn: int | None = None,
            hosts: Sequence[str] = (), extra: Sequence[str] = (),
            mpiexec: str = "mpiexec") -> Cmd:
    """``mpiexec [-hosts H1,H2] [-ppn K] -n N EXTRA... CMD`` (MPICH hydra option names)."""
    cmd = _command(cmd, "command")
    out = [mpiexec]
    if hosts:
        out += ["-hosts", ",".join(hosts)]
    if ppn is not None:
        out += ["-ppn", str(_positive(ppn, "ppn"))]
    return [*out, "-n", str(_positive(n, "n")), *extra, *cmd]


def mpiexec_serve(n: int, config: str | None = None, address_file: str | None = None,
                  extra: Sequence[str] = (), *, mpiexec_exe: str = "mpiexec",
                  colocate: Sequence[str] = ("colocate",)) -> Cmd:
    """``mpiexec -n N colocate serve ...``: a colocate world of ``n - 1`` workers.

    Raises:
        ValueError: ``n`` < 2 (rank 0 schedules, so a world needs at least one more rank).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n={n!r}: a colocate world needs at least 2 ranks: rank 0 schedules "
                         f"and ranks 1..n-1 run the tasks")
    serve = serve_command(config=config, address_file=address_file, colocate=colocate)
    return mpiexec(serve, n, extra=extra, mpiexec=mpiexec_exe)


def local_colocate_step(serve_cmd: Sequence[str], spare_cores: Iterable[int],
                        ranks: int | None = None, *, python: str = "python3",
                        mpiexec_exe: str = "mpiexec", extra: Sequence[str] = ()) -> Cmd:
    """A colocate world on this machine, bound to ``spare_cores`` (one worker per spare core).

    ``mpiexec -n R env COLOCATE_CO_LOCATION_SPARE_CORES=L python -m colocate.launch pin ...``.
    """
    spare = parse_cpu_list(spare_cores)
    ranks = ranks if ranks is not None else world_size(1, max(1, len(spare)))
    inner = with_env(pin(serve_cmd, spare, python=python),
                     {SPARE_CORES_ENV: env_cpu_list(spare)})
    return mpiexec(inner, _positive(ranks, "ranks"), extra=extra, mpiexec=mpiexec_exe)


# ----- Slurm -------------------------------------------------------------------------------------
def slurm_host_step(host_cmd: Sequence[str], host_cores: Iterable[int], nodes: int,
                    ntasks_per_node: int, *, extra: Sequence[str] = (), srun: str = "srun",
                    name: str = "host") -> Cmd:
    """A job step that runs the host program on the host cores of every node.

    ``srun --overlap --nodes=N --ntasks=N*K --ntasks-per-node=K --cpu-bind=map_cpu:...`` so the
    step shares the allocation with the colocate step and each task is bound to its cores.
    Explicit CPU ids are machine ids: they must be allocated on every node (true for
    ``--exclusive`` jobs; on shared nodes Slurm may refuse or drop the binding).

    No ``--cpus-per-task``: since Slurm 22.05 it implies ``--exact``, which shrinks the step to
    that many CPUs of Slurm's choosing, and a binding outside them fails ("CPU binding outside
    of job step allocation"). For the same reason run the step with ``SLURM_CPUS_PER_TASK``
    unset (srun reads it from a job submitted with ``-c``).
    """
    cmd = _command(host_cmd, "host command")
    cores = parse_cpu_list(host_cores)
    if not cores:
        raise ValueError("expected at least one host core, found none")
    k = _positive(ntasks_per_node, "ntasks_per_node")
    n = _positive(nodes, "nodes")
    return [srun, "--overlap", f"--job-name={name}", f"--nodes={n}", f"--ntasks={n * k}",
            f"--ntasks-per-node={k}", f"--cpu-bind={slurm_cpu_bind(cores, k)}", *extra, *cmd]


def slurm_colocate_step(serve_cmd: Sequence[str], spare_cores: Iterable[int], nodes: int,
                        ranks_per_node: int | None = None, *, mpi: str | None = "pmi2",
                        launcher: str = "srun", extra: Sequence[str] = (),
                        srun: str = "srun", mpiexec_exe: str = "mpiexec",
                        name: str = "colocate", tell_spare: bool = True) -> Cmd:
    """A job step that runs the colocate world on the spare cores of every node.

    Every rank is bound to all spare cores of its node (the world pins its executors to single
    cores itself) and told them through ``COLOCATE_CO_LOCATION_SPARE_CORES``. Ranks are dealt
    to the nodes in turn (``--distribution=cyclic``): rank 0 and ``ranks_per_node`` workers on
    the first node, ``ranks_per_node`` workers on each other one. (Inside a job submitted with
    ``--ntasks-per-node`` or ``-c``, srun also reads ``SLURM_NTASKS_PER_NODE`` and
    ``SLURM_CPUS_PER_TASK``: unset them for this step, see ``slurm_host_step``.)

    Args:
        serve_cmd: ``colocate serve ...`` (see ``serve_command``).
        spare_cores: the spare CPU ids, the same on every node.
        nodes: nodes of the allocation.
        ranks_per_node: worker ranks per node; default one per spare core. Rank 0 comes on top.
        mpi: ``--mpi`` plugin for ``launcher="srun"``: ``"pmi2"`` works with the MPICH wheel and
            Debian's Slurm; ``None`` leaves the site default (``MpiDefault``).
        launcher: ``"srun"`` (a Slurm step with PMI) or ``"mpiexec"`` (hydra inside the
            allocation, which starts its proxies with srun; ``SLURM_OVERLAP`` and
            ``SLURM_CPU_BIND`` pass the overlap and the binding to that srun).
        extra: more srun (or mpiexec) options.
        srun: the srun executable.
        mpiexec_exe: the mpiexec executable for ``launcher="mpiexec"``.
        name: the step name (``squeue --steps`` shows it; used to signal the step).
        tell_spare: set ``COLOCATE_CO_LOCATION_SPARE_CORES`` to ``spare_cores``. ``False`` when
            they are only the CPUs the step may use (attaching to a job without a list of spare
            cores): the world's own ``co_location.spare_cores`` (``auto``) picks the idle ones.

    Raises:
        ValueError: no spare core, bad counts, or an unknown launcher.
    """
    spare = parse_cpu_list(spare_cores)
    if not spare:
        raise ValueError("expected at least one spare core for colocate, found none")
    rpn = len(spare) if ranks_per_node is None else ranks_per_node
    size = world_size(nodes, rpn)
    inner = with_env(_command(serve_cmd, "serve command"),
                     {SPARE_CORES_ENV: env_cpu_list(spare)} if tell_spare else {})
    bind = f"mask_cpu:{cpu_mask(spare)}"
    if launcher == "srun":
        out = [srun, "--overlap", f"--job-name={name}", f"--nodes={nodes}", f"--ntasks={size}",
               "--distribution=cyclic", "--overcommit"]
        if mpi:
            out.append(f"--mpi={mpi}")
        return [*out, f"--cpu-bind={bind}", *extra, *inner]
    if launcher == "mpiexec":
        env = {"SLURM_OVERLAP": "1", "SLURM_CPU_BIND": bind, "SLURM_JOB_NAME": name}
        return with_env([mpiexec_exe, "-launcher", "slurm", "-ppn", str(rpn), "-n", str(size),
                         *extra, *inner], env)
    raise ValueError(f"launcher={launcher!r}: expected 'srun' or 'mpiexec'")


def slurm_attach(jobid: str | int, cmd: Sequence[str], *, nodes: int | None = None,
                 ntasks: int | None = None, cpu_bind: str | None = "none",
                 mpi: str | None = None, extra: Sequence[str] = (),
                 srun: str = "srun") -> Cmd:
    """Run ``cmd`` as a new step of a running job: ``srun --jobid=J --overlap ...``.

    ``--overlap`` lets the step share the CPUs the job's own steps hold.

    Raises:
        ValueError: the job id is not a Slurm job id (``123``, ``123_4`` or ``123+1``).
    """
    if not _JOB_ID.match(str(jobid)):
        raise ValueError(f"expected a Slurm job id like 1234, 1234_5 or 1234+1, found {jobid!r}")
    out = [srun, f"--jobid={jobid}", "--overlap"]
    if nodes is not None:
        out.append(f"--nodes={_positive(nodes, 'nodes')}")
    if ntasks is not None:
        out.append(f"--ntasks={_positive(ntasks, 'ntasks')}")
    if mpi:
        out.append(f"--mpi={mpi}")
    if cpu_bind:
        out.append(f"--cpu-bind={cpu_bind}")
    return [*out, *extra, *_command(cmd, "command")]


def slurm_job_nodes(show_job: str) -> tuple[str, int]:
    """The node list and node count of a job, from its ``scontrol -o show job JOBID`` line.

    Raises:
        ValueError: the text has no ``NodeList=`` and ``NumNodes=`` (not a running job).
    """
    fields = dict(kv.split("=", 1) for kv in show_job.split() if "=" in kv)
    nodelist, count = fields.get("NodeList", ""), fields.get("NumNodes", "").split("-")[0]
    if not nodelist or nodelist == "(null)" or not count.isdigit():
        raise ValueError(f"expected a running job with NodeList= and NumNodes=, found "
                         f"{show_job.strip()[:200]!r}")
    return nodelist, int(count)


def slurm_attached_env(nodelist: str, nodes: int) -> dict[str, str]:
    """The job's own node list and count, for the steps an attached supervisor starts.

    A step started with ``srun --jobid=J --nodes=1`` sees its own one node in
    ``SLURM_JOB_NODELIST``/``SLURM_NNODES``, and an srun inside it can then reach only that
    node ("Only allocated 1 nodes asked for 3"); with these set again it reaches every node.
    """
    n = str(_positive(nodes, "nodes"))
    return {"SLURM_JOB_NODELIST": nodelist, "SLURM_NODELIST": nodelist, "SLURM_NNODES": n,
            "SLURM_JOB_NUM_NODES": n}


def slurm_signal_step(jobid: str | int, step: str | int, signal: str = "TERM") -> Cmd:
    """``scancel --signal=SIG JOB.STEP``: deliver a signal to a step's tasks without killing it.

    (A signal sent to ``srun`` itself cancels the step; this reaches the tasks instead.)
    """
    if not _JOB_ID.match(str(jobid)) or not re.match(r"^(\d+|batch|extern)$", str(step)):
        raise ValueError(f"expected a job id and step id like 1234 and 0, found {jobid!r}, "
                         f"{step!r}")
    return ["scancel", f"--signal={signal}", f"{jobid}.{step}"]


# ----- PBS ---------------------------------------------------------------------------------------
def pbs_hosts(nodefile_lines: Iterable[str]) -> list[str]:
    """Unique hosts of a ``$PBS_NODEFILE`` (one line per slot), in order of first appearance."""
    hosts = list(dict.fromkeys(line.strip() for line in nodefile_lines if line.strip()))
    if not hosts:
        raise ValueError("expected host names in $PBS_NODEFILE, found none")
    return hosts


def pbs_host_step(host_cmd: Sequence[str], host_cores: Iterable[int], hosts: Sequence[str],
                  ntasks_per_node: int, *, via: str = "mpiexec", python: str = "python3",
                  mpiexec_exe: str = "mpiexec", extra: Sequence[str] = ()) -> Cmd:
    """The host program on the host cores of every PBS node.

    ``via="mpiexec"``: ``mpiexec -hosts ... -ppn K -n N*K pin(...)``; ``via="pbsdsh"``:
    ``pbsdsh -u pin(...)`` (one task per node, no MPI).
    """
    cmd = _command(host_cmd, "host command")
    cores = parse_cpu_list(host_cores)
    k = _positive(ntasks_per_node, "ntasks_per_node")
    if not hosts:
        raise ValueError("expected at least one host, found none")
    if via == "pbsdsh":
        if k != 1:
            raise ValueError(f"pbsdsh starts one task per node, found ntasks_per_node={k}; "
                             f"use via='mpiexec'")
        return ["pbsdsh", "-u", *extra, "--", *pin(cmd, cores, python=python)]
    if via != "mpiexec":
        raise ValueError(f"via={via!r}: expected 'mpiexec' or 'pbsdsh'")
    return mpiexec(pin(cmd, cores, per_task=k, python=python), len(hosts) * k, ppn=k,
                   hosts=hosts, extra=extra, mpiexec=mpiexec_exe)


def pbs_colocate_step(serve_cmd: Sequence[str], spare_cores: Iterable[int],
                      hosts: Sequence[str], ranks_per_node: int | None = None, *,
                      python: str = "python3", mpiexec_exe: str = "mpiexec",
                      extra: Sequence[str] = ()) -> Cmd:
    """The colocate world on the spare cores of every PBS node (``mpiexec -hosts ... -ppn``)."""
    spare = parse_cpu_list(spare_cores)
    if not spare:
        raise ValueError("expected at least one spare core for colocate, found none")
    if not hosts:
        raise ValueError("expected at least one host, found none")
    rpn = len(spare) if ranks_per_node is None else ranks_per_node
    inner = with_env(pin(serve_cmd, spare, python=python),
                     {SPARE_CORES_ENV: env_cpu_list(spare)})
    return mpiexec(inner, world_size(len(hosts), rpn), ppn=rpn, hosts=hosts, extra=extra,
                   mpiexec=mpiexec_exe)


# ----- Flux --------------------------------------------------------------------------------------
def flux_step(cmd: Sequence[str], nodes: int, tasks_per_node: int, *, submit: bool = False,
              cores_per_task: int = 1, extra: Sequence[str] = ()) -> Cmd:
    """``flux run|submit --nodes=N --tasks-per-node=K ... CMD`` with Flux's own binding off."""
    return ["flux", "submit" if submit else "run", f"--nodes={_positive(nodes, 'nodes')}",
            f"--tasks-per-node={_positive(tasks_per_node, 'tasks_per_node')}",
            f"--cores-per-task={_positive(cores_per_task, 'cores_per_task')}",
            "-o", "cpu-affinity=off", *extra, *_command(cmd, "command")]


def flux_host_step(host_cmd: Sequence[str], host_cores: Iterable[int], nodes: int,
                   tasks_per_node: int, *, submit: bool = False, python: str = "python3",
                   extra: Sequence[str] = ()) -> Cmd:
    """The host program on the host cores of every node of a Flux instance."""
    cores = parse_cpu_list(host_cores)
    k = _positive(tasks_per_node, "tasks_per_node")
    return flux_step(pin(host_cmd, cores, per_task=k, python=python), nodes, k, submit=submit,
                     cores_per_task=max(1, len(cores) // k), extra=extra)


def flux_colocate_step(serve_cmd: Sequence[str], spare_cores: Iterable[int], nodes: int, *,
                       submit: bool = False, python: str = "python3",
                       extra: Sequence[str] = ()) -> Cmd:
    """The colocate world on the spare cores of every node of a Flux instance.

    Flux gives jobs disjoint cores, so the world asks for one task per spare core and rank 0
    takes one of those slots: the world has ``nodes * len(spare)`` ranks.

    Raises:
        ValueError: that makes fewer than 2 ranks (rank 0 plus one worker).
    """
    spare = parse_cpu_list(spare_cores)
    if nodes * len(spare) < 2:
        raise ValueError(f"{nodes} node(s) with {len(spare)} spare core(s) give a world of "
                         f"{nodes * len(spare)} rank(s) under Flux; colocate needs 2 (rank 0 and "
                         f"a worker): leave more cores spare or use more nodes")
    inner = with_env(pin(serve_cmd, spare, python=python),
                     {SPARE_CORES_ENV: env_cpu_list(spare)})
    return flux_step(inner, nodes, len(spare), submit=submit, extra=extra)

