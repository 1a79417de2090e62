"""Batch file validation and expansion: every bad input is caught before anything runs."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from colocate.batch import BatchConfigError, BatchTaskOptions, load_batch
from colocate.batch.schema import UNSET
from colocate.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]

KERNELS = """
def square(x, scale=1):
    return x * x * scale

def add(a, b):
    return a + b

NOT_CALLABLE = 42
"""


@pytest.fixture
def batch(tmp_path: Path):
    """Write a batch file next to a kernels file k.py; return a loader for its text."""
    (tmp_path / "k.py").write_text(KERNELS)

    def write(text: str, **kw) -> Path:
        path = tmp_path / "b.yaml"
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write


def error_of(path: Path, **kw) -> BatchConfigError:
    with pytest.raises(BatchConfigError) as info:
        load_batch(path, **kw)
    return info.value


# ----- bad input ----------------------------------------------------------------------------
def test_invalid_yaml_names_file_line_and_column(batch):
    path = batch("""
        function: k.py:square
        tasks:
          - {args: [1}
        """)
    e = error_of(path)
    assert isinstance(e, ConfigError)
    assert e.line == 3 and e.source == str(path)
    assert str(e).startswith(f"{path}:3")
    assert "invalid YAML" in str(e) and "column" in str(e)


def test_duplicate_key_is_an_error(batch):
    e = error_of(batch("""
        function: k.py:square
        function: k.py:add
        tasks: [{args: [1]}]
        """))
    assert e.line == 2 and "duplicate key 'function'" in str(e)


def test_empty_file(batch):
    assert "empty" in str(error_of(batch("# nothing\n")))


def test_unknown_key_lists_valid_ones(batch):
    e = error_of(batch("""
        function: k.py:square
        defaults:
          cores: 1
          tmeout: 5
        tasks: [{args: [1]}]
        """))
    assert e.key == "defaults.tmeout" and e.line == 4
    assert "did you mean 'timeout'" in str(e)
    assert "valid keys here: cores, memory, gpus, timeout, retries, retry_on" in str(e)


def test_unknown_top_level_key(batch):
    e = error_of(batch("""
        fuction: k.py:square
        tasks: [{args: [1]}]
        """))
    assert e.key == "fuction" and e.line == 1
    assert "name, output, data, function, defaults, tasks, blocks" in str(e)


def test_unknown_key_in_call(batch):
    e = error_of(batch("""
        function: k.py:square
        tasks:
          - {args: [1]}
          - {args: [2], kwarg: {scale: 2}}
        """))
    assert e.key == "tasks[1].kwarg" and e.line == 4 and "'kwargs'" in str(e)


@pytest.mark.parametrize("tasks, key, found, expected", [
    ("{product: {x: 5}}", "tasks.product.x", "int 5", "non-empty list"),
    ("{product: {x: []}}", "tasks.product.x", "a list", "non-empty list"),
    ("[{args: {x: 1}}]", "tasks[0].args", "a mapping", "list of positional"),
    ("[{kwargs: [1]}]", "tasks[0].kwargs", "a list", "mapping of keyword"),
    ("[{args: [1], cores: two}]", "tasks[0].cores", "str 'two'", "integer >= 1"),
    ("[{args: [1], cores: 0}]", "tasks[0].cores", "int 0", "integer >= 1"),
    ("[{args: [1], retries: true}]", "tasks[0].retries", "bool True", "integer >= 0"),
    ("[{args: [1], timeout: -1}]", "tasks[0].timeout", "int -1", "seconds > 0"),
    ("[{args: [1], memory: lots}]", "tasks[0].memory", "str 'lots'", "512MiB"),
    ("[{args: [1], retry_on: OSError}]", "tasks[0].retry_on", "str 'OSError'", "list of"),
    ("[{args: [1], retry_on: [NoSuchError]}]", "tasks[0].retry_on[0]", "NoSuchError",
     "exception class"),
    ("[{args: [!!binary aGk=]}]", "tasks[0].args[0]", "bytes", "plain YAML values"),
    ("[1, 2]", "tasks[0]", "int 1", "a call"),
    ("{x: [1, 2]}", "tasks", "keys x", "'product' or 'zip'"),
    ("5", "tasks", "int 5", "a sweep"),
])
def test_wrong_types_name_key_found_and_expected(batch, tasks, key, found, expected):
    e = error_of(batch(f"""
        function: k.py:square
        tasks: {tasks}
        """))
    assert e.key == key, str(e)
    assert found in str(e) and expected in str(e)
    assert e.line == 2


def test_wrong_type_in_nested_block_defaults(batch):
    e = error_of(batch("""
        blocks:
          - function: k.py:square
            tasks: [{args: [1]}]
          - function: k.py:add
            defaults:
              gpus: -1
            tasks: [{args: [1, 2]}]
        """))
    assert e.key == "blocks[1].defaults.gpus" and e.line == 6 and "integer >= 0" in str(e)


def test_module_not_found(batch):
    e = error_of(batch("""
        function: no_such_module_xyz.sub:fn
        tasks: [{args: [1]}]
        """))
    assert e.key == "function" and e.line == 1
    assert "module 'no_such_module_xyz.sub' not found" in str(e)


def test_module_with_missing_dependency(batch, tmp_path, monkeypatch):
    (tmp_path / "needs_dep_mod.py").write_text("import no_such_dependency_xyz\ndef f(): pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    e = error_of(batch("""
        function: needs_dep_mod:f
        tasks: [{}]
        """))
    assert "was found but importing it failed" in str(e)
    assert "no_such_dependency_xyz" in str(e)


def test_attribute_missing_suggests_close_names(batch):
    e = error_of(batch("""
        function: k.py:sqare
        tasks: [{args: [1]}]
        """))
    assert "has no attribute 'sqare'" in str(e) and "did you mean 'square'" in str(e)


def test_module_attribute_missing(batch):
    assert "'json' has no attribute 'lods'" in str(error_of(batch("""
        function: json:lods
        tasks: [{args: ["1"]}]
        """)))


def test_not_callable(batch):
    e = error_of(batch("""
        function: k.py:NOT_CALLABLE
        tasks: [{args: [1]}]
        """))
    assert "is a int, not a callable" in str(e)


def test_file_not_found_and_malformed_ref(batch):
    assert "file 'nope.py' not found" in str(error_of(batch("""
        function: nope.py:f
        tasks: [{args: [1]}]
        """)))
    assert "expected 'module:function'" in str(error_of(batch("""
        function: square
        tasks: [{args: [1]}]
        """)))


def test_call_that_does_not_fit_the_signature(batch):
    e = error_of(batch("""
        function: k.py:square
        tasks:
          product: {x: [1, 2], scael: [1]}
        """))
    assert e.key == "tasks.product" and e.line == 3
    assert "unexpected keyword argument 'scael' (did you mean 'scale'?)" in str(e), str(e)
    assert "(x, scale=1)" in str(e)
    e = error_of(batch("""
        function: k.py:square
        tasks: [{kwargs: {}}]
        """))
    assert "missing a required argument: 'x'" in str(e), str(e)   # Python's own words else


def test_zip_length_mismatch_names_keys_and_lengths(batch):
    e = error_of(batch("""
        function: k.py:add
        tasks:
          zip: {a: [1, 2, 3], b: [1, 2]}
        """))
    assert e.key == "tasks.zip" and e.line == 3
    assert "a: 3, b: 2" in str(e)


def test_output_under_a_file_cannot_be_created(batch, tmp_path):
    (tmp_path / "afile").write_text("x")
    e = error_of(batch(f"""
        function: k.py:square
        tasks: [{{args: [1]}}]
        output: {tmp_path}/afile/run
        """))
    assert e.key == "output" and e.line == 3 and "cannot be created" in str(e)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_output_not_writable(batch, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    e = error_of(batch(f"""
        function: k.py:square
        tasks: [{{args: [1]}}]
        output: {locked}/run
        """))
    assert "not writable" in str(e)


def test_output_probe_failure_is_reported(batch, tmp_path, monkeypatch):
    import tempfile

    def refuse(*a, **kw):
        raise PermissionError(13, "Permission denied")

    path = batch(f"""
        function: k.py:square
        tasks: [{{args: [1]}}]
        output: {tmp_path}/new/run
        """)
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    e = error_of(path)
    assert e.key == "output" and "cannot be created" in str(e)
    assert "is not writable (Permission denied)" in str(e)


@pytest.mark.parametrize("tasks", ["[]", "{product: {}}"])
def test_empty_task_list(batch, tasks):
    e = error_of(batch(f"""
        function: k.py:square
        tasks: {tasks}
        """))
    assert "no tasks" in str(e) or "is empty" in str(e)


def test_missing_function_and_mixed_forms(batch):
    assert "missing key 'function'" in str(error_of(batch("tasks: [{args: [1]}]\n")))
    e = error_of(batch("""
        function: k.py:square
        blocks:
          - {function: k.py:add, tasks: [{args: [1, 2]}]}
        """))
    assert "cannot be combined" in str(e)


def test_duplicate_block_names(batch):
    e = error_of(batch("""
        blocks:
          - {function: k.py:square, tasks: [{args: [1]}]}
          - {function: k.py:square, tasks: [{args: [2]}]}
        """))
    assert "block name 'square' is used by both blocks[0] and blocks[1]" in str(e)


def test_product_and_zip_in_one_sweep(batch):
    assert "not both" in str(error_of(batch("""
        function: k.py:add
        tasks: {product: {a: [1]}, zip: {b: [2]}}
        """)))


def test_fixed_kwargs_clash_with_swept_ones(batch):
    assert "given both" in str(error_of(batch("""
        function: k.py:add
        tasks: {product: {a: [1]}, kwargs: {a: 2, b: 3}}
        """)))


# ----- good input ---------------------------------------------------------------------------
def test_product_expands_every_combination_last_key_fastest(batch):
    spec = load_batch(batch("""
        name: sq
        function: k.py:square
        defaults: {cores: 2, memory: 1GiB, timeout: 300, retries: 1}
        tasks:
          product: {x: [1, 2], scale: [10, 20, 30]}
        """))
    assert spec.name == "sq"
    assert [t.kwargs for t in spec.tasks] == [
        {"x": x, "scale": s} for x in (1, 2) for s in (10, 20, 30)]
    assert all(t.block == "square" and t.function == "k.py:square" for t in spec.tasks)
    assert spec.tasks[0].options == BatchTaskOptions(cores=2, memory=2**30, timeout=300.0,
                                                retries=1)
    assert [t.task_id.rsplit("-", 1)[0] for t in spec.tasks] == [f"square-{i}" for i in range(6)]


def test_zip_pairs_elements_with_fixed_args(batch):
    spec = load_batch(batch("""
        function: k.py:add
        tasks:
          zip: {b: [1, 2, 3]}
          args: [100]
        """))
    assert [(t.args, t.kwargs) for t in spec.tasks] == [((100,), {"b": b}) for b in (1, 2, 3)]


def test_list_of_calls_with_overrides(batch):
    spec = load_batch(batch("""
        function: k.py:square
        defaults: {timeout: 10, memory: 512MiB}
        tasks:
          - {args: [1]}
          - {args: [2], kwargs: {scale: 3}, timeout: 99, memory: null}
          - product: {x: [5, 6]}
            defaults: {retries: 4}
        """))
    t = spec.tasks
    assert len(t) == 4
    assert t[0].options == BatchTaskOptions(timeout=10.0, memory=512 * 2**20)
    assert t[1].options == BatchTaskOptions(timeout=99.0, memory=None)
    assert t[1].args == (2,) and t[1].kwargs == {"scale": 3}
    assert t[2].options == BatchTaskOptions(timeout=10.0, memory=512 * 2**20, retries=4)
    assert t[2].options.cores is UNSET


def test_multi_block_defaults_inherit_and_override(batch):
    spec = load_batch(batch("""
        name: multi
        defaults: {cores: 1, timeout: 60}
        blocks:
          - name: sq
            function: k.py:square
            tasks: {product: {x: [1, 2]}}
          - function: k.py:add
            defaults: {cores: 4}
            tasks:
              - {args: [1, 2], timeout: 5}
        """))
    assert [b.name for b in spec.blocks] == ["sq", "add"]
    assert [b.n_tasks for b in spec.blocks] == [2, 1]
    assert [t.block for t in spec.tasks] == ["sq", "sq", "add"]
    assert spec.tasks[0].options == BatchTaskOptions(cores=1, timeout=60.0)
    assert spec.tasks[2].options == BatchTaskOptions(cores=4, timeout=5.0)
    assert spec.tasks[2].task_id.startswith("add-0-")
    assert set(spec.functions) == {"k.py:square", "k.py:add"}
    assert spec.functions["k.py:add"](1, 2) == 3


def test_ids_are_stable_and_track_calls_not_options(batch):
    text = """
        function: k.py:square
        defaults: {timeout: 10}
        tasks: {product: {x: [1, 2, 3]}}
        """
    first = [t.task_id for t in load_batch(batch(text)).tasks]
    assert first == [t.task_id for t in load_batch(batch(text)).tasks]
    assert len(set(first)) == 3
    retimed = [t.task_id for t in load_batch(batch(text.replace("10", "99"))).tasks]
    assert retimed == first
    edited = [t.task_id for t in load_batch(batch(text.replace("3]", "4]"))).tasks]
    assert edited[:2] == first[:2] and edited[2] != first[2]


def test_arguments_are_plain_python_types(batch):
    spec = load_batch(batch("""
        function: k.py:square
        tasks:
          product: {x: [{a: [1, {b: 2}]}]}
          kwargs: {scale: [3]}
        """))
    (task,) = spec.tasks
    assert type(task.kwargs) is dict and type(task.kwargs["x"]) is dict
    assert type(task.kwargs["x"]["a"]) is list and type(task.kwargs["x"]["a"][1]) is dict
    assert type(task.kwargs["scale"]) is list


def test_identical_calls_get_distinct_ids(batch):
    spec = load_batch(batch("""
        function: k.py:square
        tasks: [{args: [1]}, {args: [1]}]
        """))
    assert spec.tasks[0].task_id != spec.tasks[1].task_id


def test_yaml_numbers_and_dates(batch):
    spec = load_batch(batch("""
        function: k.py:square
        tasks: [{args: [1e6], kwargs: {scale: 1_000}}, {args: [2024-01-31]}]
        """))
    assert spec.tasks[0].args == (1e6,) and isinstance(spec.tasks[0].args[0], float)
    assert spec.tasks[0].kwargs == {"scale": 1000}
    assert spec.tasks[1].args == ("2024-01-31",)


def test_file_refs_are_relative_to_the_batch_file(batch, tmp_path, monkeypatch):
    path = batch("""
        function: k.py:square
        tasks: [{args: [3]}]
        """)
    monkeypatch.chdir(REPO)
    spec = load_batch(path, check_output=False)
    assert spec.functions["k.py:square"](3) == 9


def test_retry_on_resolves_to_exception_types(batch):
    spec = load_batch(batch("""
        function: k.py:square
        tasks: [{args: [1], retry_on: [OSError, WorkerCrashed, numpy.linalg.LinAlgError]}]
        """))
    import numpy as np

    from colocate.errors import WorkerCrashed
    kw = spec.tasks[0].options.executor_kwargs()
    assert kw == {"retry_on": (OSError, WorkerCrashed, np.linalg.LinAlgError)}


def test_default_output_and_name(batch):
    spec = load_batch(batch("""
        function: k.py:square
        tasks: [{args: [1]}]
        """))
    assert spec.name == "b" and spec.output is None
    assert spec.default_output().parent == spec.base_dir / "runs"
    assert spec.default_output().name.startswith("b-")


@pytest.mark.parametrize("path", ["configs/pi-sweep.yaml", "configs/heat-zip.yaml",
                                  "configs/multi.yaml", "colocate/demo/demo.yaml"])
def test_shipped_batches_are_valid(path, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_batch(REPO / path, check_output=False)
    assert spec.tasks and len({t.task_id for t in spec.tasks}) == len(spec.tasks)


def test_output_is_relative_to_the_batch_file(tmp_path, monkeypatch):
    from colocate.batch.schema import load_batch
    (tmp_path / "sweeps").mkdir()
    batch = tmp_path / "sweeps" / "b.yaml"
    batch.write_text("name: x\nfunction: json:dumps\ntasks: [{args: [1]}]\n"
                     "output: ../results/x\n")
    monkeypatch.chdir(tmp_path / "sweeps")   # wherever it is run from
    assert load_batch(batch).output == tmp_path / "results" / "x"
    monkeypatch.chdir("/")
    assert load_batch(batch).output == tmp_path / "results" / "x"
    batch.write_text("name: x\nfunction: json:dumps\ntasks: [{args: [1]}]\n")
    assert load_batch(batch).default_output().parent == tmp_path / "sweeps" / "runs"
