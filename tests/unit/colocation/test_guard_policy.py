import logging

import pytest

from colocate.colocation._procstat import OwnUsage, read_core_times, read_task_ticks
from colocate.colocation.guard import (
    Guard,
    GuardPolicy,
    Pause,
    Resume,
    SignalAction,
    choose_action,
)
from colocate.errors import ConfigError


def policy():
    return GuardPolicy(pause_above=0.5, resume_below=0.2, hold=1.0)


def test_pause_at_once_when_host_exceeds_threshold():
    p = policy()
    assert p.decide(0.0, {1: 0.4, 2: 0.6}) == [Pause(2)]
    assert p.paused == {2}
    assert p.decide(0.1, {1: 0.9, 2: 0.9}) == [Pause(1)]


def test_threshold_is_strict():
    assert policy().decide(0.0, {1: 0.5}) == []


def test_resume_only_after_hold_seconds_quiet():
    p = policy()
    p.decide(0.0, {1: 1.0})
    assert p.decide(1.0, {1: 0.1}) == []  # quiet from t=1.0
    assert p.decide(1.5, {1: 0.1}) == []
    assert p.decide(1.99, {1: 0.0}) == []
    assert p.decide(2.0, {1: 0.0}) == [Resume(1)]
    assert p.paused == frozenset()


def test_busy_sample_during_hold_restarts_the_quiet_time():
    p = policy()
    p.decide(0.0, {1: 1.0})
    p.decide(0.1, {1: 0.1})
    assert p.decide(0.9, {1: 0.3}) == []  # between the thresholds: not quiet
    assert p.decide(1.2, {1: 0.1}) == []
    assert p.decide(2.1, {1: 0.1}) == []
    assert p.decide(2.2, {1: 0.1}) == [Resume(1)]


def test_hysteresis_band_does_not_flap():
    p = policy()
    decisions = []
    # host hovering between the thresholds: one pause, never a resume
    for i, busy in enumerate([0.6, 0.45, 0.3, 0.45, 0.25, 0.49, 0.3]):
        decisions += p.decide(i * 0.5, {3: busy})
    assert decisions == [Pause(3)]


def test_alternating_load_flaps_at_most_once_per_hold():
    p = GuardPolicy(0.5, 0.2, hold=1.0)
    decisions = []
    for i in range(100):  # 10 s of a host toggling every 100 ms
        decisions += p.decide(i * 0.1, {0: 0.9 if i % 2 else 0.0})
    assert decisions == [Pause(0)]


def test_cores_missing_from_a_sample_keep_their_state():
    p = policy()
    p.decide(0.0, {1: 1.0, 2: 1.0})
    assert p.decide(5.0, {2: 0.0}) == []
    assert p.decide(6.0, {2: 0.0}) == [Resume(2)]
    assert p.paused == {1}


def test_release_all_resumes_everything_in_core_order():
    p = policy()
    p.decide(0.0, {3: 1.0, 1: 1.0})
    assert p.release_all() == [Resume(1), Resume(3)]
    assert p.paused == frozenset()


def test_decisions_are_frozen_values():
    with pytest.raises(AttributeError):
        Pause(1).core = 2  # type: ignore[misc]
    assert Pause(1) != Resume(1)


@pytest.mark.parametrize(("pause", "resume", "hold"),
                         [(0.5, 0.5, 1.0), (0.2, 0.5, 1.0), (1.5, 0.2, 1.0), (0.5, -0.1, 1.0),
                          (0.5, 0.2, -1.0)])
def test_invalid_knobs(pause, resume, hold):
    with pytest.raises(ConfigError, match="guard"):
        GuardPolicy(pause, resume, hold)


class FakeSampler:
    def __init__(self, samples):
        self.samples = list(samples)

    def sample(self):
        return self.samples.pop(0)


def test_guard_step_applies_and_logs(caplog):
    calls = []
    now = iter([0.0, 0.1, 0.2, 1.3])
    guard = Guard(FakeSampler([{1: 0.9}, {1: 0.0}, {1: 0.0}, {1: 0.0}]),
                  GuardPolicy(0.5, 0.2, 1.0), lambda c: calls.append(("pause", c)),
                  lambda c: calls.append(("resume", c)), clock=lambda: next(now))
    with caplog.at_level(logging.INFO, logger="colocate.guard"):
        assert guard.step() == [Pause(1)]
        assert guard.step() == []
        assert guard.step() == []
        assert guard.step() == [Resume(1)]
    assert calls == [("pause", 1), ("resume", 1)]
    messages = [r.getMessage() for r in caplog.records if r.name == "colocate.guard"]
    assert messages == ["guard: pause core 1 (host uses 90% of it)",
                        "guard: resume core 1 (host uses 0% of it)"]


def test_guard_action_failure_is_logged_not_raised(caplog):
    def broken(core):
        raise ProcessLookupError("gone")

    guard = Guard(FakeSampler([{0: 1.0}]), policy(), broken, broken, clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="colocate.guard"):
        assert guard.step() == [Pause(0)]
    assert "pause core 0 failed: gone" in caplog.text


def test_guard_stop_resumes_paused_cores():
    resumed = []
    guard = Guard(FakeSampler([{0: 1.0, 1: 1.0}]), policy(), lambda c: None, resumed.append,
                  clock=lambda: 0.0)
    guard.step()
    guard.stop()
    assert resumed == [0, 1] and guard.paused == frozenset()


def test_from_settings_validates():
    with pytest.raises(ConfigError, match="guard.interval"):
        Guard.from_settings({"interval": 0}, [0], tuple, print, print)
    g = Guard.from_settings({"pause_above": 0.7, "resume_below": 0.1, "hold": 2},
                            [0], tuple, print, print)
    assert (g.policy.pause_above, g.policy.resume_below, g.policy.hold) == (0.7, 0.1, 2.0)


def test_choose_action():
    assert choose_action("freeze", True) == ("freeze", "")
    assert choose_action("stop", True) == ("stop", "")
    action, note = choose_action("freeze", False)
    assert action == "stop" and "SIGSTOP" in note
    with pytest.raises(ConfigError, match="guard.action"):
        choose_action("kill", True)


def test_signal_action_skips_processes_already_gone():
    SignalAction(lambda core: [999999999]).pause(0)  # must not raise


def test_read_core_times_from_a_fake_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3 4 5 6 7 8 0 0\n"
                    "cpu0 10 1 5 100 4 1 1 3 0 0\n"
                    "cpu3 1 0 0 9 0 0 0 0 0 0\nintr 5\n")
    times = read_core_times(str(stat))
    assert set(times) == {0, 3}
    assert times[0].busy == 10 + 1 + 5 + 1 + 1
    assert times[0].total == times[0].busy + 100 + 4 + 3


def test_read_task_ticks_handles_odd_command_names(tmp_path):
    fields = ["S"] + ["0"] * 50
    fields[11], fields[12], fields[19], fields[36] = "7", "5", "1234", "3"
    path = tmp_path / "stat"
    path.write_text("42 (a (b) c) " + " ".join(fields))
    t = read_task_ticks(str(path))
    assert (t.ticks, t.start, t.cpu) == (12, 1234, 3)
    assert read_task_ticks(str(tmp_path / "missing")) is None


def test_own_usage_ignores_processes_off_the_watched_cores():
    import os
    usage = OwnUsage([10**6])  # a core nobody runs on
    assert usage.update([os.getpid()]) == {}
