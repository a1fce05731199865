"""The watchdog of ``parallel.watchdog`` in one process, with a recording ``on_expiry``.

The job-ending side (``MPI_Abort``, exit codes, the launcher and exit guards) is tested
under ``mpiexec`` in ``test_hangs.py``.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from homodyne_mpi.parallel import watchdog
from homodyne_mpi.parallel.watchdog import Watchdog, time_limit, time_limit_message


class Recorder:
    """An ``on_expiry`` that records messages and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.arrived = threading.Event()

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        self.arrived.set()

    def wait(self) -> None:
        assert self.arrived.wait(timeout=30), "no deadline passed within 30 s"
        self.arrived.clear()


def test_a_passed_deadline_reports_its_message_once():
    recorder = Recorder()
    dog = Watchdog(recorder)
    dog.arm(0.01, "first")
    recorder.wait()
    dog.arm(0.01, "second")  # the watchdog keeps watching after a report
    recorder.wait()
    assert recorder.messages == ["first", "second"]


def test_a_disarmed_deadline_never_reports():
    recorder = Recorder()
    dog = Watchdog(recorder)
    token = dog.arm(0.05, "finished in time")
    dog.disarm(token)
    dog.arm(0.1, "later deadline")  # had the first stayed armed, it would have come first
    recorder.wait()
    assert recorder.messages == ["later deadline"]


def test_time_limit_disarms_when_the_block_raises():
    recorder = Recorder()
    dog = Watchdog(recorder)
    with pytest.raises(ValueError), time_limit(0.05, "work", watchdog=dog):
        raise ValueError("the work failed in time")
    dog.arm(0.1, "later deadline")
    recorder.wait()
    assert recorder.messages == ["later deadline"]


def test_no_limit_starts_no_thread():
    dog = Watchdog(Recorder())
    with time_limit(None, "work", watchdog=dog):
        pass
    assert dog._thread is None


def test_the_message_names_the_work_where_it_ran_the_limit_and_the_setting():
    message = time_limit_message("CMC shard 7", 20.0, "optimization.cmc.per_shard_mcmc.shard_timeout_s", "rerun")
    assert message.startswith("error: CMC shard 7 on ")
    assert f"process {os.getpid()} on {socket.gethostname()}" in message  # outside MPI: pid and host
    assert "time limit of 20 s (optimization.cmc.per_shard_mcmc.shard_timeout_s)" in message
    assert "exit code 3" in message and message.endswith("rerun")
    assert "\n" not in message


class JobEnded(Exception):
    """Raised by the stand-in for ``end_job``."""


@pytest.fixture
def ended(monkeypatch):
    """``watchdog.end_job`` raises ``JobEnded(code)`` instead of ending the process."""

    def end_job(code):
        raise JobEnded(code)

    monkeypatch.setattr(watchdog, "end_job", end_job)


def shard_limit(seconds: float) -> watchdog.TaskLimit:
    return watchdog.TaskLimit(seconds=seconds, name=lambda task: f"CMC shard {task['index']}", setting="the.key")


def test_rank_0_gives_up_on_a_task_overdue_by_the_grace_period(ended, capsys):
    limit = shard_limit(10.0)
    now = time.perf_counter()
    on_time = {0: ({"index": 4}, now), 1: ({"index": 5}, now - 10.0 - watchdog.OVERDUE_GRACE_S + 5.0)}
    limit.check(on_time, {0: "node-a", 1: "node-b"})  # late, but not by the grace period yet
    overdue = {**on_time, 2: ({"index": 7}, now - 10.0 - watchdog.OVERDUE_GRACE_S - 1.0)}
    with pytest.raises(JobEnded) as outcome:
        limit.check(overdue, {0: "node-a", 1: "node-b", 2: "node-c"})
    assert outcome.value.args == (3,)
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: CMC shard 7 on rank 2 on node-c has not come back")
    assert "(time limit 10 s, the.key)" in line and "\n" not in line


def test_a_guarded_task_returns_its_result_and_leaves_no_deadline():
    calls = []

    def work(header, arrays):
        calls.append(header["index"])
        return {"ok": True}, {}

    assert shard_limit(600.0).guarded(work)({"index": 3}, {}) == ({"ok": True}, {})
    assert calls == [3]
    assert not watchdog.process_watchdog()._deadlines
