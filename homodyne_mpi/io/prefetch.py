"""Load the next item of a batch in a background thread while the caller works on this one.

:class:`PrefetchLoader` yields one :class:`Loaded` record per item of an iterable, in order, while a
background thread runs ``load_fn`` on the next ``depth`` items. A failed load's record carries the
exception: skip it (``record.ok``) or re-raise it (``record.get()``); ``strict=True`` raises it there::

    with PrefetchLoader(paths, read_dataset) as loader:
        for record in loader:
            if record.ok:
                fit(record.value)
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ValueT = TypeVar("ValueT")


@dataclass(frozen=True)
class Loaded(Generic[ItemT, ValueT]):
    """The outcome of loading one item: its value, or the exception the load raised."""

    index: int
    """Position of the item in the source, counting from 0."""
    item: ItemT
    """The source item exactly as the source yielded it."""
    value: ValueT | None
    """What ``load_fn(item)`` returned; ``None`` when the load failed."""
    error: BaseException | None
    """The exception ``load_fn(item)`` raised, or ``None`` on success."""
    load_s: float
    """Wall-clock seconds the load took (in the background thread)."""

    @property
    def ok(self) -> bool:
        """True when the load succeeded."""
        return self.error is None

    def get(self) -> ValueT:
        """Return the loaded value, or re-raise the exception the load raised."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


@dataclass(frozen=True)
class _SourceFailed:
    """Marks the position where iterating the source itself raised."""

    error: BaseException


_Task = tuple[int, object, "Future[Loaded]"]


class PrefetchLoader(Generic[ItemT, ValueT]):
    """Iterate ``Loaded`` records for ``source``, loading at most ``depth`` (>= 1) items ahead in one
    background (daemon) thread. After a ``strict`` re-raise ``next`` goes on; an exception from ``source``
    itself is raised in its place and ends the iteration."""

    def __init__(
        self, source: Iterable[ItemT], load_fn: Callable[[ItemT], ValueT], *, depth: int = 1, strict: bool = False
    ) -> None:
        if not callable(load_fn):
            raise ValueError(f"load_fn must be callable, got {type(load_fn).__name__}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        self._source: Iterator[ItemT] = iter(source)
        self._load_fn = load_fn
        self._depth = depth
        self._strict = strict
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._ahead: deque[Future[Loaded[ItemT, ValueT]] | _SourceFailed] = deque()
        self._next_index = 0
        self._source_done = False
        self._closed = False
        self._stop_sent = False
        self._thread: threading.Thread | None = None

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called or the source is exhausted."""
        return self._closed

    def __iter__(self) -> PrefetchLoader[ItemT, ValueT]:
        return self

    def __next__(self) -> Loaded[ItemT, ValueT]:
        """Return the next record in source order (see the class docstring for errors)."""
        if self._closed:
            raise StopIteration
        self._fill(self._depth + 1)
        if not self._ahead:
            self.close()
            raise StopIteration
        head = self._ahead.popleft()
        if isinstance(head, _SourceFailed):
            self.close()
            raise head.error
        self._fill(self._depth)  # queued before waiting, to start as soon as this load finishes
        record = head.result()
        if self._strict and record.error is not None:
            raise record.error
        return record

    def values(self) -> Iterator[ValueT]:
        """Yield the loaded values in order, re-raising a load's exception at its item (consumes the records)."""
        for record in self:
            yield record.get()

    def _fill(self, target: int) -> None:
        """Pull items from the source and queue their loads until ``target`` are pending."""
        while not self._source_done and len(self._ahead) < target:
            try:
                item = next(self._source)
            except StopIteration:
                self._source_done = True
                break
            except Exception as error:  # the source itself failed: raise it in its place
                self._source_done = True
                self._ahead.append(_SourceFailed(error))
                break
            future: Future[Loaded[ItemT, ValueT]] = Future()
            self._ahead.append(future)
            if self._thread is None:  # started on first use
                self._thread = threading.Thread(target=self._run, name="homodyne-prefetch", daemon=True)
                self._thread.start()
            self._tasks.put((self._next_index, item, future))
            self._next_index += 1

    def _run(self) -> None:
        """Background thread: load queued items one at a time until told to stop."""
        while True:
            task = self._tasks.get()
            if task is None:
                return
            index, item, future = task
            if future.set_running_or_notify_cancel():
                future.set_result(self._load_one(index, item))  # type: ignore[arg-type]
            task = item = future = None  # type: ignore[assignment]  # a finished value is held only by its record

    def _load_one(self, index: int, item: ItemT) -> Loaded[ItemT, ValueT]:
        """Run ``load_fn`` on one item and wrap its value or exception in a record."""
        start = time.perf_counter()
        try:
            value = self._load_fn(item)
        except BaseException as error:  # delivered to the caller with this item
            elapsed = time.perf_counter() - start
            log.debug("loading item %d (%r) failed after %.3f s: %r", index, item, elapsed, error)
            return Loaded(index, item, None, error, elapsed)
        elapsed = time.perf_counter() - start
        log.debug("loaded item %d (%r) in %.3f s", index, item, elapsed)
        return Loaded(index, item, value, None, elapsed)

    def close(self, timeout: float | None = None) -> None:
        """Stop prefetching (idempotent): drop loads not yet started, wait up to ``timeout`` seconds
        (default: no limit) for a running one, and stop the background thread."""
        self._closed = True
        self._source_done = True
        while self._ahead:
            head = self._ahead.popleft()
            if isinstance(head, Future):
                head.cancel()
        thread = self._thread
        if thread is None:
            return
        if not self._stop_sent:
            self._tasks.put(None)
            self._stop_sent = True
        if thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            log.warning("prefetch thread still loading after close(timeout=%s); leaving it as a daemon", timeout)

    def __enter__(self) -> PrefetchLoader[ItemT, ValueT]:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()
