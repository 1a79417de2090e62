"""Host slowdown next to colocate, and the share of the spare core colocate harvests.

Run: ``python bench/interference.py`` (about 5 minutes; ``--quick`` for a ~1 minute smoke run).

The host job is a real program nobody here wrote: ``stress-ng`` pinned with ``taskset``. Its
score is bogo-ops/s in real time, read from its ``--yaml`` metrics. Configurations:

========  ==========================================  =========================================
name      host                                        colocate (1 worker on spare core 1)
========  ==========================================  =========================================
alone     cpu/matrixprod on core 0                    none
a         same                                        default controls
b         same                                        controls off (no pinning, normal priority,
                                                      no cgroups, no guard)
n         same                                        none: the same tasks back to back in a plain
                                                      process pinned to core 1 (what any program
                                                      on the spare core costs the host: caches,
                                                      memory bandwidth, a shared physical core)
alone2    cpu/matrixprod x2 on cores 0-1              none
c         same (the host wants the spare core too)    default controls
c_nocg    same                                        default controls but cgroups off
c_off     same                                        controls off
mem       stream (memory bandwidth) on core 0         none
mem_a     same                                        default controls, memory-bound tasks
========  ==========================================  =========================================

Each colocate run starts a world (``mpiexec -n 2 python -m colocate serve``) and keeps its worker
saturated from a client in this process (4 tasks in flight, each ~0.1 s of ``--task`` work)
from a warm-up before the host starts until after it ends. Harvested fraction = the task run
time (``future.info.finished - started``) inside the host's window, over the window; the
executor process's CPU time over the window (psutil) is the cross-check.

Noise: the machine is shared. Runs are interleaved (one of every configuration per round, the
order rotated each round), each waits (bounded) for the machine to be quiet first, and each
records the background load it saw (busy core-seconds not accounted for by the host, the world
or this script). Slowdowns are paired per round and reported with their spread.

This script pins itself (the client) to the spare core and starts the world through
``taskset`` over every allowed core, so the world sees the machine a user's shell would.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")   # calibrate tasks on one thread, as the executor runs them

import psutil  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from colocate.testing import World, kill_tagged, subprocess_env  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HOST_CORE, SPARE_CORE = 0, 1
TASK_SECONDS = 0.1       # target run time of one colocate task when it has the core alone
IN_FLIGHT = 4            # tasks kept outstanding: enough to never let the worker wait
NOISY_CORES = 0.1        # background load (cores) above which a run is flagged noisy
TARGET_SLOWDOWN, TARGET_HARVEST = 3.0, 0.80

DEFAULTS = {"COLOCATE_CO_LOCATION_SPARE_CORES": str(SPARE_CORE)}
CONTROLS_OFF = {"COLOCATE_CO_LOCATION_SPARE_CORES": str(SPARE_CORE),
                "COLOCATE_CO_LOCATION_PINNING": "false",
                "COLOCATE_CO_LOCATION_PRIORITY": "normal",
                "COLOCATE_CO_LOCATION_CGROUPS": "off",   # see cgroups_off_value()
                "COLOCATE_GUARD_ENABLED": "false"}
NO_CGROUPS = {**DEFAULTS, "COLOCATE_CO_LOCATION_CGROUPS": "off"}


@dataclass(frozen=True)
class Config:
    name: str
    label: str
    host: str                      # key of HOSTS
    colocate: dict | None = None   # world environment; None = host alone
    task: str | None = None        # key of TASKS; None = the --task option
    ref: str | None = None         # the configuration this one's slowdown is measured against
    neighbor: bool = False         # the same tasks in a plain process on the spare core instead


HOSTS = {
    "cpu1": {"cores": "0", "args": ["--cpu", "1", "--cpu-method", "matrixprod"]},
    "cpu2": {"cores": "0,1", "args": ["--cpu", "2", "--cpu-method", "matrixprod"]},
    "stream1": {"cores": "0", "args": ["--stream", "1", "--stream-l3-size", "8M"]},
}

CONFIGS = {c.name: c for c in (
    Config("alone", "host alone (core 0)", "cpu1"),
    Config("a", "+ colocate, default controls", "cpu1", DEFAULTS, ref="alone"),
    Config("b", "+ colocate, controls off", "cpu1", CONTROLS_OFF, ref="alone"),
    Config("n", "+ same tasks, plain process", "cpu1", neighbor=True, ref="alone"),
    Config("alone2", "host alone (cores 0-1)", "cpu2"),
    Config("c", "+ colocate, default controls", "cpu2", DEFAULTS, ref="alone2"),
    Config("c_nocg", "+ colocate, defaults, cgroups off", "cpu2", NO_CGROUPS, ref="alone2"),
    Config("c_off", "+ colocate, controls off", "cpu2", CONTROLS_OFF, ref="alone2"),
    Config("mem", "stream host alone (core 0)", "stream1"),
    Config("mem_a", "+ colocate mem tasks, defaults", "stream1", DEFAULTS, "stream", ref="mem"),
)}
QUICK_CONFIGS = ("alone", "a", "b", "alone2", "c")


def cgroups_off_value() -> str:
    """The spelling of ``cgroups: off`` the installed colocate accepts in the environment.

    Environment values are read as YAML, where a bare ``off`` is the boolean false, which the
    config then rejects; a quoted ``"off"`` is the string. Ask the config which one works.
    """
    from colocate import config
    for raw in ("off", '"off"'):
        try:
            if config.load(None, environ={"COLOCATE_CO_LOCATION_CGROUPS": raw}
                           )["co_location"]["cgroups"] == "off":
                return raw
        except Exception:  # noqa: BLE001 - a ConfigError: try the next spelling
            continue
    raise RuntimeError("colocate accepts neither off nor \"off\" for co_location.cgroups")


# ----- the colocate tasks (pickled by value: this file is __main__) ------------------------------
def task_matmul(n: int) -> float:
    """CPU-bound numpy: ``n`` products of 256x256 matrices (cache-resident)."""
    import numpy as np
    a = np.full((256, 256), 1.0 / 256)
    for _ in range(n):
        b = a @ a
    return float(b[0, 0])


def task_python(n: int) -> int:
    """CPU-bound pure Python loop."""
    s = 0
    for i in range(n):
        s += i * i % 7
    return s


def task_stream(n: int) -> float:
    """Memory-bound numpy: ``n`` copies of 32 MiB (more than the L2, with its twin the L3)."""
    import numpy as np
    a = np.ones(4 << 20)
    b = np.empty_like(a)
    for _ in range(n):
        np.copyto(b, a)
    return float(b[0])


TASKS = {"matmul": task_matmul, "python": task_python, "stream": task_stream}
if __name__ != "__main__":   # imported (e.g. by a test): the tasks must still travel by value
    import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def calibrate(fn, seconds: float = TASK_SECONDS) -> int:
    """The argument that makes ``fn`` run about ``seconds`` here (the best of 3 timings)."""
    n = 1
    while True:
        best = min(_timed(fn, n) for _ in range(3))
        if best > seconds / 4 or n > 1 << 30:
            return max(1, round(n * seconds / best))
        n *= 4


def _timed(fn, n: int) -> float:
    t = time.perf_counter()
    fn(n)
    return time.perf_counter() - t


# ----- process bookkeeping --------------------------------------------------------------------
def clean_env(tag: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment without MPI or COLOCATE_ variables, plus the tag and ``extra``: the
    colocate defaults, not the other benchmarks' settings."""
    return subprocess_env(tag, {}, own_settings=False, **(extra or {}))


