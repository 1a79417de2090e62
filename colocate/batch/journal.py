"""The run directory: batch copy, metadata, an fsynced append-only results journal, and resume.

Layout of a run directory::

    RUN_DIR/
      batch.yaml        the batch file as first run (batch.<k>.yaml: a changed file used by
                        session k of a resume)
      meta.json         format, name, source file, task count and digest, sessions
      tasks.txt         the task ids in batch order, one per line
      results.jsonl     one JSON record per finished task attempt, appended and fsynced
      results/          <task_id>.npy (ndarray results), .pkl (other non-JSON results),
                        .json (JSON results larger than INLINE_LIMIT)
      summary.json      counts, wall time and core-seconds, rewritten when a session ends
      submit-<time>.log the output of a background recorder (``colocate submit``)
      .lock             held (flock) by the session writing to the directory

A record holds ``task_id, block, function, args, kwargs, options, status`` (``ok``, ``failed``
or ``interrupted``), ``result`` (the JSON value, or null) and ``result_file``/``result_kind``
(``npy``, ``pickle``, ``json``) when the result lives in ``results/`` (arrays also carry
``result_shape`` and ``result_dtype``), ``error`` (``type``,
``module``, ``message``, ``traceback``) for failures, ``worker`` (``node``, ``rank``,
``cores``), ``started``/``finished`` (epoch seconds), ``attempts``, ``session`` and
``recorded``. A result file is written (to a temporary name, fsynced, renamed) before the
record that points to it.

Reading tolerates a torn last line (the writer was killed mid-write): a trailing line without
its newline is ignored, and cut off before a resume appends. Complete lines are never dropped.

Resume: a task with an ``ok`` record is done and never runs again; tasks that failed, were
interrupted or never finished run again (``rerun_failed=False`` keeps failed ones). The latest
record of a task is its state. A resume needs the same task ids (see ``schema``), else it is
refused with a :class:`~colocate.errors.ConfigError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cloudpickle

from colocate.errors import ConfigError, TaskError

from .schema import BatchSpec, TaskSpec

log = logging.getLogger("colocate.batch")

FORMAT = 1
STATUSES = ("ok", "failed", "interrupted")
RESULTS = "results.jsonl"
META = "meta.json"
TASKS = "tasks.txt"
SUMMARY = "summary.json"
BATCH_COPY = "batch.yaml"
RESULTS_DIR = "results"
LOCK = ".lock"
# JSON results up to this many characters go inline in results.jsonl; larger ones to a file,
# so that the journal stays quick to read on resume.
INLINE_LIMIT = 64 * 1024

EXIT_OK = 0          # every task succeeded
EXIT_FAILED = 1      # some task failed
EXIT_CONFIG = 2      # invalid batch file or arguments: nothing ran
EXIT_INCOMPLETE = 3  # no failure, but tasks are left (drained, interrupted): resume


@dataclass(frozen=True)
class RunSummary:
    """Counts and totals over a run directory (all sessions); ``summary.json`` holds the same.

    ``retried`` counts tasks whose latest attempt was not their first; ``core_seconds`` is the
    compute harvested: the sum over recorded attempts of (finished - started) * cores.
    """

    name: str
    run_dir: str
    total: int
    succeeded: int
    failed: int
    interrupted: int
    not_run: int
    retried: int
    wall_time: float
    core_seconds: float
    sessions: int
    error: str | None = None

    @property
    def complete(self) -> bool:
        """Whether every task has a final record (ok or failed)."""
        return self.interrupted == 0 and self.not_run == 0

    @property
    def exit_code(self) -> int:
        """0 all ok, 1 some failed, 3 incomplete (resume to finish)."""
        if self.failed:
            return EXIT_FAILED
        return EXIT_OK if self.complete and self.error is None else EXIT_INCOMPLETE

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict, with ``complete`` and ``exit_code`` added."""
        return {**asdict(self), "complete": self.complete, "exit_code": self.exit_code}


def iter_records(path: str | os.PathLike) -> Iterator[dict]:
    """The complete records of a results journal, in order.

    A trailing line without a newline (torn by a kill) is skipped, and so, with a warning, is a
    complete line that is not a valid record.
    """
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                break
            record = _parse_line(line, path, number)
            if record is not None:
                yield record


def _parse_line(line: bytes, path: Any, number: int) -> dict | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict) or "task_id" not in record or record.get(
            "status") not in STATUSES:
        log.warning("%s:%d: skipped a line that is not a task record", path, number)
        return None
    return record


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(f)`` under a temporary name, fsync it, rename it in place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_json(path: Path, data: Any) -> None:
    _write_atomic(path, lambda f: f.write(json.dumps(data, indent=2).encode() + b"\n"))


