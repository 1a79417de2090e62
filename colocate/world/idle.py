"""Idle waiting: how long a polling loop sleeps, from hot spinning to cold sleeps.

MPI offers no blocking wait that leaves the core alone (a blocked ``MPI_Recv`` spins), so every
loop that waits on MPI polls. Right after activity more work usually follows, so the loop polls
hot (yielding the core between probes); then it sleeps in growing steps; after ``cold_after``
seconds of quiet it sleeps ``cold`` seconds per poll, which keeps an idle rank under 1% of a core.
"""

from __future__ import annotations

import time

WARM_FIRST = 50e-6   # first warm sleep; doubles up to warm_max


class Backoff:
    """Tells a polling loop how long to wait before its next probe.

    Call :meth:`active` whenever the loop did useful work, and :meth:`delay` before each wait:
    ``0.0`` means probe again at once (after yielding the core).
    """

    __slots__ = ("hot", "warm_max", "cold_after", "cold", "last", "_step")

    def __init__(self, hot: float = 0.002, warm_max: float = 0.001, cold_after: float = 0.05,
                 cold: float = 0.05) -> None:
        self.hot = hot
        self.warm_max = warm_max
        self.cold_after = cold_after
        self.cold = cold
        self.last = time.monotonic()
        self._step = WARM_FIRST

    @classmethod
    def from_config(cls, server: dict) -> Backoff:
        """Build from the ``server`` section of the configuration."""
        return cls(server["hot"], server["warm_max"], server["cold_after"], server["cold"])

    def active(self, now: float | None = None) -> None:
        """Record activity: the next waits are hot again."""
        self.last = time.monotonic() if now is None else now
        self._step = WARM_FIRST

    def delay(self, now: float | None = None) -> float:
        """Seconds to wait before the next probe (0.0: spin)."""
        idle = (time.monotonic() if now is None else now) - self.last
        if idle < self.hot:
            return 0.0
        if idle >= self.cold_after:
            return self.cold
        step = self._step
        self._step = min(step * 2, self.warm_max)
        return step
