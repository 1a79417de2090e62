"""Reports on a run directory: a summary dict, its text rendering, and a timeline plot.

``colocate report RUN_DIR`` prints :func:`render_summary` of :func:`summarize`; with
``--plot PNG`` it also draws :func:`plot_timeline`, which needs matplotlib (the
``colocate[plot]`` extra) and imports it only then.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from .journal import RESULTS, RunDir, RunSummary
from .progress import format_summary

__all__ = ["plot_timeline", "render_summary", "summarize"]

FAILURE_COLOR = "#d62728"
INTERRUPTED_COLOR = "#ff7f0e"


def _block_of(task_id: str) -> str:
    return task_id.rsplit("-", 2)[0]


def summarize(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Summarize a run directory (it may still be running).

    Returns:
        The :class:`~colocate.batch.journal.RunSummary` fields plus ``complete``,
        ``exit_code``, ``blocks`` (per block: name, function, total, ok, failed,
        interrupted, not_run), ``failures`` (latest failed or interrupted record per task:
        task_id, block, status, error_type, message, worker, attempts, args, kwargs) and
        ``session_log`` (per session: started, finished, host, pid, source).

    Raises:
        ConfigError: ``run_dir`` is not a run directory.
    """
    rd = RunDir.read(run_dir)
    summary = rd.summary()
    status = rd.status()
    functions = {b["name"]: b["function"] for b in rd.meta.get("blocks", [])}
    per_block: dict[str, Counter] = defaultdict(Counter)
    for task_id in rd.task_ids:
        per_block[_block_of(task_id)][status.get(task_id, "not_run")] += 1
    blocks = [{"name": name, "function": functions.get(name, "?"), "total": sum(c.values()),
               "ok": c["ok"], "failed": c["failed"], "interrupted": c["interrupted"],
               "not_run": c["not_run"]} for name, c in per_block.items()]
    latest_bad: dict[str, dict] = {}
    for record in rd.iter_records():
        if status.get(record["task_id"]) != "ok" and record["status"] != "ok":
            latest_bad[record["task_id"]] = record
    order = {task_id: i for i, task_id in enumerate(rd.task_ids)}
    failures = []
    for record in sorted(latest_bad.values(), key=lambda r: order.get(r["task_id"], 0)):
        error = record.get("error") or {}
        failures.append({
            "task_id": record["task_id"], "block": record.get("block"),
            "status": record["status"], "error_type": error.get("type"),
            "message": error.get("message", ""), "worker": _where(record),
            "attempts": record.get("attempts"), "args": record.get("args"),
            "kwargs": record.get("kwargs")})
    return {**summary.to_dict(), "blocks": blocks, "failures": failures,
            "session_log": rd.meta.get("sessions", [])}


def _where(record: dict) -> str | None:
    worker = record.get("worker")
    if worker:
        return f"rank {worker.get('rank')} on {worker.get('node')}, cores {worker.get('cores')}"
    return (record.get("error") or {}).get("worker")


def render_summary(summary: dict[str, Any], max_failures: int = 20) -> str:
    """Render :func:`summarize`'s result as text: totals, blocks, failures, what to do next."""
    fields = {k: summary[k] for k in RunSummary.__dataclass_fields__}
    lines = [format_summary(RunSummary(**fields)), ""]
    width = max([len(b["name"]) for b in summary["blocks"]] + [5])
    lines.append(f"  {'block':<{width}}  {'total':>7} {'ok':>7} {'failed':>7} "
                 f"{'interr.':>7} {'not run':>7}  function")
    for b in summary["blocks"]:
        lines.append(f"  {b['name']:<{width}}  {b['total']:>7} {b['ok']:>7} {b['failed']:>7} "
                     f"{b['interrupted']:>7} {b['not_run']:>7}  {b['function']}")
    failures = summary["failures"]
    if failures:
        lines += ["", f"Failed or interrupted tasks ({len(failures)}):"]
        for f in failures[:max_failures]:
            message = (f["message"] or "").strip().splitlines()
            text = message[0] if message else ""
            text = text if len(text) <= 160 else text[:157] + "..."
            where = f" [{f['worker']}]" if f["worker"] else ""
            lines.append(f"  {f['task_id']} {f['status']}: {f['error_type']}: {text}{where}")
        if len(failures) > max_failures:
            lines.append(f"  ... and {len(failures) - max_failures} more")
        journal = Path(summary["run_dir"]) / RESULTS
        lines.append(f"Tracebacks and arguments: the task's last record in {journal}, e.g. "
                     f"grep '\"task_id\":\"{failures[0]['task_id']}\"' {journal}")
    if not summary["complete"] or summary["failed"]:
        lines.append(f"Run the unfinished and failed tasks again: "
                     f"colocate run --resume {summary['run_dir']}")
    return "\n".join(lines)


