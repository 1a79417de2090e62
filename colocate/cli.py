"""The ``colocate`` command line: serve, join, stop, status, info, run, submit, report, results.

``colocate demo`` runs the built-in batch. Exit codes: 0 success; 1 some tasks failed
(``run``/``submit``) or the server could not be reached; 2 invalid input (bad option,
configuration or batch file), reported before anything runs; 3 tasks are left to do (drained or
the world broke: ``colocate run --resume RUN_DIR``); 130 stopped by a second Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from typing import Any

from colocate.errors import ColocateError, ConfigError

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


DESCRIPTION = """\
Serve Python functions on the spare cores of an HPC allocation, and run YAML batches of
function calls on them.

  colocate demo                      a built-in batch on a local world, to try it out
  colocate run BATCH.yaml            run a batch; results go to its run directory
  colocate results RUN_DIR           one row per task: arguments, status, result
  mpiexec -n N colocate serve        a long-lived world that clients and batches share
"""

EPILOG = """\
exit codes: 0 success; 1 some tasks failed (run, submit) or the server could not be reached;
2 invalid input (bad option, configuration or batch file), reported before anything runs;
3 tasks are left to do (drained, or the world broke): colocate run --resume RUN_DIR;
130 stopped by a second Ctrl-C or SIGTERM.

