"""The NLSQ state saved when a run is stopped by a signal, and read back to resume."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import atomic_write_json
from .solver import LMOptions

log = logging.getLogger(__name__)


@dataclass
class LatestState:
    """The LM state after its last step (updated by its ``on_accept`` callback)."""

    theta: np.ndarray | None = None
    iteration: int = 0
    damping: float = LMOptions.initial_damping
    growth: float = LMOptions.initial_growth
    trusted: bool = LMOptions.initial_trusted

    def update(self, theta: np.ndarray, iteration: int, damping: float, growth: float, trusted: bool) -> None:
        self.theta = np.array(theta, dtype=float)
        self.iteration = int(iteration)
        self.damping = float(damping)
        self.growth = float(growth)
        self.trusted = bool(trusted)


def checkpoint_path(nlsq_dir: Path) -> Path:
    """``<dataset>/nlsq/checkpoint.json``."""
    return Path(nlsq_dir) / "checkpoint.json"


def save_checkpoint(nlsq_dir: Path, state: LatestState, names: list[str], fingerprint: str) -> Path:
    """Write the LM state atomically (rank 0): resuming from it continues the same path."""
    assert state.theta is not None, "save_checkpoint needs a state that has taken a step (or was resumed)"
    document = {
        "fingerprint": fingerprint,
        "iteration": int(state.iteration),
        "damping": float(state.damping),
        "growth": float(state.growth),
        "trusted": bool(state.trusted),
        "names": list(names),
        "theta": [float(x) for x in state.theta],
    }
    path = atomic_write_json(checkpoint_path(nlsq_dir), document)
    log.warning("NLSQ state saved to %s (iteration %d); run the same command to resume", path, state.iteration)
    return path


def load_checkpoint(nlsq_dir: Path, names: list[str], fingerprint: str) -> LatestState | None:
    """The saved LM state if a checkpoint of the same config and data exists, else None."""
    path = checkpoint_path(nlsq_dir)
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable NLSQ checkpoint %s: %s", path, error)
        return None
    if document.get("fingerprint") != fingerprint or document.get("names") != list(names):
        log.warning("ignoring NLSQ checkpoint %s: it belongs to another config or data set", path)
        return None
    log.info("resuming NLSQ from %s (iteration %d)", path, document.get("iteration", 0))
    return LatestState(
        np.asarray(document["theta"], dtype=float),
        int(document.get("iteration", 0)),
        float(document.get("damping", LMOptions.initial_damping)),
        float(document.get("growth", LMOptions.initial_growth)),
        bool(document.get("trusted", LMOptions.initial_trusted)),
    )


def remove_checkpoint(nlsq_dir: Path) -> None:
    """Delete the checkpoint after a completed fit."""
    checkpoint_path(nlsq_dir).unlink(missing_ok=True)
