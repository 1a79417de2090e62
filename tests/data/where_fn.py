"""Task functions for the launcher tests: report where they ran."""

import os
import socket
import time


def where(index, seconds=0.0):
    """Sleep ``seconds``, then return this process's host, pid and CPU affinity."""
    time.sleep(seconds)
    return {"index": index, "host": socket.gethostname(), "pid": os.getpid(),
            "affinity": sorted(os.sched_getaffinity(0))}
