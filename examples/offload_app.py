"""An mpi4py application that offloads its post-processing to colocate ranks of its own job.

The 1-D heat equation ``u_t = u_xx`` on ``[0, 1]`` with ``u(0) = u(1) = 0`` and
``u(x, 0) = sin(pi x)``, solved by explicit finite differences on the compute ranks, which split
the grid and exchange halo points every step. Every ``--every`` steps each compute rank hands a
copy of its slab to colocate, which computes the slab's statistics on the serving ranks while
the solver goes on. At the end the statistics are combined with ``allreduce`` into the L2 norm of
the field over time and checked against the exact decay of the discrete sine mode.

Run with at least 4 ranks: the last 2 form the colocate world (one schedules, one runs tasks)::

    mpiexec -n 4 python examples/offload_app.py [--points 400] [--steps 800] [--every 50]

Rank 0 prints one line starting with ``offload_app:`` and ending in ``OK``; the exit code is 0
when the offloaded statistics match the exact solution, 1 when they do not, 2 for a bad launch.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
from mpi4py import MPI

import colocate

WORKERS = 1          # colocate ranks that run tasks (one more rank schedules them)
TOLERANCE = 1e-9     # relative error allowed against the exact discrete decay


def slab_statistics(step: int, u: np.ndarray) -> tuple[int, float, float]:
    """Offloaded: the step, the sum of squares and the maximum of one slab."""
    return step, float(np.dot(u, u)), float(np.abs(u).max(initial=0.0))


def split(n: int, parts: int, index: int) -> tuple[int, int]:
    """The ``[start, stop)`` of part ``index`` when ``n`` points are split in ``parts``."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def solve(comm: MPI.Comm, ex: colocate.Executor, points: int, steps: int, every: int) -> dict:
    """Run the solver on ``comm``, offloading statistics to ``ex``; returns the summary."""
    rank, size = comm.Get_rank(), comm.Get_size()
    dx = 1.0 / (points + 1)
    dt = 0.4 * dx * dx
    ratio = dt / (dx * dx)
    start, stop = split(points, size, rank)
    x = (np.arange(start, stop) + 1) * dx
    u = np.sin(math.pi * x)
    left = rank - 1 if rank > 0 else MPI.PROC_NULL
    right = rank + 1 if rank < size - 1 else MPI.PROC_NULL
    ghost = np.zeros(len(u) + 2)
    futures = [ex.submit(slab_statistics, 0, u.copy())]
    for step in range(1, steps + 1):
        ghost[1:-1] = u
        comm.Sendrecv(ghost[1:2], dest=left, recvbuf=ghost[-1:], source=right)
        comm.Sendrecv(ghost[-2:-1], dest=right, recvbuf=ghost[:1], source=left)
        u += ratio * (ghost[:-2] - 2.0 * u + ghost[2:])
        if step % every == 0 or step == steps:
            futures.append(ex.submit(slab_statistics, step, u.copy()))
    results = [f.result(timeout=120) for f in futures]
    places = sorted({f.info.where() for f in futures})
    local = np.array([sq for _, sq, _ in results])
    total = np.empty_like(local)
    comm.Allreduce(local, total, op=MPI.SUM)
    peak = comm.allreduce(max(m for _, _, m in results), op=MPI.MAX)
    # The discrete sine mode decays by exactly this factor per step.
    factor = 1.0 - 4.0 * ratio * math.sin(math.pi * dx / 2.0) ** 2
    norm0 = math.sqrt(dx * total[0])
    worst = 0.0
    for (step, _, _), sq in zip(results, total, strict=True):
        exact = norm0 * factor ** step
        worst = max(worst, abs(math.sqrt(dx * sq) - exact) / exact)
    all_places = sorted({p for ps in comm.allgather(places) for p in ps})
    return {"ranks": size, "points": points, "steps": steps, "time": steps * dt,
            "tasks": comm.allreduce(len(futures)), "norm": math.sqrt(dx * total[-1]),
            "continuous": norm0 * math.exp(-math.pi ** 2 * steps * dt), "peak": peak,
            "error": worst, "places": all_places}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=400, help="interior grid points")
    parser.add_argument("--steps", type=int, default=800, help="time steps")
    parser.add_argument("--every", type=int, default=50, help="offload every N steps")
    args = parser.parse_args()
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    # The compute ranks need a communicator of their own: the serving ranks are busy serving.
    compute = world.Split(0 if rank < size - WORKERS - 1 else MPI.UNDEFINED, rank)
    try:
        with colocate.embed(world, workers=WORKERS) as ex:
            if ex is None:
                return 0   # this rank served tasks until every compute rank was done
            summary = solve(compute, ex, args.points, args.steps, args.every)
    except colocate.ConfigError as e:
        if rank == 0:
            print(f"offload_app: error: {e}", file=sys.stderr)
        return 2
    finally:
        if compute != MPI.COMM_NULL:
            compute.Free()
    ok = summary["error"] < TOLERANCE
    if rank == 0:
        s = summary
        print(f"offload_app: heat 1-D, {s['points']} points on {s['ranks']} compute ranks, "
              f"{s['steps']} steps to t={s['time']:.4g}; {s['tasks']} statistics tasks ran on "
              f"colocate {'; '.join(s['places'])}; L2 norm {s['norm']:.6e} (continuous exact "
              f"{s['continuous']:.6e}), max |u| {s['peak']:.6f}, rel. error vs the discrete "
              f"solution {s['error']:.1e}: {'OK' if ok else 'FAILED'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
