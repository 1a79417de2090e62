"""Results out of a run directory: one row per task, as records, a DataFrame, or text.

``load(RUN_DIR)`` reads ``tasks.txt`` and ``results.jsonl`` (see ``journal``) and returns one
record per task, in batch order, from the task's latest record (a task that never ran is
``not run``). A record is a flat dict::

    task, block, <each keyword argument>, arg0.. (positional ones), status, result, error,
    worker, node, rank, cores, started, seconds, attempts, function, result_file

Results kept in ``results/`` are not read until asked for: an array is a :class:`LazyArray`
(``shape`` and ``dtype`` from the record or the ``.npy`` header; ``np.asarray(x)`` or
``x.load()`` reads it), anything else a :class:`StoredResult` (``x.load()``).
``load(RUN_DIR, frame=True)`` returns the same rows as a ``pandas.DataFrame`` (the
``colocate[results]`` extra). :func:`render` turns rows into the ``colocate results`` table,
CSV or JSON.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
from pathlib import Path
from typing import Any

from colocate.errors import ConfigError

from .journal import BATCH_COPY, META, RESULTS, TASKS, RunDir

__all__ = ["FIXED_COLUMNS", "LazyArray", "StoredResult", "columns_of", "load", "render",
           "short"]

# Columns every row has, in order; the task's arguments come between "block" and "status".
HEAD = ("task", "block")
TAIL = ("status", "result", "error", "worker", "node", "rank", "cores", "started", "seconds",
        "attempts", "function", "result_file")
FIXED_COLUMNS = HEAD + TAIL
# Shown when --columns is not given: the arguments in between.
SHOWN_HEAD = ("task",)
SHOWN_TAIL = ("status", "result", "worker", "seconds")


class StoredResult:
    """A result kept in the run's ``results/`` directory, read by :meth:`load` (then cached)."""

    def __init__(self, path: Path, kind: str):
        self.path = path
        self.kind = kind
        self._value: Any = None
        self._loaded = False

    def load(self) -> Any:
        """Read the result from its file (once)."""
        if not self._loaded:
            self._value = self._read()
            self._loaded = True
        return self._value

    def _read(self) -> Any:
        if self.kind == "pickle":
            import cloudpickle
            return cloudpickle.loads(self.path.read_bytes())
        return json.loads(self.path.read_text())

    def short(self) -> str:
        """A few words for a table cell."""
        return f"<{self.kind} in {self.path.name}>"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class LazyArray(StoredResult):
    """A numpy array result in a ``.npy`` file: ``shape`` and ``dtype`` without reading it.

    ``np.asarray(x)`` (or any numpy function) and :meth:`load` read the file.
    """

    def __init__(self, path: Path, shape: tuple[int, ...] | None = None,
                 dtype: str | None = None):
        super().__init__(path, "npy")
        if shape is None or dtype is None:
            shape, dtype = _npy_header(path)
        self.shape = tuple(shape)
        self.dtype = dtype

    def _read(self) -> Any:
        import numpy as np
        return np.load(self.path, allow_pickle=False)

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        value = self.load()
        return value if dtype is None else value.astype(dtype)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def short(self) -> str:
        """``float64 (32, 32)``."""
        return f"{self.dtype} {self.shape}"

    def __repr__(self) -> str:
        return f"LazyArray({self.dtype} {self.shape})"


def _npy_header(path: Path) -> tuple[tuple[int, ...], str]:
    """Shape and dtype from a ``.npy`` file's header (the data is not read)."""
    import numpy as np
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the array result ({exc}); expected a .npy file "
                          "written by colocate run. If it was removed, run the task again: "
                          "delete its record or start a new run") from None
    return tuple(shape), str(dtype)


