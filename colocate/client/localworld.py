"""A local world: the ``mpiexec … colocate serve`` child that ``Executor()`` starts and stops.

A local world never outlives the process that started it, by any path out of that process:

- The world is started with ``--owner PID:START`` (this process). Its rank 0 stops as soon as
  this process exits, however it exits (SIGKILL, ``os._exit``, a crash), or once it has closed
  its connection (:mod:`colocate.rank0.owner`). That needs nothing from this side.
- :meth:`LocalWorld.stop` (``shutdown()``, and at interpreter exit) asks ``mpiexec`` to stop with
  SIGTERM, waits, and past the timeout kills every process of the world with SIGKILL. Hydra
  starts its proxy and each rank in a session of its own, so no process group reaches them all:
  they are found by a tag in their environment (``COLOCATE_LOCAL_WORLD``), which every rank and
  executor child inherits, and as descendants of ``mpiexec``. Cgroups left by killed ranks are
  removed.
- Nothing is left on disk: the world's output goes to an unnamed temporary file (read for error
  messages), and the address file's private directory is removed by rank 0 when it stops, and
  here.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import os
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Callable

import psutil

from colocate.errors import ServerUnavailable
from colocate.rank0 import owner as _owner

log = logging.getLogger("colocate.client")

TAG_VAR = "COLOCATE_LOCAL_WORLD"   # in the environment of every process of a local world
KILL_WAIT = 5.0                     # seconds for SIGKILLed processes to be reaped
SELF_STOP_WAIT = 5.0                # seconds a world whose owner hung up has to stop by itself


class LocalWorld:
    """A ``mpiexec … colocate serve`` child started by ``Executor()``, owned by this process.

    Args:
        workers: worker ranks (the world has one rank more, rank 0).
        config: a configuration file for the world, or ``None``.
        timeout: seconds for the world to write its address file.

    Raises:
        ServerUnavailable: ``mpiexec`` is missing, or the world exited or was not ready in time
            (with the end of its output).
    """

    def __init__(self, workers: int, config: str | None, timeout: float) -> None:
        import sys
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="colocate-")
        self.path = os.path.join(self.dir, "address")
        self.tag = uuid.uuid4().hex
        self._stopped = False
        # A launcher with its options, e.g. "mpiexec --oversubscribe" for Open MPI.
        launcher = shlex.split(os.environ.get("COLOCATE_MPIEXEC", "mpiexec")) or ["mpiexec"]
        mpiexec = launcher[0]
        cmd = [*launcher, "-n", str(workers + 1), sys.executable, "-m", "colocate", "serve",
               "--address-file", self.path, "--owner", _owner.describe(os.getpid())]
        if config:
            cmd += ["--config", config]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "MPIR_"))}
        env[TAG_VAR] = self.tag
        self.log = tempfile.TemporaryFile(dir=self.dir, prefix="serve-", suffix=".log")
        try:
            self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        except FileNotFoundError:
            self._remove_files()
            raise ServerUnavailable(f"cannot start a local world: {mpiexec!r} not found. Install "
                                    "an MPI (pip install mpich) or set COLOCATE_MPIEXEC") from None
        # Set by the owning executor: ends its connection at once, so that rank 0 stops
        # without draining when this process exits without shutdown().
        self.hang_up: Callable[[], None] | None = None
        atexit.register(self._at_exit)
        deadline = time.monotonic() + timeout
        delay = 0.005
        while not os.path.exists(self.path):
            if self.proc.poll() is not None:
                reasons = self._reasons()
                self.stop()
                tail = self.tail()
                raise ServerUnavailable(f"the local world exited with code "
                                        f"{self.proc.returncode} before it was ready:\n{tail}"
                                        + "".join(r for r in reasons if r not in tail))
            if time.monotonic() > deadline:
                self.stop(timeout=5.0)
                raise ServerUnavailable(f"the local world was not ready within {timeout:g} s "
                                        f"(raise client.start_timeout):\n{self.tail()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)

    def _reasons(self) -> list[str]:
        """What ranks that ended the world wrote beside the address (``cli._leave_reason``).

        MPI_Abort can end mpiexec before it has passed on the ranks' last output.
        """
        found = []
        for path in sorted(glob.glob(os.path.join(self.dir, "serve-error-*"))):
            with contextlib.suppress(OSError), open(path) as f:
                found.append(f.read())
        return found

    def tail(self, lines: int = 20) -> str:
        """The last lines of the world's output."""
        try:
            self.log.seek(0)
            text = self.log.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""
        return "".join(text.splitlines(keepends=True)[-lines:])

    def processes(self) -> list[psutil.Process]:
        """The world's live processes: ``mpiexec``, its proxy, every rank, executor child."""
        found: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                found[p.pid] = p
        me = os.getpid()
        for p in psutil.process_iter():
            if p.pid == me or p.pid in found:
                continue
            with contextlib.suppress(psutil.Error, OSError):
                if p.environ().get(TAG_VAR) == self.tag:
                    found[p.pid] = p
        alive = []
        for p in found.values():
            with contextlib.suppress(psutil.Error):
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
        return alive

    def _at_exit(self) -> None:
        """The interpreter exits without ``shutdown()``: no one will take results, stop now."""
        if self.hang_up is not None and not self._stopped:
            with contextlib.suppress(Exception):
                self.hang_up()
        self.stop()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the world: SIGTERM to ``mpiexec`` (it drains), SIGKILL to all past ``timeout``.

        Safe to call more than once, and after the world stopped by itself.
        """
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self._at_exit)
        deadline = time.monotonic() + timeout
        if self.hang_up is not None:
            # Our connection is closed: rank 0 stops by itself (colocate.rank0.owner). A SIGTERM
            # that reaches mpiexec while its ranks exit makes it report a failure.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(min(SELF_STOP_WAIT, timeout))
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)   # mpiexec forwards it to every rank
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(max(0.0, deadline - time.monotonic()))
        # A rank can outlive mpiexec (a hung one, or mpiexec killed): end what is left.
        left = self.processes()
        if left:
            log.warning("the local world did not stop within %g s: killing its %d process(es)",
                        timeout, len(left))
            for p in left:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(left, timeout=KILL_WAIT)
            _remove_stale_cgroups()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(KILL_WAIT)
        self._remove_files()

    def _remove_files(self) -> None:
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)


def _remove_stale_cgroups() -> None:
    """Remove the cgroups that killed ranks of this host could not remove themselves."""
    try:
        from colocate.colocation.cgroups import CgroupManager
        CgroupManager.detect().cleanup_stale()
    except Exception as e:   # noqa: BLE001 - a best effort after a kill; say why it failed
        log.warning("could not remove the cgroups of the killed world: %s", e)
