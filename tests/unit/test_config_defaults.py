"""Defaults a user's scripts depend on by name (a rename inside the package must not move them)."""

from __future__ import annotations

import re
from pathlib import Path

from colocate import config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_address_file_is_colocate_address_as_the_readme_says():
    # The layout change of issue 13 rewrote every "colocate.address" (the module) to
    # "colocate.wire.address", and the default file name with it; scripts that look for
    # ./colocate.address would have found nothing.
    default = config.load(environ={})["server"]["address_file"]
    assert default == "colocate.address"
    shown = set(re.findall(r"--address(?:-file)? (\S+\.address)\b", README.read_text()))
    assert shown == {default}, f"the README's commands name {sorted(shown)}, not {default}"
