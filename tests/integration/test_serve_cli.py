"""``colocate serve`` / ``stop`` / ``status`` as a user runs them: subprocesses, exit codes, files.

Each test that stops or signals a world starts its own (``world_factory``); teardown checks that
no rank, proxy or executor child of it is left. Read-only checks use the shared world.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import cloudpickle
import pytest

from colocate import (
    AuthenticationError,
    BrokenWorld,
    Executor,
    ServerUnavailable,
    TaskInterrupted,
    WorkerCrashed,
)
from colocate.testing import crash, mark_and_wait

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(90)

BOUND = 30.0


# ----- the address file and status --------------------------------------------------------------
def test_address_file_is_private_and_complete(server):
    mode = stat.S_IMODE(os.stat(server).st_mode)
    assert mode == 0o600, f"the address file holds the token: mode {mode:o}"
    with open(server) as f:
        data = json.load(f)
    assert {"host", "bell_port", "token", "pid", "server_host", "size"} <= set(data)
    assert data["size"] == 3 and len(data["token"]) >= 32


def test_status_json_shows_the_workers(server, cli):
    out = cli("status", "--address", server, "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert sorted(w["rank"] for w in st["workers"]) == [1, 2]
    for w in st["workers"]:
        assert w["state"] in ("idle", "busy") and w["cores"]
    assert st["lost"] == {} and st["draining"] is False
    assert os.path.samefile(st["address"], server)


def test_status_table(server, cli):
    out = cli("status", "--address", server)
    assert out.returncode == 0, out.stderr
    assert "2 worker(s)" in out.stdout and "rank" in out.stdout


def test_stop_and_status_need_an_address(cli, subprocess_env):
    for command in ("stop", "status"):
        out = cli(command, env=subprocess_env())
        assert out.returncode == 2
        assert "--address" in out.stderr and "COLOCATE_ADDRESS" in out.stderr


# ----- stopping ----------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_stop_ends_every_rank_with_exit_0(world_factory, cli):
    world = world_factory(3)
    address = str(world.address)
    with Executor(address=address) as ex:   # executor children are warm and have run code
        assert ex.submit(pow, 3, 3).result(timeout=BOUND) == 27
    out = cli("stop", "--address", address)
    assert out.returncode == 0, out.stderr
    assert "asked the server" in out.stdout
    code = world.wait_exit(BOUND)
    assert code == 0, f"mpiexec exited with {code}:\n{world.log()}"
    assert not world.address.exists(), "the address file must be removed at exit"
    world.assert_clean()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_mpiexec_stops_the_world_with_exit_0(world_factory, signum):
    world = world_factory(3)
    world.proc.send_signal(signum)
    code = world.wait_exit(BOUND)
    assert code == 0, f"mpiexec exited with {code} after {signum.name}:\n{world.log()}"
    world.assert_clean()


@pytest.mark.timeout(120)
def test_stop_drains_running_tasks_and_interrupts_queued_ones(world_factory, cli, tmp_path,
                                                              wait_until):
    world = world_factory(2)   # one worker: a second task has to queue
    ex = Executor(address=world.address)
    started, release = tmp_path / "started", tmp_path / "release"
    running = ex.submit(mark_and_wait, str(started), str(release))
    wait_until(started.exists, BOUND, "the first task to start")
    queued = ex.submit(pow, 2, 2)
    out = cli("stop", "--address", str(world.address))
    assert out.returncode == 0, out.stderr
    assert isinstance(queued.exception(timeout=BOUND), TaskInterrupted)
    release.touch()
    assert running.result(timeout=BOUND) is True, "a running task finishes during the drain"
    assert world.wait_exit(BOUND) == 0, world.log()
    with pytest.raises(BrokenWorld):
        ex.submit(pow, 2, 3).result(timeout=BOUND)
    ex.shutdown()
    world.assert_clean()


# ----- bad launches and bad addresses ------------------------------------------------------------
@pytest.mark.timeout(60)
def test_serve_on_one_rank_says_it_needs_two(tmp_path, subprocess_env):
    address = tmp_path / "one.address"
    proc = subprocess.run(["mpiexec", "-n", "1", sys.executable, "-m", "colocate", "serve",
                           "--address-file", str(address)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "needs at least 2" in proc.stderr, proc.stderr
    assert "found 1 rank" in proc.stderr
    assert not address.exists()


@pytest.mark.timeout(60)
def test_wrong_token_is_refused_and_the_world_keeps_serving(server_world, tmp_path):
    with open(server_world.address) as f:
        data = json.load(f)
    data["token"] = "0" * len(data["token"])
    forged = tmp_path / "forged.address"
    forged.write_text(json.dumps(data))
    with pytest.raises(AuthenticationError) as caught:
        Executor(address=forged)
    assert isinstance(caught.value, PermissionError)
    assert "refused" in str(caught.value) and "token" in str(caught.value)
    server_world.wait_log("refused")
    assert server_world.proc.poll() is None
    with Executor(address=server_world.address) as ex:
        assert ex.submit(pow, 2, 5).result(timeout=BOUND) == 32


@pytest.mark.timeout(60)
def test_a_client_of_another_colocate_version_is_refused_with_the_reason(server_world):
    # A new server must not misread an old client's messages (or the reverse): the handshake
    # carries the wire format's version.
    import socket
    with open(server_world.address) as f:
        data = json.load(f)
    with socket.create_connection((data["host"], data["bell_port"]), timeout=BOUND) as sock:
        sock.sendall(json.dumps({"token": data["token"], "role": "client", "wire": 1}).encode()
                     + b"\n")
        answer = json.loads(sock.makefile().readline())
    assert answer["ok"] is False
    assert "wire format" in answer["reason"] and "same installation" in answer["reason"]
    server_world.wait_log("wire format 1")
    with Executor(address=server_world.address) as ex:
        assert ex.submit(pow, 2, 6).result(timeout=BOUND) == 64


def test_missing_address_file(tmp_path, cli):
    missing = tmp_path / "nowhere.address"
    with pytest.raises(ServerUnavailable) as caught:
        Executor(address=missing)
    assert isinstance(caught.value, ConnectionError)
    text = str(caught.value)
    assert str(missing) in text and "colocate serve" in text
    out = cli("status", "--address", str(missing))
    assert out.returncode == 1
    assert "no address file" in out.stderr


def test_not_an_address_file(tmp_path):
    bogus = tmp_path / "bogus.address"
    bogus.write_text("this is not json")
    with pytest.raises(ServerUnavailable, match="not a colocate address file"):
        Executor(address=bogus)


@pytest.mark.timeout(120)
def test_stale_address_file_of_a_stopped_world(world_factory, tmp_path):
    world = world_factory(2)
    stale = tmp_path / "stale.address"
    stale.write_bytes(world.address.read_bytes())
    assert world.stop() == 0
    start = time.monotonic()
    with pytest.raises(ServerUnavailable) as caught:
        Executor(address=stale)
    assert time.monotonic() - start < 15.0
    assert "no server answers" in str(caught.value)


# ----- crashes do not take the world down --------------------------------------------------------
@pytest.mark.timeout(120)
def test_crashing_function_does_not_take_the_world_down(world_factory, cli, wait_until):
    world = world_factory(3)
    with Executor(address=world.address) as ex:
        for _ in range(3):
            err = ex.submit(crash).exception(timeout=BOUND)
            assert isinstance(err, WorkerCrashed) and err.exitcode == 13
        assert list(ex.map(abs, range(-4, 4), timeout=BOUND)) == [4, 3, 2, 1, 0, 1, 2, 3]
    assert world.proc.poll() is None, "the world must keep serving"
    def status() -> dict:
        return json.loads(cli("status", "--address", str(world.address), "--json").stdout)

    st = status()
    assert len(st["workers"]) == 2 and st["lost"] == {}
    # (crashes of leased tasks reach rank 0's counts when the lease ends or with a heartbeat)
    wait_until(lambda: sum(w["failed"] for w in status()["workers"]) == 3, BOUND,
               "the three crashes counted in the status")
    assert world.stop() == 0, world.log()
    world.assert_clean()


def _catches_sigterm(proc) -> bool:
    """Whether ``proc`` has a handler for SIGTERM (its SigCgt mask in /proc)."""
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except OSError:
        pass
    return False


@pytest.mark.timeout(120)
def test_sigterm_during_set_up_drains_once_the_world_is_up(world_factory, wait_until):
    # Slurm's warning signal can come while the world is still starting. Every rank must live
    # through it (a rank killed in the middle of a collective leaves the others hung in it,
    # and the job step never ends): rank 0 drains as soon as the world is up.
    world = world_factory(3, ready=False)

    def ranks_listening():
        ranks = [p for p in world.processes()
                 if "serve" in p.cmdline() and "mpiexec" not in p.cmdline()[0]
                 and "hydra" not in p.cmdline()[0]]
        return len(ranks) == 3 and all(_catches_sigterm(p) for p in ranks)

    wait_until(ranks_listening, BOUND, "every rank to handle SIGTERM")
    early = not world.address.exists()
    world.proc.send_signal(signal.SIGTERM)
    code = world.wait_exit(BOUND)
    assert code == 0, f"mpiexec exited with {code}:\n{world.log()}"
    if early:   # the usual case: set-up takes about a second after the handlers are in place
        assert "came during set-up" in world.log(), world.log()
    assert not world.address.exists()
    world.assert_clean()
