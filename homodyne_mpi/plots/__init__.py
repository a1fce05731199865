"""PNG figures of the fits, drawn in the background writer's threads or redrawn later.

:func:`submit_nlsq_figures` and :func:`submit_cmc_figures` queue on an :class:`homodyne_mpi.io.AsyncWriter`
(without matplotlib, the ``plots`` extra: one warning, nothing queued).
"""

from __future__ import annotations

from .backend import new_figure, plotting_available, write_png
from .cmc_figures import submit_cmc_figures
from .nlsq_figures import submit_nlsq_figures

__all__ = ["new_figure", "plotting_available", "submit_cmc_figures", "submit_nlsq_figures", "write_png"]
