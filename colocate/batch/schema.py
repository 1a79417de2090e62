"""Batch files: load, validate and expand a YAML batch into a flat, deterministic task list.

Everything is checked before anything runs; errors are :class:`BatchConfigError` (a
``ConfigError``) naming ``file:line``, the key path and what was found and expected.
The full reference, with examples, is ``docs/batch.md``. In short::

    name: pi-sweep                      # optional; default: the file name without .yaml
    output: runs/pi-sweep               # optional; default: runs/<name>-<YYYYmmdd-HHMMSS>

Every relative path in a batch file (``output``, ``data``, ``file.py:function``) is relative to
the batch file's directory, and so is the default ``runs/``; ``colocate run --output DIR``
overrides ``output`` (relative to the current directory).
    function: examples.kernels:monte_carlo_pi   # or path/to/file.py:function
    defaults: {cores: 1, memory: 1GiB, timeout: 300, retries: 1}
    tasks:
      product: {samples: [100000, 1000000], seed: [1, 2, 3]}

A batch is either one block (``function``/``defaults``/``tasks`` at the top) or several under
``blocks:``, a list of ``{name, function, defaults, tasks}``; top-level ``defaults`` then apply
to every block and a block's own ``defaults`` override them. ``tasks`` is one sweep, or a list
whose items are sweeps or calls:

- sweep: ``{product: {k: [..], ..}}`` (every combination, the last key varying fastest) or
  ``{zip: {k: [..], ..}}`` (element-wise, equal lengths), each with optional fixed ``args``,
  ``kwargs`` and ``defaults``;
- call: ``{args: [..], kwargs: {..}}`` plus any option keys, which override the defaults.

Options: ``cores`` (int >= 1), ``memory`` (size such as ``512MiB``/``1GiB`` or bytes; null = no
limit of its own), ``gpus`` (int >= 0), ``timeout`` (seconds > 0; null = none), ``retries``
(int >= 0), ``retry_on`` (list of exception class names). Options not given anywhere take the
executor's defaults.

Task ids are ``<block>-<index>-<hash>``: the 0-based position in the block and 8 hex digits of
a SHA-256 over the function reference, args and kwargs. They are the same on every load of the
same file; a changed, added or removed call changes the id set, which resume detects. Options
are not part of the id: a resume may raise a timeout or memory limit.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import enum
import hashlib
import inspect
import itertools
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NoReturn

from colocate.colocation.units import parse_size
from colocate.errors import ConfigError

from ._yaml import BatchConfigError, MarkedDict, MarkedList, line_of, load_marked
from .data import check_npy, refs_in
from .functions import resolve_exception, resolve_function, split_ref, unexpected_arguments

__all__ = ["BatchConfigError", "BatchSpec", "BlockSpec", "BatchTaskOptions", "TaskSpec", "UNSET",
           "load_batch", "parse_batch"]

OPTION_KEYS = ("cores", "memory", "gpus", "timeout", "retries", "retry_on")
TOP_KEYS = ("name", "output", "data", "function", "defaults", "tasks", "blocks")
BLOCK_KEYS = ("name", "function", "defaults", "tasks")
SWEEP_KEYS = ("product", "zip", "args", "kwargs", "defaults")
CALL_KEYS = ("args", "kwargs", *OPTION_KEYS)
DEFAULT_RUNS_DIR = Path("runs")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Unset(enum.Enum):
    UNSET = "unset"

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset.UNSET
"""An option not given in the batch file: the executor's default applies."""


