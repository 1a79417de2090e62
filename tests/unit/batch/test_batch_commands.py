"""``colocate run`` / ``report`` bodies: validation before the executor, exit codes, resume."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest
from fakes import FakeExecutor

from colocate.batch import RunDir, cmd_run

REPO = Path(__file__).resolve().parents[3]

KERNELS = """
def half(x):
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x / 2
"""


@pytest.fixture
def batch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "k.py").write_text(KERNELS)

    def write(xs, output="out/run", name="b.yaml"):
        out = f"output: {output}\n" if output else ""
        path = tmp_path / name
        path.write_text(textwrap.dedent(f"""\
            name: halves
            function: k.py:half
            tasks: {{product: {{x: {xs}}}}}
            """) + out)
        return path

    return write


class Factory:
    def __init__(self):
        self.calls = []

    def __call__(self, n):
        self.calls.append(n)
        return FakeExecutor(max_workers=2)


def test_config_error_exits_2_before_any_executor(batch):
    factory, err = Factory(), io.StringIO()
    path = batch("[1, 2")
    assert cmd_run(path, factory, stream=err) == 2
    assert factory.calls == [] and "invalid YAML" in err.getvalue()
    assert not (path.parent / "out").exists()


def test_run_ok_then_refuse_rerun_then_resume_nothing_left(batch):
    factory, err = Factory(), io.StringIO()
    path = batch("[2, 4, 6]")
    assert cmd_run(path, factory, n=3, progress=False, stream=err) == 0
    assert factory.calls == [3]
    recs = [json.loads(x) for x in (path.parent / "out/run/results.jsonl").read_text().split()]
    assert sorted(r["result"] for r in recs) == [1.0, 2.0, 3.0]
    assert cmd_run(path, factory, stream=err) == 2
    assert "already holds a run" in err.getvalue() and "--resume" in err.getvalue()
    assert cmd_run(path, factory, resume=True, progress=False, stream=err) == 0
    assert factory.calls == [3], "started an executor with nothing to run"


def test_failures_exit_1_and_resume_from_run_dir_alone(batch, tmp_path):
    factory, err = Factory(), io.StringIO()
    path = batch("[2, -1, 4]")
    assert cmd_run(path, factory, progress="log", stream=err) == 1
    text = err.getvalue()
    assert "3 of 3 tasks to run" in text and "3/3 done (2 ok, 1 failed)" in text
    assert "1 task(s) failed" in text and "colocate report" in text
    (tmp_path / "k.py").write_text(KERNELS.replace("if x < 0", "if x < -5"))  # fix the bug
    assert cmd_run(None, factory, resume=tmp_path / "out/run", progress=False, stream=err) == 0
    summary = json.loads((tmp_path / "out/run/summary.json").read_text())
    assert summary["succeeded"] == 3 and summary["sessions"] == 2


def test_resume_true_without_output_finds_latest_or_starts(batch, tmp_path):
    factory = Factory()
    path = batch("[2]", output=None)
    other = tmp_path / "runs" / "halves-other-99999999-999999"   # another batch's run
    other.mkdir(parents=True)
    (other / "meta.json").write_text('{"name": "halves-other", "format": 1}')
    assert cmd_run(path, factory, resume=True, progress=False, stream=io.StringIO()) == 0
    (run,) = set((tmp_path / "runs").glob("halves-*")) - {other}
    assert cmd_run(path, factory, resume=True, progress=False, stream=io.StringIO()) == 0
    assert set((tmp_path / "runs").glob("halves-*")) == {run, other}


def test_drain_event_leaves_work_and_exits_3(batch):
    import threading
    drain = threading.Event()
    drain.set()
    path = batch(list(range(20)))
    assert cmd_run(path, Factory(), progress=False, drain_event=drain,
                   stream=io.StringIO()) == 3


def test_executor_error_exits_3_with_resume_hint(batch):
    from colocate.errors import ServerUnavailable

    def factory(n):
        raise ServerUnavailable("no server at colocate.address")

    err = io.StringIO()
    assert cmd_run(batch("[1]"), factory, stream=err) == 3
    assert "ServerUnavailable" in err.getvalue() and "--resume" in err.getvalue()


def test_output_and_default_runs_go_beside_the_batch_file_override_to_cwd(batch, tmp_path,
                                                                          monkeypatch):
    factory = Factory()
    path = batch("[2]", output="out/run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cmd_run(path, factory, progress=False, stream=io.StringIO()) == 0
    assert RunDir.is_run_dir(tmp_path / "out/run") and not (elsewhere / "out").exists()
    assert cmd_run(path, factory, progress=False, stream=io.StringIO(), output="mine") == 0
    assert RunDir.is_run_dir(elsewhere / "mine")                         # --output: from the cwd
    err = io.StringIO()
    assert cmd_run(path, factory, resume="mine", output="x", stream=err) == 2
    assert "drop --output" in err.getvalue()


def test_a_run_made_when_output_was_relative_to_the_cwd_is_still_found(batch, tmp_path,
                                                                       monkeypatch):
    """Before, 'output: out/run' of sweeps/b.yaml run from tmp_path went to tmp_path/out/run."""
    factory = Factory()
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "k.py").write_text(KERNELS)
    path = batch("[2, 4]", output="out/run", name="sweeps/b.yaml")
    old = tmp_path / "out/run"
    assert cmd_run(path, factory, progress=False, stream=io.StringIO(), output=old) == 0
    err = io.StringIO()
    assert cmd_run(path, factory, resume=True, progress=False, stream=err) == 0
    assert "found this batch's run in out/run" in err.getvalue(), err.getvalue()
    assert "resuming it there" in err.getvalue()
    assert not (tmp_path / "sweeps/out").exists()
    err = io.StringIO()
    assert cmd_run(path, factory, progress=False, stream=err) == 0     # a new run: beside it
    assert RunDir.is_run_dir(tmp_path / "sweeps/out/run")
    assert "an earlier run of this batch is in out/run" in err.getvalue(), err.getvalue()
    assert "--resume out/run" in err.getvalue()


def test_demo_batch_runs_and_succeeds(tmp_path, monkeypatch):
    from colocate.demo import demo_batch_path
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    assert cmd_run(demo_batch_path(), Factory(), progress=False, stream=err,
                   output="runs/demo-1") == 0   # the demo's batch lives in the package: cwd
    (run,) = (tmp_path / "runs").glob("demo-*")
    assert len(list((run / "results").glob("*.npy"))) == 4
