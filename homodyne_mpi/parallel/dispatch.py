"""A dynamic task farm: rank 0 hands out tasks one at a time to whichever rank is free (CMC shards).

Rank 0's main thread is the manager and the only thread that calls MPI (``MPI_THREAD_FUNNELED``):
it owns the queue, answers requests and calls ``on_result`` for each result as it arrives (CMC
checkpoints the shard there); rank 0's own share runs in a worker thread fed from the same queue.
Every other rank sends ``READY`` (with its previous result) and receives a task or ``STOP``. Arrays
travel as NumPy buffers (``Send``/``Recv`` after a pickled header of dtypes and shapes). A rank
waiting for a task sleeps ``POLL_S`` between probes, and a rank out of tasks sleeps in
``Comm.idle_barrier`` until the farm ends: MPI's blocking receive spins a core, which slowed
rank 0's chains on a shared node.

An ``Exception`` from ``work`` becomes a result header with ``farm_error`` and ``traceback``, so
nothing hangs; ``passthrough`` types and other ``BaseException`` propagate (re-raised in rank 0's
main thread; elsewhere the rank's guard aborts the job). ``task_limit`` (``watchdog.TaskLimit``)
ends the job, exit code 3, when a task runs too long. ``should_stop`` (checked by the manager
between tasks and on every rank with each request) stops handing out tasks: running ones are
delivered, then ``FarmStats.stopped`` is True.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .comm import Comm, MPIComm
from .watchdog import TaskLimit

TAG_READY = 7101
"""Worker -> manager: a request for work, carrying the previous result (header)."""
TAG_TASK = 7102
"""Manager -> worker: a task header, or ``None`` to stop."""
TAG_ARRAY = 7103
"""The arrays that follow a header, in the order the header lists them."""
POLL_S = 0.002
"""Rank 0's sleep (seconds) between polls when neither a message nor its own result came."""

WorkFn = Callable[[dict, dict], tuple[dict, dict]]


@dataclass
class Task:
    """One unit of work: a small header and a loader for its arrays (called on rank 0)."""

    header: dict
    load: Callable[[], dict[str, np.ndarray]] = field(default=lambda: {})


@dataclass
class FarmResult:
    """A finished task as the manager sees it."""

    task: dict
    """The task's header."""
    header: dict
    """The header ``work`` returned (``farm_error``/``traceback`` if it raised)."""
    arrays: dict[str, np.ndarray]
    rank: int
    seconds: float
    """Time ``work`` took on that rank."""


ResultFn = Callable[[FarmResult], None]


@dataclass
class RankLoad:
    """How one rank spent the farm's time."""

    rank: int
    tasks: int = 0
    busy_s: float = 0.0
    """Time inside ``work``."""
    idle_pending_s: float = 0.0
    """Time spent waiting for a task that it then received (tasks were still queued)."""


@dataclass
class FarmStats:
    """What the manager measured (rank 0 only)."""

    wall_s: float
    ranks: list[RankLoad]
    stopped: bool = False

    @property
    def busy_s(self) -> float:
        return sum(r.busy_s for r in self.ranks)

    @property
    def efficiency(self) -> float:
        """``sum of work time / (ranks x wall time)``."""
        return self.busy_s / (len(self.ranks) * self.wall_s) if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "wall_s": self.wall_s,
            "busy_s": self.busy_s,
            "parallel_efficiency": self.efficiency,
            "stopped": self.stopped,
            "ranks": [vars(r).copy() for r in self.ranks],
        }


