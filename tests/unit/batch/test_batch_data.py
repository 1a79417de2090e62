"""Named arrays in batches (``data:`` and ``{ref: NAME}``) are checked before anything runs.

Their use on a real world is in ``tests/integration/test_batch_real.py``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from colocate.batch import BatchConfigError, load_batch
from colocate.batch.data import refs_in

KERNELS = "def total(a, scale=1):\n    return float(a.sum()) * scale\n"


@pytest.fixture
def batch(tmp_path: Path):
    (tmp_path / "k.py").write_text(KERNELS)
    np.save(tmp_path / "field.npy", np.arange(6.0).reshape(2, 3))

    def write(text: str) -> Path:
        path = tmp_path / "b.yaml"
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path
    return write


def test_data_and_refs_expand_and_are_journaled_as_written(batch, tmp_path):
    spec = load_batch(batch("""
        data: {field: field.npy}
        function: k.py:total
        tasks:
          product: {a: [{ref: field}], scale: [1, 2]}
        """))
    assert spec.data == {"field": tmp_path / "field.npy"}
    assert [t.kwargs for t in spec.tasks] == [{"a": {"ref": "field"}, "scale": 1},
                                              {"a": {"ref": "field"}, "scale": 2}]
    assert refs_in(spec.tasks[0].args, spec.tasks[0].kwargs) == ["field"]


def test_unknown_ref_names_the_block_and_the_known_names(batch):
    with pytest.raises(BatchConfigError) as info:
        load_batch(batch("""
            data: {field: field.npy}
            function: k.py:total
            tasks: [{args: [{ref: feild}]}]
            """))
    assert "{ref: 'feild'}" in str(info.value) and "'field'" in str(info.value)


@pytest.mark.parametrize("content, why", [
    (None, "cannot read it"),
    (b"not an array", "not a .npy array file"),
])
def test_missing_or_bad_file_is_refused_with_the_path(batch, tmp_path, content, why):
    if content is not None:
        (tmp_path / "bad.npy").write_bytes(content)
    with pytest.raises(BatchConfigError) as info:
        load_batch(batch("""
            data: {field: bad.npy}
            function: k.py:total
            tasks: [{args: [{ref: field}]}]
            """))
    e = info.value
    assert e.key == "data.field" and e.line == 1 and why in str(e), str(e)


def test_object_arrays_are_refused(batch, tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(BatchConfigError, match="dtype object"):
        load_batch(batch("""
            data: {field: obj.npy}
            function: k.py:total
            tasks: [{args: [{ref: field}]}]
            """))
