"""Batch progress: a tqdm bar on a terminal, plain log lines in batch logs, a summary table.

On a TTY the bar shows done/total, ok and failed counts, the rate and an ETA. Elsewhere (a
Slurm output file) a line without control characters is printed every ``interval`` seconds,
so the log stays readable with ``less`` and ``grep``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO

from tqdm import tqdm

from .journal import RunSummary

LOG_INTERVAL = 5.0   # seconds between plain log lines: often enough to follow, few enough to read
MODES = ("auto", "bar", "log", "off")


def format_duration(seconds: float) -> str:
    """``4.2`` -> ``"4.2 s"``, ``185`` -> ``"3 min 05 s"``, ``7300`` -> ``"2 h 01 min"``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_summary(summary: RunSummary) -> str:
    """The end-of-run table: counts, wall time and harvested core-seconds."""
    rows = [("succeeded", str(summary.succeeded)), ("failed", str(summary.failed)),
            ("interrupted", str(summary.interrupted)), ("not run", str(summary.not_run)),
            ("retried", str(summary.retried)), ("wall time", format_duration(summary.wall_time)),
            ("core-seconds", f"{summary.core_seconds:.1f} (harvested on spare cores)")]
    lines = [f"{summary.name}: {summary.total} tasks, run directory {summary.run_dir}"]
    lines += [f"  {label:<13} {value}" for label, value in rows]
    if summary.sessions > 1:
        lines.append(f"  {'sessions':<13} {summary.sessions} (resumed)")
    if summary.error:
        lines.append(f"  {'stopped by':<13} {summary.error}")
    return "\n".join(lines)


def _is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is a terminal with a width (a bar needs columns to draw in)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False


class Progress:
    """Shows how a batch advances; the runner calls :meth:`update`, :meth:`tick`, :meth:`close`.

    Args:
        total: tasks in the batch.
        done: tasks already finished before this session (resume).
        name: the batch name, shown first.
        mode: ``"bar"`` (tqdm), ``"log"`` (plain lines), ``"off"``, or ``"auto"``: a bar if
            ``stream`` is a TTY, else log lines.
        stream: where to write; ``sys.stderr`` by default.
        interval: seconds between log lines.
        clock: monotonic time source (tests pass a fake one).
    """

    def __init__(self, total: int, *, done: int = 0, name: str = "", mode: str = "auto",
                 stream: IO[str] | None = None, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}, found {mode!r}")
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if _is_terminal(self.stream) else "log"
        self.mode = mode
        self.total, self.initial, self.name = total, done, name
        self.ok = self.failed = self.interrupted = self.running = 0
        self.interval, self.clock = interval, clock
        self.start = self._last_log = clock()
        self._bar: tqdm | None = None
        if mode == "bar":
            self._bar = tqdm(total=total, initial=done, desc=name or None, unit="task",
                             file=self.stream, dynamic_ncols=True, leave=True)
            self._postfix()

    @property
    def finished(self) -> int:
        """Tasks finished in this session."""
        return self.ok + self.failed + self.interrupted

    def update(self, status: str) -> None:
        """Count one finished task (``"ok"``, ``"failed"`` or ``"interrupted"``)."""
        if status == "ok":
            self.ok += 1
        elif status == "failed":
            self.failed += 1
        else:
            self.interrupted += 1
        if self._bar is not None:
            self._postfix()
            self._bar.update(1)

    def tick(self, running: int = 0) -> None:
        """Called often by the runner: prints a log line when ``interval`` has passed."""
        self.running = running
        if self.mode == "log" and self.clock() - self._last_log >= self.interval:
            self._log(self._status_line())

    def close(self, summary: RunSummary | None = None) -> None:
        """Finish the display and print the summary table (unless the mode is ``"off"``)."""
        if self._bar is not None:
            self._postfix()
            self._bar.close()
            self._bar = None
        elif self.mode == "log":
            self._log(self._status_line(final=True))
        if summary is not None and self.mode != "off":
            print(format_summary(summary), file=self.stream, flush=True)

    def _postfix(self) -> None:
        assert self._bar is not None
        text = f"ok={self.initial + self.ok} failed={self.failed}"
        if self.interrupted:
            text += f" interrupted={self.interrupted}"
        self._bar.set_postfix_str(text, refresh=False)

    def _status_line(self, final: bool = False) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        done = self.initial + self.finished
        counts = f"{self.initial + self.ok} ok, {self.failed} failed"
        if self.interrupted:
            counts += f", {self.interrupted} interrupted"
        rate = self.finished / elapsed
        line = f"{done}/{self.total} done ({counts})"
        if final:
            return f"{line} in {format_duration(elapsed)}"
        line += f", {self.running} running, {rate:.2f} tasks/s"
        left = self.total - done
        if rate > 0 and left > 0:
            line += f", ETA {format_duration(left / rate)}"
        return line

    def _log(self, message: str) -> None:
        self._last_log = self.clock()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        prefix = f"{self.name}: " if self.name else ""
        print(f"{stamp} colocate: {prefix}{message}", file=self.stream, flush=True)
