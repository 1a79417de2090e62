"""Reports on a run directory: summary dict, rendering, timeline plot, ``colocate report``."""

from __future__ import annotations

import io
import sys

import pytest
from fakes import FakeInfo

from colocate.batch import RunDir, cmd_report, parse_batch, plot_timeline, render_summary, summarize

BATCH = """
name: rep
blocks:
  - {name: sq, function: json:dumps, tasks: {product: {obj: [1, 2, 3]}}}
  - {name: other, function: json:loads, tasks: [{args: ["1"]}, {args: ["2"]}]}
"""


@pytest.fixture
def run_dir(tmp_path):
    spec = parse_batch(BATCH, source="rep.yaml", check_output=False)
    t = spec.tasks
    with RunDir.create(tmp_path / "run", spec) as rd:
        rd.record(t[0], "ok", result=1, info=FakeInfo("n1", 1, [0], 10.0, 12.0, 1))
        rd.record(t[1], "failed", error=ValueError("first try"),
                  info=FakeInfo("n1", 2, [1], 10.0, 11.0, 1))
        rd.record(t[1], "failed", error=ValueError("bad obj 2\nmore lines"),
                  info=FakeInfo("n1", 2, [1], 11.0, 11.5, 1))
        rd.record(t[3], "ok", result=1, info=FakeInfo("n2", 3, [4, 5], 10.5, 13.0, 2))
        rd.record(t[4], "interrupted", error=RuntimeError("drain"),
                  info=FakeInfo("n2", 3, [4], 13.0, 14.0, 1))
        rd.write_summary()
    return tmp_path / "run"


def test_summarize_counts_blocks_and_failures(run_dir):
    s = summarize(run_dir)
    assert (s["total"], s["succeeded"], s["failed"], s["interrupted"], s["not_run"]) == (
        5, 2, 1, 1, 1)
    assert s["retried"] == 1 and s["exit_code"] == 1 and not s["complete"]
    assert s["core_seconds"] == pytest.approx(2 + 1 + 0.5 + 2.5 * 2 + 1)
    assert s["blocks"] == [
        {"name": "sq", "function": "json:dumps", "total": 3, "ok": 1, "failed": 1,
         "interrupted": 0, "not_run": 1},
        {"name": "other", "function": "json:loads", "total": 2, "ok": 1, "failed": 0,
         "interrupted": 1, "not_run": 0}]
    failed, interrupted = s["failures"]
    assert failed["message"].startswith("bad obj 2") and failed["error_type"] == "ValueError"
    assert failed["worker"] == "rank 2 on n1, cores [1]" and failed["kwargs"] == {"obj": 2}
    assert interrupted["status"] == "interrupted"


def test_render_summary_says_what_failed_and_what_to_do(run_dir):
    text = render_summary(summarize(run_dir))
    assert "succeeded     2" in text and "failed        1" in text
    assert "ValueError: bad obj 2 [rank 2 on n1, cores [1]]" in text
    assert "more lines" not in text
    assert f"colocate run --resume {run_dir}" in text
    assert "results.jsonl" in text


def test_plot_writes_a_png(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_timeline(run_dir, tmp_path / "t.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_timeline(run_dir, tmp_path / "all.png", session="all").stat().st_size > 1000


def test_plot_without_matplotlib_names_the_extra(run_dir, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"colocate\[plot\]"):
        plot_timeline(run_dir, tmp_path / "t.png")


def test_cmd_report(run_dir, tmp_path, capsys):
    out = io.StringIO()
    assert cmd_report(run_dir, stream=out) == 0
    assert "rep: 5 tasks" in out.getvalue()
    assert cmd_report(tmp_path / "nope") == 2
    assert "not a colocate run directory" in capsys.readouterr().err
