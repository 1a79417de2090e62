"""Node report: what colocate sees and would do on this node, for ``colocate info`` and logs.

:func:`collect` gathers the topology, the spare cores, the memory budget and which controls
(pinning, SCHED_IDLE, cgroups, freezer) are available and active; :func:`render` turns that
into a table. ``collect`` creates nothing and changes nothing in this process (the SCHED_IDLE
probe runs in a throwaway thread).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping

from colocate.colocation.cgroups import CgroupManager
from colocate.colocation.cpulist import format_cpulist
from colocate.colocation.guard import choose_action
from colocate.colocation.spare import discover_spare_cores
from colocate.colocation.topology import Topology
from colocate.colocation.units import format_size, resolve_budget
from colocate.errors import ConfigError


def collect(settings: Mapping, guard: Mapping | None = None,
            own_pids: Iterable[int] = ()) -> dict:
    """Gather the node report.

    Args:
        settings: the ``co_location`` section.
        guard: the ``guard`` section (defaults apply when ``None``).
        own_pids: our processes, excluded from the host's load in ``"auto"`` discovery.

    Returns:
        A JSON-serializable dict with keys ``node``, ``cores``, ``spare``, ``memory``,
        ``gpus``, ``controls``, ``guard`` (see :func:`render` for their meaning).

    Raises:
        ConfigError: an invalid setting (except spare-core discovery errors, which are
            reported under ``spare.error`` so the rest of the report is still shown).
    """
    guard = guard or {}
    topo = Topology.probe(settings)
    try:
        spare = discover_spare_cores(settings, own_pids=own_pids, allowed=topo.allowed)
        spare_info = {"cores": spare.cores, "host_cores": spare.host_cores,
                      "source": spare.source, "detail": spare.detail}
    except ConfigError as e:
        spare_info = {"cores": [], "host_cores": [], "source": "error", "detail": "",
                      "error": str(e)}
    budget_setting = settings.get("memory_budget", 0.5)
    budget = resolve_budget(budget_setting, topo.memory_available,
                            key="co_location.memory_budget")
    cg = CgroupManager.detect(settings.get("cgroups", "auto") or "auto")
    idle_ok, idle_why = sched_idle_permitted()
    priority = settings.get("priority", "idle")
    action, action_note = choose_action(guard.get("action", "freeze"),
                                        "freezer" in cg.controllers)
    autogroup = _read("/proc/sys/kernel/sched_autogroup_enabled") == "1"
    return {
        "node": topo.node,
        "sources": topo.sources,
        "cores": {
            "online": topo.online,
            "allowed": topo.allowed,
            "threads_per_core": max((len(s) for s in topo.siblings.values()), default=1),
            "numa": {str(k): v for k, v in topo.numa.items()},
        },
        "spare": spare_info,
        "memory": {
            "total": topo.memory_total,
            "available": topo.memory_available,
            "budget": budget,
            "budget_setting": budget_setting,
            "limit_by": ("cgroup memory" if "memory" in cg.controllers
                         else "RLIMIT_AS (last resort)"),
        },
        "gpus": [{"id": g.id, "name": g.name, "memory": g.memory} for g in topo.gpus],
        "controls": {
            "affinity": {"available": hasattr(os, "sched_setaffinity"),
                         "active": bool(settings.get("pinning", True))},
            "sched_idle": {"available": idle_ok, "active": priority == "idle" and idle_ok,
                           "note": idle_why if priority == "idle" else f"priority: {priority}"},
            "autogroup": {"available": autogroup, "active": autogroup and priority != "normal",
                          "note": "executors get their own session at autogroup nice 19"
                          if autogroup else "kernel autogroup off"},
            "cgroups": {"available": cg.available, "active": cg.available,
                        "version": cg.version, "controllers": sorted(cg.controllers),
                        "note": cg.reason},
            "freezer": {"available": "freezer" in cg.controllers,
                        "active": bool(guard.get("enabled", True)) and action == "freeze",
                        "note": action_note},
        },
        "guard": {
            "enabled": bool(guard.get("enabled", True)),
            "interval": guard.get("interval", 0.1),
            "pause_above": guard.get("pause_above", 0.5),
            "resume_below": guard.get("resume_below", 0.2),
            "hold": guard.get("hold", 1.0),
            "action": action,
        },
    }


def render(info: Mapping) -> str:
    """Format a :func:`collect` report as an aligned table for a terminal."""
    rows: list[tuple[str, str]] = []
    cores, spare, mem = info["cores"], info["spare"], info["memory"]
    rows.append(("node", f"{info['node']}  ({info['sources'].get('node', '')})"))
    rows.append(("cores online", format_cpulist(cores["online"])))
    rows.append(("cores allowed", format_cpulist(cores["allowed"])))
    rows.append(("threads per core", str(cores["threads_per_core"])))
    rows.append(("NUMA domains", "  ".join(f"{k}: {format_cpulist(v)}"
                                           for k, v in cores["numa"].items())))
    if "error" in spare:
        rows.append(("spare cores", f"ERROR: {spare['error']}"))
    else:
        rows.append(("spare cores", f"{format_cpulist(spare['cores']) or 'none'}  "
                                    f"(source: {spare['source']})"))
        rows.append(("host cores", format_cpulist(spare["host_cores"]) or "none"))
        rows.append(("  how", spare["detail"]))
        rows.append(("local world", world_plan(spare["cores"])))
    rows.append(("memory total", format_size(mem["total"])))
    rows.append(("memory available", format_size(mem["available"])))
    rows.append(("function budget", f"{format_size(mem['budget'])}  "
                                    f"(memory_budget: {mem['budget_setting']}; "
                                    f"enforced by {mem['limit_by']})"))
    gpus = info["gpus"]
    rows.append(("GPUs", ", ".join(
        g["id"] + (f" {g['name']}" if g.get("name") else "")
        + (f" {format_size(g['memory'])}" if g.get("memory") else "") for g in gpus)
        or f"none  ({info['sources'].get('gpus', '').removeprefix('none ').strip('()')})"))
    for name, c in info["controls"].items():
        state = "active" if c["active"] else ("available" if c["available"] else "unavailable")
        extra = f"v{c['version']} " if c.get("version") else ""
        note = c.get("note") or ""
        rows.append((f"control {name}", f"{state}  {extra}{note}".rstrip()))
    g = info["guard"]
    rows.append(("guard", (f"on, every {g['interval']} s: pause above {g['pause_above']:.0%}, "
                           f"resume below {g['resume_below']:.0%} for {g['hold']} s, "
                           f"action {g['action']}") if g["enabled"] else "off"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def world_plan(spare: list[int], workers: int | None = None) -> str:
    """What a local world (``colocate run``, ``Executor()``) does here, in words.

    Args:
        spare: this node's spare cores.
        workers: the workers asked for (``-n``); None: one per spare core.
    """
    if not spare:
        return "no spare core: name cores with --spare-cores (co_location.spare_cores)"
    n = len(spare) if workers is None else workers
    if n <= len(spare):
        return (f"{n} worker(s), one per spare core: core(s) {format_cpulist(spare[:n])}; "
                "the scheduler (rank 0) shares them")
    return (f"{n} workers sharing {len(spare)} spare core(s) {format_cpulist(spare)}: "
            "each runs slower")


def sched_idle_permitted() -> tuple[bool, str]:
    """Whether this process may use SCHED_IDLE (tried on a throwaway thread), and why not."""
    if not hasattr(os, "SCHED_IDLE"):
        return False, "no SCHED_IDLE on this platform: nice 19 instead"
    result: list[str] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # this thread only
        except OSError as e:
            result.append(f"SCHED_IDLE refused ({e.strerror}): nice 19 instead")

    t = threading.Thread(target=probe, name="colocate-sched-idle-probe")
    t.start()
    t.join(5.0)
    return (not result, result[0] if result else "")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None
