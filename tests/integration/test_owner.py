"""colocate.rank0.owner: rank 0's watch on the process that owns a local world (real processes)."""

import select
import subprocess
import sys
import time

import psutil
import pytest

from colocate.rank0.owner import OwnerWatch, describe, parse


def test_parse_accepts_pid_and_start_time():
    assert parse("123") == (123, None)
    assert parse("123:1733220000.25") == (123, 1733220000.25)


@pytest.mark.parametrize("text", ["", "abc", "0", "-5", "12:soon"])
def test_parse_refuses_other_forms(text):
    with pytest.raises(ValueError, match="expected PID or PID:START"):
        parse(text)


def test_describe_round_trips():
    proc = psutil.Process()
    assert parse(describe(proc.pid)) == (proc.pid, proc.create_time())


@pytest.mark.timeout(30)
def test_watch_wakes_select_when_the_owner_exits():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        watch = OwnerWatch(*parse(describe(child.pid)))
        assert not watch.gone()
        assert watch.fd is not None, "Linux >= 5.3 has pidfd_open"
        assert select.select([watch], [], [], 0.2)[0] == []
        child.kill()
        assert select.select([watch], [], [], 10)[0] == [watch]
        assert watch.gone()
        watch.close()
    finally:
        child.kill()
        child.wait()


def test_an_owner_already_gone_or_a_reused_pid_counts_as_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert OwnerWatch(child.pid).gone()
    me = psutil.Process()
    assert OwnerWatch(me.pid, me.create_time() - 100.0).gone()   # same pid, another start
    assert not OwnerWatch(me.pid, me.create_time()).gone()


@pytest.mark.timeout(30)
def test_without_a_pidfd_the_pid_is_polled(monkeypatch):
    import os
    monkeypatch.delattr(os, "pidfd_open")
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        watch = OwnerWatch(child.pid)
        assert watch.fd is None and not watch.gone()
        child.kill()
        child.wait()
        deadline = time.monotonic() + 10
        while not watch.gone():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
