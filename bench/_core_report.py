"""Ratios, verdict and table of ``bench/core.py``: pure functions from its rows to text.

A row is the dict one system's measurement returned (``roundtrip_us``, ``wakeup_us``,
``throughput``, ``idle_cpu_pct``, ...); ``rows`` maps the system names of :data:`SYSTEMS` to them.
``plan`` is core's ``Plan`` (its ``tasks``, ``chunksize`` and ``wake_idle`` label the table).
"""

from __future__ import annotations

TARGET_RT_RATIO = 8.0   # colocate round trip p50 / raw MPI p50, at most
TARGET_TPUT_RATIO = 5.0  # colocate submit+wait throughput / mpi4py.futures', at least
TARGET_IDLE_PCT = 2.0   # idle CPU per rank, at most (% of one core)
RAW_SANE_US = 50.0      # a raw MPI p50 above this is a disturbed floor: the ratio is not judged
TARGETS = {"rt_over_raw_max": TARGET_RT_RATIO, "tput_over_peer_min": TARGET_TPUT_RATIO,
           "idle_cpu_pct_max": TARGET_IDLE_PCT, "raw_p50_us_judged_max": RAW_SANE_US}
SYSTEMS = ("raw", "colocate", "colocate_inline", "peer")
TITLES = {"raw": "raw MPI", "colocate": "colocate", "colocate_inline": "colocate inline",
          "peer": "mpi4py.futures"}


def ratios(rows: dict) -> dict:
    raw = rows["raw"]["roundtrip_us"]["p50"]
    peer = rows.get("peer")
    out = {}
    for name in ("colocate", "colocate_inline", "peer"):
        if name in rows:
            out[f"{name}_rt_over_raw"] = rows[name]["roundtrip_us"]["p50"] / raw
            if peer and name != "peer":
                out[f"{name}_tput_over_peer"] = (rows[name]["throughput"]["submit"]
                                                 / peer["throughput"]["submit"])
                out[f"peer_rt_over_{name}"] = (peer["roundtrip_us"]["p50"]
                                               / rows[name]["roundtrip_us"]["p50"])
    return out


def verdict(rows: dict, rat: dict) -> dict:
    """PASS/MISS per target of issue 2, for the default (process) isolation."""
    co = rows["colocate"]
    raw = rows["raw"]["roundtrip_us"]["p50"]
    rt_why = (f"round trip p50 {rat['colocate_rt_over_raw']:.1f}x raw MPI "
              f"(target <= {TARGET_RT_RATIO:g}x)")
    if raw > RAW_SANE_US:
        rt_why += (f", not judged: the raw MPI floor was disturbed by other load "
                   f"(p50 {raw:,.0f} us > {RAW_SANE_US:g} us), counted as a miss")
    checks = {
        "roundtrip": (raw <= RAW_SANE_US and rat["colocate_rt_over_raw"] <= TARGET_RT_RATIO,
                      rt_why),
        "throughput": (rat["colocate_tput_over_peer"] >= TARGET_TPUT_RATIO,
                       f"throughput {rat['colocate_tput_over_peer']:.2f}x mpi4py.futures "
                       f"(target >= {TARGET_TPUT_RATIO:g}x)"),
        "idle_cpu": (co["idle_cpu_max_rank_pct"] <= TARGET_IDLE_PCT,
                     f"idle CPU max {co['idle_cpu_max_rank_pct']:.2f} % per rank "
                     f"(target <= {TARGET_IDLE_PCT:g} %)"),
    }
    result = "PASS" if all(ok for ok, _ in checks.values()) else "MISS"
    text = "; ".join(f"{why}: {'PASS' if ok else 'MISS'}" for ok, why in checks.values())
    if "peer_rt_over_colocate" in rat:
        text += (f" (for reference: mpi4py.futures' round trip p50 is "
                 f"{rat['peer_rt_over_colocate']:.2f}x colocate's)")
    return {"result": result, "checks": {k: {"pass": ok, "why": why}
                                         for k, (ok, why) in checks.items()}, "text": text}


def fmt(x, kind: str) -> str:
    if x is None:
        return "-"
    if kind == "us":
        return f"{x:.1f}" if x < 100 else f"{x:,.0f}"
    if kind == "rate":
        return f"{x:,.0f}"
    if kind == "pct":
        return f"{x:.2f}"
    return f"{x:.2f}x"


def table_lines(rows: dict, plan, rat: dict) -> list[tuple[str, dict, str]]:
    """``(label, {system: value}, kind)`` for every line of the table."""
    def get(path, names=SYSTEMS):
        out = {}
        for n in names:
            v = rows.get(n)
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            out[n] = v
        return out

    def cpu(pred):
        out = {}
        for n in SYSTEMS[1:]:
            vals = [v for r, v in rows.get(n, {}).get("idle_cpu_pct", {}).items() if pred(r)]
            out[n] = max(vals) if vals else None
        return out

    cs = plan.chunksize
    lines = [
        ("round trip p50 (us)", get(("roundtrip_us", "p50")), "us"),
        ("round trip p99 (us)", get(("roundtrip_us", "p99")), "us"),
        ("  ratio p50 / raw MPI p50", {n: rat.get(f"{n}_rt_over_raw") for n in SYSTEMS}, "x"),
        ("numpy Send/Recv round trip p50 (us)", get(("numpy_roundtrip_us", "p50")), "us"),
        ("numpy Send/Recv round trip p99 (us)", get(("numpy_roundtrip_us", "p99")), "us"),
        (f"wake-up after {plan.wake_idle:g} s idle p50 (us)", get(("wakeup_us", "p50")), "us"),
        (f"wake-up after {plan.wake_idle:g} s idle max (us)", get(("wakeup_us", "max")), "us"),
        (f"throughput {plan.tasks} submit+wait (tasks/s)", get(("throughput", "submit")),
         "rate"),
        ("  ratio / mpi4py.futures", {n: rat.get(f"{n}_tput_over_peer") for n in SYSTEMS}, "x"),
        (f"throughput {plan.tasks} map chunksize 1 (tasks/s)", get(("throughput", "map_1")),
         "rate"),
        (f"throughput {plan.tasks} map chunksize {cs} (tasks/s)",
         get(("throughput", f"map_{cs}")), "rate"),
        ("idle CPU, max per rank (% core)", get(("idle_cpu_max_rank_pct",)), "pct"),
        ("idle CPU, rank 0 (% core)", cpu(lambda r: r == "rank 0"), "pct"),
        ("idle CPU, worker ranks max (% core)", cpu(lambda r: r.startswith("rank ")
                                                    and r != "rank 0"), "pct"),
        ("idle CPU, executor children max (% core)", cpu(lambda r: r.startswith("child")),
         "pct"),
        ("idle CPU, client process (% core)", cpu(lambda r: r == "client"), "pct"),
    ]
    return lines


def render(rows: dict, plan, rat: dict) -> str:
    cols = [n for n in SYSTEMS if n in rows]
    lines = table_lines(rows, plan, rat)
    width = max(len(label) for label, _, _ in lines)
    head = f"{'metric':<{width}} | " + " | ".join(f"{TITLES[n]:>15}" for n in cols)
    out = [head, "-" * len(head)]
    for label, values, kind in lines:
        out.append(f"{label:<{width}} | "
                   + " | ".join(f"{fmt(values.get(n), kind):>15}" for n in cols))
    return "\n".join(out)
