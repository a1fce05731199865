"""Running the program on every rank so that no failure leaves a rank hanging.

A ``HomodyneError`` raised on every rank together (``collective``, ``Comm.run_on_root``) ends every
rank with its exit code (bad input: 2). Any other exception on any rank is printed once with rank,
host and traceback, then the job is aborted (``MPI_Abort``): the others may wait in a collective for
ever. With several ranks, ``watchdog.watch_launcher`` and ``watchdog.ExitGuard`` run too.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from ..errors import HomodyneError
from .comm import Comm
from .watchdog import ExitGuard, flush_and_pause, flush_streams, mpi_world, watch_launcher

log = logging.getLogger(__name__)


def abort_job(comm: Comm, code: int) -> None:
    """With several ranks: flush this rank's output, give the launcher time to forward it, then abort every rank."""
    if comm.size > 1:
        flush_and_pause()
        comm.abort(code)


def failure_message(comm: Comm, error: BaseException) -> str:
    """One line naming the rank, its host and the error."""
    return f"{comm.describe()}: {type(error).__name__}: {error}"


def run_guarded(main: Callable[[], int], comm: Comm) -> int:
    """Run ``main`` and turn its outcome into an exit code (once every rank got here); never returns after an abort."""
    if comm.size > 1:
        watch_launcher()
    guard = ExitGuard(comm)
    try:
        code = _run_main(main, comm)
    except SystemExit as request:  # sys.exit() inside main: leave with the others all the same
        code = _exit_code(request)
    guard.leave(code)
    return code


def exit_process(code: int) -> NoReturn:
    """End the process with ``code`` at the end of a command-line run, when everything it writes is closed.

    Without MPI: flush logs and streams, then ``os._exit``, skipping the interpreter's teardown (unloading
    JAX and XLA: 0.3 s a job, docs/performance.md). Under MPI: ``SystemExit``, so that mpi4py finalises MPI
    at exit (finalising then ``os._exit`` made MPICH report a 4-rank job as killed, exit code 9, now and then).
    """
    if mpi_world() is not None:
        raise SystemExit(code)
    logging.shutdown()
    flush_streams()
    os._exit(code)


def _exit_code(request: SystemExit) -> int:
    """The exit status Python gives ``sys.exit(arg)``: an int as is, None 0, else 1 (printed)."""
    if request.code is None or isinstance(request.code, int):
        return int(request.code or 0)
    print(request.code, file=sys.stderr, flush=True)
    return 1


def _run_main(main: Callable[[], int], comm: Comm) -> int:
    try:
        return int(main() or 0)
    except HomodyneError as error:
        if comm.size == 1 or getattr(error, "collective", False):
            if comm.is_root:
                print(f"error: {error}", file=sys.stderr, flush=True)
            return error.exit_code
        print(f"error on {failure_message(comm, error)}", file=sys.stderr, flush=True)
        abort_job(comm, error.exit_code)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"interrupted on {comm.describe()}", file=sys.stderr, flush=True)
        abort_job(comm, 130)
        return 130
    except Exception as error:  # noqa: BLE001 - the last line of defence
        print(f"fatal error on {failure_message(comm, error)}\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        abort_job(comm, 1)
        return 1
