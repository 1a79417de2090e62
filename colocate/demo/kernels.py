"""Small numpy kernels for the demo batch: Monte Carlo pi, heat diffusion, matrix statistics.

Each is deterministic for its arguments (random ones take a ``seed``) and runs in well under
a second at the sizes used in ``demo.yaml``. ``examples/kernels.py`` builds on them.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 1 << 20   # samples drawn at a time: bounds memory at ~32 MiB whatever `samples` is


def monte_carlo_pi(samples: int, seed: int = 0) -> float:
    """Estimate pi from ``samples`` uniform points in the unit square.

    Args:
        samples: number of points (> 0).
        seed: seed of the random generator; the same seed gives the same estimate.

    Returns:
        4 * (fraction of points inside the quarter circle).
    """
    if samples <= 0:
        raise ValueError(f"samples must be > 0, found {samples}")
    rng = np.random.default_rng(seed)
    inside = 0
    left = int(samples)
    while left:
        n = min(left, _CHUNK)
        x, y = rng.random(n), rng.random(n)
        inside += int(np.count_nonzero(x * x + y * y <= 1.0))
        left -= n
    return 4.0 * inside / samples


def heat_diffusion(n: int, steps: int, alpha: float = 0.2) -> np.ndarray:
    """Explicit 2D heat equation on an ``n`` x ``n`` plate with a hot square in the middle.

    The boundary is held at 0; each step applies the 5-point Laplacian. The scheme is stable
    for ``alpha <= 0.25``.

    Args:
        n: grid points per side (>= 3).
        steps: time steps.
        alpha: diffusion number (dt * k / dx**2).

    Returns:
        The temperature field after ``steps`` steps, shape ``(n, n)``.
    """
    if not 0 < alpha <= 0.25:
        raise ValueError(f"alpha must be in (0, 0.25] for a stable scheme, found {alpha}")
    u = np.zeros((n, n))
    q = max(1, n // 4)
    u[n // 2 - q // 2:n // 2 + (q + 1) // 2, n // 2 - q // 2:n // 2 + (q + 1) // 2] = 100.0
    for _ in range(steps):
        u[1:-1, 1:-1] += alpha * (u[2:, 1:-1] + u[:-2, 1:-1] + u[1:-1, 2:] + u[1:-1, :-2]
                                  - 4.0 * u[1:-1, 1:-1])
    return u


def matrix_stats(n: int, seed: int = 0) -> dict:
    """Spectral statistics of a random symmetric ``n`` x ``n`` Gaussian matrix (GOE).

    Returns:
        A dict with the largest and smallest eigenvalue, the spectral norm, the condition
        number and log|det|; for large ``n`` the extreme eigenvalues approach +-2*sqrt(n).
    """
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    a = (a + a.T) / np.sqrt(2.0)
    eig = np.linalg.eigvalsh(a)
    _, logdet = np.linalg.slogdet(a)
    return {"n": n, "eig_max": float(eig[-1]), "eig_min": float(eig[0]),
            "norm": float(np.linalg.norm(a, 2)), "cond": float(np.linalg.cond(a)),
            "logabsdet": float(logdet)}
