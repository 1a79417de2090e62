"""Named data of a batch: ``.npy`` arrays stored once in worker memory and passed by reference.

A batch may name arrays in a top-level ``data:`` mapping and pass them to tasks as a whole
argument written ``{ref: NAME}``::

    data:
      field: inputs/field.npy          # relative to the batch file
    function: mymod:smooth
    tasks:
      product: {grid: [{ref: field}], width: [3, 5, 7]}

The schema checks, before anything runs, that every file exists and is a readable ``.npy`` and
that every ``{ref: NAME}`` names one of them. At run time :class:`DataRefs` loads each array
the first time a task needs it, stores it with ``ex.put`` (one copy into a worker's memory for
the whole batch) and gives the task the :class:`~colocate.store.Ref`, which the worker resolves
to the array. The journal records the argument as written (``{"ref": "field"}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

REF_KEY = "ref"


def ref_name(value: Any) -> str | None:
    """``NAME`` if ``value`` is a ``{ref: NAME}`` mapping, else ``None``."""
    if isinstance(value, Mapping) and len(value) == 1 and REF_KEY in value:
        name = value[REF_KEY]
        return name if isinstance(name, str) else ""
    return None


def refs_in(args: tuple, kwargs: Mapping[str, Any]) -> list[str]:
    """The data names a call refers to (only whole arguments are references)."""
    names = [ref_name(v) for v in (*args, *kwargs.values())]
    return [n for n in names if n is not None]


def check_npy(path: Path) -> str | None:
    """Why ``path`` is not a readable ``.npy`` array, or ``None`` if it is."""
    import numpy as np
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, _, dtype = reader(f)
    except OSError as e:
        return f"cannot read it ({e.strerror})"
    except ValueError as e:
        return f"it is not a .npy array file ({e})"
    if dtype.hasobject:
        return "it holds Python objects (dtype object), which need pickling: save plain arrays"
    return None


class DataRefs:
    """Stores a batch's named arrays on first use and swaps ``{ref: NAME}`` for their Refs.

    Args:
        ex: the executor (its ``put`` stores an array with a worker).
        data: ``{name: path}`` from the batch.
    """

    def __init__(self, ex: Any, data: Mapping[str, Path]) -> None:
        self.ex = ex
        self.data = data
        self.refs: dict[str, Any] = {}

    def resolve(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """``args`` and ``kwargs`` with every ``{ref: NAME}`` replaced by NAME's Ref."""
        if not self.data:
            return args, kwargs
        return (tuple(self._swap(v) for v in args),
                {k: self._swap(v) for k, v in kwargs.items()})

    def _swap(self, value: Any) -> Any:
        name = ref_name(value)
        if name is None:
            return value
        ref = self.refs.get(name)
        if ref is None:
            import numpy as np
            ref = self.refs[name] = self.ex.put(np.load(self.data[name], allow_pickle=False))
        return ref

    def free(self) -> None:
        """Release the stored arrays (the run is over)."""
        for ref in self.refs.values():
            try:
                self.ex.free(ref)
            except Exception:   # noqa: BLE001 - the world may be gone; it frees them then
                pass
        self.refs.clear()
