"""One place that sets up logging: ``[rank r/n]`` in every line, rank 0 at INFO."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s [rank {rank}/{size}] %(levelname)s %(name)s: %(message)s"


def configure_logging(rank: int = 0, size: int = 1, *, verbose: bool = False) -> None:
    """Log to stderr, tagged with the rank, other ranks at WARNING; calling it again replaces the handler (rank learnt later)."""
    root = logging.getLogger("homodyne_mpi")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT.format(rank=rank, size=size), "%H:%M:%S"))
    root.addHandler(handler)
    level = logging.DEBUG if verbose else logging.INFO
    root.setLevel(level if rank == 0 or verbose else logging.WARNING)
    root.propagate = False
