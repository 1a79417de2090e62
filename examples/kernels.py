"""Example scientific kernels for colocate batches (numpy only, deterministic per seed).

Refer to them in a batch file as ``examples.kernels:<name>`` and run ``colocate run`` from the
repository root (the directory that holds ``examples/``), so that the workers can import them.

- ``monte_carlo_pi``, ``heat_diffusion``, ``matrix_stats``: from ``colocate.demo.kernels``.
- ``jacobi_laplace``: steady-state temperature of a plate, solved by Jacobi iteration (ndarray).
- ``integrate``: Gauss-Legendre quadrature of a named integrand, with an error estimate.
- ``cholesky_logdet``: log-determinant of a shifted covariance matrix; raises
  ``numpy.linalg.LinAlgError`` when the shift makes it indefinite (shows failed tasks).
"""

from __future__ import annotations

import numpy as np

from colocate.demo.kernels import heat_diffusion, matrix_stats, monte_carlo_pi

__all__ = ["cholesky_logdet", "heat_diffusion", "integrate", "jacobi_laplace", "matrix_stats",
           "monte_carlo_pi"]


def jacobi_laplace(n: int, tol: float = 1e-4, max_iter: int = 20_000,
                   top: float = 100.0) -> np.ndarray:
    """Solve Laplace's equation on an ``n`` x ``n`` plate by Jacobi iteration.

    The top edge is held at ``top`` degrees and the other edges at 0.

    Args:
        n: grid points per side (>= 3).
        tol: stop when no point changes by more than ``tol`` in one sweep.
        max_iter: give up after this many sweeps.
        top: temperature of the top edge.

    Returns:
        The temperature field, shape ``(n, n)``.

    Raises:
        RuntimeError: no convergence within ``max_iter`` sweeps.
    """
    u = np.zeros((n, n))
    u[0, :] = top
    for _ in range(max_iter):
        new = u.copy()
        new[1:-1, 1:-1] = 0.25 * (u[2:, 1:-1] + u[:-2, 1:-1] + u[1:-1, 2:] + u[1:-1, :-2])
        change = float(np.max(np.abs(new - u)))
        u = new
        if change < tol:
            return u
    raise RuntimeError(f"Jacobi did not converge to {tol} in {max_iter} sweeps (n={n})")


_INTEGRANDS = {
    "gaussian": lambda x: np.exp(-x * x),
    "oscillatory": lambda x: np.cos(20.0 * x) * np.exp(-x),
    "runge": lambda x: 1.0 / (1.0 + 25.0 * x * x),
    "sqrt": lambda x: np.sqrt(np.abs(x)),
}


def integrate(integrand: str, a: float, b: float, points: int = 16, panels: int = 8) -> dict:
    """Integrate a named function over ``[a, b]`` with composite Gauss-Legendre quadrature.

    Args:
        integrand: one of ``gaussian``, ``oscillatory``, ``runge``, ``sqrt``.
        a: lower bound.
        b: upper bound.
        points: Gauss points per panel.
        panels: number of equal panels.

    Returns:
        ``{"value", "error_estimate", "evaluations"}``; the estimate compares with the rule
        on twice as many panels.
    """
    try:
        f = _INTEGRANDS[integrand]
    except KeyError:
        raise ValueError(f"unknown integrand {integrand!r}; "
                         f"choose one of {', '.join(_INTEGRANDS)}") from None
    nodes, weights = np.polynomial.legendre.leggauss(points)

    def rule(m: int) -> float:
        edges = np.linspace(a, b, m + 1)
        half = np.diff(edges) / 2.0
        mid = (edges[:-1] + edges[1:]) / 2.0
        x = mid[:, None] + half[:, None] * nodes[None, :]
        return float(np.sum(half[:, None] * weights[None, :] * f(x)))

    coarse, fine = rule(panels), rule(2 * panels)
    return {"value": fine, "error_estimate": abs(fine - coarse),
            "evaluations": 3 * panels * points}


def cholesky_logdet(n: int, shift: float, seed: int = 0) -> float:
    """log det(C + shift*I) for a random correlation-like matrix C, through its Cholesky factor.

    C has eigenvalues in [0, ~4) for moderate ``n``; a negative ``shift`` can make the matrix
    indefinite, and then the factorization fails.

    Raises:
        numpy.linalg.LinAlgError: the shifted matrix is not positive definite.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2 * n))
    c = x @ x.T / (2 * n)
    chol = np.linalg.cholesky(c + shift * np.eye(n))
    return 2.0 * float(np.sum(np.log(np.diag(chol))))
