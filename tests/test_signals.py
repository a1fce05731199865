"""SIGTERM/SIGUSR1 set a process-local stop flag; they never kill or raise (parallel.signals)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from homodyne_mpi.parallel import signals


@pytest.fixture
def handlers():
    """Install the stop handlers for one test; restore the previous ones and the flag after."""
    signals.reset_stop()
    assert signals.install_stop_handlers()
    yield
    signals.uninstall_stop_handlers()
    signals.reset_stop()


def deliver(signum: int) -> None:
    """Send ``signum`` to this process; Python runs the handler at the next bytecode."""
    os.kill(os.getpid(), signum)
    for _ in range(1000):
        if signals.stop_requested():
            return


@pytest.mark.parametrize("signum", signals.STOP_SIGNALS)
def test_a_stop_signal_sets_the_flag(handlers, signum):
    assert not signals.stop_requested()
    deliver(signum)
    assert signals.stop_requested()
    assert signals.received_signals() == [signal.Signals(signum).name]
    signals.reset_stop()
    assert not signals.stop_requested() and signals.received_signals() == []


def test_the_request_is_logged_once(handlers, caplog):
    with caplog.at_level(logging.WARNING, logger="homodyne_mpi.parallel.signals"):
        deliver(signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
    assert signals.received_signals() == ["SIGTERM", "SIGUSR1", "SIGTERM"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "received SIGTERM" in messages[0] and "exit code 3" in messages[0]


def test_install_is_idempotent_and_uninstall_restores(handlers):
    installed = signal.getsignal(signal.SIGTERM)
    assert signals.install_stop_handlers()
    assert signal.getsignal(signal.SIGTERM) is installed
    signals.uninstall_stop_handlers()
    assert signal.getsignal(signal.SIGTERM) is not installed
    assert signals.install_stop_handlers()


def test_install_outside_the_main_thread_does_nothing():
    signals.uninstall_stop_handlers()
    before = signal.getsignal(signal.SIGUSR1)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(signals.install_stop_handlers()))
    thread.start()
    thread.join()
    assert outcome == [False]
    assert signal.getsignal(signal.SIGUSR1) is before


def test_request_stop_sets_the_flag_without_a_signal():
    signals.reset_stop()
    signals.request_stop()
    assert signals.stop_requested()
    signals.reset_stop()


@pytest.mark.timeout(60)
def test_a_process_with_the_handlers_survives_sigterm_and_sees_the_flag():
    script = textwrap.dedent(
        """
        import os, signal, sys, time
        from homodyne_mpi.parallel.signals import install_stop_handlers, stop_requested
        install_stop_handlers()
        install_stop_handlers()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not stop_requested() and time.monotonic() < deadline:
            time.sleep(0.01)
        print("stop requested" if stop_requested() else "no flag", flush=True)
        sys.exit(3 if stop_requested() else 1)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == "stop requested"