def load(run_dir: str | os.PathLike, *, frame: bool = False) -> Any:
    """One record per task of a run directory, in batch order (see the module docstring).

    Args:
        run_dir: a directory written by ``colocate run`` (it may still be running).
        frame: return a ``pandas.DataFrame`` (one row per task, its index the task ids) instead
            of a list of dicts.

    Raises:
        ConfigError: ``run_dir`` is not a run directory, or its journal is missing; the message
            says what was found and what to give instead.
        ImportError: ``frame=True`` and pandas is not installed.
    """
    rows = _rows(check_run_dir(run_dir))
    if not frame:
        return rows
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("load(..., frame=True) needs pandas, which is not installed; "
                          "install the extra: pip install 'colocate[results]' (or use "
                          "load(run_dir), a list of dicts)") from exc
    df = pd.DataFrame(rows, columns=columns_of(rows))
    return df.set_index("task")


def check_run_dir(run_dir: str | os.PathLike) -> RunDir:
    """Open ``run_dir`` read-only, or say what it holds and what a run directory holds."""
    path = Path(run_dir)
    expected = (f"expected a directory written by colocate run, holding {META}, {TASKS} and "
                f"{RESULTS}")
    if not path.exists():
        raise ConfigError(f"{path} is not a colocate run directory: it does not exist; "
                          f"{expected}. colocate run names it when it "
                          "starts ('results in DIR'); it is the batch's output:, relative to "
                          "the batch file")
    if not path.is_dir():
        raise ConfigError(f"{path} is not a colocate run directory: it is a file; {expected}")
    if not (path / META).is_file():
        runs = sorted(str(p.parent) for p in path.glob(f"*/{META}"))
        found = sorted(p.name for p in path.iterdir())
        shown = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "") or "nothing"
        hint = (f"; it holds run directories: give one of them, e.g. {runs[-1]}"
                f"{' (' + str(len(runs)) + ' in all)' if len(runs) > 1 else ''}" if runs else
                ". Give the directory colocate run named ('results in ...')")
        raise ConfigError(f"{path} is not a colocate run directory: found {shown}, but no "
                          f"{META}; {expected}{hint}")
    if not (path / RESULTS).is_file():
        raise ConfigError(f"{path} is not a complete colocate run directory: it has {META} "
                          f"but no {RESULTS}, the run's journal (moved, or removed); "
                          f"{expected}. Restore {RESULTS} from where it "
                          "went, or run the batch again into a new directory: colocate run "
                          "BATCH.yaml --output NEW_DIR")
    return RunDir.read(path)


def _rows(rd: RunDir) -> list[dict]:
    latest: dict[str, dict] = {}
    for record in rd.iter_records():
        if latest.get(record["task_id"], {}).get("status") != "ok":   # the first ok stands
            latest[record["task_id"]] = record
    functions = {b["name"]: b["function"] for b in rd.meta.get("blocks", [])}
    planned = _planned_calls(rd) if len(latest) < len(rd.task_ids) else {}
    rows = []
    for task_id in rd.task_ids:
        record = latest.get(task_id) or planned.get(task_id)
        block = record["block"] if record else task_id.rsplit("-", 2)[0]
        row: dict[str, Any] = {"task": task_id, "block": block}
        if record is not None:
            for i, value in enumerate(record.get("args") or ()):
                row[f"arg{i}"] = value
            for name, value in (record.get("kwargs") or {}).items():
                row[name if name not in FIXED_COLUMNS else f"kwargs.{name}"] = value
        row.update(_outcome(rd.path, record))
        row["function"] = record["function"] if record else functions.get(block)
        rows.append(row)
    return rows


def _planned_calls(rd: RunDir) -> dict[str, dict]:
    """The calls of the run's batch copy, for tasks with no record yet (``status: not run``)."""
    from .schema import parse_batch
    copies = sorted(rd.path.glob("batch.*.yaml"), key=lambda p: int(p.stem.split(".")[1]))
    copy = copies[-1] if copies else rd.path / BATCH_COPY
    try:
        spec = parse_batch(copy.read_text(encoding="utf-8"), source=str(copy),
                           base_dir=rd.meta.get("base_dir") or rd.path, resolve=False,
                           check_output=False)
    except (OSError, ValueError, ConfigError):
        return {}   # the rows of unrun tasks then show their ids only
    return {t.task_id: {"task_id": t.task_id, "block": t.block, "function": t.function,
                        "args": list(t.args), "kwargs": t.kwargs, "status": "not run"}
            for t in spec.tasks}


