"""A short hash that says whether saved work belongs to the same config and data."""

from __future__ import annotations

import hashlib
import json
import os


def run_fingerprint(config_dict: dict, source: str, n_points: int, names: list[str]) -> str:
    """Hash of the fit-relevant config, the data file (path, size, mtime) and the problem; output and compute settings
    are left out, so moving the results folder keeps checkpoints valid."""
    relevant = {key: value for key, value in config_dict.items() if key not in ("output", "compute")}
    try:
        stat = os.stat(source)
        file_id = [os.path.abspath(source), stat.st_size, int(stat.st_mtime_ns)]
    except OSError:
        file_id = [source]
    payload = json.dumps([relevant, file_id, int(n_points), list(names)], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]
