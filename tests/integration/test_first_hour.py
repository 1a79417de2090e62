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
