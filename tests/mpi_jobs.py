"""Running ``mpiexec -n N python ...`` from a serial test, and finding its rank processes.

Shared by the fault and hang tests. Rank processes are found below ``mpiexec`` in /proc by
their ``PMI_RANK``; every wait has a deadline, and the ``jobs`` fixture kills the process
group of any job still running when its test ends.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import venv_bin


def clean_env(extra: dict | None = None) -> dict:
    """This environment without any launcher's variables (the test itself is serial)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "HYDRA_"))}
    env.pop("HOMODYNE_MPI", None)
    env.update(extra or {})
    return env


def parent_map() -> dict[int, int]:
    """``pid -> ppid`` of every process visible in /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    return parents


def descendants(root: int) -> list[int]:
    """Every process below ``root``."""
    parents = parent_map()
    found, frontier = [], [root]
    while frontier:
        current = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == current]
        found += children
        frontier += children
    return found


def process_env(pid: int) -> dict[str, str]:
    """The environment of a process ({} if it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Job:
    """``mpiexec -n N python ...`` in its own session, its output collected line by line."""

    def __init__(self, ranks: int, args: list[str], *, cwd: Path, env: dict | None = None):
        self.ranks = ranks
        self.command = [venv_bin("mpiexec"), "-n", str(ranks), sys.executable, *args]
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            self.command,
            cwd=cwd,
            env=clean_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The first output line matching ``pattern``; fails on exit or deadline."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new_line:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.lines)
                if self.process.poll() is not None and not self._reader.is_alive():
                    pytest.fail(
                        f"the job ended (exit {self.process.returncode}) before a line matched {pattern!r}:\n{self.output[-4000:]}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no line matched {pattern!r} within {timeout:.0f} s:\n{self.output[-4000:]}")
                self._new_line.wait(min(left, 1.0))

    def rank_pids(self, timeout: float = 30.0) -> dict[int, int]:
        """``rank -> pid`` of the rank processes below mpiexec."""
        deadline = time.monotonic() + timeout
        while True:
            found = {}
            for pid in descendants(self.process.pid):
                env = process_env(pid)
                if "PMI_RANK" in env:
                    found[int(env["PMI_RANK"])] = pid
            if len(found) == self.ranks or time.monotonic() > deadline:
                assert len(found) == self.ranks, f"found ranks {sorted(found)} of {self.ranks} below mpiexec {self.process.pid}"
                return found
            time.sleep(0.2)

    def wait(self, timeout: float) -> int:
        """The exit code; fails (after killing the job) when it does not end in time."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the job did not end within {timeout:.0f} s:\n{self.output[-4000:]}")
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        """SIGKILL this job's own process group (mpiexec, proxies, ranks)."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)


def started_jobs():
    """Body of a ``jobs`` fixture: the list a test adds its jobs to; those still running at its end are killed."""
    started: list[Job] = []
    yield started
    for job in started:
        job.kill()


def run_command(ranks: int, config: Path, out: Path, *extra: str, timeout: float = 420) -> subprocess.CompletedProcess:
    """``mpiexec -n ranks homodyne-mpi run CONFIG --output-dir OUT`` to the end."""
    command = [
        venv_bin("mpiexec"),
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "homodyne_mpi",
        "run",
        str(config),
        "--output-dir",
        str(out),
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=clean_env(), cwd=out.parent)