def start_world(env: dict[str, str], directory: Path, all_cores: str) -> World:
    """A ``mpiexec -n 2 colocate serve`` world (one worker) at colocate's defaults plus ``env``,
    started through ``taskset`` over ``all_cores``."""
    return World(2, directory, "world", env={"COLOCATE_LOG": "info", **env}, settings={},
                 own_settings=False, prefix=("taskset", "-c", all_cores))


def connect(world: World, timeout: float = 60.0):
    """Wait for the address file and the worker; returns a connected ``Executor``."""
    import colocate
    world.wait_ready(timeout)
    return colocate.Executor(address=world.address)


def roles(world: World) -> dict[str, list[psutil.Process]]:
    """The world's processes: ``executor`` (the child), ``ranks``, ``launcher``."""
    out: dict[str, list[psutil.Process]] = {"executor": [], "ranks": [], "launcher": []}
    for p in world.processes():
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        kind = ("executor" if "colocate.child" in cmd else
                "ranks" if "colocate serve" in cmd else "launcher")
        out[kind].append(p)
    return out


def stop_world(world: World, ex=None) -> list[str]:
    """Stop (ask, then SIGTERM, then SIGKILL, all bounded); returns what had to be killed."""
    if ex is not None:
        try:
            ex.stop_server(drain=False)
            ex.shutdown(wait=False)
        except Exception:  # noqa: BLE001 - the world is stopped below regardless
            pass
        world.wait_exit(20)
    world.stop(sweep=True)
    return world.killed


