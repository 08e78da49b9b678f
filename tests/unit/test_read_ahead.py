"""Read-ahead: batches pulled in a thread of their own, order and errors kept, bounded."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pyarrow as pa
import pytest

from offloader.source import read_ahead


def batch(i: int) -> pa.RecordBatch:
    return pa.record_batch({"i": pa.array([i], pa.int64())})


def test_every_batch_arrives_in_order() -> None:
    got = [b.column(0)[0].as_py() for b in read_ahead(iter([batch(i) for i in range(100)]), depth=3)]
    assert got == list(range(100))


def test_an_error_in_the_reader_is_raised_in_the_consumer() -> None:
    def failing() -> Iterator[pa.RecordBatch]:
        yield batch(0)
        yield batch(1)
        raise ValueError("the source connection broke")

    got = []
    with pytest.raises(ValueError, match="the source connection broke"):
        for b in read_ahead(failing()):
            got.append(b.column(0)[0].as_py())
    assert got == [0, 1], "the batches before the error are delivered first"


def test_the_reader_stays_at_most_depth_batches_ahead() -> None:
    produced = []
    consumed = threading.Event()

    def counting() -> Iterator[pa.RecordBatch]:
        for i in range(50):
            produced.append(i)
            yield batch(i)

    stream = read_ahead(counting(), depth=4)
    next(stream)
    # the reader can run ahead only until the buffer is full: depth queued + one in hand
    for _ in range(100):
        if consumed.wait(0.01) or len(produced) >= 6:
            break
    assert len(produced) <= 1 + 4 + 1, produced
    stream.close()


def test_a_consumer_that_stops_early_stops_the_reader() -> None:
    closed = threading.Event()

    def endless() -> Iterator[pa.RecordBatch]:
        try:
            i = 0
            while True:
                yield batch(i)
                i += 1
        finally:
            closed.set()

    stream = read_ahead(endless(), depth=2)
    assert [next(stream).column(0)[0].as_py() for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert closed.wait(10), "the reader's source was closed"
    assert not [t for t in threading.enumerate() if t.name == "offloader-read-ahead" and t.is_alive()]
