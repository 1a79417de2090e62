"""CPU lists: parse and format the Linux ``cpulist`` notation ("0-3,8,10-11", "0-7:2").

This is the format of ``/sys/devices/system/cpu/online``, ``cpuset.cpus``, ``taskset -c`` and
Slurm's ``--cpu-bind=map_cpu``. The parser accepts:

- single cores ``"8"``, ranges ``"0-3"`` (inclusive), and strided ranges ``"0-7:2"``
  (0, 2, 4, 6; the kernel also accepts ``"0-7:2/4"``, group form, which is rejected here);
- whitespace and newlines around items, and an empty string (no cores);
- a list, tuple or set of ints (already parsed), which is validated and sorted.
"""

from __future__ import annotations

from collections.abc import Iterable

from colocate.errors import ConfigError

_EXPECTED = "expected a list like '0-3,8' or '0-7:2'"


def parse_cpulist(value: str | Iterable[int], *, key: str | None = None) -> list[int]:
    """Parse a CPU list into a sorted list of distinct core ids.

    Args:
        value: a cpulist string such as ``"0-3,8,10-11"``, or an iterable of ints.
        key: the setting the value came from, named in errors (e.g. ``"co_location.spare_cores"``).

    Returns:
        The sorted, de-duplicated core ids.

    Raises:
        ConfigError: the value is not a cpulist; the message quotes the offending item.
    """
    if isinstance(value, str):
        return _parse_string(value, key)
    if isinstance(value, bool) or not isinstance(value, Iterable):
        raise ConfigError(f"found {value!r}, {_EXPECTED}", key=key)
    cores: set[int] = set()
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ConfigError(
                f"found {item!r} in {value!r}, expected non-negative integers (core ids)", key=key
            )
        cores.add(item)
    return sorted(cores)


def _parse_string(text: str, key: str | None) -> list[int]:
    cores: set[int] = set()
    for raw in text.replace("\n", ",").split(","):
        item = raw.strip()
        if not item:
            continue
        cores.update(_parse_item(item, text, key))
    return sorted(cores)


def _parse_item(item: str, text: str, key: str | None) -> range:
    def bad() -> ConfigError:
        where = f" in {text.strip()!r}" if item != text.strip() else ""
        return ConfigError(f"found {item!r}{where}, {_EXPECTED}", key=key)

    span, _, stride_text = item.partition(":")
    first_text, dash, last_text = span.partition("-")
    try:
        first = _number(first_text)
        last = _number(last_text) if dash else first
        stride = _number(stride_text) if stride_text or ":" in item else 1
    except ValueError:
        raise bad() from None
    if last < first and not stride_text:
        where = f" in {text.strip()!r}" if item != text.strip() else ""
        raise ConfigError(f"found {item!r}{where}: the range runs backwards; write it as "
                          f"'{last}-{first}' ({_EXPECTED})", key=key)
    if last < first or stride < 1 or (":" in item and not dash):
        raise bad()
    return range(first, last + 1, stride)


def _number(text: str) -> int:
    text = text.strip()
    if not text.isdigit():  # rejects "", "-1", "+1", "1.5", "x"
        raise ValueError(text)
    return int(text)


def format_cpulist(cores: Iterable[int]) -> str:
    """Format core ids compactly, e.g. ``[0, 1, 2, 3, 8]`` -> ``"0-3,8"``.

    Runs of two cores are written ``"4-5"``; the empty list gives ``""``. The output is
    accepted by :func:`parse_cpulist`, the kernel (``cpuset.cpus``) and ``taskset -c``.
    """
    ordered = sorted(set(cores))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def parse_cpumask(mask: str) -> list[int]:
    """Parse a hexadecimal CPU mask (``"0x3"``, ``"ff,ffffffff"``, as in Slurm's ``mask_cpu``).

    Raises:
        ValueError: the text is not a hexadecimal mask.
    """
    text = mask.strip().lower().removeprefix("0x").replace(",", "")
    if not text:
        raise ValueError(f"empty CPU mask {mask!r}")
    bits = int(text, 16)
    return [i for i in range(bits.bit_length()) if bits >> i & 1]
