"""PNG figures of the fits: drawn by rank 0 in the background writer, or redrawn later.

After an NLSQ fit, :func:`submit_nlsq_figures` queues, per angle, measured ``c2``, fitted
``c2`` and the normalised residual side by side (``nlsq/plots/c2_phi_<k>_<angle>deg.png``)
and the transport coefficient ``J(t)`` and shear rate ``gamma_dot(t)`` with 1-sigma bands
(``nlsq/plots/transport.png``). After CMC, :func:`submit_cmc_figures` queues the posterior
marginals (``cmc/plots/marginals.png``), a pairwise plot (``pairs.png``) and per-shard
R-hat / ESS / divergences (``shard_health.png``). Both only queue work on an
:class:`homodyne_mpi.io.AsyncWriter`; the drawing happens in its threads, off the fit's
critical path. :func:`redraw_results` (``homodyne-mpi plot``) draws the same figures from
the saved result files.

matplotlib is optional (the ``plots`` extra; how it is used in threads:
:mod:`~homodyne_mpi.plots.backend`). Without it the ``submit_*`` functions log one warning
and queue nothing.
"""

from __future__ import annotations

from .backend import new_figure, plotting_available, write_png
from .cmc_figures import submit_cmc_figures
from .nlsq_figures import submit_nlsq_figures

__all__ = ["new_figure", "plotting_available", "submit_cmc_figures", "submit_nlsq_figures", "write_png"]
