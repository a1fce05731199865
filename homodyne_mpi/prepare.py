"""Rank 0's preparation of a data set before its fit: loaded whole, or opened for streaming.

``prepare_dataset`` runs in the group leader's prefetch thread (``io.PrefetchLoader``). A
streamed data set's points are read later, while they are scattered (``pipeline.BatchRunner.distribute``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .data.loader import XPCSData, count_config_dataset_points, load_config_dataset
from .data.points import PointSet, upper_triangle_points
from .data.stream import PointSource
from .nlsq import NLSQProblem, build_problem

log = logging.getLogger(__name__)

STREAM_AUTO_POINTS = 20_000_000
"""``compute.stream_points: auto`` streams a data set with more points than this."""

STREAM_BLOCK_POINTS = 1 << 20
"""Points per streamed block: rank 0 holds one block (28 B a point) and its rows (<= 16 B a point)."""


@dataclass
class PreparedDataset:
    """What rank 0 builds from a data set before the fits start."""

    data: XPCSData | PointSource
    """The loaded data set, or (streamed) its open ``PointSource``: metadata for the results."""
    problem: NLSQProblem
    points: PointSet | None
    """Every point of the fit; ``None`` when streamed (the points are read while scattering)."""

    @property
    def streamed(self) -> bool:
        """True when the points are streamed from the file to the ranks."""
        return self.points is None

    def close(self) -> None:
        """Close a streamed data set's file (nothing to do for a loaded one)."""
        if isinstance(self.data, PointSource):
            self.data.close()


def streams(cfg, method: str, count_points) -> bool:
    """Whether a data set's points are streamed (``compute.stream_points``; ``count_points()`` gives its size).
    Only ``--method nlsq`` streams: CMC shards need every point on rank 0."""
    choice = cfg.compute.stream_points
    if method != "nlsq" or choice is False:
        if choice is True:
            log.info(
                "compute.stream_points applies to --method nlsq only (CMC needs every point on rank 0): loading the data set"
            )
        return False
    return choice is True or count_points() > STREAM_AUTO_POINTS


def prepare_dataset(cfg, dataset, method: str = "nlsq") -> PreparedDataset:
    """Rank 0, background thread: read the file (or open it for streaming), build the problem and its points.

    Streamed, only the rows of ``PointSource.noise_sigmas`` and ``.scaling`` are read here (the loaded path's
    noise levels and start values)."""
    if streams(cfg, method, lambda: count_config_dataset_points(cfg, dataset)):
        source = PointSource.from_config(cfg, dataset)
        try:
            # with noise_sigma and scaling given, build_problem reads only metadata, which PointSource has
            problem = build_problem(cfg, source, noise_sigma=source.noise_sigmas(), scaling=source.scaling())  # type: ignore[arg-type]
        except BaseException:
            source.close()
            raise
        log.info("%s: %d points streamed to the ranks in blocks of %d", source.source, source.n_points, STREAM_BLOCK_POINTS)
        return PreparedDataset(source, problem, None)
    data = load_config_dataset(cfg, dataset)
    problem = build_problem(cfg, data)
    points = upper_triangle_points(data.c2, problem.noise_sigma)
    return PreparedDataset(data, problem, points)
