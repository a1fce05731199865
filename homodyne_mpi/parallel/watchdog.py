"""Bounded waits: no piece of work holds the job past its time limit, no rank outlives the job.

Three guards, each ending the whole job (``MPI_Abort``) rather than leave a rank behind:

- ``time_limit``: a daemon thread (``Watchdog``) prints one line (work, rank, host, limit)
  once a block of work (``TaskLimit``: a CMC shard) passes its wall-time limit and aborts the
  job, exit code 3. The work is never interrupted (a stuck XLA call cannot be; JAX releases the GIL).
- ``watch_launcher``: a rank ends once its launcher (``hydra_pmi_proxy``, ``slurmstepd``) is gone.
- ``ExitGuard.leave``: a finished rank waits at most ``EXIT_WAIT_S`` for the others, then aborts
  (else it blocks in ``MPI_Finalize`` while another spins in a collective: seen for 40 minutes).
"""

from __future__ import annotations

import faulthandler
import itertools
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

TIME_LIMIT_EXIT_CODE = 3
"""Exit code of a job ended by a time limit: finished work is saved, rerun to resume."""
ABORT_GRACE_S = 1.0
"""Seconds between a rank's last line and ``MPI_Abort``, for the launcher to forward it (seen lost under load)."""
BACKSTOP_S = 30.0
"""Seconds after a missed deadline at which ``faulthandler`` ends the process (a C call hanging with the GIL held)."""
OVERDUE_GRACE_S = 60.0
"""Seconds past a task's limit after which rank 0's task farm gives up on the rank running it (``TaskLimit.check``)."""
LAUNCHER_POLL_S = 1.0
"""How often (seconds) a rank checks that its launcher is still there."""
LAUNCHER_GONE_EXIT_CODE = 1
"""Exit code of a rank that ends because its launcher is gone (nobody is left to read it)."""
EXIT_WAIT_S = 30.0
"""Longest wait (seconds) of a finished rank for the others before it aborts the job (a healthy end: milliseconds)."""


def mpi_world():
    """mpi4py's ``COMM_WORLD`` while MPI is initialised and not finalised, else None."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return None
    return mpi.COMM_WORLD


def where() -> str:
    """``rank r of n on HOST`` (world rank) for messages; ``process PID on HOST`` outside MPI."""
    world = mpi_world()
    who = f"process {os.getpid()}" if world is None else f"rank {world.Get_rank()} of {world.Get_size()}"
    return f"{who} on {socket.gethostname()}"


def say(line: str) -> None:
    """Print one line to stderr; never raises (the launcher reading it may be gone)."""
    with suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def flush_streams() -> None:
    """Flush stdout and stderr; a closed or broken stream is skipped."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):
            stream.flush()


def flush_and_pause() -> None:
    """Flush this process's output and give the launcher ``ABORT_GRACE_S`` to forward it."""
    flush_streams()
    time.sleep(ABORT_GRACE_S)


def end_job(code: int) -> None:
    """End every rank of the MPI world with ``code`` (``MPI_Abort``), or this process outside MPI.

    Never returns; callable from any thread (mpi4py initialises ``MPI_THREAD_MULTIPLE``).
    """
    flush_and_pause()
    world = mpi_world()
    if world is not None and world.Get_size() > 1:
        world.Abort(code)
    os._exit(code)


class Watchdog:
    """Deadlines watched by one daemon thread; ``on_expiry(message)`` runs there once per missed deadline.

    With ``backstop_s``, ``faulthandler`` (process-wide) stays armed at the earliest deadline plus ``backstop_s``.
    """

    def __init__(self, on_expiry: Callable[[str], None], *, backstop_s: float | None = None) -> None:
        self._on_expiry = on_expiry
        self._backstop_s = backstop_s
        self._deadlines: dict[int, tuple[float, str]] = {}  # token -> (time.monotonic() when it passes, message)
        self._tokens = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, message: str) -> int:
        """Start a deadline ``seconds`` from now; returns the token that ``disarm`` takes."""
        with self._changed:
            token = next(self._tokens)
            self._deadlines[token] = (time.monotonic() + float(seconds), message)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
                self._thread.start()
            self._changed_deadlines()
        return token

    def disarm(self, token: int) -> None:
        """Forget a deadline (the work finished in time)."""
        with self._changed:
            self._deadlines.pop(token, None)
            self._changed_deadlines()

    def _changed_deadlines(self) -> None:
        """Move the backstop to the earliest deadline and wake the thread (lock held)."""
        if self._backstop_s is not None and not self._deadlines:
            faulthandler.cancel_dump_traceback_later()
        elif self._backstop_s is not None:
            first = min(at for at, _ in self._deadlines.values())
            faulthandler.dump_traceback_later(max(first - time.monotonic(), 0.0) + self._backstop_s, exit=True)
        self._changed.notify_all()

    def _next_expired(self) -> str:
        """Block until a deadline passes; remove it and return its message."""
        with self._changed:
            while True:
                wait_s = None
                if self._deadlines:
                    token, (at, message) = min(self._deadlines.items(), key=lambda item: item[1][0])
                    wait_s = at - time.monotonic()
                    if wait_s <= 0:
                        del self._deadlines[token]
                        return message
                self._changed.wait(wait_s)

    def _watch(self) -> None:
        while True:
            self._on_expiry(self._next_expired())


