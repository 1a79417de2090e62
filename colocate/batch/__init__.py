"""Batches: YAML files of function calls run on an Executor, journaled to a run directory.

Modules, in the order data flows through them:

- ``schema``: load and validate a batch file, expand sweeps into a flat list of ``TaskSpec``.
- ``functions``: resolve ``module:function`` / ``file.py:function`` and exception names.
- ``journal``: the run directory (batch copy, meta, fsynced ``results.jsonl``), resume.
- ``runner``: submit the remaining tasks with bounded in-flight work, record each result.
- ``progress``: tqdm bar on a TTY, plain log lines otherwise, the summary table.
- ``report``: summary of a run directory and a timeline plot (matplotlib, optional).
- ``results``: one row per task (``load``, also as a pandas DataFrame), arrays read lazily.
- ``commands``: the bodies of ``colocate run``, ``report`` and ``results``.

The format is documented in ``docs/batch.md``. Nothing here imports MPI.
"""

from .commands import cmd_report, cmd_results, cmd_run
from .functions import resolve_exception, resolve_function
from .journal import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INCOMPLETE,
    EXIT_OK,
    RunDir,
    RunSummary,
    iter_records,
)
from .progress import Progress, format_summary
from .report import plot_timeline, render_summary, summarize
from .results import LazyArray, StoredResult, load
from .runner import exit_code, run_batch
from .schema import (
    UNSET,
    BatchConfigError,
    BatchSpec,
    BatchTaskOptions,
    BlockSpec,
    TaskSpec,
    load_batch,
    parse_batch,
)

__all__ = [
    "EXIT_CONFIG", "EXIT_FAILED", "EXIT_INCOMPLETE", "EXIT_OK", "UNSET",
    "BatchConfigError", "BatchSpec", "BlockSpec", "LazyArray", "Progress", "RunDir",
    "RunSummary", "StoredResult", "BatchTaskOptions", "TaskSpec",
    "cmd_report", "cmd_results", "cmd_run", "exit_code", "format_summary", "iter_records",
    "load", "load_batch",
    "parse_batch", "plot_timeline", "render_summary", "resolve_exception", "resolve_function",
    "run_batch", "summarize",
]