Paths in a batch file are relative to the batch file; --output is relative to the current
directory. Run "colocate COMMAND --help" for a command's options.
"""

CONFIG_HELP = "configuration file (default: built-in defaults, see colocate/defaults.yaml)"


def _sub(sub: Any, name: str, text: str, description: str | None = None) -> Any:
    return sub.add_parser(name, help=text, description=description or text[0].upper() + text[1:]
                          + ".", formatter_class=argparse.RawDescriptionHelpFormatter)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="colocate", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = _sub(sub, "serve", "run a world: mpiexec -n N colocate serve")
    s.add_argument("--config", help=CONFIG_HELP)
    s.add_argument("--address-file", help="where to write the address (default: "
                   "server.address_file)")
    s.add_argument("--owner", metavar="PID[:START]",
                   help="stop the world when process PID exits or closes its connection "
                   "(Executor() passes its own pid and start time for the local world it "
                   "starts); without it, the world runs until stopped")

    j = _sub(sub, "join", "add this node's spare cores to a running world over TCP (from "
             "another batch job, e.g. a pool's)")
    j.add_argument("--address", default=os.environ.get("COLOCATE_ADDRESS"),
                   help="the world's address file (or COLOCATE_ADDRESS)")
    j.add_argument("--cores", metavar="LIST",
                   help="cores to work on, e.g. 0-3 (default: co_location.spare_cores); one "
                   "worker process per core")
    j.add_argument("--config", help="configuration file (see colocate/defaults.yaml)")

    for name, text in (("stop", "stop a running server"), ("status", "show a server's state")):
        c = _sub(sub, name, text)
        c.add_argument("--address", default=os.environ.get("COLOCATE_ADDRESS"),
                       help="the server's address file (or COLOCATE_ADDRESS)")
        if name == "stop":
            c.add_argument("--now", action="store_true", help="do not drain running tasks")
        else:
            c.add_argument("--json", action="store_true", help="print JSON")

    i = _sub(sub, "info", "show cores, spare cores, memory, GPUs and controls")
    i.add_argument("--config", help=CONFIG_HELP)
    i.add_argument("--json", action="store_true", help="print JSON")

    r = _sub(sub, "run", "run a YAML batch",
             "Run a YAML batch on a local world (or a running server with --address).\n\n"
             "Results go to the batch's output: directory (relative to the batch file), or\n"
             "runs/<name>-<time> beside it; --output overrides. The first Ctrl-C drains, the\n"
             "second stops at once; colocate run --resume RUN_DIR finishes the rest.")
    r.add_argument("batch", nargs="?", help="the batch file (optional with --resume RUN_DIR)")
    r.add_argument("-n", type=int, help="workers of the local world (default: spare cores)")
    r.add_argument("--resume", metavar="RUN_DIR", nargs="?", const=True,
                   help="run only the tasks with no result in RUN_DIR (default: the batch's "
                   "output directory)")
    r.add_argument("--output", metavar="DIR",
                   help="the run directory, relative to the current directory (overrides the "
                   "batch's output:)")
    r.add_argument("--address", default=os.environ.get("COLOCATE_ADDRESS"),
                   help="use a running server instead of a local world (or COLOCATE_ADDRESS)")
    r.add_argument("--config", help="configuration file for a local world (default: "
                   "built-in defaults, see colocate/defaults.yaml)")
    r.add_argument("--spare-cores", metavar="LIST",
                   help="cores a local world may use, e.g. 0-3, or all, or auto (default: "
                   "co_location.spare_cores)")
    r.add_argument("--no-progress", action="store_true", help="no progress display")

    b = _sub(sub, "submit", "send a YAML batch to a running server",
             "Send a YAML batch to a running server and return; a recorder in the background\n"
             "writes the run directory, and its log goes there too (submit-<time>.log).\n"
             "With --wait, stay and show progress instead.")
    b.add_argument("batch", nargs="?", help="the batch file (optional with --resume RUN_DIR)")
    b.add_argument("--address", default=os.environ.get("COLOCATE_ADDRESS"),
                   help="the server's address file (or COLOCATE_ADDRESS)")
    b.add_argument("--wait", action="store_true",
                   help="stay and show progress until every result is recorded (without it, "
                   "a recorder in the background writes the run directory)")
    b.add_argument("--resume", metavar="RUN_DIR", nargs="?", const=True,
                   help="send only the tasks with no result in RUN_DIR (default: the batch's "
                   "output directory)")
    b.add_argument("--output", metavar="DIR",
                   help="the run directory, relative to the current directory (overrides the "
                   "batch's output:)")
    b.add_argument("--no-progress", action="store_true", help="no progress display (--wait)")

    rep = _sub(sub, "report", "summarize a run directory: counts, failures, first rows")
    rep.add_argument("run_dir", help="a directory written by colocate run or submit")
    rep.add_argument("--plot", metavar="FILE.png", help="draw a timeline (needs colocate[plot])")
    rep.add_argument("--rows", type=int, default=5, metavar="N",
                     help="show the first N task rows (default: 5; 0 for none)")

    res = _sub(sub, "results", "print one row per task of a run directory",
               "Print one row per task of a run directory: its arguments, status, a short\n"
               "result (a value, or an array's dtype and shape), worker and time.\n"
               "In Python: colocate.batch.load(RUN_DIR), or load(RUN_DIR, frame=True) for a\n"
               "pandas DataFrame (pip install 'colocate[results]').")
    res.add_argument("run_dir", help="a directory written by colocate run or submit")
    res.add_argument("--format", choices=("table", "csv", "json"), default="table",
                     help="table (default), csv or json")
    res.add_argument("--columns", metavar="NAMES",
                     help="comma-separated columns to show, in order (default: task, the "
                     "arguments, status, result, worker, seconds); an unknown name lists the "
                     "columns there are")

    d = _sub(sub, "demo", "run the built-in demo batch on a local world")
    d.add_argument("-n", type=int, help="workers (default: spare cores)")
    d.add_argument("--spare-cores", metavar="LIST",
                   help="cores the world may use, e.g. 0-3, or all, or auto")
    d.add_argument("--output", metavar="DIR",
                   help="the run directory (default: runs/demo-<time> in the current directory)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"colocate {args.command}: error: {e}", file=sys.stderr)
        return EXIT_INVALID
    except ColocateError as e:
        print(f"colocate {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"colocate {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # e.g. `colocate results RUN_DIR | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _leave_reason(address_file: str | None, rank: int, size: int, what: str) -> None:
    """Write why this rank ends a local world beside its address file (``serve-error-*``)."""
    if not address_file:
        return
    path = os.path.join(os.path.dirname(os.path.abspath(address_file)), f"serve-error-{rank}")
    with contextlib.suppress(OSError), open(path, "w") as f:
        f.write(f"colocate serve: error on rank {rank} of {size}: {what}\n"
                "colocate serve: ending the whole world\n")


def _join(args: argparse.Namespace) -> int:
    import mpi4py
    mpi4py.rc.initialize = False   # a joined worker is not an MPI process: never start MPI
    mpi4py.rc.finalize = False
    from colocate import config
    from colocate.colocation.cpulist import parse_cpulist
    from colocate.worker.joined import join
    if not args.address:
        raise ConfigError("no world to join: expected --address FILE (the address file that "
                          "`colocate serve` wrote) or COLOCATE_ADDRESS")
    cfg = config.load(args.config)
    cores = None if args.cores is None else parse_cpulist(args.cores, key="--cores")
    return join(cfg, args.address, cores, args.config)


def _serve(args: argparse.Namespace) -> int:
    # Before MPI starts: a stop (Slurm's warning signal, a Ctrl-C) that comes while the world
    # is being set up is kept and acted on once it is, rather than killing this rank in the
    # middle of a collective and leaving the others hung in it.
    early = EarlySignals()
    from colocate import config
    from colocate.rank0 import owner as _owner
    cfg = config.load(args.config)
    try:
        owner = None if args.owner is None else _owner.parse(args.owner)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    from colocate.wire import mpi as comm
    from colocate.world.serve import serve
    try:
        return serve(cfg, args.address_file or cfg["server"]["address_file"],
                     early_signals=early, owner=owner)
    except Exception as e:
        _, rank, size = comm.world()
        if size < 2:
            raise
        # Returning would leave this rank in MPI's finalize and the others waiting for it in
        # set-up: the whole world ends here, with the reason.
        code = EXIT_INVALID if isinstance(e, ConfigError) else EXIT_FAILED
        what = str(e) if isinstance(e, ColocateError) else f"{type(e).__name__}: {e}"
        print(f"colocate serve: error on rank {rank} of {size}: {what}\n"
              "colocate serve: ending the whole world", file=sys.stderr, flush=True)
        if args.owner is not None:   # a local world: its owner reads this even when MPI_Abort
            _leave_reason(args.address_file, rank, size, what)   # beats the output forwarding
        if not isinstance(e, ColocateError):
            import traceback
            traceback.print_exc()
        comm.abort(code)
        raise


class EarlySignals:
    """SIGTERM and SIGINT received before a rank's own handlers are set: kept, in order.

    A second SIGINT still interrupts at once, as everywhere else in colocate.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._keep)

    def _keep(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and signal.SIGINT in self.received:
            raise KeyboardInterrupt
        self.received.append(signum)


def _need_address(args: argparse.Namespace) -> str:
    if not args.address:
        raise ConfigError("no server address: pass --address PATH (the file written by "
                          "`colocate serve --address-file PATH`) or set COLOCATE_ADDRESS")
    return args.address


def _stop(args: argparse.Namespace) -> int:
    from colocate.client.executor import Executor
    ex = Executor(address=_need_address(args))
    ex.stop_server(drain=not args.now)
    ex.shutdown()
    print(f"asked the server at {args.address} to stop"
          + ("" if args.now else " (running tasks finish first)"))
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from colocate.client.executor import Executor
    ex = Executor(address=_need_address(args))
    try:
        st = ex.status()
        del st["client"]   # this command's own client: not the world's state
    finally:
        ex.shutdown()
    if args.json:
        print(json.dumps(st, indent=1))
        return EXIT_OK
    print(render_status(st))
    return EXIT_OK


def render_status(st: dict) -> str:
    """The ``colocate status`` table."""
    lines = [f"server {st['address']}: up {st['uptime']:.0f} s, {len(st['workers'])} worker(s), "
             f"{st['clients_connected']} client(s), queued {st['queued']}, "
             f"retried {st['retried']}" + (", DRAINING" if st["draining"] else "")]
    lines.append(f"{'node':<16} {'rank':>4} {'cores':<10} {'state':<7} {'task':>8} {'ahead':>5} "
                 f"{'done':>7} {'failed':>6}")
    for w in st["workers"]:
        cores = ",".join(map(str, w["cores"]))
        task = "-" if w["current"] is None else str(w["current"])
        lines.append(f"{w['node']:<16} {w['rank']:>4} {cores:<10} {w['state']:<7} {task:>8} "
                     f"{w['ahead']:>5} {w['done']:>7} {w['failed']:>6}")
    for w in st["workers"]:
        if w.get("leased_to") is not None:
            lines.append(f"rank {w['rank']} is leased to client {w['leased_to']}: its lone tasks "
                         f"go there directly (counted in done/failed within a heartbeat)")
    for rank, why in st["lost"].items():
        lines.append(f"lost rank {rank}: {why}")
    for job in st.get("pool", ()):
        lines.append(f"pool job {job['id']}: {job['state']} on {','.join(job['nodes']) or '-'}, "
                     f"{job['cores']} core(s) joined, {job['tasks_done']} task(s) done")
    for node, budget in st["node_budget"].items():
        used = st["node_reserved"].get(node, 0)
        lines.append(f"memory for functions on {node}: {used / 2**30:.1f} of "
                     f"{budget / 2**30:.1f} GiB reserved")
    return "\n".join(lines)


def _info(args: argparse.Namespace) -> int:
    from colocate import config
    from colocate.colocation.info import collect, render
    cfg = config.load(args.config)
    report = collect(cfg["co_location"], cfg["guard"], own_pids=[os.getpid()])
    print(json.dumps(report, indent=1) if args.json else render(report))
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from colocate.batch.commands import cmd_run
    from colocate.client.executor import Executor, _launched_by_mpi
    if args.address and args.n is not None:
        raise ConfigError(f"-n {args.n} sizes a local world, but --address names a running "
                          "server with its own workers; drop one of them")
    if args.n is not None and args.n < 1:
        raise ConfigError(f"-n must be at least 1, found {args.n}")
    progress = False if args.no_progress else None
    if args.spare_cores:
        os.environ["COLOCATE_CO_LOCATION_SPARE_CORES"] = args.spare_cores   # the world's too
    if not args.address and _launched_by_mpi():
        return _run_in_this_world(args, progress)

    planned: dict[str, Any] = {}

    def plan() -> None:   # before the run directory is made: a refusal leaves nothing behind
        planned["workers"] = plan_workers(args.n, args.config)

    def factory(n: int | None) -> Executor:
        if args.address:
            return Executor(address=args.address)
        return Executor(max_workers=planned["workers"], config=args.config)

    return cmd_run(args.batch, factory, resume=args.resume, n=args.n, progress=progress,
                   local_world=not args.address, drain_grace=_drain_grace(args.config),
                   output=args.output, before_start=None if args.address else plan)


def plan_workers(n: int | None, config_file: str | None = None, stream: Any = None,
                 plan: dict | None = None) -> int:
    """The workers of a local world, said in one line (and one warning if they share cores).

    ``n``: the ``-n`` asked for (None: one per spare core). Returns the number to start;
    ``plan``, if given, gets ``cores`` (the spare cores, as a list like ``0-3``).
    """
    from colocate import config
    from colocate.colocation.cpulist import format_cpulist
    from colocate.colocation.info import world_plan
    from colocate.colocation.spare import discover_spare_cores
    err = stream if stream is not None else sys.stderr
    found = discover_spare_cores(config.load(config_file)["co_location"], own_pids=[os.getpid()])
    spare = found.cores
    if not spare:
        raise ConfigError(f"no spare core found for a local world ({found.detail}); pass "
                          "--spare-cores LIST to name the cores it may use (e.g. 0-3, or all "
                          "for every allowed core), or see `colocate info`",
                          key="co_location.spare_cores")
    workers = n if n is not None else len(spare)
    if plan is not None:
        plan["cores"] = format_cpulist(spare)
    print(f"colocate: local world: {world_plan(spare, workers)}", file=err, flush=True)
    if workers > len(spare):
        others = format_cpulist(found.host_cores) or "none"
        print(f"colocate: warning: -n {workers} asks for {workers} workers, but only "
              f"{len(spare)} spare core(s) were found ({format_cpulist(spare)}); the other "
              f"allowed core(s) ({others}) are not spare: {found.detail}. Workers that share a "
              f"core each run slower. Use -n {len(spare)} for one worker per spare core, or "
              f"--spare-cores LIST to name the cores colocate may use (all: every allowed core)",
              file=err, flush=True)
    return workers


def _drain_grace(config_file: str | None) -> float:
    """``server.drain_grace``: how long a drain waits for running tasks."""
    from colocate import config
    return config.load(config_file)["server"]["drain_grace"]


def _run_in_this_world(args: argparse.Namespace, progress: bool | None) -> int:
    """``mpiexec -n N colocate run B.yaml``: rank 0 runs the batch, the other ranks serve it."""
    import contextlib

    from mpi4py import MPI

    from colocate.batch.commands import cmd_run
    from colocate.world.embed import embed
    comm = MPI.COMM_WORLD
    if comm.Get_size() < 3:
        raise ConfigError(f"found {comm.Get_size()} ranks, needs at least 3 under mpiexec: one "
                          "runs the batch, one schedules, the others run tasks (or run "
                          "`colocate run` without mpiexec to start a local world)")
    with embed(comm, config=args.config) as ex:
        if ex is None:
            return EXIT_OK
        return cmd_run(args.batch, lambda n: contextlib.nullcontext(ex), resume=args.resume,
                       progress=progress, output=args.output)


def _submit(args: argparse.Namespace) -> int:
    from colocate.batch.commands import cmd_run
    from colocate.client.executor import Executor
    address = _need_address(args)
    if not args.wait:
        return _submit_detached(args, address)
    progress = False if args.no_progress else None
    return cmd_run(args.batch, lambda n: Executor(address=address), resume=args.resume,
                   progress=progress, drain_grace=_drain_grace(None), output=args.output)


def _submit_detached(args: argparse.Namespace, address: str) -> int:
    """Check the batch and the server now, then leave the run to a recorder in the background.

    The recorder is ``colocate submit --wait`` in a session of its own: it writes the run
    directory as results arrive and survives this shell. The run directory is chosen here and
    handed to it, so that its log (``submit-<time>.log``) can live inside it from the start.
    """
    import subprocess
    import time

    from colocate.batch.commands import plan_run
    from colocate.wire import address as addr
    notes: list[str] = []
    spec, run_dir, resuming = plan_run(args.batch, args.resume, args.output, notes)
    addr.read(address)   # fail now, not in the background, if there is no server
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the run directory {run_dir} ({e.strerror}); pass "
                          "--output DIR to put it elsewhere") from None
    log_path = run_dir / f"submit-{time.strftime('%Y%m%d-%H%M%S')}.log"
    cmd = [sys.executable, "-m", "colocate", "submit", "--address", address, "--wait",
           "--no-progress"]
    if resuming:
        cmd += ([args.batch] if args.batch else []) + ["--resume", str(run_dir)]
    else:
        cmd += [args.batch, "--output", str(run_dir.absolute())]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    for note in notes:
        print(f"colocate: note: {note}")
    print(f"submitted batch {spec.name!r} ({len(spec.tasks)} tasks) to {address}\n"
          f"  results: {run_dir}\n  recorder: pid {proc.pid}, log {log_path}\n"
          f"  follow with: colocate status --address {address}; colocate report {run_dir}")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from colocate.batch.commands import cmd_report
    return cmd_report(args.run_dir, args.plot, rows=args.rows)


