"""Reading ahead and writing behind in threads (sssi.utils.background)."""

from __future__ import annotations

import threading
import time

import pytest

from sssi.utils.background import Behind, read_ahead


def test_read_ahead_keeps_order_and_runs_in_another_thread():
    where = []

    def items():
        for i in range(5):
            where.append(threading.current_thread().name)
            yield i

    assert list(read_ahead(items(), depth=2)) == [0, 1, 2, 3, 4]
    assert set(where) == {"sssi-read-ahead"}


def test_read_ahead_stays_at_most_depth_ahead_and_stops_when_closed():
    made = []

    def items():
        for i in range(100):
            made.append(i)
            yield i

    it = read_ahead(items(), depth=1)
    assert next(it) == 0
    time.sleep(0.3)  # the thread may make item 1 and wait to hand it over, no more
    assert len(made) <= 3
    it.close()  # joins the thread: nothing more is made afterwards
    count = len(made)
    time.sleep(0.2)
    assert len(made) == count < 100


def test_read_ahead_raises_the_producers_error_in_place():
    def items():
        yield 1
        raise OSError("tile 3: truncated")

    it = read_ahead(items())
    assert next(it) == 1
    with pytest.raises(OSError, match="tile 3: truncated"):
        next(it)


def test_behind_runs_calls_in_order_and_join_waits_for_all():
    done = []

    def slow(i):
        time.sleep(0.01)
        done.append((i, threading.current_thread().name))

    with Behind(slow, depth=2) as behind:
        for i in range(6):
            behind.submit(i)
    assert [i for i, _ in done] == list(range(6))
    assert {name for _, name in done} == {"sssi-behind"}


def test_behind_raises_a_calls_error_and_runs_nothing_after_it():
    done = []

    def write(i):
        if i == 1:
            raise OSError("no space left on device")
        done.append(i)

    behind = Behind(write, depth=1)
    with pytest.raises(OSError, match="no space left"):
        for i in range(50):
            behind.submit(i)
            time.sleep(0.01)
        behind.join()
    behind.join()  # the error was raised once; the thread is gone
    assert done == [0]


def test_behind_leaving_on_an_error_drops_waiting_calls():
    started = []
    release = threading.Event()

    def write(i):
        started.append(i)
        release.wait(1)

    with pytest.raises(KeyboardInterrupt), Behind(write, depth=4) as behind:
        for i in range(4):
            behind.submit(i)
        time.sleep(0.1)
        release.set()
        raise KeyboardInterrupt
    assert started[0] == 0 and len(started) < 4
