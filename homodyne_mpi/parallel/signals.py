"""SIGTERM and SIGUSR1 as a polite request to stop: set a flag, let the fit checkpoint.

Slurm sends SIGTERM at the time limit or on preemption (``KillWait`` seconds before SIGKILL), and
SIGUSR1 ahead of it with ``#SBATCH --signal=USR1@120``. The handler sets a process-local flag and
logs once (SIGKILL is the hard stop). NLSQ reads the flag in each iteration's packed Allreduce, so
every rank checkpoints and exits with code 3 (``Interrupted``) together; CMC between shards.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""Signals that ask for a checkpoint and a clean exit (code 3)."""

_stop = threading.Event()
_received: list[str] = []
_Handler = Callable[[int, FrameType | None], Any] | int | None
"""What ``signal.signal`` takes and returns (``SIG_DFL``/``SIG_IGN`` are ints)."""
_previous: dict[int, _Handler] = {}
"""The handlers ``install_stop_handlers`` replaced (empty: not installed)."""


def _handle(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001 - signal-handler signature
    """Record the request; log it the first time only (a handler must stay tiny)."""
    first = not _stop.is_set()
    name = signal.Signals(signum).name
    _stop.set()
    _received.append(name)
    if first:
        log.warning("received %s (pid %d): stopping at the next safe point, checkpointing, exit code 3", name, os.getpid())


def install_stop_handlers() -> bool:
    """Route SIGTERM and SIGUSR1 to the stop flag (idempotent); False outside the main thread, where Python cannot."""
    if _previous:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in STOP_SIGNALS:
        _previous[signum] = signal.signal(signum, _handle)
    return True


def uninstall_stop_handlers() -> None:
    """Put back the handlers that were there before ``install_stop_handlers`` (tests)."""
    for signum, previous in _previous.items():
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    _previous.clear()


def stop_requested() -> bool:
    """True once this process has received SIGTERM or SIGUSR1 (since the last reset)."""
    return _stop.is_set()


def received_signals() -> list[str]:
    """Names of the stop signals received since the last reset, in order."""
    return list(_received)


def request_stop() -> None:
    """Set the stop flag as a signal would (for code paths and tests without a signal)."""
    _stop.set()


def reset_stop() -> None:
    """Clear the flag and the record of received signals (tests)."""
    _stop.clear()
    _received.clear()
