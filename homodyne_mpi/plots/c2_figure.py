"""The per-angle ``c2`` figure of an NLSQ fit: measured, fitted and normalised residual.

On a ``t1, t2`` grid in seconds: measured and fitted ``c2`` on one colour scale, ``(c2_exp - c2_fit) /
noise_sigma[k]`` symmetric about 0. Matrices larger than :data:`~.downsample.MAX_PIXELS` are drawn as
block means; the never-fitted diagonal is shown corrected (measured) or blank (residual).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import downsample
from .downsample import block_sums, diagonal_block_sums, mean_of

if TYPE_CHECKING:
    from .nlsq_figures import NLSQFigureInfo


def c2_panels(c2_exp: np.ndarray, c2_fit: np.ndarray, sigma: float, max_pixels: int = downsample.MAX_PIXELS) -> dict[str, Any]:
    """The three drawn matrices of one angle, downsampled: ``measured`` (corrected diagonal), ``fitted``,
    ``residual`` (over ``sigma``, no diagonal), with ``factor`` (frames per pixel), ``c2_limits`` and
    ``residual_limit``. Block means come from block sums (means are linear): no full-size temporary."""
    exp = np.asarray(c2_exp)
    fit = np.asarray(c2_fit)
    if exp.shape != fit.shape or exp.ndim != 2:
        raise ValueError(f"measured {exp.shape} and fitted {fit.shape} matrices differ or are not 2-D")
    scale = float(sigma) if np.isfinite(sigma) and sigma > 0 else 1.0
    factor = downsample.block_factor(max(exp.shape), max_pixels)
    exp_sums, exp_counts = block_sums(exp, factor)
    fit_sums, fit_counts = block_sums(fit, factor)
    exp_diag, exp_diag_counts = diagonal_block_sums(np.diagonal(exp), factor, exp.shape)
    fit_diag, fit_diag_counts = diagonal_block_sums(np.diagonal(fit), factor, fit.shape)
    new_diag, new_diag_counts = diagonal_block_sums(downsample.corrected_diagonal(exp), factor, exp.shape)
    measured = mean_of(exp_sums - exp_diag + new_diag, exp_counts - exp_diag_counts + new_diag_counts)
    fitted = mean_of(fit_sums, fit_counts)
    off_exp, off_exp_counts = exp_sums - exp_diag, exp_counts - exp_diag_counts
    off_fit, off_fit_counts = fit_sums - fit_diag, fit_counts - fit_diag_counts
    if np.array_equal(off_exp_counts, off_fit_counts):
        residual = mean_of(off_exp - off_fit, off_exp_counts) / scale
    else:  # non-finite values in one matrix only: blocks of the full residual
        residual_full = np.subtract(exp, fit, dtype=np.float64) / scale
        np.fill_diagonal(residual_full, np.nan)
        residual = mean_of(*block_sums(residual_full, factor))
    limits = {"c2_limits": downsample.robust_limits(measured, fitted), "residual_limit": downsample.symmetric_limit(residual)}
    return {"measured": measured, "fitted": fitted, "residual": residual, "factor": factor, **limits}


class C2Figure:
    """The three-panel ``c2`` figure, one per writer thread (:func:`c2_figure`): what every angle of a
    data set shares is rendered once into a background, each angle blits only its own artists on top."""

    WIDTH, HEIGHT = 15.5, 5.6
    """Figure size, inches (1550 x 560 pixels)."""
    SIDE = 3.75
    """Side of each image panel, inches."""

    def __init__(self) -> None:
        from .backend import new_figure

        self.figure = new_figure(self.WIDTH, self.HEIGHT, layout=None)
        self.canvas = self.figure.canvas
        bottom, height = 0.95 / self.HEIGHT, self.SIDE / self.HEIGHT
        lefts = (0.8, 4.7, 10.0)  # inches: measured, fitted | colour bar | residual | colour bar
        placeholder = np.zeros((2, 2))
        self.axes, self.images = [], []
        panels = zip(lefts, ("measured c\u2082", "fitted c\u2082", "normalised residual"), ("viridis", "viridis", "RdBu_r"))
        for left, title, cmap in panels:
            ax = self.figure.add_axes((left / self.WIDTH, bottom, self.SIDE / self.WIDTH, height))
            image = ax.imshow(placeholder, origin="lower", cmap=cmap, aspect="auto", interpolation="antialiased")
            ax.set_title(title)
            ax.set_xlabel("t\u2081 (s)")
            self.axes.append(ax)
            self.images.append(image)
        self.axes[0].set_ylabel("t\u2082 (s)")
        for ax in self.axes[1:]:
            ax.tick_params(labelleft=False)
        c2_bar = self.figure.add_axes(((lefts[1] + self.SIDE + 0.12) / self.WIDTH, bottom, 0.16 / self.WIDTH, height))
        residual_bar = self.figure.add_axes(((lefts[2] + self.SIDE + 0.12) / self.WIDTH, bottom, 0.16 / self.WIDTH, height))
        self.figure.colorbar(self.images[0], cax=c2_bar).set_label("c\u2082, measured and fitted (dimensionless)")
        self.residual_colorbar = self.figure.colorbar(self.images[2], cax=residual_bar)
        self.title = self.figure.suptitle("", fontsize=13, y=1 - 0.12 / self.HEIGHT, va="top")
        # notes: this angle's (drawn per angle) above the data set's (in the background)
        self.notes = self.figure.text(0.5, 0.23 / self.HEIGHT, "", ha="center", va="bottom", fontsize=9, color="0.25")
        self.shared_notes = self.figure.text(0.5, 0.05 / self.HEIGHT, "", ha="center", va="bottom", fontsize=9, color="0.25")
        self.changing = [*self.images, c2_bar, residual_bar, self.title, self.notes]
        self.background = None
        self.background_key: tuple | None = None

    def _render_background(self, limits: tuple[float, float], shared_notes: str) -> None:
        """Render everything that does not change between the angles of a data set."""
        self.shared_notes.set_text(shared_notes)
        for ax in self.axes:
            ax.set(xlim=limits, ylim=limits)
        for artist in self.changing:
            artist.set_visible(False)
        try:
            self.canvas.draw()
        finally:
            for artist in self.changing:
                artist.set_visible(True)
        self.background = self.canvas.copy_from_bbox(self.figure.bbox)
        self.background_key = (limits, shared_notes)

    def draw(self, path: str | Path, panels: dict[str, Any], info: NLSQFigureInfo, k: int) -> None:
        """Show angle ``k``'s ``panels`` (from :func:`c2_panels`) and save the PNG at ``path``."""
        from .backend import write_png

        factor = panels["factor"]
        start, blocks_end, data_end = downsample.block_edges(info.t, factor)
        n_rows = info.t.size
        shared = [f"reduced \u03c7\u00b2 of the fit = {info.reduced_chi2:.4g}"]
        if info.frame_step > 1:
            shared.append(f"fit.h5 keeps one frame in {info.frame_step} ({n_rows} rows)")
        if factor > 1:
            unit, pixels = ("row" if info.frame_step > 1 else "frame"), int(np.ceil(n_rows / factor))
            shared.append(f"drawn as {factor}\u00d7{factor}-{unit} block means ({n_rows} \u2192 {pixels} px)")
        diagonal = "diagonal t\u2081 = t\u2082 not fitted: measured shows the mean of its neighbours, residual leaves it blank"
        shared_notes = "; ".join([*shared, diagonal])
        if self.background_key != ((start, data_end), shared_notes):
            self._render_background((start, data_end), shared_notes)
        vmin, vmax = panels["c2_limits"]
        limit = panels["residual_limit"]
        shown = ((panels["measured"], vmin, vmax), (panels["fitted"], vmin, vmax), (panels["residual"], -limit, limit))
        for image, (matrix, low, high) in zip(self.images, shown):
            image.set_data(matrix)
            image.set_extent((start, blocks_end, start, blocks_end))
            image.set_clim(low, high)
        block_mean = ", block mean" if factor > 1 else ""
        self.residual_colorbar.set_label(f"(c\u2082 measured \u2212 c\u2082 fitted) / \u03c3{block_mean}")
        head = f"{info.dataset}: " if info.dataset else ""
        angle = f"\u03c6 = {float(info.phi[k]):g}\u00b0 (angle {k + 1} of {info.phi.size})"
        self.title.set_text(f"{head}{angle}, q = {info.q:g} \u00c5\u207b\u00b9")
        notes = [f"noise \u03c3 of this angle = {info.noise_sigma[k]:.3g}", info.scaling_text(k)]
        self.notes.set_text("; ".join(note for note in notes if note))

        self.canvas.restore_region(self.background)
        for ax, image in zip(self.axes, self.images):
            ax.draw_artist(image)
            for spine in ax.spines.values():  # the frame goes over the image, as in a full draw
                ax.draw_artist(spine)
        for artist in self.changing[3:]:
            self.figure.draw_artist(artist)
        write_png(self.canvas, path)


_THREAD_FIGURES = threading.local()


def c2_figure() -> C2Figure:
    """This thread's :class:`C2Figure` (built on first use; figures are never shared between threads)."""
    figure = getattr(_THREAD_FIGURES, "c2", None)
    if figure is None:
        figure = _THREAD_FIGURES.c2 = C2Figure()
    return figure


def draw_c2_angle(path: str | Path, arrays: Mapping[str, Any], k: int, info: NLSQFigureInfo) -> None:
    """Draw angle ``k`` as PNG at ``path``; ``arrays`` maps ``c2_exp`` and ``c2_fit`` to anything whose
    ``[k]`` gives angle ``k``'s matrix (arrays, open HDF5 datasets); only angle ``k`` is read."""
    panels = c2_panels(arrays["c2_exp"][k], arrays["c2_fit"][k], info.noise_sigma[k])
    c2_figure().draw(path, panels, info, k)
