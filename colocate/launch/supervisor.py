"""The launchers' step supervisor: runs a ``Plan`` and forwards the walltime warning.

``colocate.launch.run`` decides the commands (``make_plan``); ``Supervisor.supervise`` starts the
host step, the colocate step and the batch client, watches them with bounded waits, and ends
them in order (see ``colocate.launch.run`` for the sequence and the exit status).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from colocate import launch as L
from colocate.config import LAUNCHER_VARIABLES

if TYPE_CHECKING:
    from colocate.launch.run import Plan, Settings

# Exit status when the colocate world did not come up (the host job still ran to its end).
EXIT_NO_WORLD = 4

# The launcher's own settings. colocate's configuration rejects COLOCATE_* variables it does not
# know, so they are removed from the environment of every step started here.
LAUNCHER_ENVS = LAUNCHER_VARIABLES

# A SIGTERM this many seconds after the previous one is taken for the same warning (Slurm can
# deliver one twice); a SIGINT (Ctrl-C) always counts.
REPEAT_WINDOW = 10.0

# Seconds between checks of the steps while supervising: short enough that a finished batch is
# noticed at once, long enough to cost nothing next to the host job.
POLL = 0.2



def log(msg: str) -> None:
    """Print one line of the supervisor's log to stderr (it goes to the job's output)."""
    print(f"colocate-with: {msg}", file=sys.stderr, flush=True)

class Supervisor:
    """Runs a ``Plan``: starts the steps, watches them, forwards the warning signal."""

    def __init__(self, plan: Plan, s: Settings, *, clock: Callable[[], float] = time.monotonic):
        self.plan, self.s, self.clock = plan, s, clock
        self.warnings = 0
        self.signals: list[int] = []
        self.last_term: float | None = None
        self.host: subprocess.Popen | None = None
        self.serve: subprocess.Popen | None = None
        self.run: subprocess.Popen | None = None
        self.draining = False

    # signals ------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        now = self.clock()
        # slurmstepd sometimes delivers one `scancel --signal=TERM --batch` twice, about a second
        # apart: a repeated SIGTERM this soon is the same warning, not a second one.
        if (signum == signal.SIGTERM and self.last_term is not None
                and now - self.last_term < REPEAT_WINDOW):
            return
        if signum == signal.SIGTERM:
            self.last_term = now
        self.warnings += 1
        self.signals.append(signum)

    def install_signals(self) -> None:
        """Count SIGTERM, SIGINT and SIGUSR1 as warnings; the loop acts on them."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    # steps --------------------------------------------------------------------------------------
    def _start(self, what: str, cmd: Sequence[str],
               unset: Sequence[str] = ()) -> subprocess.Popen:
        log(f"start {what}: {L.shell_join(cmd)}")
        env = {k: v for k, v in _step_env().items() if k not in unset}
        # A session of its own: a Ctrl-C or a signal to our group does not reach the step
        # directly; the supervisor decides what each step gets.
        return subprocess.Popen(list(cmd), start_new_session=True, env=env)

    def _slurm_step_id(self, name: str) -> str | None:
        cmd = ["squeue", "--steps", f"--jobs={self.plan.jobid}", "--noheader", "--format=%i %j"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == name:
                return parts[0].rpartition(".")[2]
        return None

    def signal_step(self, proc: subprocess.Popen, name: str, sig: int) -> None:
        """Deliver ``sig`` to the tasks of a step without ending the step for them.

        Under Slurm a signal sent to ``srun`` itself cancels the step, so the tasks are reached
        with ``scancel --signal``; mpiexec (hydra) forwards the signal to its ranks.
        """
        if proc.poll() is not None:
            return
        if self.plan.system == "slurm" and self.plan.jobid and proc_is_srun(proc):
            step = self._slurm_step_id(name)
            if step is not None:
                cmd = L.slurm_signal_step(self.plan.jobid, step, signal.Signals(sig).name[3:])
                try:
                    if subprocess.run(cmd, timeout=20).returncode == 0:
                        return
                except (OSError, subprocess.SubprocessError):
                    pass
        _signal(proc, sig)

    def drain_world(self, why: str) -> None:
        """Ask the colocate world to drain (SIGTERM to its ranks), once."""
        if self.draining or self.serve is None or self.serve.poll() is not None:
            return
        self.draining = True
        log(f"draining colocate ({why})")
        self.signal_step(self.serve, self.plan.serve_step_name, signal.SIGTERM)

    def stop_world(self) -> None:
        """``colocate stop``, bounded; fall back to a drain."""
        if self.serve is None or self.serve.poll() is not None:
            return
        log(f"batch done; stopping colocate: {L.shell_join(self.plan.stop)}")
        try:
            rc = subprocess.run(self.plan.stop, timeout=30, env=_step_env()).returncode
        except (OSError, subprocess.SubprocessError) as e:
            rc = f"error {e}"
        if rc != 0:
            log(f"colocate stop returned {rc}")
            self.drain_world("colocate stop failed")

    def wait_world(self, timeout: float) -> None:
        """Wait for the colocate step to end; kill it past ``timeout`` seconds."""
        if self.serve is None:
            return
        if not _wait(self.serve, timeout, self):
            log(f"colocate did not end within {timeout:.0f}s; killing it")
            _kill(self.serve)

    def _wait_address(self) -> bool:
        deadline = self.clock() + self.s.start_timeout
        while self.clock() < deadline:
            if _ready(self.plan.address):
                return True
            if self.serve.poll() is not None:
                log(f"colocate exited with {self.serve.returncode} before it was ready")
                return False
            if self.warnings:
                return False
            if self.host is not None and self.host.poll() is not None:
                return False
            time.sleep(POLL)
        log(f"colocate not ready after {self.s.start_timeout:.0f}s (no {self.plan.address})")
        return False

    def end_all(self) -> int:
        """A second signal: SIGTERM to every step, then SIGKILL after 10 s; return 143."""
        log("second signal: ending every step now")
        procs = [p for p in (self.run, self.serve, self.host) if p is not None]
        for proc in procs:
            _signal(proc, signal.SIGTERM)
        for proc in procs:
            if not _wait(proc, 10, None):
                _kill(proc)
        return 128 + signal.SIGTERM

    def supervise(self) -> int:
        """Run the plan to its end; return the exit status (see the module docstring)."""
        p = self.plan
        log(p.describe())
        try:
            os.unlink(p.address)
        except FileNotFoundError:
            pass
        # srun would read the job's --ntasks-per-node and -c from these (see slurm_host_step).
        if p.host is not None:
            self.host = self._start("host", p.host, unset=L.SLURM_STEP_UNSET)
        self.serve = self._start("colocate", p.serve, unset=L.SLURM_STEP_UNSET)
        world_up = self._wait_address()
        if world_up and p.run is not None:
            self.run = self._start("batch", p.run)
        elif not world_up:
            self.drain_world("not ready")
            self.wait_world(self.s.stop_timeout)
        handled = 0
        while True:
            if self.warnings > handled:
                handled = self.warnings
                if handled == 1:
                    log(f"{signal.Signals(self.signals[0]).name} received: draining colocate; "
                        f"the host job goes on")
                    self.drain_world("warning signal")
                    if self.s.host_signal and self.host is not None:
                        log(f"forwarding SIG{self.s.host_signal} to the host step")
                        self.signal_step(self.host, "host", _signum(self.s.host_signal))
                else:
                    log(f"received {', '.join(signal.Signals(n).name for n in self.signals)}")
                    return self.end_all()
            host_gone = self.host is not None and self.host.poll() is not None
            serve_done = self.serve.poll() is not None
            if self.run is not None and self.run.poll() is None:
                if host_gone or serve_done:
                    self.drain_world("host job ended" if host_gone else "colocate ended")
                    if not _wait(self.run, self.s.stop_timeout, self):
                        if self.warnings > handled:
                            continue
                        log(f"batch client still running {self.s.stop_timeout:.0f}s after "
                            f"the drain; stopping it")
                        _signal(self.run, signal.SIGTERM)
                        if not _wait(self.run, 10, None):
                            _kill(self.run)
                    continue
                time.sleep(POLL)
                continue
            # The batch is over (or never started): the world goes, the host job stays.
            if not serve_done:
                if not self.draining:
                    self.stop_world()
                self.wait_world(self.s.stop_timeout)
                continue
            if self.host is None or self.host.poll() is not None:
                break
            time.sleep(POLL)
        host_rc = self.host.returncode if self.host is not None else 0
        run_rc = self.run.returncode if self.run is not None else (0 if world_up else
                                                                    EXIT_NO_WORLD)
        rc = host_rc if host_rc != 0 else run_rc
        rc = rc if rc >= 0 else 128 - rc
        log(f"host exit {host_rc if self.host is not None else '-'}, batch exit "
            f"{self.run.returncode if self.run is not None else '-'}, colocate exit "
            f"{self.serve.returncode}; exit {rc}")
        return rc


def _step_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENVS}


def proc_is_srun(proc: subprocess.Popen) -> bool:
    """Whether a step was started with srun (its signals need scancel)."""
    args = proc.args if isinstance(proc.args, list) else [proc.args]
    return bool(args) and os.path.basename(str(args[0])) == "srun"


def _ready(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def _signum(name: str) -> int:
    name = name.upper().removeprefix("SIG")
    try:
        return int(getattr(signal, "SIG" + name))
    except AttributeError:
        raise ValueError(f"unknown signal {name!r}: expected e.g. TERM, INT, USR1") from None


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _kill(proc: subprocess.Popen) -> None:
    """Kill a step we started, and its session (by its id), and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _wait(proc: subprocess.Popen, timeout: float, sup: Supervisor | None) -> bool:
    """Wait up to ``timeout`` seconds for ``proc``; stop early on a new signal when ``sup``."""
    deadline = time.monotonic() + timeout
    seen = sup.warnings if sup is not None else 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return True
        if sup is not None and sup.warnings > seen and sup.warnings > 1:
            return proc.poll() is not None
        time.sleep(POLL)
    return proc.poll() is not None
