"""What a new user sees first, through the real CLI: workers and cores, paths, diagnostics."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "colocate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def write_batch(tmp_path: Path, n: int = 2) -> Path:
    (tmp_path / "k.py").write_text("def square(x):\n    return x * x\n")
    batch = tmp_path / "b.yaml"
    batch.write_text(f"name: sq\nfunction: k.py:square\ntasks:\n"
                     f"  product: {{x: {list(range(n))}}}\noutput: out\n")
    return batch


@pytest.mark.timeout(180)
def test_more_workers_than_spare_cores_gives_one_clear_warning(tmp_path, subprocess_env):
    batch = write_batch(tmp_path)
    proc = run_cli("run", str(batch), "-n", "2", "--spare-cores", "1", "--no-progress",
                   cwd=tmp_path, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, proc.stderr
    (warning,) = warnings
    assert "only 1 spare core(s) were found (1)" in warning, warning
    assert "(0) are not spare: explicit" in warning, warning   # why the others are not
    assert "Use -n 1" in warning and "--spare-cores LIST" in warning, warning
    assert "local world: 2 workers sharing 1 spare core(s) 1" in proc.stderr, proc.stderr


@pytest.mark.timeout(180)
def test_run_and_info_say_how_many_workers_run_on_which_cores(tmp_path, subprocess_env):
    batch = write_batch(tmp_path)
    proc = run_cli("run", str(batch), "--spare-cores", "0-1", "--no-progress", cwd=tmp_path,
                   env=subprocess_env())
    assert proc.returncode == 0, proc.stderr
    assert "local world: 2 worker(s), one per spare core: core(s) 0-1" in proc.stderr
    assert "warning" not in proc.stderr, proc.stderr
    info = run_cli("info", cwd=tmp_path, env=subprocess_env(COLOCATE_CO_LOCATION_SPARE_CORES="1"))
    assert info.returncode == 0, info.stderr
    assert "local world" in info.stdout and "1 worker(s), one per spare core: core(s) 1" in (
        info.stdout), info.stdout


@pytest.mark.timeout(60)
def test_no_spare_core_is_refused_before_anything_is_made(tmp_path, subprocess_env):
    """The host job (a pinned sleep named in host_pids) holds every core this run may use."""
    batch = write_batch(tmp_path)
    host = subprocess.Popen(["taskset", "-c", "0", "sleep", "60"])
    try:
        (tmp_path / "host.yaml").write_text(f"co_location: {{host_pids: [{host.pid}]}}\n")
        proc = subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "colocate", "run",
                               str(batch), "--config", "host.yaml", "--no-progress"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=50,
                              env=subprocess_env(COLOCATE_CO_LOCATION_SPARE_CORES="auto"))
    finally:
        host.kill()
        host.wait()
    assert proc.returncode == 2, proc.stderr
    assert "no spare core found for a local world" in proc.stderr, proc.stderr
    assert f"host pids [{host.pid}] run on 0" in proc.stderr, proc.stderr      # what was found
    assert "--spare-cores LIST" in proc.stderr, proc.stderr                    # what to do
    assert not (tmp_path / "out").exists(), "a refused run left a run directory behind"


def test_a_misspelt_argument_is_named_with_a_did_you_mean(tmp_path, subprocess_env):
    (tmp_path / "k.py").write_text("def pi(samples, seed=0):\n    return 3.14\n")
    batch = tmp_path / "b.yaml"
    batch.write_text("function: k.py:pi\ntasks:\n  product: {sample: [10], seed: [1]}\n")
    proc = run_cli("run", str(batch), cwd=tmp_path, env=subprocess_env(), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "unexpected keyword argument 'sample' (did you mean 'samples'?)" in proc.stderr, (
        proc.stderr)
    assert "b.yaml:3" in proc.stderr, proc.stderr


def test_help_is_plain_text_and_every_option_has_help(tmp_path, subprocess_env):
    from colocate.cli import _parser
    parser = _parser()
    (commands,) = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"colocate {name} {'/'.join(action.option_strings) or action.dest}"
    for args in (["--help"], ["run", "--help"], ["submit", "--help"], ["results", "--help"]):
        proc = run_cli(*args, cwd=tmp_path, env=subprocess_env(), timeout=60)
        assert proc.returncode == 0 and "``" not in proc.stdout, proc.stdout
    assert {"--address", "--resume", "--no-progress", "--output"} <= {
        o for a in commands.choices["submit"]._actions for o in a.option_strings}


# ----- one real run, read back in every way a user would --------------------------------------
KERNELS = '''\
import numpy as np


def square(x):
    return x * x


def field(n):
    return np.arange(n * 2, dtype=np.float32).reshape(n, 2)


def bad(x):
    y = x + 1
    raise ValueError(f"bad {y}")
'''
BAD_LINE = KERNELS.splitlines().index('    raise ValueError(f"bad {y}")') + 1


# The first test to use the run starts it: an MPI world, bounded by the subprocess timeout.
SWEEP_TIMEOUT = pytest.mark.timeout(200)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, subprocess_env):
    """A batch in sweeps/ with ``output: ../out``, run from another directory (elsewhere/)."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "sweeps").mkdir()
    (root / "elsewhere").mkdir()
    (root / "sweeps" / "k.py").write_text(KERNELS)
    batch = root / "sweeps" / "b.yaml"
    batch.write_text("name: mixed\noutput: ../out\nblocks:\n"
                     "  - {function: k.py:square, tasks: {product: {x: [1, 2, 3]}}}\n"
                     "  - {function: k.py:field, tasks: {product: {n: [2, 3]}}}\n"
                     "  - {function: k.py:bad, tasks: [{args: [1]}]}\n")
    env = subprocess_env(COLOCATE_LOG="info")
    # Under mpiexec the world is embedded (rank 0 runs the batch) and its log is on stderr.
    proc = subprocess.run(["mpiexec", "-n", "3", sys.executable, "-m", "colocate", "run",
                           str(batch), "--no-progress"], cwd=root / "elsewhere", env=env,
                          capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL)
    return root, proc, env