class Loader:
    """Keep ``depth`` tasks in flight on an executor until stopped; record their ``info``."""

    def __init__(self, ex, fn, arg: int, depth: int = IN_FLIGHT) -> None:
        self.ex, self.fn, self.arg = ex, fn, arg
        self.room = threading.Semaphore(depth)
        self.lock = threading.Lock()
        self.pending: set = set()
        self.infos: list = []
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="loader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            if not self.room.acquire(timeout=0.1):
                continue
            if self.stopping.is_set():
                break
            fut = self.ex.submit(self.fn, self.arg)
            with self.lock:
                self.pending.add(fut)
            fut.add_done_callback(self._done)

    def _done(self, fut) -> None:
        with self.lock:
            self.pending.discard(fut)
            if fut.cancelled() or fut.exception() is not None:
                self.errors.append(repr(None if fut.cancelled() else fut.exception()))
            elif fut.info is not None:
                self.infos.append(fut.info)
        self.room.release()

    def stop(self, timeout: float = 30.0) -> None:
        """Submit no more and wait (bounded) for what is in flight."""
        self.stopping.set()
        self.thread.join(timeout)
        with self.lock:
            left = list(self.pending)
        _, not_done = cf.wait(left, timeout)
        if not_done:
            self.errors.append(f"{len(not_done)} task(s) unfinished after {timeout:g} s")


# ----- measuring ------------------------------------------------------------------------------
def core_ticks() -> dict[int, tuple[int, int]]:
    """Per core: (busy, total) ticks from ``/proc/stat`` (idle and iowait are not busy)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                out[int(name[3:])] = (sum(v) - v[3] - v[4], sum(v))
    return out


def busy_cores(before: dict, after: dict, seconds: float) -> dict[int, float]:
    """Per core, the busy fraction between two :func:`core_ticks` readings."""
    hz = os.sysconf("SC_CLK_TCK")
    return {c: (after[c][0] - before[c][0]) / hz / seconds for c in after if c in before}


def wait_quiet(limit: float, threshold: float = 0.25) -> float:
    """Wait (at most ``limit`` s) until the machine's load is below ``threshold`` cores."""
    deadline = time.monotonic() + limit
    while True:
        t, a = time.monotonic(), core_ticks()
        time.sleep(0.5)
        load = sum(busy_cores(a, core_ticks(), time.monotonic() - t).values())
        if load < threshold or time.monotonic() > deadline:
            return load


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def run_host(host: str, seconds: float, directory: Path, tag: str) -> dict:
    """Run the host program once; returns its metrics (bounded: killed if it overruns)."""
    spec = HOSTS[host]
    out = directory / f"host-{uuid.uuid4().hex[:8]}.yaml"
    cmd = ["taskset", "-c", spec["cores"], "stress-ng", *spec["args"], "--timeout",
           f"{seconds:g}s", "--metrics-brief", "--yaml", str(out)]
    proc = subprocess.Popen(cmd, env=clean_env(tag), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=seconds + 30)
    except BaseException as e:   # overrun or interrupted: never leave the host running
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if isinstance(e, subprocess.TimeoutExpired):
            raise RuntimeError(f"stress-ng overran {seconds + 30:g} s: {' '.join(cmd)}") from None
        raise
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text.decode()}")
    import yaml
    m = yaml.safe_load(out.read_text())["metrics"][0]
    return {"command": " ".join(cmd), "rate": m["bogo-ops-per-second-real-time"],
            "rate_per_cpu_s": m["bogo-ops-per-second-usr-sys-time"],
            "cpu_s": m["user-time"] + m["system-time"], "wall_s": m["wall-clock-time"],
            "cpu_share": m["cpu-usage-per-instance"] / 100.0}


