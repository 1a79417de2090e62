"""YAML loading that remembers where each value was written, for errors that name ``file:line``.

:func:`load_marked` parses with PyYAML's safe loader but builds :class:`MarkedDict` and
:class:`MarkedList` containers that carry the line of every key and item. Three changes to
YAML 1.1 as PyYAML reads it, all to avoid silent surprises in batch files:

- duplicate keys in a mapping are an error (PyYAML keeps the last one silently);
- ``1e6`` is a float (YAML 1.1 wants ``1.0e+6`` and PyYAML reads ``1e6`` as a string);
- dates such as ``2024-01-31`` stay strings (not ``datetime``, which JSON cannot hold).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from colocate.errors import ConfigError


class BatchConfigError(ConfigError):
    """A batch file is invalid; the message starts with ``file:line`` where the line is known.

    ``source`` is the file, ``key`` the key path (``tasks.product.seed``) and ``line`` the
    1-based line number (or ``None``). Fix the file at that place and run again.
    """

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None,
                 line: int | None = None):
        where = f"{source}:{line}" if source and line else source
        super().__init__(message, source=where, key=key or None)
        self.source = source
        self.line = line


class MarkedDict(dict):
    """A mapping from a YAML file; ``line`` is its own line, ``lines[key]`` each value's line."""

    line: int | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lines: dict[Any, int] = {}
        self.key_lines: dict[Any, int] = {}

    def line_of(self, key: Any) -> int | None:
        """The line where ``key``'s value starts, else this mapping's own line."""
        return self.lines.get(key, self.line)


class MarkedList(list):
    """A sequence from a YAML file; ``line`` is its own line, ``lines[i]`` item ``i``'s line."""

    line: int | None = None

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.lines: list[int] = []

    def line_of(self, index: int) -> int | None:
        """The line where item ``index`` starts, else this sequence's own line."""
        return self.lines[index] if 0 <= index < len(self.lines) else self.line


def line_of(container: Any, key: Any = None) -> int | None:
    """The line of ``container[key]`` (or of ``container`` if ``key`` is None), if known."""
    if isinstance(container, (MarkedDict, MarkedList)):
        return container.line if key is None else container.line_of(key)
    return None


class _Loader(yaml.SafeLoader):
    """SafeLoader building marked containers; see the module docstring for the differences."""

    source = "<batch>"


# PyYAML's float pattern without the mandatory "." before an exponent, so 1e6 is a float.
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> MarkedDict:
    loader.flatten_mapping(node)
    result = MarkedDict()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            seen = key in result
        except TypeError:
            raise BatchConfigError(f"a mapping key must be a plain value, found {key!r}",
                                   source=loader.source, line=line) from None
        if seen:
            raise BatchConfigError(
                f"duplicate key {key!r} (first at line {result.key_lines[key]}); "
                "each key may appear once per mapping", source=loader.source, line=line)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
        result.lines[key] = value_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> MarkedList:
    result = MarkedList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.lines = [child.start_mark.line + 1 for child in node.value]
    return result


def _construct_timestamp(loader: _Loader, node: yaml.ScalarNode) -> str:
    return loader.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def load_marked(text: str, source: str) -> Any:
    """Parse YAML ``text`` into marked containers and plain scalars.

    Args:
        text: the YAML document.
        source: the file name, used in error messages.

    Returns:
        ``None`` for an empty document, else a :class:`MarkedDict`, :class:`MarkedList` or scalar.

    Raises:
        BatchConfigError: the text is not valid YAML (with line and column), holds several
            documents, or repeats a key in a mapping.
    """
    loader = _Loader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        parts = [p for p in (exc.context, exc.problem) if p]
        if exc.context_mark and exc.problem_mark and exc.context:
            parts[0] = f"{exc.context} at line {exc.context_mark.line + 1}"
        where = f" (column {mark.column + 1})" if mark else ""
        raise BatchConfigError(f"invalid YAML{where}: {'; '.join(parts) or exc}",
                               source=source, line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise BatchConfigError(f"invalid YAML: {exc}", source=source) from None
    finally:
        loader.dispose()
