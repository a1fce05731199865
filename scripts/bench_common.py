"""Helpers shared by the benchmark scripts: single-core XLA, timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

SINGLE_CORE_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
"""XLA flags that keep a process on one core, so rates are per core."""


def single_core_environment() -> dict:
    """``os.environ`` with XLA held to one thread (for subprocesses and ranks)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SINGLE_CORE_XLA_FLAGS}".strip()
    return env


def best_of(function, repeats: int = 3) -> float:
    """Shortest wall time of ``repeats`` calls, seconds (the least disturbed by noise)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> dict:
    """What ran the benchmark."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def write_json(path: str | Path, document: dict) -> Path:
    """Write ``document`` as indented JSON, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))
    print(json.dumps(document, indent=2))
    return path
