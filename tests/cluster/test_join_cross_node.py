"""A worker that joins from another node (``colocate join``), on the virtual cluster.

The world runs on vnode1 (rank 0 and one worker rank); ``colocate join`` runs on vnode3, and a
client on vnode2. Tasks run on vnode3 and objects stored there cross nodes over TCP; the joined
worker leaves on SIGTERM with every task done once, and one killed outright fails only its task
while the world serves on (under MPICH, whose world a lost rank would end).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

ON = Path(__file__).resolve().parent / "on.sh"
TAG_VAR = "CLTEST_WORLD"   # the variable tests/cluster/conftest.py tags processes with

CLIENT = r"""
import collections, hashlib, json, socket, sys, time
import numpy as np
import colocate
from colocate.errors import WorkerLost

def where(seconds):
    import socket, time
    time.sleep(seconds)
    return socket.gethostname()

def digest(a):
    import hashlib
    return hashlib.sha256(a.tobytes()).hexdigest()

mode = sys.argv[2]
with colocate.Executor(address=sys.argv[1]) as ex:
    def workers():
        return {w["rank"]: w["node"] for w in ex.status()["workers"]}
    deadline = time.monotonic() + 60
    while len(workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    out = {"workers": workers(), "client": socket.gethostname()}
    if mode == "run":
        seen = collections.Counter()
        while "vnode3" not in seen and time.monotonic() < deadline:
            seen.update(f.result(timeout=60) for f in [ex.submit(where, 0.05) for _ in range(6)])
        out["ran_on"] = sorted(seen)
        a = np.arange(3 << 20, dtype=np.float64)   # 24 MiB
        ref = ex.put(a, node="vnode3")
        out["ref_node"] = ref.node
        out["same"] = bool(np.array_equal(ref.get(), a))
        out["digest_there"] = ex.submit(digest, ref).result(timeout=60) == digest(a)
    elif mode == "long":
        futures = [ex.submit(where, 5.0) for _ in range(2)]
        while ex.status()["running"] < 2 and time.monotonic() < deadline:   # one per worker
            time.sleep(0.1)
        print(json.dumps({"started": ex.status()["running"] == 2}), flush=True)
        sys.stdin.readline()   # the test kills the joined worker, then says go on
        got = []
        for f in futures:
            try:
                got.append(f.result(timeout=60))
            except WorkerLost as e:
                got.append("lost: " + str(e))
        out["long"] = got
        out["after"] = ex.submit(where, 0.0).result(timeout=60)
print(json.dumps(out), flush=True)
"""


def joined_processes(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(TAG_VAR) == tag and "join" in proc.cmdline():
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def start_join(cluster, world, tag: str) -> subprocess.Popen:
    env = cluster.environ(tag, COLOCATE_LOG="info")
    return subprocess.Popen(["bash", str(ON), "vnode3", sys.executable, "-m", "colocate", "join",
                             "--address", str(world.address), "--cores", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def world(cluster, srun_world):
    return srun_world(("vnode1", "vnode1"), name="joined",
                      env={"COLOCATE_SERVER_BIND": "vnode1"})


def test_a_worker_joins_from_another_node_runs_tasks_holds_objects_and_leaves(cluster, world,
                                                                              wait_until):
    tag = f"join-{uuid.uuid4().hex[:8]}"
    joiner = start_join(cluster, world, tag)
    try:
        out = cluster.on("vnode2", [sys.executable, "-c", CLIENT, str(world.address), "run"],
                         env=cluster.environ(), timeout=120).stdout
        got = json.loads(out.strip().splitlines()[-1])
        assert got["client"] == "vnode2"
        assert sorted(got["workers"].values()) == ["vnode1", "vnode3"]
        assert got["ran_on"] == ["vnode1", "vnode3"]
        assert got["ref_node"] == "vnode3" and got["same"] and got["digest_there"]
        [proc] = wait_until(lambda: joined_processes(tag), 30, "the joined worker's process")
        proc.send_signal(signal.SIGTERM)
        assert joiner.wait(60) == 0
        assert re.search(r"worker \d+ leaving \(SIGTERM from the batch system\)",
                         joiner.stdout.read())
    finally:
        if joiner.poll() is None:
            for p in joined_processes(tag):
                p.kill()
            joiner.wait(30)


def test_a_joined_node_killed_outright_fails_only_its_task(cluster, world):
    tag = f"join-{uuid.uuid4().hex[:8]}"
    joiner = start_join(cluster, world, tag)
    client = subprocess.Popen(["bash", str(ON), "vnode2", sys.executable, "-c", CLIENT,
                               str(world.address), "long"], env=cluster.environ(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(client.stdout.readline()) == {"started": True}
        # Both long tasks run (one per worker): kill every process of the join.
        for p in joined_processes(tag):
            for child in p.children(recursive=True) + [p]:
                child.kill()
        client.stdin.write("go\n")
        client.stdin.flush()
        got = json.loads(client.stdout.readline())
        assert client.wait(60) == 0
        lost = [r for r in got["long"] if r.startswith("lost: ")]
        done = [r for r in got["long"] if not r.startswith("lost: ")]
        assert done == ["vnode1"] and len(lost) == 1, got
        assert re.search(r"joined worker \d+ on vnode3 exited", lost[0]), lost
        assert got["after"] == "vnode1"   # the world serves on
        assert world.proc.poll() is None
    finally:
        for p in joined_processes(tag):
            p.kill()
        if client.poll() is None:
            client.kill()
        joiner.wait(30)