def measure(cfg: Config, args: argparse.Namespace, task_arg: dict, directory: Path,
            all_cores: str) -> dict:
    """One run of one configuration: world (if any), load, host, accounting."""
    quiet_before = wait_quiet(args.quiet_wait)
    rec: dict = {"config": cfg.name, "quiet_before_cores": round(quiet_before, 3)}
    world = ex = loader = neighbor = None
    me = psutil.Process()
    try:
        if cfg.colocate is not None:
            world = start_world(cfg.colocate, directory, all_cores)
            ex = connect(world)
            task = cfg.task or args.task
            loader = Loader(ex, TASKS[task], task_arg[task])
            time.sleep(args.warmup)
            procs = roles(world)
            rec["task"] = task
        elif cfg.neighbor:
            task = cfg.task or args.task
            neighbor = subprocess.Popen(
                ["taskset", "-c", str(SPARE_CORE), sys.executable, __file__, "--_neighbor",
                 task, str(task_arg[task])], env=clean_env(f"host-{os.getpid()}"),
                stdin=subprocess.DEVNULL, start_new_session=True)
            time.sleep(args.warmup)
            procs = {"executor": [psutil.Process(neighbor.pid)], "ranks": [], "launcher": []}
            rec["task"] = task
        else:
            procs = {}
        flat = [p for ps in procs.values() for p in ps]
        cpu0, me0, ticks0, t0 = cpu_seconds(flat), me.cpu_times(), core_ticks(), time.time()
        host = run_host(cfg.host, args.duration, directory, f"host-{os.getpid()}")
        t1, ticks1, me1, cpu1 = time.time(), core_ticks(), me.cpu_times(), cpu_seconds(flat)
        window = t1 - t0
        rec.update(host=host, window_s=round(window, 3))
        mine = (me1.user + me1.system) - (me0.user + me0.system)
        per_kind = {k: sum(cpu1.get(p.pid, cpu0.get(p.pid, 0)) - cpu0.get(p.pid, 0) for p in ps)
                    for k, ps in procs.items()}
        busy = busy_cores(ticks0, ticks1, window)
        rec["busy_per_core"] = {c: round(b, 3) for c, b in busy.items()}
        rec["background_cores"] = round(
            (sum(busy.values()) * window - host["cpu_s"] - mine - sum(per_kind.values()))
            / window, 3)
        if neighbor is not None:
            cpu = per_kind["executor"] / window
            rec.update(harvest_task=round(cpu, 4), harvest_cpu=round(cpu, 4), overhead_cores=0.0,
                       guard_pauses=0)
        if loader is not None:
            loader.stop()
            inside = sum(max(0.0, min(i.finished, t1) - max(i.started, t0)) for i in loader.infos)
            durations = [i.finished - i.started for i in loader.infos
                         if i.started >= t0 and i.finished <= t1]
            rec.update(
                harvest_task=round(inside / window, 4),
                harvest_cpu=round(per_kind["executor"] / window, 4),
                overhead_cores=round((per_kind["ranks"] + per_kind["launcher"]) / window, 4),
                tasks_in_window=len(durations),
                task_s_median=round(statistics.median(durations), 4) if durations else None,
                task_errors=loader.errors[:5],
                executor_pids=[p.pid for p in procs["executor"]],
                cores_seen=sorted({c for i in loader.infos for c in i.cores}))
    finally:
        if neighbor is not None:
            os.killpg(neighbor.pid, signal.SIGKILL)
            neighbor.wait(10)
        if loader is not None:
            loader.stopping.set()
        if world is not None:
            killed = stop_world(world, ex)
            log = world.log()
            rec["guard_pauses"] = log.count("guard: pause core")
            rec["world_warnings"] = [ln for ln in log.splitlines() if " WARNING " in ln][:5]
            rec["worker_controls"] = next(
                (ln.split(" INFO ", 1)[1] for ln in log.splitlines() if "sandbox {" in ln), None)
            if killed:
                rec["killed_at_stop"] = killed
    return rec


# ----- summary --------------------------------------------------------------------------------
def _stats(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs), "n": len(xs)}