@SWEEP_TIMEOUT
def test_the_run_lands_beside_its_batch_file(sweep):
    root, proc, _ = sweep
    assert proc.returncode == 1, proc.stderr            # one task fails on purpose
    assert (root / "out" / "results.jsonl").is_file(), proc.stderr
    assert not (root / "elsewhere" / "out").exists()
    assert f"results in {root / 'out'}" in proc.stderr, proc.stderr


@SWEEP_TIMEOUT
def test_a_remote_traceback_names_the_file_and_line_of_the_function(sweep):
    root, _, _ = sweep
    import json
    (bad,) = [r for line in (root / "out/results.jsonl").read_text().splitlines()
              if (r := json.loads(line))["block"] == "bad"]
    assert f'File "{root / "sweeps" / "k.py"}", line {BAD_LINE}, in bad' in (
        bad["error"]["traceback"]), bad["error"]["traceback"]


@SWEEP_TIMEOUT
def test_results_table_csv_json_and_columns(sweep):
    root, _, env = sweep
    table = run_cli("results", "out", cwd=root, env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["task", "block", "x", "n", "arg0", "status", "result", "worker",
                                "seconds", "error"], lines[0]
    assert len(lines) == 1 + 6
    by_task = {line.split()[0]: line for line in lines[1:]}
    (sq3,) = [v for k, v in by_task.items() if k.startswith("square-2-")]
    assert " 3 " in sq3 and " ok " in sq3 and " 9 " in sq3 and "rank " in sq3, sq3
    (f3,) = [v for k, v in by_task.items() if k.startswith("field-1-")]
    assert "float32 (3, 2)" in f3, f3                   # an array: dtype and shape
    (bad,) = [v for k, v in by_task.items() if k.startswith("bad-")]
    assert "failed" in bad and "ValueError: bad 2" in bad, bad

    csv = run_cli("results", "out", "--format", "csv", "--columns", "x,result", cwd=root, env=env)
    assert csv.returncode == 0, csv.stderr
    assert csv.stdout.splitlines()[:4] == ["x,result", "1,1", "2,4", "3,9"], csv.stdout

    import json
    rows = json.loads(run_cli("results", "out", "--format", "json", "--columns",
                              "task,status,result", cwd=root, env=env).stdout)
    arrays = [r["result"] for r in rows if r["task"].startswith("field-")]
    assert [a["shape"] for a in arrays] == [[2, 2], [3, 2]] and arrays[0]["dtype"] == "float32"

    wrong = run_cli("results", "out", "--columns", "x,stauts", cwd=root, env=env)
    assert wrong.returncode == 2 and "unknown column 'stauts' (did you mean 'status'?)" in (
        wrong.stderr), wrong.stderr


@SWEEP_TIMEOUT
def test_report_shows_counts_and_the_first_rows(sweep):
    root, _, env = sweep
    proc = run_cli("report", "out", "--rows", "2", cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "succeeded     5" in proc.stdout and "failed        1" in proc.stdout, proc.stdout
    assert "First 2 of 6 tasks (all of them: colocate results out)" in proc.stdout, proc.stdout
    first = proc.stdout.split("First 2 of 6 tasks")[1].splitlines()[2:]
    assert [line.split()[0][:8] for line in first] == ["square-0", "square-1"], proc.stdout


@SWEEP_TIMEOUT
def test_load_gives_records_a_dataframe_and_lazy_arrays(sweep):
    import numpy as np

    from colocate.batch import LazyArray, load
    root, _, _ = sweep
    rows = load(root / "out")
    assert [r["status"] for r in rows] == ["ok"] * 5 + ["failed"]
    assert [r["result"] for r in rows[:3]] == [1, 4, 9] and rows[0]["x"] == 1
    field = rows[4]["result"]
    assert isinstance(field, LazyArray) and (field.shape, field.dtype) == ((3, 2), "float32")
    assert not field._loaded                            # shape and dtype came from metadata
    assert np.array_equal(np.asarray(field), np.arange(6, dtype=np.float32).reshape(3, 2))
    assert rows[0]["worker"].startswith("rank ") and rows[0]["seconds"] >= 0
    pd = pytest.importorskip("pandas")
    df = load(root / "out", frame=True)
    assert isinstance(df, pd.DataFrame) and len(df) == 6 and df.index[0] == rows[0]["task"]
    assert list(df.loc[df.block == "square", "result"]) == [1, 4, 9]


@SWEEP_TIMEOUT
def test_a_wrong_run_dir_says_what_is_there_and_what_to_give(sweep):
    root, _, env = sweep
    cases = {
        "nowhere": ["does not exist", "expected a directory written by colocate run"],
        ".": ["found elsewhere, out, sweeps", "no meta.json", f"give one of them, e.g. "
              f"{Path('.') / 'out'}"],
        "sweeps": ["found b.yaml, k.py", "no meta.json"],
    }
    for run_dir, wanted in cases.items():
        proc = run_cli("results", run_dir, cwd=root, env=env)
        assert proc.returncode == 2, proc.stderr
        for text in wanted:
            assert text in proc.stderr, (run_dir, proc.stderr)


@SWEEP_TIMEOUT
def test_the_log_says_embedded_and_gives_the_sandbox_in_one_readable_line(sweep):
    _, proc, _ = sweep
    (sandbox,) = [line for line in proc.stderr.splitlines() if "worker rank 1 on" in line]
    assert "{" not in sandbox and "SCHED_IDLE" in sandbox and "guard" in sandbox, sandbox
    assert "cgroup" in sandbox and (" core " in sandbox or " cores " in sandbox), sandbox
    assert "embedded in the application's MPI job" in proc.stderr, proc.stderr
    assert "address /" not in proc.stderr, proc.stderr    # no address file to name


@pytest.mark.timeout(180)
def test_demo_says_its_world_and_where_its_results_are(tmp_path, subprocess_env):
    proc = run_cli("demo", "--spare-cores", "0-1", cwd=tmp_path, env=subprocess_env(),
                   timeout=170)
    assert proc.returncode == 0, proc.stderr
    assert "ran on a local world of 2 worker(s) on core(s) 0-1; results in runs/demo-" in (
        proc.stderr), proc.stderr
    (run,) = (tmp_path / "runs").glob("demo-*")             # in the cwd, not in the package
    assert f"colocate results runs/{run.name}" in proc.stderr, proc.stderr
    assert (run / "results.jsonl").is_file()


def readme_block(after: str) -> list[str]:
    """The command lines of the first ```bash block after the line starting with ``after``."""
    text = (REPO / "README.md").read_text()
    rest = text[text.index("\n" + after):]
    block = rest[rest.index("```bash\n") + 8:]
    return [line.split("  #")[0].strip() for line in block[:block.index("```")].splitlines()
            if line.strip()]


@pytest.mark.timeout(240)
def test_the_readme_sweep_stop_resume_and_pandas_in_three_commands(tmp_path, subprocess_env):
    import json
    import shlex
    import signal
    import time
    pytest.importorskip("pandas")
    commands = readme_block("A sweep, stopped with Ctrl-C")
    assert len(commands) == 3, commands
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "pi-sweep.yaml").write_text(
        (REPO / "configs" / "pi-sweep.yaml").read_text())
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "kernels.py").write_text((REPO / "examples/kernels.py").read_text())
    env = subprocess_env()

    def argv(line: str) -> list[str]:
        words = shlex.split(line)
        return ([sys.executable, "-m", "colocate", *words[1:]] if words[0] == "colocate"
                else [sys.executable, *words[1:]])

    journal = tmp_path / "runs" / "pi-sweep" / "results.jsonl"
    first = subprocess.Popen(argv(commands[0]), cwd=tmp_path, env=env, text=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while first.poll() is None and not (journal.exists() and journal.read_text()):
        assert time.monotonic() < deadline, "no result within 120 s"
        time.sleep(0.02)
    first.send_signal(signal.SIGINT)           # Ctrl-C (a no-op if the sweep just finished)
    _, err = first.communicate(timeout=60)
    assert first.returncode in (0, 3), err      # drained (3) or, on a fast machine, done
    kept = [json.loads(line) for line in journal.read_text().splitlines()]
    second = subprocess.run(argv(commands[1]), cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert second.returncode == 0, second.stderr
    assert f"{6 - len(kept)} of 6 tasks to run" in second.stderr, second.stderr
    third = subprocess.run(argv(commands[2]), cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60)
    assert third.returncode == 0, third.stderr
    table = third.stdout.splitlines()
    assert table[0].split() == ["samples", "seed", "result"], third.stdout
    assert len(table) == 2 + 6 and all(3.0 < float(r.split()[-1]) < 3.3 for r in table[2:])
