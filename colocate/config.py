"""Configuration: defaults from ``defaults.yaml``, a user file, then ``COLOCATE_<SECTION>_<KEY>``.

Every layer is checked against the defaults: unknown sections and keys are rejected with the list
of valid ones, and values must have the type of the default (``null`` defaults accept anything).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml

from colocate.errors import ConfigError

Config = dict[str, dict[str, Any]]

_ENV_PREFIX = "COLOCATE_"


def defaults() -> Config:
    """Return a fresh copy of the built-in defaults."""
    text = resources.files("colocate").joinpath("defaults.yaml").read_text()
    return yaml.safe_load(text)


_DEFAULTS = defaults()


def load(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """Build the effective configuration.

    Args:
        path: a YAML file with the same layout as ``defaults.yaml`` (only the keys to change).
        overrides: ``{"section.key": value}`` pairs applied last (command-line options).
        environ: where to read ``COLOCATE_<SECTION>_<KEY>`` from; ``os.environ`` by default.

    Raises:
        ConfigError: the file cannot be read or parsed, or a key or value is invalid.
    """
    cfg = copy.deepcopy(_DEFAULTS)
    if path is not None:
        source = str(path)
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except OSError as e:
            raise ConfigError(f"cannot read the configuration file ({e.strerror})",
                              source=source) from None
        except yaml.YAMLError as e:
            raise ConfigError(f"not valid YAML: {e}", source=source) from None
        if data is not None:
            if not isinstance(data, dict):
                raise ConfigError(f"expected a mapping of sections, found {type(data).__name__}",
                                  source=source)
            for section, values in data.items():
                if not isinstance(values, dict):
                    _check_section(section, source)
                    raise ConfigError(f"expected a mapping of keys, found {values!r}",
                                      source=source, key=str(section))
                for key, value in values.items():
                    _set(cfg, section, key, value, source)
    env = os.environ if environ is None else environ
    for name, raw in env.items():
        if not name.startswith(_ENV_PREFIX) or name in _NOT_SETTINGS:
            continue
        section, key = _split_env(name)
        value = raw if (section, key) in _TEXT else _parse_env_value(raw)
        _set(cfg, section, key, value, f"environment variable {name}")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        _set(cfg, section, key, value, "command line")
    return cfg


# Variables of the batch-system launchers (``python -m colocate.launch``, docs/cluster.md).
LAUNCHER_VARIABLES = (
    "COLOCATE_HOST_CORES", "COLOCATE_HOST_NCORES", "COLOCATE_HOST_TASKS_PER_NODE",
    "COLOCATE_SPARE_CORES", "COLOCATE_RANKS_PER_NODE", "COLOCATE_ADDRESS_FILE", "COLOCATE_CONFIG",
    "COLOCATE_SLURM_MPI", "COLOCATE_SLURM_LAUNCHER", "COLOCATE_HOST_SIGNAL",
    "COLOCATE_START_TIMEOUT", "COLOCATE_STOP_TIMEOUT", "COLOCATE_PYTHON", "COLOCATE_COMMAND",
    "COLOCATE_NODES", "COLOCATE_JOB_NODELIST")

# COLOCATE_* variables that are not settings (read elsewhere, documented there).
_NOT_SETTINGS = frozenset({"COLOCATE_ADDRESS", "COLOCATE_NODE_NAME", "COLOCATE_MPIEXEC",
                           "COLOCATE_LOG", "COLOCATE_CHILD", "COLOCATE_LOCAL_WORLD",
                           *LAUNCHER_VARIABLES})


def _split_env(name: str) -> tuple[str, str]:
    rest = name[len(_ENV_PREFIX):].lower()
    for section in sorted(_DEFAULTS, key=len, reverse=True):
        if rest.startswith(section + "_"):
            return section, rest[len(section) + 1:]
    valid = ", ".join(_ENV_PREFIX + s.upper() + "_<KEY>" for s in _DEFAULTS)
    raise ConfigError(f"unknown setting; expected one of {valid}", source=f"environment {name}")


def _parse_env_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _check_section(section: Any, source: str) -> None:
    if section not in _DEFAULTS:
        raise ConfigError(f"unknown section {section!r}; valid sections: "
                          f"{', '.join(sorted(_DEFAULTS))}", source=source)


def _set(cfg: Config, section: str, key: str, value: Any, source: str) -> None:
    _check_section(section, source)
    known = _DEFAULTS[section]
    if key not in known:
        raise ConfigError(f"unknown key {key!r}; valid keys in {section!r}: "
                          f"{', '.join(sorted(known))}", source=source, key=section)
    default = known[key]
    if default is not None and value is not None:
        kind = type(default)
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int)
                                         and not isinstance(value, bool))
        if kind is int and isinstance(value, bool):
            ok = False
        # Settings that accept a name or a number, or a string or a list (cores, budgets).
        if (section, key) in _FLEXIBLE:
            ok = True
        if not ok:
            raise ConfigError(f"expected {kind.__name__} (like {default!r}), found {value!r}",
                              source=source, key=f"{section}.{key}")
    bounds = _BOUNDS.get((section, key))
    if bounds is not None and value is not None and not bounds[0] <= value <= bounds[1]:
        raise ConfigError(f"expected {bounds[2]} from {bounds[0]:g} to {bounds[1]:g}, found "
                          f"{value!r}", source=source, key=f"{section}.{key}")
    cfg[section][key] = value


# Settings with a range: (least, most, what they count).
_BOUNDS = {("executor", "hot"): (0.0, 1.0, "seconds"), ("client", "hot"): (0.0, 0.01, "seconds")}
# Settings read from the environment as text, not YAML (a CPU list "1" is not the number 1).
_TEXT = {("co_location", "spare_cores"), ("pool", "time"), ("pool", "time_min")}

_FLEXIBLE = {("co_location", "spare_cores"), ("co_location", "memory_budget"),
             ("co_location", "host_pids"), ("tasks", "memory"), ("store", "pool")}
