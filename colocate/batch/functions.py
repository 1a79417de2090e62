"""Function references: turn ``module:function`` or ``path/file.py:function`` into a callable.

Used by validation (every reference is imported before anything runs) and by the runner.

- ``package.module:name`` imports the module as ``python -m`` would: the current directory
  comes first on ``sys.path``, then installed packages. ``name`` may be dotted
  (``module:Class.method``). Workers must be able to import the same module (run from the
  same directory, or install the package).
- ``path/to/file.py:name`` (any target ending in ``.py`` or containing ``/``) loads that file,
  relative to the batch file's directory. Its functions are shipped to workers by value
  (cloudpickle), so the file itself need not exist on the workers, but what it imports must.

Exception names for ``retry_on`` resolve with :func:`resolve_exception`.
"""

from __future__ import annotations

import builtins
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle

from colocate import errors
from colocate.errors import ConfigError

REF_FORMS = "'module:function' or 'path/to/file.py:function'"

# Loaded files by path, with the (mtime, size) they had: an edited file is loaded again.
_file_modules: dict[Path, tuple[tuple[int, int], ModuleType]] = {}


def split_ref(ref: Any) -> tuple[str, str]:
    """Split a function reference into its target (module or file) and attribute path.

    Raises:
        ConfigError: ``ref`` is not a string of the form ``target:name``.
    """
    if not isinstance(ref, str):
        raise ConfigError(f"expected {REF_FORMS}, found {type(ref).__name__} {ref!r}")
    target, sep, attr = ref.strip().rpartition(":")
    if not sep or not target or not attr or not all(
            part.isidentifier() for part in attr.split(".")):
        raise ConfigError(f"expected {REF_FORMS}, found {ref!r}")
    return target, attr


def is_file_ref(target: str) -> bool:
    """Whether a reference target names a Python file rather than a module."""
    return target.endswith(".py") or "/" in target or os.sep in target


def resolve_function(ref: str, base_dir: str | os.PathLike | None = None) -> Callable:
    """Import the callable named by ``ref``.

    Args:
        ref: ``"package.module:function"`` or ``"path/to/file.py:function"``.
        base_dir: the directory file paths are relative to (the batch file's directory);
            the current directory if ``None``.

    Returns:
        The callable.

    Raises:
        ConfigError: the reference is malformed, the module or file cannot be found or fails
            to import, the attribute is missing, or it is not callable. The message says which.
    """
    target, attr = split_ref(ref)
    if is_file_ref(target):
        module = _load_file(Path(base_dir or os.getcwd()) / target, target)
    else:
        module = _import_module(target)
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = target if i == 0 else f"{target}:{'.'.join(attr.split('.')[:i])}"
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"{owner!r} has no attribute {part!r}{hint}") from None
    if not callable(obj):
        raise ConfigError(f"{ref!r} is a {type(obj).__name__}, not a callable; "
                          "name a function (or another callable) in the module")
    return obj


def unexpected_arguments(signature: inspect.Signature, kwargs: dict) -> str | None:
    """Name the keyword arguments ``signature`` has no parameter for, with a "did you mean".

    None when every keyword fits (or the function takes ``**kwargs``).
    """
    params = signature.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in names]
    if not unknown:
        return None
    parts = []
    for k in unknown:
        close = difflib.get_close_matches(k, [n for n in names if n not in kwargs], n=1)
        parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = "s" if len(unknown) > 1 else ""
    return (f"unexpected keyword argument{plural} {', '.join(parts)}; "
            f"the function takes {', '.join(map(repr, names)) or 'no keyword arguments'}")


def _import_module(name: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == name or name.startswith(missing + "."):
            raise ConfigError(
                f"module {name!r} not found (no module named {missing!r}); check the spelling, "
                f"run from the directory that holds it (now {cwd}) or install its package"
            ) from None
        raise ConfigError(f"module {name!r} was found but importing it failed: it needs "
                          f"module {missing!r}, which is not installed") from None
    except Exception as exc:
        raise ConfigError(f"importing module {name!r} raised "
                          f"{type(exc).__name__}: {exc}") from exc


def _load_file(path: Path, written: str) -> ModuleType:
    path = path.resolve()
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is None or not path.is_file():
        raise ConfigError(f"file {written!r} not found (looked for {path}; file paths are "
                          "relative to the batch file's directory)")
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _file_modules.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"colocate_batch_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"file {written!r} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"running file {written!r} raised {type(exc).__name__}: {exc}") from exc
    # Its functions travel to workers by value: the file need not be importable there.
    cloudpickle.register_pickle_by_value(module)
    _file_modules[path] = (stamp, module)
    return module


def resolve_exception(name: Any) -> type[BaseException]:
    """Resolve an exception class name for ``retry_on``.

    Accepted: a builtin (``"OSError"``), a colocate error (``"WorkerCrashed"``), or a
    qualified name (``"numpy.linalg.LinAlgError"`` or ``"numpy.linalg:LinAlgError"``).

    Raises:
        ConfigError: the name does not resolve to an exception class.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"expected an exception class name, found {name!r}")
    name = name.strip()
    obj: Any = None
    if ":" in name or "." in name:
        module_name, _, attr = name.rpartition(":") if ":" in name else name.rpartition(".")
        try:
            obj = resolve_function(f"{module_name}:{attr}")
        except ConfigError as exc:
            raise ConfigError(f"exception class {name!r} cannot be imported: {exc}") from None
    else:
        obj = getattr(builtins, name, None) or getattr(errors, name, None)
        if obj is None:
            known = [n for n in dir(builtins) + dir(errors)
                     if isinstance(getattr(builtins, n, getattr(errors, n, None)), type)]
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ConfigError(f"unknown exception class {name!r}; {hint}give a builtin or "
                              "colocate error name, or a qualified one like "
                              "'numpy.linalg.LinAlgError'")
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        raise ConfigError(f"{name!r} is not an exception class")
    return obj
