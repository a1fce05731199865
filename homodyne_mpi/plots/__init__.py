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
from typing import Any

__all__ = [
    "DPI",
    "matplotlib_available",
    "new_figure",
    "plotting_available",
    "png_bytes",
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
            log.warning("matplotlib is not installed: no PNG plots are written (install the extra: pip install 'homodyne-mpi[plots]')")
            _MISSING_WARNED = True
    return False


def new_figure(width: float, height: float, *, layout: str | None = "constrained") -> Any:
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


def png_bytes(rgb: Any, level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """A PNG file holding the ``(height, width, 3)`` uint8 image ``rgb``.

    No row filter and zlib level ``level``: about twice as fast as Pillow's encoder on a
    figure of noisy matrices, with files no larger, and zlib lets other threads run
    while it compresses.
    """
    import struct
    import zlib

    import numpy as np

    image = np.asarray(rgb, dtype=np.uint8)
    height, width, channels = image.shape
    if channels != 3:
        raise ValueError(f"png_bytes needs an RGB image, got {channels} channels")
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # a leading 0 per row: no filter
    rows[:, 1:] = image.reshape(height, 3 * width)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + chunk(b"IEND", b"")


def write_png(canvas: Any, path: str | Path) -> None:
    """Write what an Agg ``canvas`` holds now as an RGB PNG at ``path``, without redrawing it."""
    import numpy as np

    rgba = np.asarray(canvas.buffer_rgba())
    Path(path).write_bytes(png_bytes(rgba[..., :3]))


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
