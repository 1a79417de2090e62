"""The launchers' I/O side: ``python -m colocate.launch pin|plan|with``; supervises the steps.

``colocate.launch`` builds command lines; this module reads the allocation (environment, CPU
affinity, node files), turns it into a ``Plan`` (``make_plan``, pure), and runs it::

    with SYSTEM BATCH -- HOST...       the launcher scripts in launchers/ exec this
      1. start the host step            (host program on the host cores of every node)
      2. start the colocate step        (colocate serve on the spare cores of every node)
      3. wait, bounded, for the address file, then run `colocate run BATCH --address ...`
      4. batch done     -> `colocate stop`, keep waiting for the host job
         host done      -> drain colocate (SIGTERM to its step), wait, bounded, for the batch
         warning signal -> (SIGTERM/SIGUSR1, e.g. from `#SBATCH --signal=B:TERM@120`) drain
                           colocate; a second one ends everything at once
      5. exit with the host's status if it failed, else the batch's (``colocate run``: 0 all ok,
         1 some failed, 2 invalid batch, 3 incomplete: drained, resume it), 4 if the colocate
         world never came up

The host job is never stopped by colocate: only a second warning signal or its own end does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from colocate import launch as L
from colocate.launch.supervisor import Supervisor, log

SYSTEMS = ("slurm", "pbs", "flux", "mpiexec")
PROG = "python -m colocate.launch"

# ----- what the allocation looks like ------------------------------------------------------------
@dataclass(frozen=True)
class Allocation:
    """Facts about the allocation, read on its first node.

    Attributes:
        system: one of ``SYSTEMS``.
        nodes: number of nodes.
        hosts: their names where the launcher needs them (PBS), else empty.
        allowed: CPUs this process may use on this node (the allocation's CPUs here).
        siblings: ``{cpu: CPUs sharing its core}`` for SMT nodes, else empty.
        jobid: the batch system's job id, or ``None``.
        tasks_per_node: tasks per node the job asked for, if it said.
        cpus_per_task: CPUs per task the job asked for (1 when it did not say).
    """

    system: str
    nodes: int
    allowed: tuple[int, ...]
    hosts: tuple[str, ...] = ()
    siblings: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    jobid: str | None = None
    tasks_per_node: int | None = None
    cpus_per_task: int = 1


@dataclass(frozen=True)
class Settings:
    """What the user chose (options, else ``COLOCATE_*`` environment variables)."""

    host_cores: str | None = None
    host_ncores: int | None = None
    host_tasks_per_node: int | None = None
    spare_cores: str | None = None
    ranks_per_node: int | None = None
    address: str | None = None
    config: str | None = None
    slurm_mpi: str | None = "pmi2"
    slurm_launcher: str = "srun"
    host_signal: str | None = None
    start_timeout: float = 120.0
    stop_timeout: float = 90.0


@dataclass(frozen=True)
class Plan:
    """The commands of one co-located run, ready to start."""

    system: str
    split: L.CoreSplit
    host_tasks_per_node: int
    ranks_per_node: int
    address: str
    host: L.Cmd | None
    serve: L.Cmd
    run: L.Cmd | None
    stop: L.Cmd
    jobid: str | None = None
    serve_step_name: str = "colocate"

    def describe(self) -> str:
        """One line for the log: where each part runs."""
        host = (f"host cores {L.format_cpu_list(self.split.host)} "
                f"({self.host_tasks_per_node} task(s)/node)" if self.split.host else "no host")
        return (f"{self.system}: {host}; colocate on spare cores "
                f"{L.format_cpu_list(self.split.spare)} ({self.ranks_per_node} worker rank(s)"
                f"/node + rank 0); address {self.address}")


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    # Slurm writes repeated counts like "4(x2)"; the first count is the one on this node.
    head = raw.split("(")[0].split(",")[0]
    try:
        return int(head)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected an integer") from None


def read_siblings(cpus: Sequence[int], sysfs: str = "/sys/devices/system/cpu") -> dict:
    """``{cpu: SMT siblings}`` from sysfs; empty where it cannot be read."""
    out: dict[int, tuple[int, ...]] = {}
    for cpu in cpus:
        try:
            with open(f"{sysfs}/cpu{cpu}/topology/thread_siblings_list") as f:
                sib = L.parse_cpu_list(f.read().strip())
        except (OSError, ValueError):
            continue
        if len(sib) > 1:
            out[cpu] = tuple(c for c in sib if c != cpu)
    return out


def gather(system: str, environ: Mapping[str, str]) -> Allocation:
    """Read the allocation from the environment of its first node.

    Raises:
        ValueError: not inside a job of ``system``, or its variables are malformed.
    """
    allowed = tuple(sorted(os.sched_getaffinity(0)))
    siblings = read_siblings(allowed)
    if system == "slurm":
        jobid = environ.get("SLURM_JOB_ID")
        if not jobid:
            raise ValueError("not inside a Slurm job (no SLURM_JOB_ID): submit the script with "
                             "sbatch, or attach to a job with launchers/slurm/colocate-attach.sh")
        # COLOCATE_NODES: the job's node count, passed by `attach` (a step sees only its own).
        nodes = (_int_env(environ, "COLOCATE_NODES") or _int_env(environ, "SLURM_JOB_NUM_NODES")
                 or _int_env(environ, "SLURM_NNODES") or 1)
        return Allocation(system, nodes, allowed, siblings=siblings, jobid=jobid,
                          tasks_per_node=_int_env(environ, "SLURM_NTASKS_PER_NODE"),
                          cpus_per_task=_int_env(environ, "SLURM_CPUS_PER_TASK") or 1)
    if system == "pbs":
        nodefile = environ.get("PBS_NODEFILE")
        if not nodefile:
            raise ValueError("not inside a PBS job (no PBS_NODEFILE): submit the script with qsub")
        with open(nodefile) as f:
            hosts = L.pbs_hosts(f)
        return Allocation(system, len(hosts), allowed, hosts=tuple(hosts), siblings=siblings,
                          jobid=environ.get("PBS_JOBID"))
    if system == "flux":
        size = _int_env(environ, "COLOCATE_NODES")
        if size is None:
            try:
                out = subprocess.run(["flux", "getattr", "size"], capture_output=True,
                                     text=True, timeout=30, check=True)
                size = int(out.stdout.strip())
            except (OSError, subprocess.SubprocessError, ValueError) as e:
                raise ValueError(f"cannot ask Flux for the instance size ({e}); run inside "
                                 f"`flux alloc`/`flux batch`, or set COLOCATE_NODES") from None
        return Allocation(system, size, allowed, siblings=siblings,
                          jobid=environ.get("FLUX_JOB_ID"))
    if system == "mpiexec":
        return Allocation(system, 1, allowed, hosts=(socket.gethostname(),), siblings=siblings)
    raise ValueError(f"system={system!r}: expected one of {', '.join(SYSTEMS)}")


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Options first, then ``COLOCATE_*`` environment variables, then defaults."""
    def pick(opt, env, conv=str):
        value = getattr(args, opt, None)
        if value is not None:
            return value
        raw = environ.get(env, "").strip()
        if not raw:
            return None
        try:
            return conv(raw)
        except ValueError:
            raise ValueError(f"{env}={raw!r}: expected {conv.__name__}") from None

    d = Settings()
    return Settings(
        host_cores=pick("host_cores", "COLOCATE_HOST_CORES"),
        host_ncores=pick("host_ncores", "COLOCATE_HOST_NCORES", int),
        host_tasks_per_node=pick("host_tasks_per_node", "COLOCATE_HOST_TASKS_PER_NODE", int),
        spare_cores=pick("spare_cores", "COLOCATE_SPARE_CORES"),
        ranks_per_node=pick("ranks_per_node", "COLOCATE_RANKS_PER_NODE", int),
        address=pick("address", "COLOCATE_ADDRESS_FILE"),
        config=pick("config", "COLOCATE_CONFIG"),
        slurm_mpi=pick("slurm_mpi", "COLOCATE_SLURM_MPI") or d.slurm_mpi,
        slurm_launcher=pick("slurm_launcher", "COLOCATE_SLURM_LAUNCHER") or d.slurm_launcher,
        host_signal=pick("host_signal", "COLOCATE_HOST_SIGNAL"),
        start_timeout=pick("start_timeout", "COLOCATE_START_TIMEOUT", float) or d.start_timeout,
        stop_timeout=pick("stop_timeout", "COLOCATE_STOP_TIMEOUT", float) or d.stop_timeout,
    )


def choose_split(alloc: Allocation, s: Settings, has_host: bool) -> L.CoreSplit:
    """Decide host and spare CPUs on each node (the same ids on every node).

    Raises:
        ValueError: the choice leaves no spare core, or names CPUs outside the allocation.
    """
    allowed = alloc.allowed
    where = f"this node's allocation has CPUs {L.format_cpu_list(allowed)}"
    if s.host_cores is not None:
        host = L.parse_cpu_list(s.host_cores)
        outside = set(host) - set(allowed)
        if outside:
            raise ValueError(f"COLOCATE_HOST_CORES={s.host_cores!r} names CPUs "
                             f"{L.format_cpu_list(outside)} outside the allocation; {where}")
        spare = tuple(c for c in allowed if c not in host)
        if s.spare_cores is not None:
            spare = L.parse_cpu_list(s.spare_cores)
        if not spare or set(spare) & set(host) or set(spare) - set(allowed):
            raise ValueError(f"host CPUs {L.format_cpu_list(host)} and spare CPUs "
                             f"{L.format_cpu_list(spare) or 'none'}: expected disjoint, non-empty "
                             f"sets inside the allocation; {where}")
        return L.CoreSplit(host, spare)
    if not has_host:  # attach: the host is already running somewhere in the allocation
        spare = L.parse_cpu_list(s.spare_cores) if s.spare_cores is not None else allowed
        if not spare or set(spare) - set(allowed):
            raise ValueError(f"COLOCATE_SPARE_CORES={s.spare_cores!r}: expected CPUs inside "
                             f"the allocation; {where}")
        return L.CoreSplit((), spare)
    count = s.host_ncores
    if count is None and alloc.tasks_per_node:
        count = alloc.tasks_per_node * alloc.cpus_per_task
    if count is None:
        raise ValueError(
            f"how many cores does the host job use per node? Set COLOCATE_HOST_NCORES=N (or "
            f"COLOCATE_HOST_CORES=LIST), or submit with --ntasks-per-node; {where}")
    if isinstance(count, int) and not isinstance(count, bool) and count >= len(allowed) >= 1:
        raise ValueError(no_spare_cpu_message(alloc, s, count))
    try:
        split = L.split_cores(allowed, count, siblings=alloc.siblings)
    except ValueError as e:
        raise ValueError(f"{e}. Ask for more cores per node than the host uses (e.g. "
                         f"--exclusive), or set COLOCATE_HOST_NCORES") from None
    if s.spare_cores is not None:
        spare = L.parse_cpu_list(s.spare_cores)
        if set(spare) & set(split.host) or set(spare) - set(allowed) or not spare:
            raise ValueError(f"COLOCATE_SPARE_CORES={s.spare_cores!r}: expected CPUs of the "
                             f"allocation not used by the host ({L.format_cpu_list(split.host)})")
        split = L.CoreSplit(split.host, spare)
    return split


def _cpus(n: int) -> str:
    return f"{n} CPU" if n == 1 else f"{n} CPUs"


def no_spare_cpu_message(alloc: Allocation, s: Settings, count: int) -> str:
    """Say in words that the host takes every CPU of the node, and what to submit instead."""
    have = len(alloc.allowed)
    if s.host_ncores is not None:
        why = f"COLOCATE_HOST_NCORES={s.host_ncores}"
    else:
        why = (f"--ntasks-per-node={alloc.tasks_per_node} x --cpus-per-task="
               f"{alloc.cpus_per_task}")
    text = (f"the allocation has {_cpus(have)} on this node "
            f"({L.format_cpu_list(alloc.allowed)}) and the host job uses "
            f"{'it' if have == 1 and count == 1 else _cpus(count)} ({why}), so no CPU is left "
            f"for colocate. ")
    if alloc.system == "slurm":
        return text + (f"Add --exclusive to the sbatch options to get every CPU of each node, "
                       f"or ask for more CPUs than the host uses: --cpus-per-task="
                       f"{alloc.cpus_per_task + 1} with COLOCATE_HOST_NCORES={count} "
                       f"(sbatch --export=ALL,COLOCATE_HOST_NCORES={count} ...)")
    return text + (f"Give the job more CPUs per node than the host uses, or set "
                   f"COLOCATE_HOST_NCORES to fewer than {have}")


def make_plan(alloc: Allocation, s: Settings, host_cmd: Sequence[str], batch: str | None, *,
              python: str, colocate: Sequence[str], cwd: str) -> Plan:
    """Turn the allocation and the settings into the commands to run (pure).

    Raises:
        ValueError: see ``choose_split``; or the system cannot express the layout.
    """
    has_host = bool(host_cmd)
    split = choose_split(alloc, s, has_host)
    k = s.host_tasks_per_node or alloc.tasks_per_node or 1
    rpn = s.ranks_per_node or len(split.spare)
    tag = alloc.jobid or str(os.getpid())
    address = s.address or os.path.join(cwd, f"colocate-{tag}.address")
    serve = L.serve_command(config=s.config, address_file=address, colocate=colocate)
    run = (L.pin(L.run_command(batch, address=address, colocate=colocate), split.spare,
                 python=python) if batch else None)
    stop = L.stop_command(address, colocate=colocate)
    host: L.Cmd | None = None
    if alloc.system == "slurm":
        if has_host:
            host = L.slurm_host_step(host_cmd, split.host, alloc.nodes, k)
        step = L.slurm_colocate_step(serve, split.spare, alloc.nodes, rpn, mpi=s.slurm_mpi,
                                     launcher=s.slurm_launcher,
                                     tell_spare=has_host or s.spare_cores is not None)
    elif alloc.system == "pbs":
        if has_host:
            host = L.pbs_host_step(host_cmd, split.host, alloc.hosts, k, python=python)
        step = L.pbs_colocate_step(serve, split.spare, alloc.hosts, rpn, python=python)
    elif alloc.system == "flux":
        if has_host:
            host = L.flux_host_step(host_cmd, split.host, alloc.nodes, k, python=python)
        rpn = len(split.spare)
        step = L.flux_colocate_step(serve, split.spare, alloc.nodes, python=python)
    elif alloc.system == "mpiexec":
        if has_host:
            host = L.pin(host_cmd, split.host, python=python)
        step = L.local_colocate_step(serve, split.spare, L.world_size(1, rpn), python=python)
    else:
        raise ValueError(f"system={alloc.system!r}: expected one of {', '.join(SYSTEMS)}")
    return Plan(alloc.system, split, k, rpn, address, host, step, run, stop, alloc.jobid)


# ----- pin ---------------------------------------------------------------------------------------
def local_task_id(environ: Mapping[str, str]) -> int:
    """This task's index among the tasks of its node, from the launcher's variables (else 0)."""
    for name in L.LOCAL_ID_ENVS:
        raw = environ.get(name, "").strip()
        if raw.isdigit():
            return int(raw)
    return 0


def pin_main(cores: str, per_task: int | None, cmd: Sequence[str]) -> int:
    """Bind this process to ``cores`` (or this task's block of them), then exec ``cmd``."""
    if not cmd:
        print(f"{PROG} pin: expected a command after --", file=sys.stderr)
        return 2
    cpus = L.parse_cpu_list(cores)
    if per_task:
        cpus = L.task_cores(cpus, per_task, local_task_id(os.environ) % per_task)
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as e:
        have = L.format_cpu_list(os.sched_getaffinity(0))
        print(f"{PROG} pin: cannot bind to CPUs {L.format_cpu_list(cpus)} ({e.strerror}); "
              f"this process may use CPUs {have}", file=sys.stderr)
        return 1
    try:
        os.execvp(cmd[0], list(cmd))
    except OSError as e:
        print(f"{PROG} pin: cannot run {cmd[0]!r}: {e.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


def attach_main(jobid: str, batch: str) -> int:
    """Start the supervisor as a one-task step of a running job (it starts the world there).

    The step sees only its own node in Slurm's variables; the job's node list and count go to
    it in ``COLOCATE_JOB_NODELIST`` and ``COLOCATE_NODES`` (see ``attached_slurm_env``).
    """
    inner = [sys.executable, "-m", "colocate.launch", "with", "slurm", "--attach", batch]
    try:
        cmd = L.slurm_attach(jobid, inner, nodes=1, ntasks=1, cpu_bind="none")
        show = subprocess.run(["scontrol", "-o", "show", "job", str(jobid)], capture_output=True,
                              text=True, timeout=30)
        if show.returncode != 0:
            raise ValueError(f"scontrol show job {jobid} failed: {show.stderr.strip()}; is "
                             f"{jobid} a running job of yours (squeue --me)?")
        nodelist, nodes = L.slurm_job_nodes(show.stdout)
    except (ValueError, OSError, subprocess.SubprocessError) as e:
        print(f"{PROG} attach: {e}", file=sys.stderr)
        return 2
    os.environ.update({"COLOCATE_JOB_NODELIST": nodelist, "COLOCATE_NODES": str(nodes)})
    log(f"attach: {L.shell_join(cmd)}")
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        print(f"{PROG} attach: cannot run {cmd[0]!r}: {e.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


def attached_slurm_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Inside an attached supervisor step: the job's node list and count again (else ``{}``)."""
    nodelist, nodes = environ.get("COLOCATE_JOB_NODELIST"), _int_env(environ, "COLOCATE_NODES")
    return L.slurm_attached_env(nodelist, nodes) if nodelist and nodes else {}


# ----- command line ------------------------------------------------------------------------------
def _colocate_command(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("COLOCATE_COMMAND", "").strip()
    if raw:
        import shlex

        return shlex.split(raw)
    found = shutil.which("colocate")
    if found:
        return [os.path.abspath(found)]
    here = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "colocate")
    return [here]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)
    pn = sub.add_parser("pin", help="bind to CPUs, then exec a command")
    pn.add_argument("--cores", required=True, help="CPU list, e.g. 0-3,8")
    pn.add_argument("--per-task", type=int, default=None,
                    help="tasks per node: bind this task (by its local id) to its block of cores")
    at = sub.add_parser("attach", help="run a batch on the spare cores of a running Slurm job")
    at.add_argument("jobid")
    at.add_argument("batch")
    for verb, help_ in (("plan", "print the commands a `with` run would start"),
                        ("with", "run a host job and a colocate batch side by side")):
        sp = sub.add_parser(verb, help=help_)
        sp.add_argument("system", choices=SYSTEMS)
        if verb == "with":
            sp.add_argument("batch", help="the batch file (BATCH.yaml)")
        else:
            sp.add_argument("--batch", default=None)
        sp.add_argument("--host-cores", help="host CPU list [COLOCATE_HOST_CORES]")
        sp.add_argument("--host-ncores", type=int,
                        help="host CPUs per node, the lowest ids [COLOCATE_HOST_NCORES]")
        sp.add_argument("--host-tasks-per-node", type=int,
                        help="host tasks per node [COLOCATE_HOST_TASKS_PER_NODE]")
        sp.add_argument("--spare-cores", help="colocate CPU list [COLOCATE_SPARE_CORES]")
        sp.add_argument("--ranks-per-node", type=int,
                        help="colocate worker ranks per node [COLOCATE_RANKS_PER_NODE]")
        sp.add_argument("--address", help="address file [COLOCATE_ADDRESS_FILE]")
        sp.add_argument("--config", help="colocate config file [COLOCATE_CONFIG]")
        sp.add_argument("--slurm-mpi", help="srun --mpi plugin, default pmi2 [COLOCATE_SLURM_MPI]")
        sp.add_argument("--slurm-launcher", choices=("srun", "mpiexec"),
                        help="how to start the world in Slurm [COLOCATE_SLURM_LAUNCHER]")
        sp.add_argument("--host-signal", help="also send this signal to the host step on the "
                        "warning [COLOCATE_HOST_SIGNAL]")
        sp.add_argument("--start-timeout", type=float,
                        help="seconds for colocate to come up [COLOCATE_START_TIMEOUT]")
        sp.add_argument("--stop-timeout", type=float,
                        help="seconds for a drain to end [COLOCATE_STOP_TIMEOUT]")
        sp.add_argument("--attach", action="store_true",
                        help="no host command: serve on a job whose host already runs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m colocate.launch``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    args = _parser().parse_args(argv)
    if args.verb == "pin":
        return pin_main(args.cores, args.per_task, rest)
    if args.verb == "attach":
        return attach_main(args.jobid, args.batch)
    if not rest and not args.attach:
        print(f"{PROG} {args.verb}: expected the host command after -- (or --attach)",
              file=sys.stderr)
        return 2
    if args.system == "slurm" and args.attach:
        os.environ.update(attached_slurm_env(os.environ))
        for name in ("SLURM_NTASKS", "SLURM_NPROCS"):   # the supervisor's one task
            os.environ.pop(name, None)
    try:
        s = settings_from(args, os.environ)
        alloc = gather(args.system, os.environ)
        plan = make_plan(alloc, s, rest, args.batch, python=sys.executable,
                         colocate=_colocate_command(os.environ), cwd=os.getcwd())
    except (ValueError, OSError) as e:
        print(f"{PROG} {args.verb}: {e}", file=sys.stderr)
        return 2
    if args.verb == "plan":
        for name, cmd in (("HOST_STEP", plan.host), ("COLOCATE_STEP", plan.serve),
                          ("BATCH_CMD", plan.run), ("STOP_CMD", plan.stop)):
            if cmd is not None:
                print(f"{name}=({L.shell_join(cmd)})")
        print(f"HOST_CORES={L.format_cpu_list(plan.split.host) or 'none'}")
        print(f"SPARE_CORES={L.format_cpu_list(plan.split.spare)}")
        print(f"ADDRESS={L.shell_join([plan.address])}")
        return 0
    sup = Supervisor(plan, s)
    sup.install_signals()
    return sup.supervise()
