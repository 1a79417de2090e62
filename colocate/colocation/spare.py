"""Spare cores: decide which of this process's allowed cores the host job leaves idle.

``co_location.spare_cores`` and its companions, in order of precedence:

1. an explicit CPU list (``"6-7,14-15"`` or ``[6, 7]``): exactly those cores. They must be in
   the allowed set (``os.sched_getaffinity(0)``), and must not overlap the host cores named by
   ``host_pids`` / ``host_cgroup`` if those are also given. ``source="explicit"``.
2. ``"all"``: every allowed core (same overlap check). ``source="all"``.
3. ``"auto"`` (the default) with ``host_pids`` and/or ``host_cgroup``: the host cores are the
   union of the affinities of those processes (every thread and every descendant) and of the
   cgroup's ``cpuset`` (effective cpus, v1 or v2); spare = allowed minus host. An unpinned
   host job has every core in its affinity and leaves no spare core: pin it (e.g.
   ``srun --cpu-bind=cores``) or name the cores. ``source="host_pids"``/``"host_cgroup"``.
4. ``"auto"`` alone: per-core utilization measured from ``/proc/stat`` over ``auto_window``
   seconds (default 0.3), minus the CPU time of our own processes (``own_pids`` and their
   descendants). Cores busier than ``auto_threshold`` (default 0.25) are the host's; the rest
   are spare. ``source="auto"``. When nothing else runs, every allowed core is spare,
   including those rank 0 and the worker ranks sit on: they back off while idle, executors
   run at idle priority, so no core needs to be kept back for them.

   Inside a Slurm job (``SLURM_JOB_ID`` set), ``"auto"`` also uses, and reports in ``detail``:

   - the binding srun gave this task: ``SLURM_CPU_BIND_TYPE`` / ``SLURM_CPU_BIND_LIST``
     (``mask_cpu`` masks or ``map_cpu`` ids, entry ``SLURM_LOCALID``): candidates are the
     allowed cores within it (if the two do not intersect, the affinity wins and the detail
     says so). Slurm's ids are abstract CPU ids, equal to the OS ids on most nodes;
   - ``SLURM_CPUS_ON_NODE`` (else ``SLURM_JOB_CPUS_PER_NODE`` at ``SLURM_NODEID``): the job's
     CPUs on this node. If the allowed set is larger (the step is not confined to the job's
     cores, no cgroup ``ConstrainCores``), at most that many minus the busy cores are taken,
     the least busy first, so colocate never uses more cores than the job owns.

   Measurement sees only what runs at start-up: if the host job starts later, prefer
   ``host_pids``/``host_cgroup`` or an explicit list; the guard protects the host either way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from colocate.colocation.cpulist import format_cpulist, parse_cpulist, parse_cpumask
from colocate.errors import ConfigError

KEY = "co_location.spare_cores"

#: measure(cores, window_seconds, own_pids) -> {core: host busy fraction}
Measure = Callable[[list[int], float, list[int]], Mapping[int, float]]


@dataclass(frozen=True)
class SpareCores:
    """The outcome of spare-core discovery on this node.

    Attributes:
        cores: the spare cores, sorted.
        host_cores: the allowed cores left to the host job, sorted.
        source: ``"explicit"``, ``"all"``, ``"host_pids"``, ``"host_cgroup"``,
            ``"host_pids+host_cgroup"`` or ``"auto"``.
        detail: how it was decided, in words, for the log and ``colocate info``.
    """

    cores: list[int]
    host_cores: list[int]
    source: str
    detail: str


def discover_spare_cores(settings: Mapping, *, own_pids: Iterable[int] = (),
                         allowed: Iterable[int] | None = None,
                         env: Mapping[str, str] | None = None,
                         measure: Measure | None = None) -> SpareCores:
    """Find this node's spare cores from the ``co_location`` settings.

    Args:
        settings: the ``co_location`` section (keys used: ``spare_cores``, ``host_pids``,
            ``host_cgroup``, ``auto_threshold``, ``auto_window``).
        own_pids: our processes (and, through their descendants, our children), whose CPU
            time is not the host's.
        allowed: the cores this process may use (default ``os.sched_getaffinity(0)``).
        env: the environment for the Slurm hints (default ``os.environ``).
        measure: the utilization measurement (default: :func:`measure_host_busy`), injectable
            for tests.

    Raises:
        ConfigError: a setting is invalid, a host pid does not exist, a host cgroup has no
            cpuset, or explicit cores fall outside the allowed set or on host cores.
    """
    allowed_list = sorted(allowed if allowed is not None else os.sched_getaffinity(0))
    env = os.environ if env is None else env
    spec = settings.get("spare_cores", "auto")
    if spec is None:
        spec = "auto"
    mode = spec.strip().lower() if isinstance(spec, str) else None
    explicit: list[int] | None = None
    if mode not in ("auto", "all"):
        try:
            explicit = parse_cpulist(spec, key=KEY)
        except ConfigError as e:
            raise ConfigError(f"{str(e).removeprefix(KEY + ': ')}, or 'auto' or 'all'",
                              key=KEY) from None
        if not explicit:
            raise ConfigError(f"found {spec!r}, an empty list; expected cores like '2-3', "
                              "or 'auto' or 'all'", key=KEY)

    host, host_source, host_detail = _declared_host_cores(settings)

    if explicit is not None or mode == "all":
        chosen = explicit if explicit is not None else allowed_list
        outside = sorted(set(chosen) - set(allowed_list))
        if outside:
            raise ConfigError(
                f"found cores {format_cpulist(outside)} that this process may not use; "
                f"expected cores within its affinity {format_cpulist(allowed_list)} "
                "(check the batch system's binding, e.g. srun --cpu-bind / --overlap)",
                key=KEY,
            )
        clash = sorted(set(chosen) & set(host or ()))
        if clash:
            raise ConfigError(
                f"found cores {format_cpulist(clash)} that are also host cores ({host_detail}); "
                "expected spare cores disjoint from the host's", key=KEY)
        rest = sorted(set(allowed_list) - set(chosen))
        source = "explicit" if explicit is not None else "all"
        return SpareCores(sorted(chosen), rest, source,
                          f"{source}: {format_cpulist(chosen)} of allowed "
                          f"{format_cpulist(allowed_list)}")

    if host is not None:
        spare = sorted(set(allowed_list) - set(host))
        detail = f"{host_detail}; spare = allowed {format_cpulist(allowed_list)} minus host"
        if not spare:
            detail += (": none left (is the host job unpinned? pin it, e.g. srun "
                       "--cpu-bind=cores, or set co_location.spare_cores)")
        return SpareCores(spare, sorted(set(allowed_list) & set(host)), host_source, detail)

    return _auto(settings, allowed_list, list(own_pids), env, measure or measure_host_busy)


def measure_host_busy(cores: list[int], window: float, own_pids: list[int]) -> dict[int, float]:
    """Busy fraction per core over ``window`` seconds, minus our own processes' time."""
    from colocate.colocation.guard import HostLoadSampler, process_tree

    tree = process_tree(own_pids) if own_pids else []
    sampler = HostLoadSampler(cores, lambda: tree)
    time.sleep(window)  # the measurement window itself, not a wait for a condition
    return sampler.sample()