def _report_and_end_job(message: str) -> None:
    say(message)
    end_job(TIME_LIMIT_EXIT_CODE)


_process_watchdog: Watchdog | None = None
_process_lock = threading.Lock()


def process_watchdog() -> Watchdog:
    """This process's watchdog, which ends the job (exit code 3) when a deadline passes."""
    global _process_watchdog
    with _process_lock:
        if _process_watchdog is None:
            _process_watchdog = Watchdog(_report_and_end_job, backstop_s=BACKSTOP_S)
        return _process_watchdog


def time_limit_message(what: str, seconds: float, setting: str, advice: str) -> str:
    """The one line printed when ``what`` runs past its limit (names rank and host too)."""
    return (
        f"error: {what} on {where()} did not finish within its time limit of {seconds:g} s ({setting}); "
        f"ending the job with exit code {TIME_LIMIT_EXIT_CODE}: {advice}"
    )


@contextmanager
def time_limit(
    seconds: float | None,
    what: str,
    *,
    setting: str = "time limit",
    advice: str = "finished work is saved -- run the same command to resume",
    watchdog: Watchdog | None = None,
) -> Iterator[None]:
    """Run the block with a wall-time limit of ``seconds`` (``None``: no limit); never raises.

    Past it the watchdog prints ``time_limit_message`` (``what``: "CMC shard 7", ``setting``: the
    config key) and ends the job, exit code 3; the block is not interrupted.
    """
    if seconds is None:
        yield
        return
    dog = watchdog or process_watchdog()
    token = dog.arm(seconds, time_limit_message(what, seconds, setting, advice))
    try:
        yield
    finally:
        dog.disarm(token)


@dataclass(frozen=True)
class TaskLimit:
    """A wall-time limit on each task of the task farm (``parallel.dispatch``), and its wording."""

    seconds: float
    name: Callable[[dict], str]
    """A task's name in messages, from its header ("CMC shard 7"); ``setting``: the config key of the limit."""
    setting: str = "time limit"
    advice: str = "finished work is saved -- run the same command to resume"

    def guarded(self, work: Callable[[dict, dict], tuple[dict, dict]]) -> Callable[[dict, dict], tuple[dict, dict]]:
        """``work`` under ``time_limit``: the rank running a task ends the job when it runs too long."""

        def limited(header: dict, arrays: dict) -> tuple[dict, dict]:
            with time_limit(self.seconds, self.name(header), setting=self.setting, advice=self.advice):
                return work(header, arrays)

        return limited

    def check(self, handed: dict[int, tuple[dict, float]], hosts: dict[int, str]) -> None:
        """Rank 0: end the job when a task is ``OVERDUE_GRACE_S`` past its limit (its rank no longer responds).

        ``handed``: rank -> (task header, ``time.perf_counter()`` when it was handed out).
        """
        now = time.perf_counter()
        for rank, (task, since) in handed.items():
            if now - since > self.seconds + OVERDUE_GRACE_S:
                say(
                    f"error: {self.name(task)} on rank {rank} on {hosts.get(rank, '?')} has not come back "
                    f"{now - since:.0f} s after it was handed out (time limit {self.seconds:g} s, {self.setting}) "
                    f"and that rank does not respond; ending the job with exit code {TIME_LIMIT_EXIT_CODE}: {self.advice}"
                )
                end_job(TIME_LIMIT_EXIT_CODE)


def watch_launcher() -> bool:
    """Start a daemon thread that ends this process within ``LAUNCHER_POLL_S`` once its parent (the launcher) exits.

    It prints one line and exits with ``LAUNCHER_GONE_EXIT_CODE`` (no launcher is left to carry an ``MPI_Abort``).
    Returns False (nothing started) when the parent is already init (pid 1).
    """
    parent = os.getppid()
    if parent <= 1:
        return False

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(LAUNCHER_POLL_S)
        say(f"error: {where()}: its launcher (process {parent}) is gone; exiting so that no rank outlives the job")
        os._exit(LAUNCHER_GONE_EXIT_CODE)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
    return True


class ExitGuard:
    """Makes the ranks of a communicator leave the program together, or abort the job.

    Build it on every rank at the same point (its barrier runs on a duplicate communicator); ``leave`` on every rank.
    """

    def __init__(self, comm) -> None:
        self.comm = comm
        raw = getattr(comm, "raw", None) if comm.size > 1 else None
        self._raw = raw.Dup() if raw is not None else None

    def leave(self, code: int) -> None:
        """Wait for every rank to reach its ``leave``; after ``EXIT_WAIT_S`` abort the job with ``code`` (0 -> 1)."""
        if self._raw is None:
            return
        request = self._raw.Ibarrier()
        deadline = time.monotonic() + EXIT_WAIT_S
        while not request.Test():
            if time.monotonic() >= deadline:
                say(
                    f"error: {self.comm.describe()} ended with exit code {code}, but other ranks did not reach the end "
                    f"within {EXIT_WAIT_S:g} s (still in a collective?); aborting the job so that no rank is left waiting"
                )
                end_job(code or 1)
            time.sleep(0.01)
