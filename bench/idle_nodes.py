"""Idle nodes harvested by a pool: coverage of a batch trace's idle node time, and what it costs.

Run (as root, with the cluster of tests/cluster/up.sh up)::

    bash tests/cluster/up.sh 3
    python bench/idle_nodes.py [--quick] [--seed N] [--json OUT]

A seeded synthetic trace of batch jobs (partition ``vc``, 1 or 2 whole nodes of vnode2/vnode3,
durations and gaps drawn so the nodes fall idle between jobs) is replayed twice: without
colocate, and with a world (rank 0 and one worker rank on vnode1) whose pool (partition
``pool``, preemptible, GraceTime of up.sh) grows into the idle nodes while a steady backlog of
short numpy tasks waits. Every batch job records its own start and end (``date +%s.%N``) and
every task its host, start and end and a side-effect line, so:

* ``idle_node_s``: node-seconds of vnode2/vnode3 no batch job held, over the replay;
* ``covered_node_s``: of those, node-seconds in which a pool worker ran a task on that node;
* ``coverage``: their ratio;
* ``start_delay_*``: each batch job's submit-to-start time with colocate minus without it;
* ``tasks_*``: submitted, succeeded, failed, lost (never ended), duplicated (started twice);
* ``holes``: per idle hole (node, start, end), the pool job that covered it, when rank 0
  submitted it (its log), when Slurm started it (squeue's start time, polled), when its
  ``colocate join`` process started (the job's output) and connected (rank 0's log), and when
  the hole's first task started; ``uncovered_s`` splits the idle time no task covered into
  ``slurm`` (submitted, or the hole's start, to Slurm's start), ``launch`` (to the join
  process's start), ``startup`` (to the hole's first task: Python and colocate start-up, the
  join, the executor child) and ``other`` (no task ran in the hole: most are gaps of a second or two
  between batch jobs; the pool's decision before the submit; gaps after the first task).

Measured on one machine: the three nodes are namespaces sharing its cores (tests/cluster/up.sh).
Exit code 0 when it ran (the targets are printed, not enforced), 2 when the cluster is not up.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ON = REPO / "tests" / "cluster" / "on.sh"
POOL_NODES = ("vnode2", "vnode3")
TASK_SECONDS = 0.25   # one task: numpy work for about this long
BACKLOG = 24          # tasks kept queued (more than the pool's 4 cores can take at once)


def trace(seed: int, total: float) -> list[dict]:
    """Batch jobs: submit time, nodes, duration; gaps leave nodes idle between them."""
    rng = random.Random(seed)
    jobs, t = [], 5.0
    while t < total - 10:
        dur = rng.uniform(4, 12)
        jobs.append({"at": round(t, 2), "nodes": rng.choice((1, 1, 2)),
                     "seconds": round(dur, 2)})
        t += rng.uniform(6, 20)
    return jobs


def env() -> dict[str, str]:
    conf = subprocess.run(["bash", str(REPO / "tests/cluster/up.sh"), "--conf"],
                          capture_output=True, text=True).stdout.strip()
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("PMI_", "SLURM_", "COLOCATE_", "HYDRA_", "MPICH_"))}
    e.update({"SLURM_CONF": conf, "PYTHONPATH": str(REPO), "COLOCATE_PYTHON": sys.executable,
              "COLOCATE_GUARD_ENABLED": "false", "COLOCATE_CO_LOCATION_PRIORITY": "normal",
              "UCX_TLS": "self,tcp", "COLOCATE_LOG": "info"})
    return e


def slurm(e: dict, *cmd: str) -> str:
    return subprocess.run(list(cmd), env=e, capture_output=True, text=True,
                          timeout=30).stdout


def replay(e: dict, jobs: list[dict], directory: Path, total: float, tag: str) -> list[dict]:
    """Submit the trace's jobs at their times; wait for all to end; their submit/start/end."""
    t0 = time.time()
    done = []
    for i, job in enumerate(jobs):
        time.sleep(max(0.0, t0 + job["at"] - time.time()))
        mark = directory / f"{tag}-job{i}"
        nodes = ",".join(POOL_NODES[:job["nodes"]]) if job["nodes"] == 2 else \
            POOL_NODES[i % 2]
        wrap = (f"date +%s.%N > {mark}.start; hostname >> {mark}.start; sleep {job['seconds']};"
                f" date +%s.%N > {mark}.end")
        submitted = time.time()
        out = slurm(e, "sbatch", "--parsable", "--partition=vc", "--exclusive",
                    f"--nodes={job['nodes']}", f"--nodelist={nodes}", f"--chdir={directory}",
                    "--output=/dev/null", f"--job-name=idlebench-{tag}", f"--wrap={wrap}")
        done.append({**job, "id": out.strip().split(";")[0], "submitted": submitted,
                     "hosts": nodes.split(","), "mark": str(mark)})
    deadline = time.time() + 120 + total
    while time.time() < deadline and slurm(e, "squeue", "-h", f"--name=idlebench-{tag}"):
        time.sleep(0.5)
    time.sleep(max(0.0, t0 + total - time.time()))
    for d in done:
        try:
            d["start"] = float(Path(d["mark"] + ".start").read_text().split()[0])
            d["end"] = float(Path(d["mark"] + ".end").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            d["start"] = d["end"] = None
    return [{**d, "t0": t0, "t1": t0 + total} for d in done]


def idle_intervals(done: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Per pool node, the intervals of the replay no batch job held it."""
    t0, t1 = done[0]["t0"], done[0]["t1"]
    idle = {}
    for node in POOL_NODES:
        busy = sorted((d["start"], d["end"]) for d in done if node in d["hosts"] and d["start"])
        free, at = [], t0
        for s, end in busy:
            if s > at:
                free.append((at, min(s, t1)))
            at = max(at, end)
        if at < t1:
            free.append((at, t1))
        idle[node] = [(a, b) for a, b in free if b > a]
    return idle


def union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def overlap(xs: list[tuple[float, float]], ys: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(b, d) - max(a, c)) for a, b in xs for c, d in ys)


def poll_pool_jobs(e: dict, stop, seen: dict) -> None:
    """Until ``stop``: each pool job's nodes and Slurm start time, as squeue shows it running."""
    while not stop.wait(0.5):
        try:
            out = slurm(e, "squeue", "-h", "--partition=pool", "-o", "%i|%T|%N|%S")
        except subprocess.TimeoutExpired:
            continue
        for line in out.splitlines():
            jid, state, nodes, start = (line.split("|") + ["", "", ""])[:4]
            if state == "RUNNING" and jid not in seen:
                try:
                    at = time.mktime(time.strptime(start, "%Y-%m-%dT%H:%M:%S"))
                except ValueError:
                    at = time.time()
                seen[jid] = {"nodes": nodes.split(","), "slurm_start": at}


def log_times(text: str, day: float, pattern: str) -> list[tuple[float, re.Match]]:
    """(epoch, match) of the log lines (``HH:MM:SS.mmm colocate[...] ...``) matching pattern."""
    base = time.mktime(time.localtime(day)[:3] + (0, 0, 0, 0, 0, -1))
    out = []
    for line in text.splitlines():
        m = re.match(r"(\d\d):(\d\d):(\d\d)(?:\.(\d{3}))? ", line)
        found = re.search(pattern, line)
        if m and found:
            h, mi, sec, ms = (int(x or 0) for x in m.groups())
            out.append((base + h * 3600 + mi * 60 + sec + ms / 1000, found))
    return out


def pool_jobs(directory: Path, seen: dict, t0: float) -> dict[str, dict]:
    """Per pool job: nodes, submitted, Slurm start, join process start, first join connected."""
    rank0 = (directory / "world.log").read_text(errors="replace")
    submitted = {m[1]: t for t, m in log_times(rank0, t0, r"pool: submitted job (\d+)")}
    joins = [(t, m[1]) for t, m in log_times(rank0, t0, r"joined over TCP \(pid \d+ on (\S+)\)")]
    jobs = {}
    for jid, j in seen.items():
        out = directory / f"colocate-pool-{jid}.out"
        text = out.read_text(errors="replace") if out.exists() else ""
        proc = re.search(r"process started at ([\d.]+)", text)
        start = max(j["slurm_start"], submitted.get(jid, 0.0))
        joined = [t for t, host in joins if host in j["nodes"] and t >= start]
        jobs[jid] = {**j, "submitted": submitted.get(jid), "slurm_start": start,
                     "process_start": float(proc[1]) if proc else None,
                     "joined": min(joined) if joined else None}
    return jobs


def holes(idle: dict, records: list, jobs: dict[str, dict]) -> tuple[list[dict], dict]:
    """Per idle hole, what covered it and when; the uncovered seconds by cause (module doc)."""
    rows, split = [], {"slurm": 0.0, "launch": 0.0, "startup": 0.0, "other": 0.0}
    for node in POOL_NODES:
        ran = union([(s, t) for h, s, t in records if h == node])
        for a, b in idle[node]:
            covered = overlap(ran, [(a, b)])
            inside = [s for s, t in ran if t > a and s < b]
            first = max(a, min(inside)) if inside else b
            cands = [(jid, j) for jid, j in jobs.items() if node in j["nodes"]
                     and j["slurm_start"] < b and (not inside or j["slurm_start"] <= first)]
            jid, job = max(cands, key=lambda c: c[1]["slurm_start"]) if cands and inside \
                else (None, {})   # no task ran in it: no pool job there (or one too late)
            marks = [a]
            if job:
                sub = job["submitted"] if job["submitted"] is not None else job["slurm_start"]
                proc = job["process_start"] or job["slurm_start"]
                marks += [sub, job["slurm_start"], proc]
            marks = [min(max(m, a), first) for m in marks] + [first]
            parts = {"other": marks[1] - marks[0]} if job else {"other": first - a}
            if job:
                parts.update(slurm=marks[2] - marks[1], launch=marks[3] - marks[2],
                             startup=marks[4] - marks[3])
            parts["other"] = parts.get("other", 0.0) + max(0.0, (b - first) - covered)
            for k, v in parts.items():
                split[k] += v
            rows.append({"node": node, "start": round(a, 2), "end": round(b, 2),
                         "idle_s": round(b - a, 2), "covered_s": round(covered, 2),
                         "job": jid, "submitted": _rel(job.get("submitted"), a),
                         "slurm_start": _rel(job.get("slurm_start"), a),
                         "process_start": _rel(job.get("process_start"), a),
                         "joined": _rel(job.get("joined"), a),
                         "first_task": _rel(first, a) if inside else None})
    return rows, {k: round(v, 1) for k, v in split.items()}


def _rel(t: float | None, a: float) -> float | None:
    return None if t is None else round(t - a, 2)


def work(marks: str, key: int, seconds: float) -> tuple[str, float, float]:
    """A short numpy task: matrix products for about ``seconds``; leaves a start line."""
    import socket
    import time

    import numpy as np
    host, start = socket.gethostname(), time.time()
    with open(f"{marks}/{key}", "a") as f:
        f.write(f"start {host}\n")
    a = np.random.default_rng(key).random((120, 120))
    while time.time() - start < seconds:
        a = (a @ a) / a.sum()
    return host, start, time.time()


def run_with_pool(e: dict, jobs: list[dict], directory: Path, total: float, grace: int
                  ) -> tuple[list[dict], dict]:
    import cloudpickle

    import colocate
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    hosts = directory / "world.hosts"
    hosts.write_text("vnode1\nvnode1\n")
    address = directory / "world.address"
    we = {**e, "SLURM_HOSTFILE": str(hosts), "COLOCATE_CO_LOCATION_SPARE_CORES": "all",
          "COLOCATE_SERVER_BIND": "vnode1", "COLOCATE_POOL_MAX_JOBS": "2",
          "COLOCATE_POOL_MAX_PENDING": "2", "COLOCATE_POOL_INTERVAL": "0.5",
          "COLOCATE_POOL_PARTITION": "pool", "COLOCATE_POOL_TIME": "30m",
          "COLOCATE_POOL_GRACE": str(grace), "COLOCATE_POOL_IDLE_TIMEOUT": "5",
          "COLOCATE_POOL_OPTIONS": '["--exclusive"]'}
    log = open(directory / "world.log", "wb")
    world = subprocess.Popen(["srun", "--job-name=idlebench-world", "--distribution=arbitrary",
                              "--ntasks=2", "--mpi=pmi2", "--time=30", sys.executable, "-m",
                              "colocate", "serve", "--address-file", str(address)],
                             env=we, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    marks = directory / "marks"
    marks.mkdir()
    futures, failed, lost, records, seen = [], 0, 0, [], {}
    try:
        deadline = time.time() + 90
        while not address.exists() and time.time() < deadline:
            time.sleep(0.2)
        import threading
        stop = threading.Event()
        poller = threading.Thread(target=poll_pool_jobs, args=(e, stop, seen), daemon=True)
        poller.start()
        with colocate.Executor(address=address) as ex:
            def feed() -> None:
                while not stop.is_set():
                    pending = sum(not f.done() for f in futures)
                    for _ in range(BACKLOG - pending):
                        futures.append(ex.submit(work, str(marks), len(futures), TASK_SECONDS))
                    time.sleep(0.1)
            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            done = replay(e, jobs, directory, total, "pool")
            stop.set()
            feeder.join(10)
            for f in futures:
                try:
                    records.append(f.result(timeout=120))
                except (TimeoutError, colocate.errors.WorkerLost):
                    lost += 1      # never ended, or its worker went away
                except Exception:   # noqa: BLE001 (counted: a failed task)
                    failed += 1
        subprocess.run(["bash", str(ON), "vnode1", sys.executable, "-m", "colocate", "stop",
                        "--address", str(address)], env=we, capture_output=True, timeout=90)
    finally:
        if world.poll() is None:
            try:
                world.wait(60)
            except subprocess.TimeoutExpired:
                world.kill()
        log.close()
        left = slurm(e, "squeue", "-h", "-o", "%i", "--partition=pool").split()
        if left:
            slurm(e, "scancel", *left)
    starts = [len((marks / str(k)).read_text().splitlines()) if (marks / str(k)).exists()
              else 0 for k in range(len(futures))]
    tasks = {"tasks_submitted": len(futures), "tasks_succeeded": len(records),
             "tasks_failed": failed,
             "tasks_lost": lost,
             "tasks_duplicated": sum(s > 1 for s in starts), "records": records,
             "jobs": pool_jobs(directory, seen, done[0]["t0"])}
    return done, tasks


def print_holes(rows: list[dict]) -> None:
    """The per-hole table: times in seconds from the hole's start (``-`` when not known)."""
    cols = ("node", "idle_s", "covered_s", "job", "submitted", "slurm_start", "process_start",
            "joined", "first_task")
    print("  ".join(f"{c:>13}" for c in cols))
    for r in rows:
        print("  ".join(f"{'-' if r[c] is None else r[c]!s:>13}" for c in cols))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a short trace (about 50 s)")
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--json", default=str(REPO / "bench" / "results" / "idle_nodes.json"))
    a = p.parse_args(argv)
    total = 50.0 if a.quick else 110.0
    e = env()
    if "vnode2" not in slurm(e, "sinfo", "-h", "-N", "-o", "%N"):
        print("idle_nodes: the virtual cluster is not up (bash tests/cluster/up.sh 3)",
              file=sys.stderr)
        return 2
    part = slurm(e, "scontrol", "show", "partition", "pool")
    if "GraceTime=" not in part:
        print("idle_nodes: no preemptible partition 'pool' (an older up.sh?)", file=sys.stderr)
        return 2
    grace = int(part.split("GraceTime=")[1].split()[0])
    jobs = trace(a.seed, total)
    with tempfile.TemporaryDirectory(prefix="idle-nodes-", dir="/tmp") as tmp:
        directory = Path(tmp)
        base = replay(e, jobs, directory, total, "base")
        with_pool, tasks = run_with_pool(e, jobs, directory, total, grace)
    idle = idle_intervals(with_pool)
    idle_s = sum(b - a for node in idle for a, b in idle[node])
    covered = sum(overlap(union([(s, t) for h, s, t in tasks["records"] if h == node]),
                          idle[node]) for node in POOL_NODES)
    rows, uncovered = holes(idle, tasks["records"], tasks.pop("jobs"))
    delays = [(p["start"] - p["submitted"]) - (b["start"] - b["submitted"])
              for p, b in zip(with_pool, base, strict=True) if p["start"] and b["start"]]
    tasks.pop("records")
    out = {"seed": a.seed, "quick": a.quick, "trace_s": total, "batch_jobs": len(jobs),
           "idle_node_s": round(idle_s, 1), "covered_node_s": round(covered, 1),
           "coverage": round(covered / idle_s, 3) if idle_s else None,
           "start_delay_p50_s": round(statistics.median(delays), 2) if delays else None,
           "start_delay_max_s": round(max(delays), 2) if delays else None,
           "grace_s": grace, **tasks, "uncovered_s": uncovered,
           "machine": os.uname().nodename, "cpus": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()}
    print_holes(rows)
    out["holes"] = rows
    width = max(map(len, out))
    for k, v in out.items():
        if k != "holes":
            print(f"{k:<{width}}  {v}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
