"""Tests of the rank-0 PrefetchLoader: order, errors at the right item, overlap, closing."""

from __future__ import annotations

import threading
import time

import pytest

from homodyne_mpi.io import Loaded, PrefetchLoader

pytestmark = pytest.mark.timeout(60)

WAIT_S = 10.0
"""Generous bound for events that should happen almost at once (noisy shared machines)."""


class Boom(RuntimeError):
    """The error a test load raises on purpose."""


def test_yields_every_item_in_order() -> None:
    items = ["a", "b", "c", "d", "e", "f", "g"]
    loader = PrefetchLoader(items, str.upper)
    records = list(loader)
    assert [record.item for record in records] == items
    assert [record.value for record in records] == [item.upper() for item in items]
    assert [record.index for record in records] == list(range(len(items)))
    assert all(record.ok and record.error is None and record.load_s >= 0 for record in records)
    assert loader.closed


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_order_kept_for_any_depth_and_uneven_load_times(depth: int) -> None:
    def load(k: int) -> int:
        time.sleep(0.01 * ((7 * k) % 3))
        return k * k

    values = list(PrefetchLoader(iter(range(12)), load, depth=depth).values())
    assert values == [k * k for k in range(12)]


def test_empty_source_iterates_zero_times() -> None:
    calls: list[object] = []
    loader = PrefetchLoader([], calls.append)
    assert list(loader) == []
    assert calls == []
    with pytest.raises(StopIteration):
        next(loader)


def test_failed_item_is_recorded_and_iteration_continues() -> None:
    def load(k: int) -> int:
        if k == 2:
            raise Boom(f"cannot read dataset {k}")
        return 10 * k

    records = list(PrefetchLoader(range(5), load))
    assert [record.ok for record in records] == [True, True, False, True, True]
    assert [record.value for record in records] == [0, 10, None, 30, 40]
    failed = records[2]
    assert failed.item == 2 and isinstance(failed.error, Boom)
    with pytest.raises(Boom, match="dataset 2"):
        failed.get()
    assert records[3].get() == 30


def test_strict_raises_exactly_at_the_failing_item_and_can_go_on() -> None:
    def load(k: int) -> int:
        if k == 3:
            raise Boom("bad item 3")
        return k

    loader = PrefetchLoader(range(6), load, strict=True)
    seen = []
    with pytest.raises(Boom, match="bad item 3"):
        for record in loader:
            seen.append(record.value)
    assert seen == [0, 1, 2]
    # The loader is still usable: the next call returns the item after the failed one.
    assert next(loader).value == 4
    assert [record.value for record in loader] == [5]


def test_values_raises_the_original_exception_at_its_item() -> None:
    error = Boom("the one")

    def load(k: int) -> int:
        if k == 1:
            raise error
        return k

    got = []
    with pytest.raises(Boom) as caught:
        for value in PrefetchLoader(range(4), load).values():
            got.append(value)
    assert got == [0]
    assert caught.value is error


def test_error_from_the_source_itself_comes_after_earlier_items() -> None:
    def source():
        yield 1
        yield 2
        raise OSError("listing failed")

    loader = PrefetchLoader(source(), lambda k: k)
    assert next(loader).value == 1
    assert next(loader).value == 2
    with pytest.raises(OSError, match="listing failed"):
        next(loader)
    with pytest.raises(StopIteration):
        next(loader)


def test_next_item_loads_while_the_caller_holds_the_current_one() -> None:
    """Deterministic overlap: the load of k+1 finishes before the caller releases k."""
    n_items = 5
    started = [threading.Event() for _ in range(n_items)]
    finished = [threading.Event() for _ in range(n_items)]

    def load(k: int) -> int:
        started[k].set()
        finished[k].set()
        return k

    with PrefetchLoader(range(n_items), load, depth=1) as loader:
        for record in loader:
            k = record.value
            if k + 1 < n_items:
                # Still "working" on k: k+1 must get loaded without another __next__ call.
                assert finished[k + 1].wait(WAIT_S), f"item {k + 1} was not prefetched"
            if k + 2 < n_items:
                # depth=1: nothing beyond k+1 is started while the caller holds k.
                time.sleep(0.05)
                assert not started[k + 2].is_set(), f"item {k + 2} loaded more than depth ahead"


def test_depth_two_loads_two_ahead() -> None:
    finished = [threading.Event() for _ in range(6)]

    def load(k: int) -> int:
        finished[k].set()
        return k

    with PrefetchLoader(range(6), load, depth=2) as loader:
        first = next(loader)
        assert first.value == 0
        assert finished[1].wait(WAIT_S) and finished[2].wait(WAIT_S)
        time.sleep(0.05)
        assert not finished[3].is_set()


def test_overlap_shortens_wall_time() -> None:
    """Load 0.2 s and work 0.2 s per item: serial 2.0 s, prefetched about 1.2 s."""
    n_items, load_s, work_s = 5, 0.2, 0.2

    def load(k: int) -> int:
        time.sleep(load_s)
        return k

    start = time.perf_counter()
    for record in PrefetchLoader(range(n_items), load):
        record.get()
        time.sleep(work_s)
    wall = time.perf_counter() - start
    serial = n_items * (load_s + work_s)
    assert wall < 0.75 * serial, f"wall {wall:.2f} s shows no overlap (serial {serial:.2f} s)"


def test_close_does_not_hang_on_a_stuck_load() -> None:
    release = threading.Event()

    def load(k: int) -> int:
        if k == 1:
            release.wait(WAIT_S)
        return k

    loader = PrefetchLoader(range(10), load)
    assert next(loader).value == 0
    start = time.perf_counter()
    loader.close(timeout=0.2)
    assert time.perf_counter() - start < 5.0
    assert loader.closed
    with pytest.raises(StopIteration):
        next(loader)
    release.set()
    thread = loader._thread
    assert thread is not None
    thread.join(WAIT_S)
    assert not thread.is_alive()


def test_leaving_with_block_early_stops_thread_and_skips_queued_loads() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def load(k: int) -> int:
        if k > 0:
            gate.wait(WAIT_S)
        calls.append(k)
        return k

    with PrefetchLoader(range(100), load, depth=3) as loader:
        for record in loader:
            assert record.value == 0
            break
        gate.set()
    thread = loader._thread
    assert thread is not None and not thread.is_alive()
    # Item 0 plus at most the one load that was running when the loader closed.
    assert calls[0] == 0 and len(calls) <= 2


def test_record_api() -> None:
    good: Loaded[str, int] = Loaded(0, "x", 5, None, 0.1)
    bad: Loaded[str, int] = Loaded(1, "y", None, KeyError("c2"), 0.1)
    assert good.ok and good.get() == 5
    assert not bad.ok
    with pytest.raises(KeyError):
        bad.get()


@pytest.mark.parametrize("depth", [0, -1, 1.5, True])
def test_bad_depth_is_refused(depth: object) -> None:
    with pytest.raises(ValueError, match="depth"):
        PrefetchLoader([1], lambda k: k, depth=depth)  # type: ignore[arg-type]
