"""Soak: many tasks with injected failures through one world; none lost, doubled or leaked.

Run: ``python bench/soak.py [--tasks 100000] [--workers 2] [--seed 1] [--json OUT]``
(about 5-8 minutes for the default 100,000 tasks on 2 loaded cores; exit code 0 when every check
passes, 1 when one fails, 2 on a usage or set-up error).

It starts its own world (``mpiexec -n WORKERS+1 colocate serve``, tagged so that its processes
are found and, if need be, killed without touching anyone else's), connects one client, and
submits the tasks from a thread while the main thread waits, bounded by ``--deadline``. The task
kinds are drawn, with exact counts, from a seeded shuffle:

=======  ==========================================  ========================================
kind     what the task does                          what its future must hold
=======  ==========================================  ========================================
noop     returns its own id                          that id
nap      sleeps 1-20 ms, returns its id              that id
raise    raises ``ValueError("injected failure i")``  that ValueError (remote traceback attached)
crash    ``os._exit(code)``, code 1-125 per task     ``WorkerCrashed`` with that ``exitcode``
hang     sleeps 60 s under ``timeout=--hang-timeout``  ``TaskTimeout``
=======  ==========================================  ========================================

Every task first appends its id to a per-executor run log (``SOAK_RUNLOG``), so the soak also
sees a task that ran twice or never, not only one whose result arrived twice. Every task runs
with ``retries=0``; quick tasks carry a 30 s timeout that they must never hit.

Checks (all must pass): submitted = succeeded + failed, with each failure of the injected type;
every id returned once, by its own task; every task executed once (run log); every future's
``info`` says 1 attempt on a worker rank; the server's done/failed counts agree; no leaked
processes (at most one executor child per worker rank in every sample, exactly one once idle, no
zombie seen twice in a row, the ranks unchanged, nothing left after the stop, the world exits
0 without signals); no leaked file descriptors (each rank's open fds after warm-up equal those at
the end, both with one client; rank 0's with a fresh client after the soak's one left); rank-0
RSS flat (end within ``--rss-slack-pct`` % and ``--rss-slack-mib`` MiB of the value after
warm-up, the first sample once ``--warmup-frac`` of the tasks are done); no error or traceback
in the world's log.

Costs that set the run time: a quick task costs ~0.2-0.3 ms of the pipeline (two workers do
~4,000 no-ops/s); an executor restart after a crash or timeout ~0.1-0.3 s, plus the timeout
itself; the naps add their sleep. The default mix keeps crashes and timeouts to a few hundred.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import datetime
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import cloudpickle
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _world import START_TIMEOUT, bench_world, machine, rss, write_json  # noqa: E402

from colocate.testing import crash as crash_now  # noqa: E402
from colocate.testing import tagged_processes as tagged  # noqa: E402
from colocate.testing import wait_gone  # noqa: E402

# The task functions below must reach the executor by value (it cannot import this script).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "soak.json"
MiB = 1 << 20

KINDS = ("noop", "nap", "raise", "crash", "hang")
EXPECTED = {"noop": "ok", "nap": "ok", "raise": "ValueError", "crash": "WorkerCrashed",
            "hang": "TaskTimeout"}
QUICK_TIMEOUT = 30.0   # quick tasks never get near it; hitting it is a failure of the check
HANG_SECONDS = 60.0    # how long a hang task would sleep if its timeout did not fire
WARMUP = {"noop": 200, "raise": 2, "crash": 2, "hang": 2}   # before the start snapshot


# ----- the tasks (run in the executor child) ------------------------------------------------------
def _mark(i: int) -> None:
    """Append ``i`` to this executor's run log (one file per process; O_APPEND)."""
    d = os.environ.get("SOAK_RUNLOG")
    if d:
        fd = os.open(os.path.join(d, f"{os.getpid()}.log"),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"%d\n" % i)
        finally:
            os.close(fd)


def noop(i: int) -> int:
    _mark(i)
    return i


def nap(i: int, seconds: float) -> int:
    _mark(i)
    time.sleep(seconds)
    return i