@dataclass(frozen=True, repr=False)
class BatchTaskOptions:
    """Per-task options from a batch file; a field left ``UNSET`` takes the executor's default.

    ``memory`` is in bytes; ``memory=None`` and ``timeout=None`` mean "no limit" explicitly.
    ``retry_on`` holds exception class names as written (see :meth:`executor_kwargs`).
    """

    cores: int | _Unset = UNSET
    memory: int | None | _Unset = UNSET
    gpus: int | _Unset = UNSET
    timeout: float | None | _Unset = UNSET
    retries: int | _Unset = UNSET
    retry_on: tuple[str, ...] | _Unset = UNSET

    def __repr__(self) -> str:
        return f"BatchTaskOptions({', '.join(f'{k}={v!r}' for k, v in self.given().items())})"

    def given(self) -> dict[str, Any]:
        """The options that are set, as ``{name: value}``."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not UNSET}

    def merged(self, override: BatchTaskOptions) -> BatchTaskOptions:
        """These options with every option set in ``override`` replacing ours."""
        return replace(self, **override.given())

    def to_json(self) -> dict[str, Any]:
        """The set options as JSON-able values (``retry_on`` as a list)."""
        return {k: list(v) if k == "retry_on" else v for k, v in self.given().items()}

    def executor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Executor.options()``: set options, ``retry_on`` as types."""
        kw = self.given()
        if "retry_on" in kw:
            kw["retry_on"] = tuple(resolve_exception(n) for n in kw["retry_on"])
        return kw


@dataclass(frozen=True)
class TaskSpec:
    """One function call of a batch, after expansion."""

    task_id: str
    block: str
    function: str
    args: tuple
    kwargs: dict
    options: BatchTaskOptions


@dataclass(frozen=True)
class BlockSpec:
    """One block of a batch: a function, its defaults and how many tasks it expanded to."""

    name: str
    function: str
    defaults: BatchTaskOptions
    n_tasks: int
    line: int | None = None


@dataclass(frozen=True)
class BatchSpec:
    """A validated batch: its tasks in a fixed order and the resolved functions.

    Attributes:
        name: the batch name.
        source: the batch file as given (used in messages).
        base_dir: the directory file references are relative to.
        text: the file's text (copied into the run directory).
        output: the run directory from ``output:`` (made absolute: relative to the batch
            file's directory, as every path in a batch file is), or ``None`` for the default.
        blocks: the blocks, in file order.
        tasks: every task, block by block, in file order.
        functions: the callable for each function reference.
        data: named ``.npy`` arrays (``data:``), passed to tasks as ``{ref: NAME}``.
        output_written: ``output:`` as written in the file (to find runs made before it was
            relative to the batch file), or ``None``.
    """

    name: str
    source: str
    base_dir: Path
    text: str
    output: Path | None
    blocks: tuple[BlockSpec, ...]
    tasks: tuple[TaskSpec, ...]
    functions: Mapping[str, Callable] = field(default_factory=dict, repr=False, compare=False)
    data: Mapping[str, Path] = field(default_factory=dict)
    output_written: str | None = None

    def default_output(self, now: _dt.datetime | None = None) -> Path:
        """``runs/<name>-<YYYYmmdd-HHMMSS>`` beside the batch file."""
        stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
        return self.base_dir / DEFAULT_RUNS_DIR / f"{self.name}-{stamp}"


def load_batch(path: str | os.PathLike, *, base_dir: str | os.PathLike | None = None,
               resolve: bool = True, check_output: bool = True) -> BatchSpec:
    """Read, validate and expand a batch file.

    Args:
        path: the YAML batch file.
        base_dir: the directory file references (``file.py:fn``) are relative to; the batch
            file's directory by default (pass the original one when loading a run's copy).
        resolve: import every function and check each call against its signature.
        check_output: check that the output directory can be created and written.

    Returns:
        The validated batch.

    Raises:
        BatchConfigError: the file cannot be read or is invalid; the message says where and why.
    """
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise BatchConfigError(f"cannot read the batch file ({reason})", source=source) from None
    base = Path(base_dir) if base_dir is not None else Path(path).resolve().parent
    return parse_batch(text, source=source, base_dir=base, resolve=resolve,
                       check_output=check_output, default_name=Path(path).stem)


def parse_batch(text: str, *, source: str = "<batch>", base_dir: str | os.PathLike = ".",
                resolve: bool = True, check_output: bool = True,
                default_name: str = "batch") -> BatchSpec:
    """Validate and expand batch ``text``; see :func:`load_batch` for the arguments."""
    data = load_marked(text, source)
    return _Parser(source, Path(base_dir).resolve(), resolve).batch(
        data, text, check_output, default_name)


