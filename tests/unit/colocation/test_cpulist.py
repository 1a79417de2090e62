import pytest

from colocate.colocation.cpulist import format_cpulist, parse_cpulist, parse_cpumask
from colocate.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]),
        ("0-7:2", [0, 2, 4, 6]),
        ("1-10:3", [1, 4, 7, 10]),
        (" 0 - 1 , 5 \n", [0, 1, 5]),
        ("3,1,2,1", [1, 2, 3]),
        ("7", [7]),
        ("", []),
        ("  \n", []),
        ("0-1,,4", [0, 1, 4]),
        ("0-0", [0]),
    ],
)
def test_parse(text, expected):
    assert parse_cpulist(text) == expected


def test_parse_iterable_of_ints_sorted_and_deduplicated():
    assert parse_cpulist([5, 1, 5, 2]) == [1, 2, 5]
    assert parse_cpulist(()) == []


@pytest.mark.parametrize("text", ["x-", "3-1", "1-", "-1", "a", "1.5", "0-7:0", "0-7:", "4:2",
                                  "0-7:2/4", "1;2"])
def test_parse_garbage_names_item_and_expectation(text):
    with pytest.raises(ConfigError) as err:
        parse_cpulist(text, key="co_location.spare_cores")
    message = str(err.value)
    assert message.startswith("co_location.spare_cores: found ")
    assert "expected a list like '0-3,8'" in message
    assert err.value.key == "co_location.spare_cores"


def test_parse_garbage_quotes_the_bad_item_in_context():
    with pytest.raises(ConfigError, match=r"found 'x-' in '0-3,x-'"):
        parse_cpulist("0-3,x-")


@pytest.mark.parametrize("value", [[1, -2], [1, "2"], [True], 3, None])
def test_parse_rejects_bad_non_strings(value):
    with pytest.raises(ConfigError):
        parse_cpulist(value)


@pytest.mark.parametrize(
    ("cores", "text"),
    [([0, 1, 2, 3, 8, 10, 11], "0-3,8,10-11"), ([], ""), ([4], "4"), ([5, 4], "4-5"),
     ([0, 2, 4], "0,2,4"), ({9, 1, 2, 3}, "1-3,9")],
)
def test_format(cores, text):
    assert format_cpulist(cores) == text


@pytest.mark.parametrize("text", ["0-3,8,10-11", "0-7:2", "5", "1,3-4,100-127"])
def test_round_trip(text):
    cores = parse_cpulist(text)
    assert parse_cpulist(format_cpulist(cores)) == cores


@pytest.mark.parametrize(("mask", "cores"), [("0x3", [0, 1]), ("0xC", [2, 3]), ("1", [0]),
                                             ("ff,00000001", [0, 32, 33, 34, 35, 36, 37, 38, 39])])
def test_parse_cpumask(mask, cores):
    assert parse_cpumask(mask) == cores


def test_parse_cpumask_rejects_garbage():
    with pytest.raises(ValueError):
        parse_cpumask("0xzz")
