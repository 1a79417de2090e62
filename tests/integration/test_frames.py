"""Frames between a worker rank and its executor child: split, batched and cut-off reads."""

import os

import pytest

from colocate.wire.pipe import READ_CHUNK, FrameReader, frame, write_frame


@pytest.fixture
def pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_several_frames_in_one_read(pipe):
    r, w = pipe
    os.write(w, frame([1]) + frame({"a": 2}) + frame(None))
    assert FrameReader(r).drain() == ([[1], {"a": 2}, None], False)


def test_a_frame_split_across_reads_waits_for_its_rest(pipe):
    r, w = pipe
    reader = FrameReader(r)
    data = frame(("outcome", b"x" * 100))
    os.write(w, data[:5])
    assert reader.drain() == ([], False)
    os.write(w, data[5:50])
    assert reader.drain() == ([], False)
    os.write(w, data[50:] + frame(2))
    assert reader.drain() == ([("outcome", b"x" * 100), 2], False)


def test_a_frame_larger_than_one_read(pipe):
    r, w = pipe
    os.set_blocking(r, True)
    big = os.urandom(3 * READ_CHUNK + 17)
    pid = os.fork()
    if pid == 0:   # the pipe holds less than the frame: write it from another process
        os.close(r)
        write_frame(w, big)
        os._exit(0)
    os.close(w)
    reader = FrameReader(r)
    assert reader.next() == [big]
    with pytest.raises(EOFError):
        reader.next()
    os.waitpid(pid, 0)


def test_end_of_file_after_a_partial_frame(pipe):
    r, w = pipe
    reader = FrameReader(r)
    os.write(w, frame(1) + frame(2)[:-1])
    os.close(w)
    assert reader.drain() == ([1], False)   # a short read: the end is seen by the next one
    assert reader.drain() == ([], True)