def fail(i: int) -> None:
    _mark(i)
    raise ValueError(f"injected failure {i}")


def crash(i: int, code: int) -> None:
    _mark(i)
    crash_now(code)


def hang(i: int) -> None:
    _mark(i)
    time.sleep(HANG_SECONDS)


# ----- the plan -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mix:
    """Fractions of the tasks per failure kind (the rest are no-ops)."""

    nap: float = 0.10
    raise_: float = 0.01
    crash: float = 0.002
    hang: float = 0.0015

    def counts(self, n: int) -> dict[str, int]:
        """Exact counts per kind for ``n`` tasks (at least one of each kind asked for)."""
        out = {}
        for kind, frac in (("nap", self.nap), ("raise", self.raise_), ("crash", self.crash),
                           ("hang", self.hang)):
            out[kind] = 0 if frac <= 0 else max(1, round(n * frac))
        out["noop"] = n - sum(out.values())
        if out["noop"] < 0:
            raise ValueError(f"the failure fractions add up to more than {n} tasks")
        return out


@dataclass
class Plan:
    kinds: bytearray             # index into KINDS per task id
    codes: dict[int, int]        # crash tasks: exit code
    naps: dict[int, float]       # nap tasks: seconds
    counts: dict[str, int]


def make_plan(n: int, mix: Mix, seed: int) -> Plan:
    """Which task does what: exact counts per kind, in a seeded random order."""
    rng = random.Random(seed)
    counts = mix.counts(n)
    order = [KINDS.index(k) for k in KINDS for _ in range(counts[k])]
    rng.shuffle(order)
    kinds = bytearray(order)
    codes = {i: rng.randrange(1, 126) for i in range(n) if KINDS[kinds[i]] == "crash"}
    naps = {i: rng.uniform(0.001, 0.020) for i in range(n) if KINDS[kinds[i]] == "nap"}
    return Plan(kinds, codes, naps, counts)


# ----- results ------------------------------------------------------------------------------------
class Tally:
    """Outcomes recorded by the futures' callbacks (connection thread); futures are not kept."""

    def __init__(self, plan: Plan, worker_ranks: set[int]) -> None:
        self.plan = plan
        self.n = len(plan.kinds)
        self.worker_ranks = worker_ranks
        self.lock = threading.Lock()
        self.completed = bytearray(self.n)    # callbacks per task id
        self.returned = bytearray(self.n)     # times each id came back as a result value
        self.finished = 0
        self.submitted = 0
        self.got: dict[str, collections.Counter] = {k: collections.Counter() for k in KINDS}
        self.unexpected: list[dict] = []
        self.unexpected_count = 0
        self.wrong_value = 0
        self.bad_info = 0
        self.by_rank: collections.Counter = collections.Counter()
        self.callback_errors: list[str] = []
        self.pending: dict[int, cf.Future] = {}
        self.all_done = threading.Event()

    def add(self, i: int, fut: cf.Future) -> None:
        with self.lock:
            self.pending[i] = fut
            self.submitted += 1
        fut.add_done_callback(lambda f, i=i: self._done(i, f))

    def _done(self, i: int, fut: cf.Future) -> None:
        try:
            self._record(i, fut)
        except BaseException:   # noqa: BLE001 - a callback error must show in the report
            with self.lock:
                self.callback_errors.append(traceback.format_exc(limit=3))

    def _record(self, i: int, fut: cf.Future) -> None:
        kind = KINDS[self.plan.kinds[i]]
        exc = fut.exception(0)
        value = None if exc is not None else fut.result(0)
        problem = ""
        if exc is None:
            got = "ok"
            if value != i:
                problem = f"returned {value!r}, not its id"
        else:
            got = type(exc).__name__
            if kind == "raise" and got == "ValueError" and str(exc) != f"injected failure {i}":
                problem = f"wrong message {str(exc)[:80]!r}"
            if kind == "crash" and got == "WorkerCrashed" and (
                    exc.exitcode != self.plan.codes[i]):
                problem = f"exitcode {exc.exitcode}, expected {self.plan.codes[i]}"
        info = getattr(fut, "info", None)
        info_ok = info is not None and info.attempts == 1 and info.rank in self.worker_ranks
        with self.lock:
            self.pending.pop(i, None)
            self.completed[i] = min(255, self.completed[i] + 1)
            if isinstance(value, int) and 0 <= value < self.n:
                self.returned[value] = min(255, self.returned[value] + 1)
            if exc is None and value != i:
                self.wrong_value += 1
            self.got[kind][got] += 1
            if got != EXPECTED[kind] or problem:
                self.unexpected_count += 1
                if len(self.unexpected) < 20:
                    self.unexpected.append({"id": i, "kind": kind, "got": got,
                                            "problem": problem or str(exc)[:300]})
            if not info_ok:
                self.bad_info += 1
            if info is not None:
                self.by_rank[info.rank] += 1
            self.finished += 1
            if self.finished == self.n:
                self.all_done.set()


