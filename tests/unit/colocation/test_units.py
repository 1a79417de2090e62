import pytest

from colocate.colocation.units import format_size, parse_size, resolve_budget
from colocate.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("1GiB", 2**30),
        ("1gib", 2**30),
        ("512M", 512 * 2**20),
        ("512MiB", 512 * 2**20),
        ("512m", 512 * 2**20),
        ("1.5G", 3 * 2**29),
        ("8 GiB", 8 * 2**30),
        ("2K", 2048),
        ("1T", 2**40),
        ("1GB", 10**9),
        ("1MB", 10**6),
        ("100B", 100),
        (" 3g ", 3 * 2**30),
    ],
)
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "G", "1X", "1 GiBs", "-1G", "one", "1..5G", None, 1.5,
                                   True, -1, [1]])
def test_parse_size_garbage(value):
    with pytest.raises(ConfigError) as err:
        parse_size(value, key="co_location.memory_budget")
    assert "co_location.memory_budget" in str(err.value)
    assert "found" in str(err.value) and "expected" in str(err.value)


def test_resolve_budget_fraction_of_available():
    assert resolve_budget(0.5, 1000) == 500
    assert resolve_budget(1.0, 1000) == 1000
    assert resolve_budget(1, 1000) == 1000


def test_resolve_budget_absolute_size():
    assert resolve_budget("8GiB", 1000) == 8 * 2**30
    assert resolve_budget(4096, 1000) == 4096


@pytest.mark.parametrize("value", [0.0, 1.5, -0.1, 0, "lots"])
def test_resolve_budget_rejects_bad_values(value):
    with pytest.raises(ConfigError, match="co_location.memory_budget"):
        resolve_budget(value, 1000, key="co_location.memory_budget")


def test_format_size():
    assert format_size(None) == "-"
    assert format_size(512) == "512 B"
    assert format_size(3 * 2**29) == "1.5 GiB"
