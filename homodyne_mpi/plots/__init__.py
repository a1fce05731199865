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

matplotlib is optional (the ``plots`` extra). It is imported lazily, only in the threads
that draw, and figures use the object-oriented API (:class:`matplotlib.figure.Figure` on
an Agg canvas; no ``pyplot`` state), so drawing is safe in the writer's threads. Without
matplotlib the ``submit_*`` functions log one warning and queue nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DPI",
    "decode_names",
    "matplotlib_available",
    "new_figure",
    "plotting_available",
    "redraw_results",
    "save_png",
    "write_png",
    "submit_cmc_figures",
    "submit_nlsq_figures",
]

log = logging.getLogger(__name__)

DPI = 100
"""Resolution of every PNG (pixels per inch of figure size)."""

_MISSING_WARNED = False
_MISSING_LOCK = threading.Lock()


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (checked without importing it)."""
    return importlib.util.find_spec("matplotlib") is not None


def plotting_available() -> bool:
    """Whether figures can be drawn; logs one warning per process the first time it cannot."""
    global _MISSING_WARNED
    if matplotlib_available():
        return True
    with _MISSING_LOCK:
        if not _MISSING_WARNED:
            log.warning(
                "matplotlib is not installed: no PNG plots are written (install the extra: pip install 'homodyne-mpi[plots]')"
            )
            _MISSING_WARNED = True
    return False


def new_figure(width: float, height: float, *, layout: Literal["constrained"] | None = "constrained") -> Any:
    """A :class:`matplotlib.figure.Figure` of ``width x height`` inches on its own Agg canvas.

    ``layout`` is matplotlib's layout engine (``"constrained"``, or None for figures that
    place their axes themselves: constrained layout costs about a second per figure).
    Never touches ``pyplot``, so it is safe in any thread.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


PNG_COMPRESS_LEVEL = 1
"""zlib level of the PNGs: 1 encodes several times faster than 6, and noisy images
(measured c2, residuals) hardly compress better at 6."""


def save_png(figure: Any, path: str | Path) -> None:
    """Render ``figure`` (on its Agg canvas) to a PNG file at ``path`` (the writer's temporary path)."""
    figure.canvas.draw()
    write_png(figure.canvas, path)


def write_png(canvas: Any, path: str | Path) -> None:
    """Write what an Agg ``canvas`` holds now as an RGB PNG at ``path``, without redrawing it.

    Figures that blit (redraw only what changes between angles) need this: a ``savefig``
    would draw the whole figure again.
    """
    import numpy as np
    from matplotlib.image import imsave

    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    imsave(path, rgb, format="png", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})


def decode_names(raw: Any) -> tuple[str, ...]:
    """Parameter names from an HDF5 string array (bytes) or any sequence, as ``str``."""
    import numpy as np

    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(raw).ravel().tolist())


def __getattr__(name: str) -> Any:
    """Load the figure modules on first use (they need the helpers above, so not at import)."""
    if name == "submit_nlsq_figures":
        from .nlsq_figures import submit_nlsq_figures

        return submit_nlsq_figures
    if name == "submit_cmc_figures":
        from .cmc_figures import submit_cmc_figures

        return submit_cmc_figures
    if name == "redraw_results":
        from .redraw import redraw_results

        return redraw_results
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