def _outcome(run_dir: Path, record: dict | None) -> dict[str, Any]:
    out: dict[str, Any] = {k: None for k in TAIL if k != "function"}
    if record is None or record["status"] == "not run":
        out["status"] = "not run"
        return out
    out["status"] = record["status"]
    name = record.get("result_file")
    if record["status"] == "ok":
        if not name:
            out["result"] = record.get("result")
        elif record.get("result_kind") == "npy":
            out["result"] = LazyArray(run_dir / name, record.get("result_shape"),
                                      record.get("result_dtype"))
        else:
            out["result"] = StoredResult(run_dir / name, record.get("result_kind") or "json")
        out["result_file"] = name
    error = record.get("error")
    if error:
        out["error"] = f"{error.get('type')}: {(error.get('message') or '').strip()}"
    worker = record.get("worker")
    if worker:
        out.update(worker=f"rank {worker.get('rank')} on {worker.get('node')}",
                   node=worker.get("node"), rank=worker.get("rank"), cores=worker.get("cores"))
    started, finished = record.get("started"), record.get("finished")
    out["started"] = started
    if isinstance(started, (int, float)) and isinstance(finished, (int, float)):
        out["seconds"] = round(finished - started, 3)
    out["attempts"] = record.get("attempts")
    return out


def columns_of(rows: list[dict]) -> list[str]:
    """Every column of ``rows``: task and block, the arguments (first seen first), the rest."""
    args: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in FIXED_COLUMNS:
                args.setdefault(key, None)
    return [*HEAD, *args, *TAIL]


def default_columns(rows: list[dict]) -> list[str]:
    """The columns ``colocate results`` shows unless told: task, arguments, status, result..."""
    args = [c for c in columns_of(rows) if c not in FIXED_COLUMNS]
    many_blocks = len({row["block"] for row in rows}) > 1
    errors = any(row.get("error") for row in rows)
    return [*SHOWN_HEAD, *(["block"] if many_blocks else []), *args, *SHOWN_TAIL,
            *(["error"] if errors else [])]


def pick_columns(rows: list[dict], wanted: list[str] | None) -> list[str]:
    """``wanted`` checked against the columns there are (None: the default columns).

    Raises:
        ConfigError: a name is not a column; the message lists the columns and a close match.
    """
    if wanted is None:
        return default_columns(rows)
    there = columns_of(rows)
    for name in wanted:
        if name not in there:
            close = difflib.get_close_matches(name, there, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown column {name!r}{hint}; this run has the columns "
                              f"{', '.join(there)}; pass some of them to --columns, "
                              "separated by commas")
    if not wanted:
        raise ConfigError(f"--columns is empty; expected names separated by commas, from: "
                          f"{', '.join(there)}")
    return wanted


def short(value: Any, width: int = 40) -> str:
    """A table cell: a scalar as is, an array as dtype and shape, others cut to ``width``."""
    if value is None:
        return "-"
    if isinstance(value, StoredResult):
        return value.short()
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value, separators=(",", ":"))
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[:width - 3] + "..."


def _plain(value: Any) -> Any:
    """A JSON value for ``--format json``: stored results as their kind, shape and file."""
    if isinstance(value, LazyArray):
        return {"dtype": value.dtype, "shape": list(value.shape), "file": str(value.path)}
    if isinstance(value, StoredResult):
        return {"kind": value.kind, "file": str(value.path)}
    return value


def render(rows: list[dict], columns: list[str], fmt: str = "table") -> str:
    """Rows as an aligned text table, CSV (short cells) or JSON (a list of objects)."""
    if fmt == "json":
        return json.dumps([{c: _plain(row.get(c)) for c in columns} for row in rows], indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else
                             short(row.get(c), width=10**6) for c in columns])
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise ConfigError(f"unknown format {fmt!r}; expected table, csv or json")
    cells = [[short(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(_is_number(row.get(c)) for row in rows if row.get(c) is not None)
               for c in columns]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(list(columns)), *(line(r) for r in cells)])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
