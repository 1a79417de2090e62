"""The built-in demo batch (``demo.yaml``) and the small numpy kernels it runs (``kernels``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["demo_batch_path"]


def demo_batch_path() -> Path:
    """The path of the demo batch file shipped with colocate (``colocate/demo/demo.yaml``)."""
    return Path(str(resources.files(__name__).joinpath("demo.yaml")))