class _NotJSON(Exception):
    pass


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tuples become lists), else raise :class:`_NotJSON`."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise _NotJSON
        return {k: _jsonable(v) for k, v in value.items()}
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.generic) and not isinstance(value, np.void):
        item = value.item()
        if isinstance(item, (bool, int, float, str)):
            return item
    raise _NotJSON


def _error_fields(exc: BaseException) -> dict[str, Any]:
    fields = {"type": type(exc).__qualname__, "module": type(exc).__module__,
              "message": str(exc),
              "traceback": "".join(traceback.format_exception(type(exc), exc,
                                                              exc.__traceback__))}
    if isinstance(exc, TaskError) and exc.worker:
        fields["worker"] = exc.worker   # where a runtime failure happened, e.g. "rank 2 on n01"
    return fields


def _digest(ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


class _Tally:
    """Per-task latest status and running totals, fed record by record."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.retried: set[str] = set()
        self.core_seconds = 0.0
        self.last_activity: dict[int, float] = {}
        self.duplicates = 0

    def add(self, record: dict) -> None:
        task_id, status = record["task_id"], record["status"]
        started, finished = record.get("started"), record.get("finished")
        if isinstance(started, (int, float)) and isinstance(finished, (int, float)):
            cores = len((record.get("worker") or {}).get("cores") or ()) or 1
            self.core_seconds += max(0.0, finished - started) * cores
        session = record.get("session")
        if isinstance(session, int) and isinstance(record.get("recorded"), (int, float)):
            self.last_activity[session] = max(self.last_activity.get(session, 0.0),
                                              record["recorded"])
        if self.status.get(task_id) == "ok":   # never counted twice; the first ok stands
            self.duplicates += status == "ok"
            return
        self.status[task_id] = status
        if (record.get("attempts") or 0) > 1:
            self.retried.add(task_id)
        else:
            self.retried.discard(task_id)


class RunDir:
    """A run directory, opened to write a session or to read.

    :meth:`create` starts a run, :meth:`open_for_resume` continues one, :meth:`read` opens
    one for reports. One session writes at a time (an flock on ``.lock``), from one thread:
    :meth:`record` is not thread-safe. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: Path, meta: dict, task_ids: list[str], *, writable: bool):
        self.path = path
        self.meta = meta
        self.task_ids = task_ids
        self.writable = writable
        self._known = set(task_ids)
        self._tally = _Tally()
        self._journal: BinaryIO | None = None
        self._lock: int | None = None
        self._session: int | None = None

    # ----- opening ---------------------------------------------------------------------------
    @staticmethod
    def is_run_dir(path: str | os.PathLike) -> bool:
        """Whether ``path`` holds a run (a ``meta.json``)."""
        return (Path(path) / META).is_file()

    @classmethod
    def create(cls, path: str | os.PathLike, spec: BatchSpec) -> RunDir:
        """Make a new run directory for ``spec`` and start its first session.

        Raises:
            ConfigError: ``path`` already holds a run, or cannot be created or written.
        """
        path = Path(path)
        if path.exists() and ((path / META).exists() or (path / RESULTS).exists()):
            raise ConfigError(
                f"{path} already holds a run; continue it with `colocate run --resume {path}`, "
                "or choose another 'output' (or remove it)", source=spec.source, key="output")
        ids = [t.task_id for t in spec.tasks]
        try:
            (path / RESULTS_DIR).mkdir(parents=True, exist_ok=True)
            self = cls(path, {}, ids, writable=True)
            self._take_lock()
            (path / BATCH_COPY).write_text(spec.text, encoding="utf-8")
            _write_atomic(path / TASKS, lambda f: f.write("".join(i + "\n" for i in ids)
                                                          .encode()))
            self.meta = {
                "format": FORMAT, "name": spec.name, "source": str(Path(spec.source).resolve()),
                "base_dir": str(spec.base_dir), "created": time.time(), "task_count": len(ids),
                "task_digest": _digest(ids),
                "blocks": [{"name": b.name, "function": b.function, "tasks": b.n_tasks}
                           for b in spec.blocks],
                "sessions": [],
            }
            (path / RESULTS).touch()
        except OSError as exc:
            raise ConfigError(f"cannot create the run directory {path} ({exc.strerror})",
                              source=spec.source, key="output") from None
        self._start_session(spec)
        return self

    @classmethod
    def open_for_resume(cls, path: str | os.PathLike, spec: BatchSpec) -> RunDir:
        """Open an existing run directory to continue it with ``spec``; starts a new session.

        Raises:
            ConfigError: ``path`` is not a run directory, is in use by another run, or
                ``spec``'s tasks differ from the recorded ones.
        """
        self = cls._open(Path(path), writable=True)
        self._take_lock()
        try:
            self._check_same_tasks(spec)
            good_end = self._scan()
            journal = self.path / RESULTS
            if journal.stat().st_size > good_end:
                log.warning("%s: cut off a torn last record (%d bytes) left by a killed run",
                            journal, journal.stat().st_size - good_end)
                os.truncate(journal, good_end)
            if (self.path / BATCH_COPY).read_text(encoding="utf-8") != spec.text:
                n = len(self.meta["sessions"])
                (self.path / f"batch.{n}.yaml").write_text(spec.text, encoding="utf-8")
            self._start_session(spec)
        except BaseException:
            self.close()
            raise
        return self

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunDir:
        """Open a run directory read-only (for reports); a run may be writing to it."""
        self = cls._open(Path(path), writable=False)
        self._scan()
        return self

    @classmethod
    def _open(cls, path: Path, *, writable: bool) -> RunDir:
        if not cls.is_run_dir(path) or not (path / RESULTS).is_file():
            from .results import check_run_dir
            check_run_dir(path)   # raises the ConfigError that says what is there instead
        try:
            meta = json.loads((path / META).read_text())
            ids = (path / TASKS).read_text().split()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read the run's metadata ({exc})") from None
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{path}: run directory format {meta.get('format')!r}, this "
                              f"colocate reads format {FORMAT}")
        return cls(path, meta, ids, writable=writable)

    def _check_same_tasks(self, spec: BatchSpec) -> None:
        ids = [t.task_id for t in spec.tasks]
        if ids == self.task_ids:
            return
        new = [i for i in ids if i not in self._known]
        gone = [i for i in self.task_ids if i not in set(ids)]

        def some(xs: list[str]) -> str:
            return ", ".join(xs[:3]) + (", ..." if len(xs) > 3 else "")

        parts = []
        if new:
            parts.append(f"{len(new)} not in the run ({some(new)})")
        if gone:
            parts.append(f"{len(gone)} of the run's tasks missing ({some(gone)})")
        raise ConfigError(
            f"the batch's tasks differ from those of the run in {self.path}: "
            f"{'; '.join(parts) or 'same tasks in another order'}. A resume needs the same calls "
            "(options such as timeout may change); restore the file, or start a new run with "
            "another 'output'", source=spec.source)

    def _take_lock(self) -> None:
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"{self.path} is in use by another colocate run ({holder}); "
                              "wait for it to end, or choose another 'output'") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._lock = fd

    def _scan(self) -> int:
        """Read the journal into the tally; return the length of its complete lines."""
        good_end = 0
        with open(self.path / RESULTS, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    break
                good_end += len(line)
                record = _parse_line(line, self.path / RESULTS, number)
                if record is not None:
                    self._tally.add(record)
        return good_end

    def _start_session(self, spec: BatchSpec) -> None:
        self._session = len(self.meta["sessions"])
        self.meta["sessions"].append({"started": time.time(), "finished": None,
                                      "host": socket.gethostname(), "pid": os.getpid(),
                                      "source": str(Path(spec.source).resolve())})
        _write_json(self.path / META, self.meta)
        self._journal = open(self.path / RESULTS, "ab")   # closed in close()

    # ----- state -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The batch name."""
        return self.meta.get("name", self.path.name)

    def status(self) -> dict[str, str]:
        """The latest status of every task with a record."""
        return dict(self._tally.status)

    def pending(self, tasks: Iterable[TaskSpec], rerun_failed: bool = True) -> list[TaskSpec]:
        """The tasks still to run: no record, interrupted, or (if ``rerun_failed``) failed."""
        keep = {"ok"} if rerun_failed else {"ok", "failed"}
        return [t for t in tasks if self._tally.status.get(t.task_id) not in keep]

    # ----- writing ---------------------------------------------------------------------------
    def record(self, task: TaskSpec, status: str, *, result: Any = None,
               error: BaseException | None = None, info: Any = None) -> dict:
        """Append the record of a finished task (fsynced before returning).

        Args:
            task: the task.
            status: ``"ok"``, ``"failed"`` or ``"interrupted"``.
            result: the return value (``"ok"`` only); stored inline as JSON, or in
                ``results/`` as ``.npy`` (numpy arrays), ``.json`` (large) or ``.pkl``.
            error: the exception, for ``"failed"`` and ``"interrupted"``.
            info: the future's ``TaskInfo`` (node, rank, cores, started, finished, attempts),
                or ``None`` if the task never ran.

        Returns:
            The record written.

        Raises:
            ValueError: the status is unknown, the task is not in this run or already ok.
            OSError: the record could not be written.
        """
        if self._journal is None:
            raise ValueError(f"{self.path} is not open for writing")
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, found {status!r}")
        if task.task_id not in self._known:
            raise ValueError(f"task {task.task_id} is not part of the run in {self.path}")
        if self._tally.status.get(task.task_id) == "ok":
            raise ValueError(f"task {task.task_id} is already recorded as ok")
        attempts = getattr(info, "attempts", None)
        if attempts is None:
            attempts = error.attempts if isinstance(error, TaskError) else 0
        record: dict[str, Any] = {
            "task_id": task.task_id, "block": task.block, "function": task.function,
            "args": list(task.args), "kwargs": task.kwargs, "options": task.options.to_json(),
            "status": status, "result": None, "result_file": None, "result_kind": None,
            "error": None, "worker": None, "started": None, "finished": None,
            "attempts": attempts, "session": self._session, "recorded": 0.0,
        }
        if info is not None:
            record["worker"] = {"node": info.node, "rank": info.rank,
                                "cores": [int(c) for c in info.cores]}
            record["started"], record["finished"] = info.started, info.finished
        if status == "ok":
            try:
                self._store_result(record, result)
            except Exception as exc:   # unpicklable result: the task's output is lost
                record.update(status="failed", result=None, result_file=None, result_kind=None)
                error = RuntimeError(f"the result ({type(result).__name__}) could not be "
                                     f"stored: {type(exc).__name__}: {exc}")
        if error is not None:
            record["error"] = _error_fields(error)
        record["recorded"] = time.time()
        line = json.dumps(record, separators=(",", ":"), default=repr) + "\n"
        self._journal.write(line.encode())
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self._tally.add(record)
        return record

    def _store_result(self, record: dict, result: Any) -> None:
        task_id = record["task_id"]
        np = sys.modules.get("numpy")
        if np is not None and isinstance(result, np.ndarray) and result.dtype != object:
            name = f"{RESULTS_DIR}/{task_id}.npy"
            _write_atomic(self.path / name, lambda f: np.save(f, result, allow_pickle=False))
            record.update(result_file=name, result_kind="npy", result_shape=list(result.shape),
                          result_dtype=str(result.dtype))
            return
        try:
            text = json.dumps(_jsonable(result), separators=(",", ":"))
        except _NotJSON:
            name = f"{RESULTS_DIR}/{task_id}.pkl"
            data = cloudpickle.dumps(result)
            _write_atomic(self.path / name, lambda f: f.write(data))
            record.update(result_file=name, result_kind="pickle")
            return
        if len(text) <= INLINE_LIMIT:
            record.update(result=json.loads(text), result_kind="json")
        else:
            name = f"{RESULTS_DIR}/{task_id}.json"
            _write_atomic(self.path / name, lambda f: f.write(text.encode()))
            record.update(result_file=name, result_kind="json")

    def load_result(self, record: dict) -> Any:
        """The result a record holds, loaded from ``results/`` where it was stored there."""
        name = record.get("result_file")
        if not name:
            return record.get("result")
        kind = record.get("result_kind")
        if kind == "npy":
            import numpy as np
            return np.load(self.path / name, allow_pickle=False)
        if kind == "pickle":
            return cloudpickle.loads((self.path / name).read_bytes())
        return json.loads((self.path / name).read_text())

    # ----- totals ----------------------------------------------------------------------------
    def summary(self, error: str | None = None) -> RunSummary:
        """Counts and totals over every session so far."""
        counts = Counter(self._tally.status.values())
        now = time.time()
        wall = 0.0
        for i, s in enumerate(self.meta.get("sessions", [])):
            end = s.get("finished") or (now if i == self._session
                                        else self._tally.last_activity.get(i, s["started"]))
            wall += max(0.0, end - s["started"])
        total = len(self.task_ids)
        return RunSummary(
            name=self.name, run_dir=str(self.path), total=total, succeeded=counts["ok"],
            failed=counts["failed"], interrupted=counts["interrupted"],
            not_run=total - len(self._tally.status), retried=len(self._tally.retried),
            wall_time=wall, core_seconds=self._tally.core_seconds,
            sessions=len(self.meta.get("sessions", [])), error=error)

    def write_summary(self, error: str | None = None) -> RunSummary:
        """End the session: write ``summary.json`` and the session's end time."""
        if self._session is not None:
            self.meta["sessions"][self._session]["finished"] = time.time()
            _write_json(self.path / META, self.meta)
        summary = self.summary(error)
        _write_json(self.path / SUMMARY, {**summary.to_dict(), "written": time.time()})
        return summary

    def iter_records(self) -> Iterator[dict]:
        """Every complete record of the journal, in order."""
        return iter_records(self.path / RESULTS)

    def close(self) -> None:
        """Close the journal and release the lock (the summary is written by the runner)."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock)
            self._lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
