"""Work beside the network: read ahead of it and write behind it, in threads.

Mapping a raster is read -> predict -> write per chunk. Reading (GDAL decodes) and
writing (deflate) release the GIL, as the network's kernels do, so a thread for each
side keeps the network busy instead of waiting on files. Both queues are bounded:
memory stays that of a few chunks whatever the raster's size. An error in a thread is
raised in the caller at its next call, never lost.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["Behind", "read_ahead"]

T = TypeVar("T")
_DONE = object()


def read_ahead(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """``items``, computed in a thread at most ``depth`` items ahead of the consumer.

    An exception raised while computing an item is raised here, in its place. Closing
    the returned generator (or leaving its loop early) stops the thread."""
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(value: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put((False, exc))
            return
        put((True, _DONE))

    thread = threading.Thread(target=produce, name="sssi-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = slots.get()
            if not ok:
                raise value
            if value is _DONE:
                return
            yield value
    finally:
        stop.set()
        thread.join()


class Behind:
    """Calls of ``fn`` in a thread, in submission order, at most ``depth`` waiting.

    ``submit(*args)`` queues a call (blocking while ``depth`` are waiting) and raises an
    earlier call's error; :meth:`join` waits for every call and raises the first
    error. As a context manager, leaving on an exception drops the calls not started
    and waits for the running one, so files are closed before the caller cleans up."""

    def __init__(self, fn: Callable[..., Any], depth: int = 2) -> None:
        self._fn = fn
        self._calls: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._work, name="sssi-behind", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            args = self._calls.get()
            if args is _DONE:
                return
            if self._error is not None or self._cancel.is_set():
                continue  # drain: a failed or cancelled pipeline runs nothing more
            try:
                self._fn(*args)
            except BaseException as exc:
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._cancel.set()
            raise error

    def submit(self, *args: Any) -> None:
        self._raise()
        self._calls.put(args)

    def join(self) -> None:
        if self._thread.is_alive():
            self._calls.put(_DONE)
            self._thread.join()
        self._raise()

    def __enter__(self) -> Behind:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.join()
            return
        self._cancel.set()
        if self._thread.is_alive():
            self._calls.put(_DONE)
            self._thread.join()
