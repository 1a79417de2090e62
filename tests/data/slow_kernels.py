"""Deterministic tasks that take a little time, for kill-and-resume tests on a real world."""

import time


def slow_square(x: int, delay: float = 0.05) -> int:
    time.sleep(delay)
    return x * x