def read_runlog(directory: Path, n: int) -> dict:
    """How often each task id was executed, from the executors' run logs."""
    runs = bytearray(n)
    junk = warmup = 0
    files = sorted(directory.glob("*.log"))
    for path in files:
        for line in path.read_bytes().splitlines():
            try:
                i = int(line)
            except ValueError:
                junk += 1
                continue
            if 0 <= i < n:
                runs[i] = min(255, runs[i] + 1)
            elif i == -1:
                warmup += 1
            else:
                junk += 1
    return {"executors_logged": len(files), "never": runs.count(0),
            "twice_or_more": n - runs.count(0) - runs.count(1), "warmup_lines": warmup,
            "junk_lines": junk}


# ----- process, fd and memory watch ---------------------------------------------------------------
def fds(procs: dict[int, psutil.Process]) -> dict[int, int | None]:
    out = {}
    for rank, p in procs.items():
        try:
            out[rank] = p.num_fds()
        except psutil.Error:
            out[rank] = None
    return out


def children(proc: psutil.Process) -> tuple[list[int], list[int]]:
    """(live executor children, zombie children) of a rank, as pids."""
    live, zombies = [], []
    try:
        kids = proc.children()
    except psutil.Error:
        return live, zombies
    for c in kids:
        try:
            if c.status() == psutil.STATUS_ZOMBIE:
                zombies.append(c.pid)
            elif "colocate.child" in c.cmdline():
                live.append(c.pid)
        except psutil.Error:
            continue
    return live, zombies


class Monitor:
    """Samples every ``interval`` s: rank RSS, executor children, zombies, load."""

    def __init__(self, ranks: dict[int, psutil.Process], tally: Tally, interval: float) -> None:
        self.ranks = ranks
        self.tally = tally
        self.interval = interval
        self.t0 = time.monotonic()
        self.samples: list[dict] = []
        self.over = 0                  # samples with more than one child under a worker rank
        self.under = 0                 # samples with a worker rank between children (restart)
        self.zombies_seen: set[int] = set()
        self.zombies_persistent: set[int] = set()
        self._last_zombies: set[int] = set()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="soak-monitor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)

    def sample(self) -> dict:
        per_rank = {}
        zombies: set[int] = set()
        for rank, p in self.ranks.items():
            live, dead = children(p)
            per_rank[rank] = len(live)
            zombies.update(dead)
        workers = [r for r in self.ranks if r != 0]
        if any(per_rank[r] > 1 for r in workers) or per_rank.get(0, 0):
            self.over += 1
        if any(per_rank[r] < 1 for r in workers):
            self.under += 1
        self.zombies_seen |= zombies
        self.zombies_persistent |= zombies & self._last_zombies
        self._last_zombies = zombies
        s = {"t": round(time.monotonic() - self.t0, 2), "done": self.tally.finished,
             "rss": {r: rss(p) for r, p in self.ranks.items()},
             "children": sum(per_rank[r] for r in workers), "zombies": len(zombies),
             "load1": os.getloadavg()[0]}
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


