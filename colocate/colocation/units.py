"""Units: parse memory sizes ("8GiB", "512M") and resolve the function memory budget."""

from __future__ import annotations

import re

from colocate.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(value: str | int, *, key: str | None = None) -> int:
    """Parse a memory size into bytes.

    Binary and decimal suffixes are both accepted and, as in Slurm and most HPC tools, the
    short forms are binary: ``"512M"`` = ``"512MiB"`` = 512 * 2**20. Only an explicit
    ``"MB"``/``"GB"`` means powers of 1000. A bare number (int or string) is bytes.

    Args:
        value: an int (bytes) or a string like ``"8GiB"``, ``"1.5G"``, ``"512M"``, ``"4096"``.
        key: the setting the value came from, named in errors.

    Returns:
        The size in bytes (rounded down to a whole byte).

    Raises:
        ConfigError: the value is negative, not a number, or has an unknown suffix.
    """
    if isinstance(value, bool):
        raise ConfigError(f"found {value!r}, expected a size like '8GiB' or '512M'", key=key)
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"found {value}, expected a size of 0 bytes or more", key=key)
        return value
    if not isinstance(value, str):
        raise ConfigError(
            f"found {value!r} ({type(value).__name__}), expected a size like '8GiB'", key=key
        )
    match = _SIZE.match(value)
    if not match:
        raise ConfigError(
            f"found {value!r}, expected a size like '8GiB', '512M', '1.5G' or a number of bytes",
            key=key,
        )
    number, prefix, binary, byte = match.groups()
    base = 1024 if binary or not byte or not prefix else 1000
    return int(float(number) * base ** _POWER[prefix.lower()])


def resolve_budget(value: float | int | str, available: int, *, key: str | None = None) -> int:
    """Resolve a memory budget setting against the memory available on the node.

    Args:
        value: a float in (0, 1] (fraction of ``available``) or a size (``"8GiB"``, bytes as
            an int > 1). ``1`` and ``1.0`` both mean "all of it".
        available: bytes of memory available on the node.
        key: the setting the value came from, named in errors.

    Returns:
        The budget in bytes.

    Raises:
        ConfigError: a fraction outside (0, 1], or an invalid size.
    """
    if isinstance(value, float) or (isinstance(value, int) and value in (0, 1)):
        if isinstance(value, bool) or not 0 < value <= 1:
            raise ConfigError(
                f"found {value!r}, expected a fraction in (0, 1] of available memory "
                "or a size like '8GiB'",
                key=key,
            )
        return int(available * value)
    return parse_size(value, key=key)


def format_size(n: int | None) -> str:
    """Format bytes for people: ``1536 * 2**20`` -> ``"1.5 GiB"``; ``None`` -> ``"-"``."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
