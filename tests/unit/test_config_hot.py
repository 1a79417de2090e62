"""The hot-polling settings: defaults, overrides and range errors that say what was found."""

from __future__ import annotations

import pytest

from colocate import config
from colocate.errors import ConfigError


def test_defaults_are_short_and_bounded():
    cfg = config.load(environ={})
    assert 0 < cfg["executor"]["hot"] <= 0.002
    assert 0 < cfg["client"]["hot"] <= 0.001


@pytest.mark.parametrize(("name", "value"), [("COLOCATE_EXECUTOR_HOT", "0"),
                                             ("COLOCATE_EXECUTOR_HOT", "1"),
                                             ("COLOCATE_CLIENT_HOT", "0.01")])
def test_the_ends_of_the_ranges_are_accepted(name, value):
    section, key = name[len("COLOCATE_"):].lower().split("_", 1)
    assert config.load(environ={name: value})[section][key] == float(value)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("COLOCATE_EXECUTOR_HOT", "-0.001", "executor.hot: expected seconds from 0 to 1, found -0.001"),
    ("COLOCATE_EXECUTOR_HOT", "5", "executor.hot: expected seconds from 0 to 1, found 5"),
    ("COLOCATE_CLIENT_HOT", "0.5", "client.hot: expected seconds from 0 to 0.01, found 0.5"),
    ("COLOCATE_CLIENT_HOT", "fast", "client.hot: expected float (like 0.0005), found 'fast'"),
])
def test_out_of_range_or_wrong_type_says_what_was_found(name, value, message):
    with pytest.raises(ConfigError) as err:
        config.load(environ={name: value})
    assert message in str(err.value) and name in str(err.value)


def test_a_file_is_checked_the_same_way(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("executor:\n  hot: -1\n")
    with pytest.raises(ConfigError, match="executor.hot: expected seconds from 0 to 1, found -1"):
        config.load(path, environ={})
