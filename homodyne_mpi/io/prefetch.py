"""Load the next item of a batch in a background thread while the caller works on this one.

:class:`PrefetchLoader` wraps any iterable of work items (file paths, dataset names) and a
``load_fn`` that turns one item into its data. Iterating it yields one :class:`Loaded`
record per item, in the order of the source, while a single background thread is already
loading the next ``depth`` items. A failing load does not end the batch: its record carries
the exception, and the caller decides whether to skip it (``record.ok``) or re-raise it
(``record.get()``). With ``strict=True`` the loader raises the exception itself, at exactly
the item that failed.

Typical batch driver on rank 0::

    with PrefetchLoader(paths, read_dataset) as loader:
        for record in loader:
            if not record.ok:
                log.error("skipping %s: %s", record.item, record.error)
                continue
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


class _SourceFailed:
    """Marks the position where iterating the source itself raised."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_Task = tuple[int, object, "Future[Loaded]"]


class PrefetchLoader(Generic[ItemT, ValueT]):
    """Iterate ``Loaded`` records for ``source``, loading ahead in one background thread.

    ``source`` is iterated lazily on the caller's thread, at most ``depth`` (>= 1) items
    ahead of the record last returned, so at most ``depth + 1`` loaded values are held;
    ``load_fn(item)`` runs in the background thread, one item at a time, in source order.
    With ``strict``, calling ``next`` again after a re-raised load error continues with the
    following item. An exception raised by iterating ``source`` itself is raised from
    ``__next__`` after the items before it, and ends the iteration.

    Meant for one consuming thread. Use it as a context manager, or call :meth:`close`, to
    stop the background thread early; it is a daemon, so a load that never returns cannot
    keep the interpreter from exiting.
    """

    def __init__(
        self,
        source: Iterable[ItemT],
        load_fn: Callable[[ItemT], ValueT],
        *,
        depth: int = 1,
        strict: bool = False,
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
        # Queue the next load before waiting, so it starts as soon as this one finishes.
        self._fill(self._depth)
        record = head.result()
        if self._strict and record.error is not None:
            raise record.error
        return record

    def values(self) -> Iterator[ValueT]:
        """Yield the loaded values in order, re-raising a load's exception at its item.

        A convenience for drivers that stop at the first failure; it consumes the same
        underlying records as iterating the loader.
        """
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
            self._ensure_thread()
            self._tasks.put((self._next_index, item, future))
            self._next_index += 1

    def _ensure_thread(self) -> None:
        """Start the background thread on first use."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="homodyne-prefetch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        """Background thread: load queued items one at a time until told to stop."""
        while True:
            task = self._tasks.get()
            if task is None:
                return
            index, item, future = task
            if future.set_running_or_notify_cancel():
                future.set_result(self._load_one(index, item))  # type: ignore[arg-type]
            # Drop references so a finished value is held only by its record.
            task = item = future = None  # type: ignore[assignment]

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
        """Stop prefetching: drop loads not yet started and stop the background thread.

        A load already running cannot be interrupted; ``close`` waits up to ``timeout``
        seconds (default: until it finishes) for it, and logs a warning if the thread is
        still busy afterwards. Further iteration raises :class:`StopIteration`. Calling
        ``close`` again is harmless.
        """
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