def _auto(settings: Mapping, allowed: list[int], own_pids: list[int], env: Mapping[str, str],
          measure: Measure) -> SpareCores:
    threshold = _fraction(settings.get("auto_threshold", 0.25), "co_location.auto_threshold")
    window = settings.get("auto_window", 0.3)
    if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 < window <= 60:
        raise ConfigError(f"found {window!r}, expected seconds in (0, 60]",
                          key="co_location.auto_window")
    notes: list[str] = []
    candidates = list(allowed)
    cap = None
    if env.get("SLURM_JOB_ID"):
        bound = slurm_bound_cpus(env)
        if bound is not None:
            inside = [c for c in candidates if c in bound]
            if inside:
                if inside != candidates:
                    notes.append(f"srun binding {format_cpulist(bound)} narrows allowed")
                candidates = inside
            else:
                notes.append(f"srun binding {format_cpulist(bound)} is outside the affinity "
                             f"{format_cpulist(allowed)}: affinity used")
        cap = slurm_cpus_on_node(env)
        if cap is not None:
            notes.append(f"job has {cap} CPUs on this node")
    busy = measure(candidates, float(window), own_pids)
    spare = [c for c in candidates if busy.get(c, 0.0) < threshold]
    host_busy = [c for c in candidates if c not in spare]
    if cap is not None and len(candidates) > cap:
        keep = max(0, cap - len(host_busy))
        if len(spare) > keep:
            notes.append(f"allowed cores exceed the job's {cap}: kept the {keep} least busy")
            spare = sorted(sorted(spare, key=lambda c: (busy.get(c, 0.0), c))[:keep])
    listed = candidates if len(candidates) <= 16 else [c for c in candidates if c not in spare]
    shown = ", ".join(f"{c}: {busy[c]:.0%}" for c in listed if c in busy)
    detail = (f"measured over {window} s, threshold {threshold:.0%}; "
              f"busy {shown or 'none'}; spare {format_cpulist(spare) or 'none'}")
    if notes:
        detail += "; slurm: " + "; ".join(notes)
    return SpareCores(spare, sorted(set(allowed) - set(spare)), "auto", detail)


def _fraction(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"found {value!r}, expected a fraction in (0, 1]", key=key)
    return float(value)


def _declared_host_cores(settings: Mapping) -> tuple[list[int] | None, str, str]:
    """Host cores from ``host_pids`` and ``host_cgroup``; ``None`` when neither is set."""
    pids = _host_pids(settings.get("host_pids") or [])
    cgroup = settings.get("host_cgroup")
    if not pids and not cgroup:
        return None, "", ""
    cores: set[int] = set()
    sources, details = [], []
    if pids:
        from_pids = host_cores_from_pids(pids)
        cores |= set(from_pids)
        sources.append("host_pids")
        details.append(f"host pids {pids} run on {format_cpulist(from_pids)}")
    if cgroup:
        if not isinstance(cgroup, str):
            raise ConfigError(f"found {cgroup!r}, expected a cgroup path",
                              key="co_location.host_cgroup")
        from_cg, path = host_cores_from_cgroup(cgroup)
        cores |= set(from_cg)
        sources.append("host_cgroup")
        details.append(f"host cgroup {path} has cpus {format_cpulist(from_cg)}")
    return sorted(cores), "+".join(sources), "; ".join(details)