# ----- the run ------------------------------------------------------------------------------------
def submit_all(ex, plan: Plan, tally: Tally, errors: list[str], hang_timeout: float) -> None:
    """Submit every planned task (the submitting thread; submit() waits under backpressure)."""
    quick = ex.options(timeout=QUICK_TIMEOUT, retries=0)
    slow = ex.options(timeout=hang_timeout, retries=0)
    try:
        for i, k in enumerate(plan.kinds):
            kind = KINDS[k]
            if kind == "noop":
                fut = quick.submit(noop, i)
            elif kind == "nap":
                fut = quick.submit(nap, i, plan.naps[i])
            elif kind == "raise":
                fut = quick.submit(fail, i)
            elif kind == "crash":
                fut = quick.submit(crash, i, plan.codes[i])
            else:
                fut = slow.submit(hang, i)
            tally.add(i, fut)
    except BaseException as e:   # noqa: BLE001 - reported as a failed run
        errors.append(f"submitting stopped: {type(e).__name__}: {e}")


def warm_up(ex, hang_timeout: float, timeout: float) -> dict:
    """A few tasks of every kind before the start snapshot; their outcomes are checked too."""
    quick = ex.options(timeout=QUICK_TIMEOUT, retries=0)
    futs = [("ok", quick.submit(noop, -1)) for _ in range(WARMUP["noop"])]
    futs += [("ValueError", quick.submit(fail, -1)) for _ in range(WARMUP["raise"])]
    futs += [("WorkerCrashed", quick.submit(crash, -1, 3)) for _ in range(WARMUP["crash"])]
    futs += [("TaskTimeout", ex.options(timeout=hang_timeout, retries=0).submit(hang, -1))
             for _ in range(WARMUP["hang"])]
    done, not_done = cf.wait([f for _, f in futs], timeout)
    got = collections.Counter()
    wrong = 0
    for expected, f in futs:
        if f in not_done:
            continue
        e = f.exception(0)
        label = "ok" if e is None else type(e).__name__
        got[label] += 1
        wrong += label != expected
    return {"tasks": len(futs), "got": dict(got), "unexpected": wrong,
            "unfinished": len(not_done)}


def wait_idle(ex, ranks: dict[int, psutil.Process], workers: int, timeout: float) -> dict:
    """Wait (bounded) until nothing is queued or running and every worker has its child."""
    deadline = time.monotonic() + timeout
    while True:
        st = ex.status()
        kids = sum(len(children(p)[0]) for r, p in ranks.items() if r != 0)
        if (st["queued"] == 0 and st["running"] == 0 and kids == workers) or (
                time.monotonic() > deadline):
            return st


def log_problems(text: str) -> list[str]:
    """Lines of the world's log that report an error (crash/timeout warnings are expected)."""
    return [ln for ln in text.splitlines()
            if "ERROR" in ln or "Traceback" in ln or "CRITICAL" in ln][:20]


