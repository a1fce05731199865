"""PNG figures of the fits: drawn by rank 0 in the background writer, or redrawn later.

:func:`submit_nlsq_figures` and :func:`submit_cmc_figures` queue on an :class:`homodyne_mpi.io.AsyncWriter`,
whose threads draw off the fit's critical path (without matplotlib, the ``plots`` extra: one warning, nothing queued).
"""

from __future__ import annotations

from .backend import new_figure, plotting_available, write_png
from .cmc_figures import submit_cmc_figures
from .nlsq_figures import submit_nlsq_figures

__all__ = ["new_figure", "plotting_available", "submit_cmc_figures", "submit_nlsq_figures", "write_png"]