class _Call:
    """One call before ids are given: arguments, options and where it was written."""

    __slots__ = ("args", "kwargs", "options", "key", "line")

    def __init__(self, args: tuple, kwargs: dict, options: BatchTaskOptions, key: str,
                 line: int | None):
        self.args, self.kwargs, self.options, self.key, self.line = (
            args, kwargs, options, key, line)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 60 else text[:57] + '...'}"


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


class _Parser:
    def __init__(self, source: str, base_dir: Path, resolve: bool):
        self.source = source
        self.base_dir = base_dir
        self.resolve = resolve
        self.functions: dict[str, Callable] = {}
        self._fits: set[tuple] = set()

    # ----- errors and checks ---------------------------------------------------------------
    def fail(self, message: str, key: str, container: Any = None, item: Any = None) -> NoReturn:
        raise BatchConfigError(message, source=self.source, key=key,
                               line=line_of(container, item))

    def keys(self, node: MarkedDict, valid: tuple[str, ...], path: str) -> None:
        for key in node:
            if key not in valid:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise BatchConfigError(
                    f"unknown key {key!r}{hint}; valid keys here: {', '.join(valid)}",
                    source=self.source, key=_join(path, key), line=node.key_lines.get(key))

    def mapping(self, value: Any, path: str, parent: Any, key: Any, what: str) -> MarkedDict:
        if not isinstance(value, dict):
            self.fail(f"expected {what}, found {_describe(value)}", path, parent, key)
        return value

    def plain(self, value: Any, path: str, parent: Any, key: Any) -> Any:
        """``value`` as plain dicts and lists; fail unless it is JSON-able (hashed, journaled)."""
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            return [self.plain(item, _join(path, i), value, i) for i, item in enumerate(value)]
        if isinstance(value, dict):
            for k in value:
                if not isinstance(k, str):
                    self.fail(f"mapping keys in arguments must be strings, found {_describe(k)}",
                              path, value, k)
            return {k: self.plain(item, _join(path, k), value, k) for k, item in value.items()}
        self.fail(f"found {_describe(value)}; arguments must be plain YAML values (numbers, "
                  "strings, booleans, null, lists, mappings with string keys)", path, parent, key)

    # ----- top level -------------------------------------------------------------------------
    def batch(self, data: Any, text: str, check_output: bool, default_name: str) -> BatchSpec:
        if data is None:
            self.fail("the batch file is empty; it needs at least 'function' and 'tasks' "
                      "(or 'blocks'); see docs/batch.md", "")
        top = self.mapping(data, "", None, None, f"a mapping with keys {', '.join(TOP_KEYS)}")
        self.keys(top, TOP_KEYS, "")
        name = self.name(top, "name", re.sub(r"[^A-Za-z0-9_.-]", "-", default_name) or "batch")
        output = None
        if "output" in top:
            if not isinstance(top["output"], str) or not top["output"].strip():
                self.fail(f"expected a directory path, found {_describe(top['output'])}",
                          "output", top, "output")
            output = Path(os.path.normpath(self.base_dir / Path(top["output"]).expanduser()))
        defaults = self.options(top.get("defaults", {}), OPTION_KEYS, "defaults", top, "defaults")
        data = self.data(top["data"], top) if "data" in top else {}
        if "blocks" in top:
            for key in ("function", "tasks"):
                if key in top:
                    self.fail(f"'{key}' at the top level and 'blocks' cannot be combined; move "
                              "it into a block, or drop 'blocks' for a one-function batch",
                              key, top, key)
            blocks_node = top["blocks"]
            if not isinstance(blocks_node, list) or not blocks_node:
                self.fail(f"expected a non-empty list of blocks (each with function and tasks), "
                          f"found {_describe(blocks_node)}", "blocks", top, "blocks")
            raw = [self.block(b, _join("blocks", i), defaults, blocks_node, i)
                   for i, b in enumerate(blocks_node)]
        else:
            for key in ("function", "tasks"):
                if key not in top:
                    self.fail(f"missing key {key!r}; a batch needs 'function' and 'tasks' "
                              "(or a 'blocks' list of such)", key, top)
            raw = [self.block_body(top, "", defaults, None)]
        seen: dict[str, str] = {}
        for bname, _ref, _defaults, _calls, bpath, line in raw:
            if bname in seen:
                raise BatchConfigError(
                    f"block name {bname!r} is used by both {seen[bname]} and {bpath}; give "
                    "each block a distinct 'name'",
                    source=self.source, key=_join(bpath, "name"), line=line)
            seen[bname] = bpath
        tasks: list[TaskSpec] = []
        blocks = []
        for bname, ref, bdefaults, calls, bpath, line in raw:
            for index, call in enumerate(calls):
                for wanted in refs_in(call.args, call.kwargs):
                    if wanted not in data:
                        raise BatchConfigError(
                            f"a task of block {bname!r} passes {{ref: {wanted!r}}}, but "
                            f"'data' names {', '.join(map(repr, data)) or 'nothing'}; add it "
                            "to 'data' (name: path/to/file.npy) or fix the name",
                            source=self.source, key=bpath or "tasks", line=line)
                tasks.append(TaskSpec(_task_id(bname, index, ref, call.args, call.kwargs),
                                      bname, ref, call.args, call.kwargs, call.options))
            blocks.append(BlockSpec(bname, ref, bdefaults, len(calls), line))
        spec = BatchSpec(name=name, source=self.source, base_dir=self.base_dir, text=text,
                         output=output, blocks=tuple(blocks), tasks=tuple(tasks),
                         functions=dict(self.functions), data=data,
                         output_written=top["output"] if output else None)
        if check_output:
            why = output_problem(output or self.base_dir / DEFAULT_RUNS_DIR)
            if why:
                self.fail(f"{why}; choose another 'output' (or pass --output DIR)", "output",
                          top if output else None, "output")
        return spec

    def data(self, node: Any, top: MarkedDict) -> dict[str, Path]:
        """``data:`` -> ``{name: path}``, each a readable ``.npy`` file (see batch/data.py)."""
        node = self.mapping(node, "data", top, "data", "a mapping of names to .npy files")
        out = {}
        for name, value in node.items():
            path = _join("data", name)
            if not isinstance(value, str) or not value.strip():
                self.fail(f"expected a path to a .npy file, found {_describe(value)}", path,
                          node, name)
            file = Path(value).expanduser()
            file = file if file.is_absolute() else self.base_dir / file
            why = check_npy(file)
            if why:
                self.fail(f"found {value!r} ({file}), but {why}; expected an array saved with "
                          "numpy.save", path, node, name)
            out[str(name)] = file
        return out

    def name(self, node: MarkedDict, key: str, default: str) -> str:
        value = node.get(key, default)
        if not isinstance(value, str) or not _NAME.match(value):
            self.fail(f"expected a name of letters, digits, '_', '.' or '-' (at most 64, "
                      f"starting with a letter or digit), found {_describe(value)}",
                      key, node, key)
        return value

    def block(self, node: Any, path: str, defaults: BatchTaskOptions, parent: MarkedList,
              index: int) -> tuple:
        node = self.mapping(node, path, parent, index,
                            f"a block mapping with keys {', '.join(BLOCK_KEYS)}")
        self.keys(node, BLOCK_KEYS, path)
        for key in ("function", "tasks"):
            if key not in node:
                self.fail(f"missing key {key!r}; every block needs 'function' and 'tasks'",
                          path, parent, index)
        own = self.options(node.get("defaults", {}), OPTION_KEYS, _join(path, "defaults"),
                           node, "defaults")
        return self.block_body(node, path, defaults.merged(own), node.get("name"))

    def block_body(self, node: MarkedDict, path: str, defaults: BatchTaskOptions,
                   name: Any) -> tuple:
        ref = self.function(node["function"], _join(path, "function"), node)
        if name is None:
            name = split_ref(ref)[1].rsplit(".", 1)[-1]
        else:
            name = self.name(node, "name", name)
        calls = self.tasks(node["tasks"], _join(path, "tasks"), defaults, node, "tasks")
        if not calls:
            self.fail("no tasks: the list is empty; add at least one call or sweep",
                      _join(path, "tasks"), node, "tasks")
        if self.resolve:
            for call in calls:
                self.fits(ref, call)
        return name, ref, defaults, calls, path, line_of(node)

    def function(self, ref: Any, path: str, node: MarkedDict) -> str:
        try:
            split_ref(ref)
            if self.resolve and ref not in self.functions:
                self.functions[ref] = resolve_function(ref, self.base_dir)
        except ConfigError as exc:
            self.fail(str(exc), path, node, "function")
        return ref

    def fits(self, ref: str, call: _Call) -> None:
        """Check the call's arguments against the function's signature (once per shape)."""
        shape = (ref, len(call.args), tuple(sorted(call.kwargs)))
        if shape in self._fits:
            return
        fn = self.functions[ref]
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):   # builtins without a signature: nothing to check
            return
        try:
            signature.bind(*call.args, **call.kwargs)
        except TypeError as exc:
            bare = signature.replace(
                parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
                return_annotation=signature.empty)
            why = unexpected_arguments(signature, call.kwargs) or exc
            raise BatchConfigError(
                f"the call does not fit {ref}{bare}: {why}",
                source=self.source, key=call.key, line=call.line) from None
        self._fits.add(shape)

    # ----- tasks -------------------------------------------------------------------------------
    def tasks(self, node: Any, path: str, defaults: BatchTaskOptions, parent: Any,
              key: Any) -> list[_Call]:
        if isinstance(node, dict):
            if "product" in node or "zip" in node:
                return self.sweep(node, path, defaults)
            self.fail("expected a sweep (a mapping with 'product' or 'zip') or a list of calls "
                      f"and sweeps, found a mapping with keys {', '.join(map(str, node))}",
                      path, parent, key)
        if not isinstance(node, list):
            self.fail("expected a sweep (a mapping with 'product' or 'zip') or a list of calls "
                      f"and sweeps, found {_describe(node)}", path, parent, key)
        calls: list[_Call] = []
        for i, item in enumerate(node):
            item_path = _join(path, i)
            item = self.mapping(item, item_path, node, i,
                                "a call (a mapping with 'args' and/or 'kwargs' and options) "
                                "or a sweep (a mapping with 'product' or 'zip')")
            if "product" in item or "zip" in item:
                calls.extend(self.sweep(item, item_path, defaults))
            else:
                calls.append(self.call(item, item_path, defaults))
        return calls

    def call(self, node: MarkedDict, path: str, defaults: BatchTaskOptions) -> _Call:
        self.keys(node, CALL_KEYS, path)
        args = self.args(node, path)
        kwargs = self.kwargs(node, path)
        options = {k: v for k, v in node.items() if k in OPTION_KEYS}
        own = self.options(MarkedDict(options), OPTION_KEYS, path, node, None, lines=node)
        return _Call(args, kwargs, defaults.merged(own), path, line_of(node))

    def args(self, node: MarkedDict, path: str) -> tuple:
        args = node.get("args", [])
        if not isinstance(args, list):
            self.fail(f"expected a list of positional arguments, found {_describe(args)}",
                      _join(path, "args"), node, "args")
        return tuple(self.plain(args, _join(path, "args"), node, "args"))

    def kwargs(self, node: MarkedDict, path: str, key: str = "kwargs") -> dict:
        kwargs = node.get(key, {})
        kpath = _join(path, key)
        kwargs = self.mapping(kwargs, kpath, node, key, "a mapping of keyword arguments")
        for name in kwargs:
            if not isinstance(name, str) or not name.isidentifier():
                self.fail(f"expected a Python argument name, found {_describe(name)}",
                          kpath, kwargs, name)
        return {name: self.plain(value, _join(kpath, name), kwargs, name)
                for name, value in kwargs.items()}

    def sweep(self, node: MarkedDict, path: str, defaults: BatchTaskOptions) -> list[_Call]:
        self.keys(node, SWEEP_KEYS, path)
        if "product" in node and "zip" in node:
            self.fail("a sweep has either 'product' or 'zip', not both; write two sweeps in a "
                      "list instead", path, node)
        kind = "product" if "product" in node else "zip"
        params = self.kwargs(node, path, kind)
        if not params:
            self.fail(f"'{kind}' is empty; give at least one argument with a list of values",
                      _join(path, kind), node, kind)
        table = node[kind]
        for name, values in params.items():
            if not isinstance(values, list) or not values:
                self.fail(f"expected a non-empty list of values, found {_describe(values)} "
                          f"(for a fixed value write [value] or put it in 'kwargs')",
                          _join(_join(path, kind), name), table, name)
        args = self.args(node, path)
        fixed = self.kwargs(node, path)
        both = sorted(set(fixed) & set(params))
        if both:
            self.fail(f"{', '.join(both)} given both in 'kwargs' and in '{kind}'; keep one",
                      _join(path, "kwargs"), node, "kwargs")
        options = defaults.merged(self.options(node.get("defaults", {}), OPTION_KEYS,
                                               _join(path, "defaults"), node, "defaults"))
        names = list(params)
        if kind == "zip":
            lengths = {n: len(v) for n, v in params.items()}
            if len(set(lengths.values())) > 1:
                found = ", ".join(f"{n}: {k}" for n, k in lengths.items())
                self.fail(f"zip needs lists of equal length, found {found}; use 'product' for "
                          "every combination", _join(path, "zip"), node, "zip")
            rows = zip(*params.values(), strict=True)
        else:
            rows = itertools.product(*params.values())
        key, line = _join(path, kind), line_of(node, kind)
        return [_Call(args, {**fixed, **dict(zip(names, row, strict=True))}, options, key, line)
                for row in rows]

    # ----- options -----------------------------------------------------------------------------
    def options(self, node: Any, valid: tuple[str, ...], path: str, parent: Any, key: Any,
                lines: MarkedDict | None = None) -> BatchTaskOptions:
        node = self.mapping(node, path, parent, key,
                            f"a mapping of options ({', '.join(OPTION_KEYS)})")
        self.keys(node, valid, path)
        where = lines if lines is not None else node
        values: dict[str, Any] = {}
        for name, value in node.items():
            vpath = _join(path, name)
            if name in ("cores", "gpus", "retries"):
                low = 1 if name == "cores" else 0
                if not isinstance(value, int) or isinstance(value, bool) or value < low:
                    self.fail(f"expected an integer >= {low}, found {_describe(value)}",
                              vpath, where, name)
            elif name == "timeout":
                if value is not None and (not isinstance(value, (int, float))
                                          or isinstance(value, bool) or not value > 0):
                    self.fail(f"expected a number of seconds > 0 (or null for no timeout), "
                              f"found {_describe(value)}", vpath, where, name)
                value = None if value is None else float(value)
            elif name == "memory":
                if value is not None:
                    try:
                        value = parse_size(value)
                    except ConfigError:
                        self.fail(f"expected a size like '512MiB', '1GiB' or a number of "
                                  f"bytes (or null), found {_describe(value)}", vpath, where,
                                  name)
                    if value == 0:
                        self.fail("expected a size > 0 (or null for no limit), found 0",
                                  vpath, where, name)
            elif name == "retry_on":
                if not isinstance(value, list):
                    self.fail(f"expected a list of exception class names, found "
                              f"{_describe(value)}", vpath, where, name)
                for i, exc_name in enumerate(value):
                    try:
                        resolve_exception(exc_name)
                    except ConfigError as exc:
                        self.fail(str(exc), _join(vpath, i), value, i)
                value = tuple(value)
            values[name] = value
        return BatchTaskOptions(**values)


def output_problem(path: Path) -> str | None:
    """Why the run directory ``path`` cannot be created or written, or None if it can."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path and not existing.exists():
        existing = Path.cwd()
    if not existing.is_dir():
        return (f"the run directory {str(path)!r} cannot be created: {str(existing)!r} exists "
                "and is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".colocate-probe-"):
            pass
    except OSError as exc:
        verb = "written" if existing == path else "created"
        return (f"the run directory {str(path)!r} cannot be {verb}: {str(existing)!r} is not "
                f"writable ({exc.strerror})")
    return None


def _task_id(block: str, index: int, ref: str, args: tuple, kwargs: dict) -> str:
    text = json.dumps([ref, list(args), kwargs], sort_keys=True, separators=(",", ":"))
    return f"{block}-{index}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