def run(args: argparse.Namespace) -> dict:
    import colocate

    mix = Mix(args.nap, args.raise_frac, args.crash, args.hang)
    plan = make_plan(args.tasks, mix, args.seed)
    work = Path(tempfile.mkdtemp(prefix="colocate-soak-"))
    runlog = work / "runlog"
    runlog.mkdir()
    result: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "tasks": args.tasks, "workers": args.workers, "seed": args.seed,
        "mix": {k: v for k, v in asdict(mix).items()}, "injected": plan.counts,
        "hang_timeout_s": args.hang_timeout, "quick_timeout_s": QUICK_TIMEOUT,
        "machine": machine(), "errors": [],
    }
    print(f"soak: {args.tasks:,} tasks on {args.workers} workers, seed {args.seed}; "
          f"injected {plan.counts}; work dir {work}", file=sys.stderr)
    world = bench_world(args.workers + 1, work, {"SOAK_RUNLOG": str(runlog)})
    ex = None
    monitor = None
    ok_run = False
    try:
        world.wait_ready(START_TIMEOUT)
        ranks = world.ranks_by_number()
        if sorted(ranks) != list(range(args.workers + 1)):
            raise RuntimeError(f"found ranks {sorted(ranks)} of the world, expected "
                               f"0-{args.workers}: {world.log(tail=40)}")
        worker_ranks = set(ranks) - {0}
        ex = colocate.Executor(address=world.address)
        result["max_inflight"] = ex.status()["client"]["max_inflight"]
        tally = Tally(plan, worker_ranks)
        monitor = Monitor(ranks, tally, args.sample_every)
        rss_start = rss(ranks[0])

        # Warm-up tasks log id -1 in the run log (counted apart).
        result["warmup"] = warm_up(ex, args.hang_timeout, 120.0)
        wait_idle(ex, ranks, args.workers, 30.0)
        start_snap = {"fds": fds(ranks), "clients": ex.status()["clients_connected"],
                      "pids": {r: p.pid for r, p in ranks.items()},
                      "tagged": len(tagged(world.tag))}
        monitor.start()
        first = monitor.sample()

        t0 = time.monotonic()
        errors: list[str] = []
        submitter = threading.Thread(target=submit_all, name="soak-submit", daemon=True,
                                     args=(ex, plan, tally, errors, args.hang_timeout))
        submitter.start()
        deadline = t0 + args.deadline
        next_report = t0 + args.progress_every
        while not tally.all_done.wait(1.0):
            now = time.monotonic()
            if errors and not submitter.is_alive() and tally.finished == tally.submitted:
                break
            if now > deadline:
                break
            if now >= next_report:
                next_report += args.progress_every
                last = monitor.samples[-1] if monitor.samples else first
                fails = sum(v for k in KINDS for g, v in tally.got[k].items() if g != "ok")
                print(f"[{now - t0:6.0f} s] {tally.finished:,}/{args.tasks:,} done "
                      f"({tally.finished / (now - t0):,.0f}/s), {fails:,} failed, "
                      f"rank-0 RSS {last['rss'][0] / MiB:.1f} MiB, "
                      f"children {last['children']}, load {last['load1']:.1f}",
                      file=sys.stderr)
        elapsed = time.monotonic() - t0
        result["elapsed_s"] = round(elapsed, 1)
        result["rate_per_s"] = round(tally.finished / elapsed, 1)
        result["errors"] += errors
        if not tally.all_done.is_set():
            with tally.lock:
                stuck = sorted(tally.pending)[:20]
            result["errors"].append(
                f"not finished after {elapsed:.0f} s (--deadline {args.deadline:g}): "
                f"{tally.submitted - tally.finished} of {tally.submitted} submitted tasks "
                f"outstanding, e.g. {[(i, KINDS[plan.kinds[i]]) for i in stuck]}; "
                f"server status {ex.status(timeout=10)}")
        else:
            ok_run = True

        end_status = wait_idle(ex, ranks, args.workers, 30.0)
        monitor.stop()
        end_sample = monitor.sample()
        end_snap = {"fds": fds(ranks), "clients": end_status["clients_connected"],
                    "pids": {r: p.pid for r, p in ranks.items() if p.is_running()},
                    "tagged": len(tagged(world.tag))}
        ex.shutdown(wait=True)
        ex = None
        # A fresh client once the soak's has gone: rank 0 must be back where it was.
        with colocate.Executor(address=world.address) as probe:
            t_probe = time.monotonic() + 10
            while probe.status()["clients_connected"] != 1 and time.monotonic() < t_probe:
                time.sleep(0.1)
            after_snap = {"fds": fds(ranks), "clients": probe.status()["clients_connected"]}
            rss_after_client = rss(ranks[0])

        result["counts"] = counts_of(tally)
        result["runlog"] = read_runlog(runlog, args.tasks)
        result["server"] = {
            "done": sum(w["done"] for w in end_status["workers"]),
            "failed": sum(w["failed"] for w in end_status["workers"]),
            "retried": end_status["retried"], "queued": end_status["queued"],
            "running": end_status["running"], "lost": end_status["lost"]}
        result["by_rank"] = {str(r): n for r, n in sorted(tally.by_rank.items())}
        result["unexpected"] = tally.unexpected
        result["callback_errors"] = tally.callback_errors[:5]
        result["fds"] = {"after_warmup": start_snap["fds"], "end": end_snap["fds"],
                         "fresh_client_after": after_snap["fds"],
                         "clients": [start_snap["clients"], end_snap["clients"],
                                     after_snap["clients"]]}
        warm_mark = args.warmup_frac * args.tasks
        warm = next((s for s in monitor.samples if s["done"] >= warm_mark), end_sample)
        r0 = [s["rss"][0] for s in monitor.samples if s["rss"][0]]
        result["memory"] = {
            "rank0_start": rss_start, "rank0_after_warmup": warm["rss"][0],
            "warmup_at_done": warm["done"], "rank0_peak": max(r0),
            "rank0_end": end_sample["rss"][0], "rank0_after_client_left": rss_after_client,
            "workers_start": {str(r): first["rss"][r] for r in worker_ranks},
            "workers_end": {str(r): end_sample["rss"][r] for r in worker_ranks},
            "slack_pct": args.rss_slack_pct, "slack_mib": args.rss_slack_mib,
            "samples": [{"t": s["t"], "done": s["done"], "rank0": s["rss"][0],
                         "children": s["children"], "zombies": s["zombies"],
                         "load1": s["load1"]} for s in monitor.samples],
        }
        result["processes"] = {
            "samples": len(monitor.samples), "over": monitor.over, "between_restarts":
            monitor.under, "max_children": max(s["children"] for s in monitor.samples),
            "children_end": end_sample["children"], "zombies_seen": len(monitor.zombies_seen),
            "zombies_persistent": sorted(monitor.zombies_persistent),
            "ranks_unchanged": start_snap["pids"] == end_snap["pids"],
            "tagged_start": start_snap["tagged"], "tagged_end": end_snap["tagged"]}
    except BaseException as e:
        result["errors"].append(f"{type(e).__name__}: {e}")
        if not isinstance(e, Exception):
            raise
    finally:
        if monitor is not None and monitor.thread.is_alive():
            monitor.stop()
        if ex is not None:
            try:
                ex.shutdown(wait=False, cancel_futures=True)
            except Exception:   # noqa: BLE001 - the world is stopped below regardless
                pass
        code = world.stop(sweep=True)
        left = wait_gone(world.tag)
        result["stop"] = {"exit_code": code, "killed": world.killed,
                          "left_after_stop": [p.pid for p in left]}
        result["world_log_problems"] = log_problems(world.log(tail=100000))
        result["checks"] = checks(result, ok_run)
        result["ok"] = bool(result["checks"]) and all(c["pass"] for c in result["checks"])
        if result["ok"] and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            result["work_dir"] = str(work)
    return result