def _host_pids(value: object) -> list[int]:
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if isinstance(item, str) and item.strip().isdigit():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int) or item <= 0:
            raise ConfigError(f"found {item!r} in {value!r}, expected process ids like [1234]",
                              key="co_location.host_pids")
        out.append(item)
    return out


def host_cores_from_pids(pids: Iterable[int]) -> list[int]:
    """Union of the affinities of ``pids``, their threads and their descendants.

    Raises:
        ConfigError: a pid does not exist (is the host job running?).
    """
    import psutil

    cores: set[int] = set()
    for pid in pids:
        try:
            procs = [psutil.Process(pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            raise ConfigError(f"found no process {pid}; expected the pid of a running host job "
                              "process", key="co_location.host_pids") from None
        for p in procs:
            try:
                tids = [t.id for t in p.threads()] or [p.pid]
            except psutil.Error:
                tids = [p.pid]
            for tid in tids:
                try:
                    cores |= os.sched_getaffinity(tid)
                except OSError:
                    continue
    return sorted(cores)


def host_cores_from_cgroup(path: str) -> tuple[list[int], str]:
    """CPUs of the host's cgroup (``cpuset.cpus.effective`` / ``cpuset.effective_cpus``).

    Args:
        path: a directory (``/sys/fs/cgroup/cpuset/slurm/uid_1/job_7``) or a path within the
            cgroup hierarchy (``/slurm/uid_1/job_7``), looked up in the v2 mount and the v1
            cpuset mount.

    Returns:
        (cores, the directory read).

    Raises:
        ConfigError: no such cgroup, or it has no cpuset files.
    """
    from colocate.colocation.cgroups import read_mounts

    candidates = [path] if os.path.isabs(path) and os.path.isdir(path) else []
    for m in read_mounts():
        if m.version == 2 or "cpuset" in m.controllers:
            candidates.append(os.path.join(m.path, path.lstrip("/")))
    for d in candidates:
        for name in ("cpuset.cpus.effective", "cpuset.effective_cpus", "cpuset.cpus"):
            try:
                with open(os.path.join(d, name)) as f:
                    text = f.read().strip()
            except OSError:
                continue
            if text:
                return parse_cpulist(text, key="co_location.host_cgroup"), d
    raise ConfigError(
        f"found no cpuset in {path!r} (looked in {', '.join(candidates) or 'no cgroup mount'}); "
        "expected the host job's cgroup in the cpuset hierarchy, e.g. "
        "/sys/fs/cgroup/cpuset/slurm/uid_1000/job_42", key="co_location.host_cgroup")


def slurm_bound_cpus(env: Mapping[str, str]) -> list[int] | None:
    """The cores srun bound this task to, from SLURM_CPU_BIND_TYPE/LIST and SLURM_LOCALID.

    Returns ``None`` when there is no map/mask binding (e.g. ``--cpu-bind=none``) or it does
    not parse.
    """
    kind = env.get("SLURM_CPU_BIND_TYPE", "")
    entries = [e for e in env.get("SLURM_CPU_BIND_LIST", "").split(",") if e]
    if not entries:  # SLURM_CPU_BIND="quiet,mask_cpu:0x3,0xC"
        bind = env.get("SLURM_CPU_BIND", "")
        for tag in ("mask_cpu:", "map_cpu:"):
            if tag in bind:
                kind = tag
                entries = [e for e in bind.split(tag, 1)[1].split(",") if e]
    if not entries or not ("mask" in kind or "map" in kind):
        return None
    try:
        entry = entries[int(env.get("SLURM_LOCALID", "0")) % len(entries)]
        if "map" in kind:
            return [int(entry, 0)]
        return parse_cpumask(entry)
    except ValueError:
        return None


def slurm_cpus_on_node(env: Mapping[str, str]) -> int | None:
    """The job's CPU count on this node: SLURM_CPUS_ON_NODE, else SLURM_JOB_CPUS_PER_NODE.

    ``SLURM_JOB_CPUS_PER_NODE`` looks like ``"72(x2),36"``; entry ``SLURM_NODEID`` is ours.
    """
    text = env.get("SLURM_CPUS_ON_NODE", "").strip()
    if text.isdigit():
        return int(text)
    per_node: list[int] = []
    for part in env.get("SLURM_JOB_CPUS_PER_NODE", "").split(","):
        count, _, rep = part.strip().partition("(x")
        if not count.isdigit():
            return None
        per_node += [int(count)] * (int(rep.rstrip(")")) if rep.rstrip(")").isdigit() else 1)
    node = env.get("SLURM_NODEID", "0")
    if per_node and node.isdigit() and int(node) < len(per_node):
        return per_node[int(node)]
    return None
