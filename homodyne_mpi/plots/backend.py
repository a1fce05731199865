"""What every figure module shares: matplotlib's presence, a thread-safe figure, the PNG writer.

matplotlib (the optional ``plots`` extra) is imported only inside these functions; a
:class:`matplotlib.figure.Figure` on its own Agg canvas, never ``pyplot``, is safe in writer threads.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

DPI = 100
"""Resolution of every PNG (pixels per inch of figure size)."""

INSTALL = "install the extra: pip install 'homodyne-mpi[plots]'"
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
            log.warning(f"matplotlib is not installed: no PNG plots are written ({INSTALL})")
            _MISSING_WARNED = True
    return False


def new_figure(width: float, height: float, *, layout: Literal["constrained"] | None = "constrained") -> Any:
    """A :class:`matplotlib.figure.Figure` of ``width x height`` inches on its own Agg canvas (any thread);
    ``layout`` None for figures that place their axes themselves (constrained costs about 1 s a figure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def figure_with_grid(
    width: float, height: float, rows: int, cols: int, *, left: float, right: float, bottom: float, top: float, **gaps: float
) -> tuple[Any, Any]:
    """A ``width x height``-inch figure and its ``(rows, cols)`` array of axes, placed by hand: margins
    in inches, ``gaps`` (``wspace``, ``hspace``) in fractions of an axis."""
    figure = new_figure(width, height, layout=None)
    spacing = {"left": left / width, "right": 1 - right / width, "bottom": bottom / height, "top": 1 - top / height, **gaps}
    return figure, figure.subplots(rows, cols, squeeze=False, gridspec_kw=spacing)


PNG_COMPRESS_LEVEL = 1
"""zlib level of the PNGs: 1 encodes several times faster than 6, and noisy images
(measured c2, residuals) hardly compress better at 6."""


def save_png(figure: Any, path: str | Path) -> None:
    """Render ``figure`` (on its Agg canvas) to a PNG file at ``path`` (the writer's temporary path)."""
    figure.canvas.draw()
    write_png(figure.canvas, path)


def write_png(canvas: Any, path: str | Path) -> None:
    """Write what an Agg ``canvas`` holds now as an RGB PNG at ``path`` without redrawing it (as
    figures that blit need: ``savefig`` would draw the whole figure again), encoded by Pillow."""
    import numpy as np
    from PIL import Image

    rgb = np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])
    Image.fromarray(rgb).save(path, format="png", compress_level=PNG_COMPRESS_LEVEL)


def lookup(arrays: Any, name: str, default: Any = None) -> Any:
    """``arrays[name]`` (``a/b`` for a dataset in a group) or ``default``, for a dict or an open HDF5 file alike."""
    try:
        return arrays[name] if name in arrays else default
    except (KeyError, TypeError, ValueError):
        return default


def decode_names(raw: Any) -> tuple[str, ...]:
    """Parameter names from an HDF5 string array (bytes) or any sequence, as ``str``."""
    import numpy as np

    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(raw).ravel().tolist())