def counts_of(tally: Tally) -> dict:
    failed = collections.Counter()
    succeeded = 0
    for kind in KINDS:
        for got, n in tally.got[kind].items():
            if got == "ok":
                succeeded += n
            else:
                failed[got] += n
    returned_twice = sum(1 for c in tally.returned if c > 1)
    return {"submitted": tally.submitted, "finished": tally.finished, "succeeded": succeeded,
            "failed": dict(failed), "by_kind": {k: dict(v) for k, v in tally.got.items()},
            "unexpected": tally.unexpected_count, "wrong_value": tally.wrong_value,
            "returned_twice": returned_twice,
            "completed_twice": sum(1 for c in tally.completed if c > 1),
            "never_completed": tally.completed.count(0), "bad_info": tally.bad_info}


def checks(r: dict, finished: bool) -> list[dict]:
    """The invariants, each with a pass flag and the numbers behind it."""
    out: list[dict] = []

    def check(name: str, ok: bool, detail: str) -> None:
        out.append({"name": name, "pass": bool(ok), "detail": detail})

    check("run finished", finished and not r["errors"],
          "; ".join(r["errors"]) or f"{r['tasks']:,} tasks in {r.get('elapsed_s', 0):g} s")
    wu = r.get("warmup")
    if wu:
        check("warm-up outcomes", wu["unexpected"] == 0 and wu["unfinished"] == 0,
              f"{wu['tasks']} tasks: {wu['got']}")
    c = r.get("counts")
    if c is None:
        return out
    failed = sum(c["failed"].values())
    check("counts add up", c["submitted"] == r["tasks"] == c["succeeded"] + failed
          and c["never_completed"] == 0 and c["completed_twice"] == 0,
          f"submitted {c['submitted']:,} = succeeded {c['succeeded']:,} + failed {failed:,} "
          f"{c['failed']}; never completed {c['never_completed']}, "
          f"completed twice {c['completed_twice']}")
    check("failures as injected", c["unexpected"] == 0,
          f"{c['unexpected']} outcomes differ from the injected kind"
          + (f", e.g. {r['unexpected'][:3]}" if r["unexpected"] else ""))
    check("no duplicate results", c["returned_twice"] == 0 and c["wrong_value"] == 0,
          f"ids returned twice {c['returned_twice']}, results not their own id "
          f"{c['wrong_value']}")
    rl = r["runlog"]
    check("each task executed once", rl["never"] == 0 and rl["twice_or_more"] == 0
          and rl["junk_lines"] == 0,
          f"never {rl['never']}, twice or more {rl['twice_or_more']}, over "
          f"{rl['executors_logged']} executor processes")
    check("task info", c["bad_info"] == 0 and not r["callback_errors"],
          f"{c['bad_info']} futures without 1 attempt on a worker rank"
          + (f"; callback errors: {r['callback_errors'][:1]}" if r["callback_errors"] else ""))
    s = r["server"]
    wu_ok = r["warmup"]["got"].get("ok", 0)
    wu_failed = r["warmup"]["tasks"] - wu_ok
    check("server counts agree", s["done"] == c["succeeded"] + wu_ok
          and s["failed"] == failed + wu_failed and s["retried"] == 0 and not s["lost"],
          f"server done {s['done']:,} failed {s['failed']:,} retried {s['retried']} lost "
          f"{len(s['lost'])} (client incl. warm-up: {c['succeeded'] + wu_ok:,} / "
          f"{failed + wu_failed:,})")
    p = r["processes"]
    st = r["stop"]
    check("no leaked processes", p["over"] == 0 and p["children_end"] == r["workers"]
          and not p["zombies_persistent"] and p["ranks_unchanged"]
          and p["tagged_start"] == p["tagged_end"] and not st["killed"]
          and not st["left_after_stop"] and st["exit_code"] == 0,
          f"children max {p['max_children']} (samples over {p['over']}, mid-restart "
          f"{p['between_restarts']}/{p['samples']}), at end {p['children_end']}, "
          f"zombies persistent {len(p['zombies_persistent'])} (seen {p['zombies_seen']}), "
          f"world processes {p['tagged_start']}->{p['tagged_end']}, after stop "
          f"{len(st['left_after_stop'])}, killed {len(st['killed'])}, exit {st['exit_code']}")
    f = r["fds"]
    check("no leaked fds", f["after_warmup"] == f["end"]
          and f["fresh_client_after"][0] == f["after_warmup"][0],
          f"per rank after warm-up {f['after_warmup']}, end {f['end']}, rank 0 with a fresh "
          f"client {f['fresh_client_after'][0]}")
    m = r["memory"]
    growth = m["rank0_end"] - m["rank0_after_warmup"]
    allowed = min(m["rank0_after_warmup"] * m["slack_pct"] / 100, m["slack_mib"] * MiB)
    tasks_after = r["tasks"] - m["warmup_at_done"]
    check("rank-0 memory flat", growth <= allowed,
          f"start {m['rank0_start'] / MiB:.1f} MiB, after warm-up "
          f"{m['rank0_after_warmup'] / MiB:.1f}, peak {m['rank0_peak'] / MiB:.1f}, end "
          f"{m['rank0_end'] / MiB:.1f} ({growth / MiB:+.2f} MiB, allowed "
          f"{allowed / MiB:.2f}; {growth / max(1, tasks_after):+.1f} B/task over "
          f"{tasks_after:,} tasks)")
    check("world log clean", not r["world_log_problems"],
          f"{len(r['world_log_problems'])} error lines"
          + (f", e.g. {r['world_log_problems'][0][:160]}" if r["world_log_problems"] else ""))
    return out