def _results(args: argparse.Namespace) -> int:
    from colocate.batch.commands import cmd_results
    columns = None if args.columns is None else [c.strip() for c in args.columns.split(",")
                                                 if c.strip()]
    return cmd_results(args.run_dir, args.format, columns)


def _demo(args: argparse.Namespace) -> int:
    import time

    from colocate.batch.commands import cmd_run
    from colocate.client.executor import Executor
    from colocate.demo import demo_batch_path
    if args.spare_cores:
        os.environ["COLOCATE_CO_LOCATION_SPARE_CORES"] = args.spare_cores
    # The demo's batch file lives in the installed package: its run goes to the current
    # directory instead of beside it.
    output = args.output or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    used: dict[str, Any] = {}

    def plan() -> None:
        used["planned"] = plan_workers(args.n, plan=used)

    def factory(n: int | None) -> Executor:
        ex = Executor(max_workers=used["planned"])
        used["workers"] = used["planned"]   # the world is up
        return ex

    code = cmd_run(demo_batch_path(), factory, resume=None, n=args.n, local_world=True,
                   output=output, before_start=plan)
    if "workers" in used:
        print(f"colocate demo: ran on a local world of {used['workers']} worker(s) on core(s) "
              f"{used['cores']}; results in {output}\n"
              f"  see them with: colocate results {output}\n"
              f"  or in Python:  colocate.batch.load({output!r}, frame=True)", file=sys.stderr,
              flush=True)
    return code


_COMMANDS = {"serve": _serve, "join": _join, "stop": _stop, "status": _status, "info": _info,
             "run": _run, "submit": _submit, "report": _report, "results": _results,
             "demo": _demo}