def _guarded_work(work: WorkFn, header: dict, arrays: dict, passthrough: tuple = ()) -> tuple[dict, dict, float]:
    start = time.perf_counter()
    try:
        out_header, out_arrays = work(header, arrays)
    except passthrough:
        raise
    except Exception as error:  # noqa: BLE001 - recorded, never lost
        out_header = {"farm_error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        out_arrays = {}
    return out_header, out_arrays, time.perf_counter() - start


def _send(raw, header, arrays: dict[str, np.ndarray], dest: int, tag: int) -> None:
    arrays = {name: np.ascontiguousarray(a) for name, a in (arrays or {}).items()}
    spec = [(name, a.dtype.str, a.shape) for name, a in arrays.items()]
    raw.send((header, spec), dest=dest, tag=tag)
    for array in arrays.values():
        raw.Send(array, dest=dest, tag=TAG_ARRAY)


def _recv_arrays(raw, spec, source: int) -> dict[str, np.ndarray]:
    out = {name: np.empty(shape, dtype=np.dtype(dtype)) for name, dtype, shape in spec}
    for buffer in out.values():
        raw.Recv(buffer, source=source, tag=TAG_ARRAY)
    return out


def _worker_loop(comm: Comm, work: WorkFn, should_stop: Callable[[], bool] | None, passthrough: tuple) -> None:
    assert isinstance(comm, MPIComm), "a farm worker rank (rank > 0) exists only under MPI"
    raw = comm.raw
    load = RankLoad(rank=comm.rank)
    task, out_header, seconds = None, None, 0.0  # the previous task, its result header and time
    out_arrays: dict[str, np.ndarray] = {}
    while True:
        stop = bool(should_stop()) if should_stop else False
        ready = dict(load=vars(load).copy(), stop=stop, host=comm.host, task=task, result=out_header, seconds=seconds)
        _send(raw, ready, out_arrays, dest=0, tag=TAG_READY)
        waited = time.perf_counter()
        while not raw.Iprobe(source=0, tag=TAG_TASK):  # sleep, not spin, while rank 0 is busy
            time.sleep(POLL_S)
        task, spec = raw.recv(source=0, tag=TAG_TASK)
        arrays = _recv_arrays(raw, spec, 0)
        if task is None:
            return
        load.idle_pending_s += time.perf_counter() - waited
        out_header, out_arrays, seconds = _guarded_work(work, task, arrays, passthrough)
        load.tasks += 1
        load.busy_s += seconds


class _LocalWorker:
    """Rank 0's worker thread."""

    def __init__(self, work: WorkFn, passthrough: tuple = ()) -> None:
        self.work = work
        self.passthrough = passthrough
        self.inbox: queue.Queue = queue.Queue()
        self.outbox: queue.Queue = queue.Queue()
        self.load = RankLoad(rank=0)
        self.busy = False
        self.thread = threading.Thread(target=self._run, name="farm-worker-0", daemon=True)
        self.thread.start()

    def give(self, task: dict, arrays: dict) -> None:
        self.busy = True
        self.inbox.put((task, arrays))

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join()

    def _run(self) -> None:
        while True:
            waited = time.perf_counter()
            item = self.inbox.get()
            if item is None:
                return
            self.load.idle_pending_s += time.perf_counter() - waited
            task, arrays = item
            try:
                header, out_arrays, seconds = _guarded_work(self.work, task, arrays, self.passthrough)
            except BaseException as error:  # noqa: BLE001 - handed to the main thread
                self.outbox.put(("fatal", error, None, 0.0))
                return
            self.load.tasks += 1
            self.load.busy_s += seconds
            self.outbox.put(("done", task, (header, out_arrays), seconds))


def _manager(
    comm: Comm, tasks: list[Task], work: WorkFn, on_result: ResultFn, should_stop, passthrough: tuple, limit: TaskLimit | None
) -> FarmStats:
    start = time.perf_counter()
    pending = deque(tasks)
    stopped = False
    loads = {rank: RankLoad(rank=rank) for rank in range(comm.size)}
    active_remote = comm.size - 1
    raw = None
    if comm.size > 1:
        assert isinstance(comm, MPIComm), "more than one rank means MPI"
        raw = comm.raw
        from mpi4py import MPI
    local = _LocalWorker(work, passthrough)
    handed: dict[int, tuple[dict, float]] = {}  # rank -> (task it is running, when it got it)
    hosts = {0: comm.host}

    def next_task():
        nonlocal stopped
        if pending and not stopped and should_stop is not None and should_stop():
            stopped = True
        if pending and not stopped:
            task = pending.popleft()
            return task.header, task.load()
        return None, {}

    def feed_local() -> None:
        task, arrays = next_task()
        if task is not None:
            handed[0] = (task, time.perf_counter())
            local.give(task, arrays)

    try:
        feed_local()
        while local.busy or active_remote > 0:
            if limit is not None:
                limit.check(handed, hosts)
            progressed = False
            if raw is not None and raw.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_READY):
                status = MPI.Status()
                header, spec = raw.recv(source=MPI.ANY_SOURCE, tag=TAG_READY, status=status)
                source = status.Get_source()
                arrays = _recv_arrays(raw, spec, source)
                loads[source] = RankLoad(**header["load"])
                handed.pop(source, None)
                hosts[source] = header.get("host", "?")
                stopped = stopped or bool(header["stop"])
                if header["task"] is not None:
                    on_result(FarmResult(header["task"], header["result"], arrays, source, header["seconds"]))
                task, task_arrays = next_task()
                _send(raw, task, task_arrays, dest=source, tag=TAG_TASK)
                if task is None:
                    active_remote -= 1
                else:
                    handed[source] = (task, time.perf_counter())
                progressed = True
            if local.busy:
                try:
                    # With other ranks, poll; alone, block (in slices, so Ctrl-C gets through).
                    item = local.outbox.get(timeout=0.5) if raw is None else local.outbox.get_nowait()
                    kind, task_done, payload, seconds = item
                except queue.Empty:
                    pass
                else:
                    if kind == "fatal":
                        raise task_done
                    local.busy = False
                    handed.pop(0, None)
                    on_result(FarmResult(task_done, payload[0], payload[1], 0, seconds))
                    feed_local()
                    progressed = True
            if not progressed and raw is not None:
                time.sleep(POLL_S)
    finally:
        if local.thread.is_alive() and not local.busy:
            local.close()
    loads[0] = local.load
    return FarmStats(wall_s=time.perf_counter() - start, ranks=[loads[r] for r in range(comm.size)], stopped=stopped)


def run_task_farm(
    comm: Comm,
    tasks: Sequence[Task] | None,
    work: WorkFn,
    on_result: ResultFn | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
    passthrough: tuple[type[BaseException], ...] = (),
    task_limit: TaskLimit | None = None,
) -> FarmStats | None:
    """Run ``work`` on every task, spread over all ranks (collective); rank 0 returns the stats, other ranks None.

    ``tasks`` is only read on rank 0 (in order); ``on_result`` runs on rank 0's main thread for each
    finished task, in completion order. ``passthrough``, ``should_stop``, ``task_limit``: the module docstring.
    """
    if task_limit is not None:
        work = task_limit.guarded(work)
    if comm.is_root:
        stats = _manager(
            comm, list(tasks or []), work, on_result or (lambda result: None), should_stop, tuple(passthrough), task_limit
        )
        comm.idle_barrier()
        return stats
    _worker_loop(comm, work, should_stop, tuple(passthrough))
    comm.idle_barrier()  # a rank out of tasks sleeps until rank 0's last task is in
    return None