def table(r: dict) -> str:
    lines = [f"soak: {r['tasks']:,} tasks on {r['workers']} workers (seed {r['seed']}), "
             f"{r.get('elapsed_s', 0):g} s, {r.get('rate_per_s', 0):,.0f} tasks/s, "
             f"max_inflight {r.get('max_inflight')}, load avg {r['machine']['loadavg'][0]:.1f}"]
    c = r.get("counts")
    if c:
        lines.append(f"{'kind':<8}{'injected':>10}  {'expected':<15}{'got':<40}")
        for kind in KINDS:
            got = ", ".join(f"{g} {n:,}" for g, n in sorted(c["by_kind"][kind].items()))
            lines.append(f"{kind:<8}{r['injected'][kind]:>10,}  {EXPECTED[kind]:<15}{got:<40}")
        lines.append(f"{'total':<8}{r['tasks']:>10,}  succeeded {c['succeeded']:,}, failed "
                     f"{sum(c['failed'].values()):,} {c['failed']}")
        m = r["memory"]
        lines.append(f"rank-0 RSS MiB: start {m['rank0_start'] / MiB:.1f}, after warm-up "
                     f"{m['rank0_after_warmup'] / MiB:.1f}, peak {m['rank0_peak'] / MiB:.1f}, "
                     f"end {m['rank0_end'] / MiB:.1f}, after the client left "
                     f"{m['rank0_after_client_left'] / MiB:.1f}; workers "
                     + ", ".join(f"rank {k} {m['workers_start'][k] / MiB:.1f}->"
                                 f"{m['workers_end'][k] / MiB:.1f}" for k in m["workers_end"]))
    lines.append("")
    lines.append(f"{'check':<26}{'':<6}detail")
    for ch in r["checks"]:
        lines.append(f"{ch['name']:<26}{'PASS' if ch['pass'] else 'FAIL':<6}{ch['detail']}")
    lines.append(f"\n{'ALL CHECKS PASS' if r['ok'] else 'SOME CHECKS FAIL'}"
                 + (f" (world log and run logs kept in {r['work_dir']})"
                    if r.get("work_dir") else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    p.add_argument("--nap", type=float, default=Mix.nap, help="fraction of 1-20 ms naps")
    p.add_argument("--raise", dest="raise_frac", type=float, default=Mix.raise_,
                   help="fraction raising ValueError")
    p.add_argument("--crash", type=float, default=Mix.crash, help="fraction calling os._exit")
    p.add_argument("--hang", type=float, default=Mix.hang, help="fraction sleeping past the "
                   "timeout")
    p.add_argument("--hang-timeout", type=float, default=0.5, help="seconds (default 0.5)")
    p.add_argument("--deadline", type=float, default=1800.0,
                   help="seconds the tasks may take in all before the run is failed")
    p.add_argument("--sample-every", type=float, default=2.0, help="seconds between samples")
    p.add_argument("--progress-every", type=float, default=15.0)
    p.add_argument("--warmup-frac", type=float, default=0.10,
                   help="rank-0 RSS baseline: first sample once this fraction is done")
    p.add_argument("--rss-slack-pct", type=float, default=10.0)
    p.add_argument("--rss-slack-mib", type=float, default=20.0)
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs) on success")
    args = p.parse_args(argv)
    if args.tasks < 1 or args.workers < 1:
        p.error("--tasks and --workers must be at least 1")
    try:
        Mix(args.nap, args.raise_frac, args.crash, args.hang).counts(args.tasks)
    except ValueError as e:
        p.error(str(e))
    result = run(args)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    print(table(result))
    write_json(args.json, result, indent=1)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