def plot_timeline(run_dir: str | os.PathLike, png_path: str | os.PathLike, *,
                  session: int | str | None = None) -> Path:
    """Draw a timeline of the run: one row per worker core, each task attempt a bar.

    Rows are ``node/rank/core``; a task on several cores has a bar on each. Bars are colored
    by block; failed attempts are red, interrupted ones orange.

    Args:
        run_dir: the run directory.
        png_path: the image to write (the format follows the suffix, PNG normally).
        session: the session to show: ``None`` the last one that ran tasks, an index, or
            ``"all"`` (sessions of a resumed run may be hours apart).

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'colocate[plot]'``).
        ConfigError: ``run_dir`` is not a run directory.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib, which is not installed; install the "
                          "extra: pip install 'colocate[plot]'") from exc
    rd = RunDir.read(run_dir)
    records = [r for r in rd.iter_records() if r.get("worker") and r.get("started")
               and r.get("finished") and "node" in r["worker"]]
    if session is None and records:
        session = max(r.get("session", 0) for r in records)
    if session != "all":
        records = [r for r in records if r.get("session", 0) == session]
    rows = sorted({(r["worker"]["node"], r["worker"]["rank"], c)
                   for r in records for c in (r["worker"].get("cores") or [-1])})
    row_of = {row: i for i, row in enumerate(rows)}
    blocks = list(dict.fromkeys(r["block"] for r in records))
    palette = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf"]
    color = {b: palette[i % len(palette)] for i, b in enumerate(blocks)}
    t0 = min((r["started"] for r in records), default=0.0)

    fig = Figure(figsize=(10, min(2.0 + 0.35 * max(len(rows), 1), 30)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for r in records:
        fill = {"failed": FAILURE_COLOR, "interrupted": INTERRUPTED_COLOR}.get(
            r["status"], color[r["block"]])
        for c in r["worker"].get("cores") or [-1]:
            y = row_of[(r["worker"]["node"], r["worker"]["rank"], c)]
            ax.broken_barh([(r["started"] - t0, max(r["finished"] - r["started"], 1e-3))],
                           (y - 0.4, 0.8), facecolors=fill, edgecolors="black", linewidth=0.3)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{n}/r{rank}/c{c}" for n, rank, c in rows],
                       fontsize=8 if len(rows) < 40 else 5)
    ax.set_ylim(-0.6, max(len(rows), 1) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first task started")
    ax.set_ylabel("worker core (node/rank/core)")
    counts = Counter(r["status"] for r in records)
    ax.set_title(f"{rd.name}: {len(records)} task attempts ({counts['ok']} ok, "
                 f"{counts['failed']} failed, {counts['interrupted']} interrupted)")
    handles = [Patch(facecolor=color[b], edgecolor="black", label=b) for b in blocks]
    handles += [Patch(facecolor=FAILURE_COLOR, edgecolor="black", label="failed"),
                Patch(facecolor=INTERRUPTED_COLOR, edgecolor="black", label="interrupted")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    if not records:
        ax.text(0.5, 0.5, "no task attempts with timing recorded", ha="center",
                va="center", transform=ax.transAxes)
    fig.tight_layout()
    out = Path(png_path)
    fig.savefig(out, dpi=120)
    return out
