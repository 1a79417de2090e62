"""A local world: the ``mpiexec … colocate serve`` child that ``Executor()`` starts and stops."""

from __future__ import annotations

import atexit
import os
import shlex
import time

from .errors import ServerUnavailable


class LocalWorld:
    """A ``mpiexec … colocate serve`` child started by ``Executor()`` and stopped at shutdown."""

    def __init__(self, workers: int, config: str | None, timeout: float) -> None:
        import subprocess
        import sys
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="colocate-")
        self.path = os.path.join(self.dir, "address")
        # A launcher with its options, e.g. "mpiexec --oversubscribe" for Open MPI.
        launcher = shlex.split(os.environ.get("COLOCATE_MPIEXEC", "mpiexec")) or ["mpiexec"]
        mpiexec = launcher[0]
        cmd = [*launcher, "-n", str(workers + 1), sys.executable, "-m", "colocate", "serve",
               "--address-file", self.path]
        if config:
            cmd += ["--config", config]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "MPIR_"))}
        self.log_path = os.path.join(self.dir, "serve.log")
        self.log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        except FileNotFoundError:
            raise ServerUnavailable(f"cannot start a local world: {mpiexec!r} not found. Install "
                                    "an MPI (pip install mpich) or set COLOCATE_MPIEXEC") from None
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.path):
            if self.proc.poll() is not None:
                raise ServerUnavailable(f"the local world exited with code "
                                        f"{self.proc.returncode} before it was ready:\n"
                                        f"{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerUnavailable(f"the local world was not ready within {timeout:g} s "
                                        f"(raise client.start_timeout):\n{self.tail()}")
            time.sleep(0.02)

    def tail(self, lines: int = 20) -> str:
        """The last lines of the world's output."""
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """Wait for the world to exit (it was told to stop); kill it past ``timeout``."""
        import shutil
        import signal
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout)
            except Exception:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        atexit.unregister(self.stop)
