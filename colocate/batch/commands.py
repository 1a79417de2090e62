"""Command bodies for ``colocate run`` and ``colocate report``; ``cli.py`` wires the arguments.

Exit codes (also in ``docs/batch.md``): 0 every task succeeded; 1 some task failed; 2 the batch
file or the arguments are invalid (nothing ran); 3 tasks are left (drained, interrupted, the
executor stopped): ``colocate run --resume RUN_DIR`` finishes them; 130 stopped at once by a
second Ctrl-C or SIGTERM (the tasks that were running are recorded as interrupted).

Signals: the first SIGINT or SIGTERM drains (tasks that have not started are taken back at once
and count as not run; running ones have ``server.drain_grace`` seconds), the second stops within
a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from colocate.errors import ColocateError, ConfigError

from .journal import BATCH_COPY, EXIT_CONFIG, EXIT_INCOMPLETE, META, RunDir, RunSummary
from .progress import Progress, format_summary
from .report import plot_timeline, render_summary, summarize
from .results import default_columns, pick_columns
from .results import load as load_results
from .results import render as render_results
from .runner import run_batch
from .schema import DEFAULT_RUNS_DIR, BatchSpec, load_batch, output_problem

__all__ = ["cmd_report", "cmd_results", "cmd_run", "plan_run"]

EXIT_SIGNAL = 130


def cmd_run(batch_path: str | os.PathLike | None, executor_factory: Callable[[int | None], Any],
            resume: bool | str | os.PathLike | None = None, n: int | None = None,
            progress: bool | str | None = None, *, drain_event: threading.Event | None = None,
            rerun_failed: bool = True, stream: IO[str] | None = None,
            local_world: bool = False, drain_grace: float | None = None,
            output: str | os.PathLike | None = None,
            before_start: Callable[[], Any] | None = None) -> int:
    """Run (or resume) a batch: validate everything, then start an executor and run the tasks.

    Args:
        batch_path: the batch file; may be ``None`` when ``resume`` names a run directory (its
            copy of the batch file is used).
        executor_factory: called once as ``executor_factory(n)`` after validation; returns an
            Executor usable as a context manager (leaving it shuts the executor down).
        resume: ``None``/``False`` start a new run (refused if the output directory already
            holds one); ``True`` continue the run in the batch's ``output`` (or the latest
            ``runs/<name>-*``), starting it if there is none; a path: continue that run.
        n: passed to ``executor_factory`` untouched (the ``-n`` option; None if not given).
        progress: ``None``/``True`` a bar on a TTY else log lines, ``False`` quiet, or a mode
            ``"bar"``, ``"log"``, ``"off"``.
        drain_event: set it to drain; by default SIGINT and SIGTERM set it (in the main thread),
            and a second signal stops at once.
        rerun_failed: on resume, run failed tasks again (interrupted and unrun ones always run).
        stream: where messages and progress go; ``sys.stderr`` by default.
        local_world: the executor owns its world (``colocate run`` without ``--address``): a
            drain drains the whole world, a stop at once stops it. Otherwise only this run's
            tasks are taken back and a shared server is left alone.
        drain_grace: seconds a drain waits for running tasks of a world this run does not own
            (an owned world applies its own ``server.drain_grace``); None waits for them.
        output: the run directory (``--output``), relative to the current directory; it
            overrides the batch's ``output:`` (which is relative to the batch file).
        before_start: called after the batch is validated and before the run directory is
            made (e.g. to size a local world); a ``ConfigError`` from it exits 2, nothing made.

    Returns:
        The exit code (see the module docstring).
    """
    err = stream if stream is not None else sys.stderr
    notes: list[str] = []
    try:
        spec, path, resuming = plan_run(batch_path, resume, output, notes)
        if before_start is not None:
            before_start()
        rd = RunDir.open_for_resume(path, spec) if resuming else RunDir.create(path, spec)
    except ConfigError as exc:
        print(f"colocate: error: {exc}", file=err, flush=True)
        return EXIT_CONFIG
    for note in notes:
        print(f"colocate: note: {note}", file=err, flush=True)
    mode = {None: "auto", True: "auto", False: "off"}.get(progress, progress)   # type: ignore
    with rd:
        todo = len(rd.pending(spec.tasks, rerun_failed=rerun_failed))
        verb = "resuming" if resuming else "running"
        print(f"colocate: {verb} batch {spec.name!r}: {todo} of {len(spec.tasks)} tasks to run; "
              f"results in {path}", file=err, flush=True)
        if todo == 0:
            summary = rd.write_summary()
            if mode != "off":
                print(format_summary(summary), file=err, flush=True)
            return summary.exit_code
        drain = drain_event if drain_event is not None else threading.Event()
        now, running = threading.Event(), threading.Event()
        with _drain_on_signals(drain, now, running, err, install=drain_event is None):
            try:
                with executor_factory(n) as ex:
                    shown = Progress(len(spec.tasks), done=len(spec.tasks) - todo,
                                     name=spec.name, mode=mode, stream=err)
                    take_back = (lambda: ex.stop_server(drain=True)) if local_world else None
                    running.set()
                    try:
                        summary = run_batch(ex, spec, rd, progress=shown, drain_event=drain,
                                            rerun_failed=rerun_failed, stop_event=now,
                                            take_back=take_back,
                                            drain_timeout=None if local_world else drain_grace)
                    finally:
                        running.clear()
                    if now.is_set():
                        _stop_at_once(ex, local_world)
                if now.is_set():
                    print(f"colocate: stopped at once; {summary.interrupted} task(s) recorded as "
                          f"interrupted, finished ones are saved. Resume with: colocate run "
                          f"--resume {path}", file=err, flush=True)
                    return EXIT_SIGNAL
            except KeyboardInterrupt:
                print(f"colocate: stopped; finished tasks are saved. Resume with: colocate run "
                      f"--resume {path}", file=err, flush=True)
                return EXIT_SIGNAL
            except ConfigError as exc:
                rd.write_summary(error=str(exc))
                print(f"colocate: error: {exc}", file=err, flush=True)
                return EXIT_CONFIG
            except ColocateError as exc:
                rd.write_summary(error=f"{type(exc).__name__}: {exc}")
                print(f"colocate: error: {type(exc).__name__}: {exc}\nFinished tasks are saved; "
                      f"resume with: colocate run --resume {path}", file=err, flush=True)
                return EXIT_INCOMPLETE
    _hints(summary, err)
    return summary.exit_code


def cmd_report(run_dir: str | os.PathLike, plot: str | os.PathLike | None = None, *,
               stream: IO[str] | None = None, rows: int = 5) -> int:
    """Print the summary of a run directory, its first rows, and optionally plot its timeline.

    Args:
        run_dir: a directory written by ``colocate run``.
        plot: a PNG path for :func:`~colocate.batch.report.plot_timeline`, or None.
        stream: where the report goes; ``sys.stdout`` by default (errors go to stderr).
        rows: how many task rows (:mod:`~colocate.batch.results`) to show after the counts.

    Returns:
        0, or 2 if ``run_dir`` is not a run directory or the plot cannot be made.
    """
    out = stream if stream is not None else sys.stdout
    try:
        summary = summarize(run_dir)
        table = load_results(run_dir) if rows > 0 else []
    except ConfigError as exc:
        print(f"colocate: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    print(render_summary(summary), file=out, flush=True)
    if table:
        first = table[:rows]
        print(f"\nFirst {len(first)} of {len(table)} tasks (all of them: colocate results "
              f"{run_dir}):\n" + render_results(first, default_columns(table)), file=out,
              flush=True)
    if plot is not None:
        try:
            written = plot_timeline(run_dir, plot)
        except (ImportError, OSError) as exc:
            print(f"colocate: error: {exc}", file=sys.stderr, flush=True)
            return EXIT_CONFIG
        print(f"timeline written to {written}", file=out, flush=True)
    return 0


def cmd_results(run_dir: str | os.PathLike, fmt: str = "table",
                columns: list[str] | None = None, *, stream: IO[str] | None = None) -> int:
    """Print one row per task of a run directory (``colocate results``).

    Args:
        run_dir: a directory written by ``colocate run``.
        fmt: ``"table"``, ``"csv"`` or ``"json"``.
        columns: the columns, in order; None for task, arguments, status, result, worker,
            seconds.
        stream: where the rows go; ``sys.stdout`` by default (errors go to stderr).

    Returns:
        0, or 2 if ``run_dir`` is not a run directory or a column is unknown.
    """
    out = stream if stream is not None else sys.stdout
    try:
        rows = load_results(run_dir)
        print(render_results(rows, pick_columns(rows, columns), fmt), file=out, flush=True)
    except ConfigError as exc:
        print(f"colocate: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    return 0


def plan_run(batch_path: str | os.PathLike | None, resume: bool | str | os.PathLike | None,
             output: str | os.PathLike | None = None,
             notes: list[str] | None = None) -> tuple[BatchSpec, Path, bool]:
    """Load the batch and choose the run directory: ``(spec, path, resuming)``.

    ``output`` (``--output``) overrides the batch's ``output:``, relative to the current
    directory. Runs made before ``output:`` became relative to the batch file are found where
    they are (resumed there, or named in ``notes`` when a new run starts elsewhere).
    """
    notes = notes if notes is not None else []
    if resume is None or resume is False or resume is True:
        if batch_path is None:
            raise ConfigError("no batch file given; pass BATCH.yaml (or --resume RUN_DIR)")
        spec = load_batch(batch_path, check_output=output is None)
        chosen = Path(output).expanduser() if output is not None else None
        if chosen is not None:
            why = output_problem(chosen)
            if why:
                raise ConfigError(f"--output {output}: {why}; choose another directory")
        old = None if chosen is not None else _old_location(spec)
        if resume is True:
            path = chosen or spec.output or _latest_run(spec.name, spec.base_dir / DEFAULT_RUNS_DIR)
            if path is not None and RunDir.is_run_dir(path):
                return spec, _shown(path), True
            if old is not None:
                notes.append(f"found this batch's run in {_shown(old)}, where runs went when "
                             "'output' was relative to the current directory; resuming it "
                             f"there (new runs of {spec.source} go to {_shown(_new_home(spec))})")
                return spec, _shown(old), True
        path = chosen or spec.output or _fresh_default(spec)
        if old is not None:
            notes.append(f"an earlier run of this batch is in {_shown(old)} (made when 'output' "
                         "was relative to the current directory); this one goes to "
                         f"{_shown(path)}. To continue the earlier one instead: colocate run "
                         f"{spec.source} --resume {_shown(old)}")
        return spec, _shown(path), False
    if output is not None:
        raise ConfigError(f"--output {output} and --resume {resume} both name a run directory; "
                          "a resume continues RUN_DIR where it is: drop --output")
    path = Path(resume)
    if not RunDir.is_run_dir(path):
        RunDir.read(path)   # raises the ConfigError that says why
    if batch_path is None:
        meta = json.loads((path / META).read_text())
        copies = sorted(path.glob("batch.*.yaml"), key=lambda p: int(p.stem.split(".")[1]))
        spec = load_batch(copies[-1] if copies else path / BATCH_COPY,
                          base_dir=meta.get("base_dir"), check_output=False)
    else:
        spec = load_batch(batch_path, check_output=False)
    return spec, path, True


def _shown(path: Path) -> Path:
    """``path`` relative to the current directory when it lies below it (shorter messages)."""
    try:
        return path.relative_to(Path.cwd()) if path.is_absolute() else path
    except ValueError:
        return path


def _new_home(spec: BatchSpec) -> Path:
    return spec.output or spec.base_dir / DEFAULT_RUNS_DIR


def _is_run_of(path: Path, name: str) -> bool:
    try:
        return json.loads((path / META).read_text()).get("name") == name
    except (OSError, ValueError):
        return False


def _old_location(spec: BatchSpec) -> Path | None:
    """A run of ``spec`` where it went before paths became relative to the batch file.

    Until then ``output:`` and the default ``runs/`` were relative to the current directory.
    None if that is the same place as now, or holds no run of this batch.
    """
    cwd = Path.cwd()
    if spec.output_written is not None:
        old = Path(spec.output_written).expanduser()
        if old.is_absolute():
            return None
        old = cwd / old
        same = os.path.normpath(old) == os.path.normpath(spec.output or "")
        return old if not same and _is_run_of(old, spec.name) else None
    if (cwd / DEFAULT_RUNS_DIR).resolve() == (spec.base_dir / DEFAULT_RUNS_DIR).resolve():
        return None
    return _latest_run(spec.name, cwd / DEFAULT_RUNS_DIR)


def _latest_run(name: str, runs: Path) -> Path | None:
    """The newest ``<runs>/<name>-<stamp>`` holding a run of batch ``name``."""
    found = sorted(p for p in runs.glob(f"{name}-*") if _is_run_of(p, name))
    return found[-1] if found else None


def _fresh_default(spec: BatchSpec) -> Path:
    path = spec.default_output()
    for i in range(2, 1000):
        if not path.exists():
            return path
        path = path.with_name(f"{spec.default_output().name}-{i}")
    raise ConfigError(f"cannot find a free run directory name like {path}; set 'output'")


def _hints(summary: RunSummary, err: IO[str]) -> None:
    if summary.error:
        print(f"colocate: the run stopped early: {summary.error}", file=err, flush=True)
    if summary.failed:
        print(f"colocate: {summary.failed} task(s) failed; details: colocate report "
              f"{summary.run_dir}", file=err, flush=True)
    if not summary.complete or summary.failed:
        print(f"colocate: run the unfinished and failed tasks again with: colocate run --resume "
              f"{summary.run_dir}", file=err, flush=True)


def _stop_at_once(ex: Any, local_world: bool) -> None:
    """After a second signal: stop an owned world now, or leave a shared one without waiting."""
    if local_world:
        try:
            ex.stop_server(drain=False)   # its running tasks are cut off, it exits at once
        except ColocateError:
            pass   # already gone
        ex.shutdown(wait=True)   # returns as soon as the world has exited
    else:
        ex.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def _drain_on_signals(drain: threading.Event, now: threading.Event, running: threading.Event,
                      err: IO[str], install: bool) -> Iterator[None]:
    """First SIGINT/SIGTERM sets ``drain``; a second sets ``now`` (stop at once).

    Outside the batch loop (``running`` clear: the world is still starting) a second signal
    raises KeyboardInterrupt instead, as nothing there would look at ``now``.
    """
    if not install or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if not drain.is_set():
            drain.set()
            print(f"\ncolocate: {name}: draining: tasks not started are taken back (they count "
                  "as not run), running ones may finish; send it again to stop at once",
                  file=err, flush=True)
        elif running.is_set():
            now.set()
            print(f"\ncolocate: {name} again: stopping at once; running tasks are recorded as "
                  "interrupted", file=err, flush=True)
        else:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