def summarize(runs: list[dict], names: list[str]) -> list[dict]:
    """One row per configuration: host rate, slowdown vs its reference, harvest, noise."""
    rows = []
    for name in names:
        cfg = CONFIGS[name]
        mine = [r for r in runs if r["config"] == name]
        if not mine:
            continue
        rate = _stats([r["host"]["rate"] for r in mine])
        row = {"config": name, "label": cfg.label, "host": " ".join(HOSTS[cfg.host]["args"]),
               "host_cores": HOSTS[cfg.host]["cores"], "runs": len(mine),
               "rate": rate, "rate_per_cpu_s": _stats([r["host"]["rate_per_cpu_s"] for r in mine]),
               "host_cpu_share": _stats([r["host"]["cpu_share"] for r in mine]),
               "background_cores": _stats([r["background_cores"] for r in mine]),
               "noisy_runs": sum(r["background_cores"] > NOISY_CORES for r in mine),
               "colocate": None if cfg.colocate is None else dict(cfg.colocate)}
        ref = [r for r in runs if r["config"] == cfg.ref]
        if ref:
            ref_rate = _stats([r["host"]["rate"] for r in ref])
            row["slowdown_pct"] = 100.0 * (1.0 - rate["mean"] / ref_rate["mean"])
            rel_se = ((rate["sd"] / rate["mean"]) ** 2 / rate["n"]
                      + (ref_rate["sd"] / ref_rate["mean"]) ** 2 / ref_rate["n"]) ** 0.5
            row["slowdown_se_pct"] = 100.0 * rel_se * rate["mean"] / ref_rate["mean"]
            paired = [100.0 * (1 - a["host"]["rate"] / b["host"]["rate"])
                      for a in mine for b in ref if a["round"] == b["round"]]
            row["slowdown_paired_pct"] = _stats(paired) if paired else None
        if cfg.colocate is not None or cfg.neighbor:
            row["harvest_task"] = _stats([r["harvest_task"] for r in mine])
            row["harvest_cpu"] = _stats([r["harvest_cpu"] for r in mine])
            row["overhead_cores"] = _stats([r["overhead_cores"] for r in mine])
            row["guard_pauses"] = _stats([r.get("guard_pauses", 0) for r in mine])
            row["task"] = mine[0]["task"]
        rows.append(row)
    return rows


def verdict(rows: list[dict]) -> dict:
    """PASS if row ``a`` slows the host by at most 3 % and harvests at least 80 % of the core."""
    a = next((r for r in rows if r["config"] == "a"), None)
    if a is None or "slowdown_pct" not in a:
        return {"result": "n/a", "why": "configurations alone and a were not both run"}
    slow, harvest = a["slowdown_pct"], min(a["harvest_task"]["mean"], a["harvest_cpu"]["mean"])
    ok = slow <= TARGET_SLOWDOWN and harvest >= TARGET_HARVEST
    why = (f"slowdown {slow:+.1f} % (+/- {a['slowdown_se_pct']:.1f}) vs <= {TARGET_SLOWDOWN:g} %;"
           f" harvest {harvest:.0%} (lower of task time and CPU time) vs >= {TARGET_HARVEST:.0%}")
    out = {"result": "PASS" if ok else "MISS", "why": why, "slowdown_pct": slow,
           "harvest": harvest}
    n = next((r for r in rows if r["config"] == "n" and "slowdown_pct" in r), None)
    if n is not None:   # what any program doing the same work on the spare core costs the host
        out["hardware_floor_pct"] = n["slowdown_pct"]
        out["colocate_share_pct"] = slow - n["slowdown_pct"]
        out["why"] += (f"; the same tasks in a plain process on the spare core (row n) slow the "
                       f"host by {n['slowdown_pct']:+.1f} %, so colocate's own share is "
                       f"{slow - n['slowdown_pct']:+.1f} %")
    return out


def render(rows: list[dict]) -> str:
    head = (f"{'config':<7} {'':<31} {'host ops/s':>15} {'slowdown %':>13} {'paired %':>15} "
            f"{'harvest':>7} {'cpu':>5} {'ovh':>5} {'pause':>5} {'bg':>5} {'n':>2}")
    lines = [head, "-" * len(head)]
    for r in rows:
        rate = f"{r['rate']['mean']:.1f}+/-{r['rate']['sd']:.1f}"
        slow = (f"{r['slowdown_pct']:+.1f}+/-{r['slowdown_se_pct']:.1f}"
                if "slowdown_pct" in r else "ref")
        p = r.get("slowdown_paired_pct")
        paired = f"{p['min']:+.1f}..{p['max']:+.1f}" if p else ""
        hv = (f"{r['harvest_task']['mean']:7.0%} {r['harvest_cpu']['mean']:5.0%} "
              f"{r['overhead_cores']['mean']:5.2f} {r['guard_pauses']['mean']:5.1f}"
              if "harvest_task" in r else f"{'-':>7} {'-':>5} {'-':>5} {'-':>5}")
        lines.append(f"{r['config']:<7} {r['label']:<31} {rate:>15} {slow:>13} {paired:>15} "
                     f"{hv} {r['background_cores']['mean']:5.2f} {r['runs']:>2}")
    lines.append("slowdown: vs the host alone on the same cores (mean +/- standard error); "
                 "paired: per round, min..max;\nharvest: task run time in the host's window / "
                 "window; cpu: executor CPU time / window; ovh: CPU of ranks + launcher\n"
                 "(cores); pause: guard pauses per run; bg: background load (cores) from "
                 "others on this shared machine.")
    return "\n".join(lines)


def plot(runs: list[dict], rows: list[dict], path: Path) -> str:
    """Draw host speed (relative to its reference) and harvest per configuration."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install colocate[plot]): no plot"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["config"] for r in rows]
    ref_mean = {r["config"]: r["rate"]["mean"] for r in rows}
    for i, r in enumerate(rows):
        base = ref_mean.get(CONFIGS[r["config"]].ref or r["config"])
        if base is None:
            continue
        pts = [100 * x["host"]["rate"] / base for x in runs if x["config"] == r["config"]]
        ax1.bar(i, statistics.fmean(pts), color="C0" if CONFIGS[r["config"]].ref else "C7")
        ax1.plot([i] * len(pts), pts, "k.", ms=4)
    ax1.axhline(100 - TARGET_SLOWDOWN, color="r", ls="--", lw=1, label="target (-3 %)")
    ax1.set(xticks=range(len(names)), xticklabels=names, ylabel="host speed, % of alone",
            ylim=(min(50, ax1.get_ylim()[0]), 110), title="host (stress-ng) speed")
    ax1.legend(loc="lower left")
    co = [r for r in rows if "harvest_task" in r]
    x = range(len(co))
    ax2.bar([i - 0.2 for i in x], [100 * r["harvest_task"]["mean"] for r in co], 0.4,
            label="task run time")
    ax2.bar([i + 0.2 for i in x], [100 * r["harvest_cpu"]["mean"] for r in co], 0.4,
            label="executor CPU time")
    ax2.axhline(100 * TARGET_HARVEST, color="r", ls="--", lw=1, label="target (80 %)")
    ax2.set(xticks=list(x), xticklabels=[r["config"] for r in co], ylim=(0, 110),
            ylabel="% of the spare core", title="harvested by colocate")
    ax2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"


# ----- the machine ----------------------------------------------------------------------------
def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                  if ln.startswith("model name")), platform.processor())
    ver = subprocess.run(["stress-ng", "--version"], capture_output=True, text=True).stdout
    git = subprocess.run(["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    import mpi4py
    import numpy
    return {"cpu_model": model, "kernel": platform.release(), "cores": os.cpu_count(),
            "allowed_cores": sorted(os.sched_getaffinity(0)),
            "stress_ng": ver.strip(), "python": platform.python_version(),
            "numpy": numpy.__version__, "mpi4py": mpi4py.__version__, "colocate_git": git,
            "autogroup": Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip(),
            "hostname": platform.node()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s, "
                   f"configurations {','.join(QUICK_CONFIGS)}")
    p.add_argument("--rounds", type=int, help="runs per configuration (default 4; quick 1)")
    p.add_argument("--duration", type=float, help="seconds per host run (default 6; quick 2)")
    p.add_argument("--warmup", type=float, help="seconds of load before the host starts")
    p.add_argument("--quiet-wait", type=float, help="seconds to wait for a quiet machine "
                   "before each run (default 20; quick 2)")
    p.add_argument("--configs", help=f"comma-separated subset of {','.join(CONFIGS)}")
    p.add_argument("--task", choices=sorted(TASKS), default="matmul",
                   help="colocate task for the cpu configurations (default matmul)")
    p.add_argument("--json", type=Path, default=RESULTS / "interference.json")
    p.add_argument("--plot", type=Path, help="PNG path (default: next to the JSON)")
    p.add_argument("--_neighbor", nargs=2, metavar=("TASK", "ARG"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._neighbor:   # row n: run the tasks back to back until killed
        fn, arg = TASKS[args._neighbor[0]], int(args._neighbor[1])
        while True:
            fn(arg)
    q = args.quick
    args.rounds = args.rounds or (1 if q else 4)
    args.duration = args.duration or (2.0 if q else 6.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if q else 1.5)
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else (2.0 if q else 20.0)
    names = (args.configs.split(",") if args.configs else
             list(QUICK_CONFIGS if q else CONFIGS))
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; expected some of {list(CONFIGS)}")
    names += [CONFIGS[n].ref for n in names if CONFIGS[n].ref and CONFIGS[n].ref not in names]
    for tool in ("stress-ng", "mpiexec", "taskset"):
        if shutil.which(tool) is None:
            print(f"interference: {tool} not found on PATH; it is needed "
                  + ("(Debian: apt-get install stress-ng)" if tool == "stress-ng" else ""),
                  file=sys.stderr)
            return 2
    allowed = sorted(os.sched_getaffinity(0))
    if HOST_CORE not in allowed or SPARE_CORE not in allowed:
        print(f"interference: needs cores {HOST_CORE} and {SPARE_CORE}, allowed {allowed}",
              file=sys.stderr)
        return 2
    all_cores = ",".join(map(str, allowed))
    CONTROLS_OFF["COLOCATE_CO_LOCATION_CGROUPS"] = cgroups_off_value()
    NO_CGROUPS["COLOCATE_CO_LOCATION_CGROUPS"] = CONTROLS_OFF["COLOCATE_CO_LOCATION_CGROUPS"]
    os.sched_setaffinity(0, {SPARE_CORE})   # this client lives on the spare core
    tasks_used = {CONFIGS[n].task or args.task for n in names
                  if CONFIGS[n].colocate or CONFIGS[n].neighbor}
    task_arg = {t: calibrate(TASKS[t]) for t in sorted(tasks_used)}
    info = machine()
    print(f"interference: {info['cpu_model']}, {info['cores']} cores, kernel {info['kernel']}, "
          f"{info['stress_ng']}\n{args.rounds} round(s) x {len(names)} configurations x "
          f"{args.duration:g} s; task args {task_arg} (~{TASK_SECONDS:g} s each)", flush=True)
    runs: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="interference-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # so the finally blocks run
    started = time.time()
    try:
        for rnd in range(args.rounds):
            k = rnd % len(names)
            for name in names[k:] + names[:k]:   # rotate the order: no config always goes first
                rec = measure(CONFIGS[name], args, task_arg, work, all_cores)
                rec["round"] = rnd
                runs.append(rec)
                h = rec["host"]
                extra = (f" harvest {rec['harvest_task']:.0%} (cpu {rec['harvest_cpu']:.0%}), "
                         f"{rec['guard_pauses']} pause(s)" if "harvest_task" in rec else "")
                print(f"  round {rnd} {name:<7} {h['rate']:9.1f} ops/s, host cpu "
                      f"{h['cpu_share']:.0%}, bg {rec['background_cores']:.2f} cores{extra}",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        kill_tagged(f"host-{os.getpid()}")
    rows = summarize(runs, [n for n in CONFIGS if n in names])
    v = verdict(rows)
    print()
    print(render(rows))
    print(f"\ntarget (row a): slowdown <= {TARGET_SLOWDOWN:g} % and harvest >= "
          f"{TARGET_HARVEST:.0%}: {v['result']}: {v['why']}")
    noisy = sum(r["background_cores"] > NOISY_CORES for r in runs)
    if noisy:
        print(f"note: {noisy} of {len(runs)} runs saw more than {NOISY_CORES} cores of "
              "background load from other users: compare the spread, rerun when quiet")
    result = {"bench": "interference", "command": " ".join([sys.executable, *sys.argv]),
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "elapsed_s": round(time.time() - started, 1), "machine": info,
              "settings": {"rounds": args.rounds, "duration_s": args.duration,
                           "warmup_s": args.warmup, "quiet_wait_s": args.quiet_wait,
                           "task": args.task, "task_args": task_arg,
                           "task_seconds_target": TASK_SECONDS, "in_flight": IN_FLIGHT,
                           "host_core": HOST_CORE, "spare_core": SPARE_CORE,
                           "hosts": HOSTS, "noisy_above_cores": NOISY_CORES},
              "targets": {"slowdown_pct_max": TARGET_SLOWDOWN, "harvest_min": TARGET_HARVEST},
              "verdict": v, "rows": rows, "runs": runs}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"json: {args.json}")
    print(plot(runs, rows, args.plot or args.json.with_suffix(".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
