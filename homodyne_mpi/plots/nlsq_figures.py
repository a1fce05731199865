"""NLSQ figures: measured vs fitted ``c2`` with the normalised residual, and J(t), gamma_dot(t).

Per angle ``k`` (``nlsq/plots/c2_phi_<k>_<angle>deg.png``): three panels on a ``t1, t2``
grid in seconds -- measured ``c2``, fitted ``c2`` (one colour scale shared by both) and the
normalised residual ``(c2_exp - c2_fit) / noise_sigma[k]`` on its own scale, symmetric
about 0. Matrices larger than :data:`~homodyne_mpi.plots.downsample.MAX_PIXELS` per side
are drawn as block means; the diagonal ``t1 == t2`` is never fitted, so the measured
matrix shows it corrected (mean of its neighbours) and the residual leaves it blank.

``nlsq/plots/transport.png``: ``J(t) = D0 t^alpha + D_offset`` (Angstrom^2/s) and, for
laminar flow, ``gamma_dot(t) = gamma_dot_t0 t^beta + gamma_dot_t_offset`` (1/s), on the
model's own time grid (``t = dt/2`` at frame 0, floored at 1e-10 as in
:mod:`homodyne_mpi.model.transport`), with 1-sigma bands: the saved ``bands/*`` of
``fit.h5`` when present, else linear error propagation of the parameter covariance.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .downsample import (
    MAX_PIXELS,
    block_edges,
    block_factor,
    block_sums,
    corrected_diagonal,
    diagonal_block_sums,
    mean_of,
    robust_limits,
    symmetric_limit,
)

__all__ = [
    "C2Figure",
    "NLSQFigureInfo",
    "TransportCurves",
    "c2_figure",
    "c2_panels",
    "c2_plot_name",
    "draw_c2_angle",
    "draw_transport",
    "figure_info",
    "nlsq_plot_paths",
    "rate_with_std",
    "submit_nlsq_figures",
    "transport_curves",
]

log = logging.getLogger(__name__)

RATE_FLOOR = 1e-10
"""Floor of both rates, as in :data:`homodyne_mpi.model.transport.RATE_FLOOR`."""

DIFFUSION_NAMES = ("D0", "alpha", "D_offset")
SHEAR_NAMES = ("gamma_dot_t0", "beta", "gamma_dot_t_offset")


# -- what the figures need ---------------------------------------------------------------


@dataclass(frozen=True)
class NLSQFigureInfo:
    """The small facts every NLSQ figure needs (the big matrices travel separately)."""

    dataset: str
    """Data set name (the results folder's name)."""
    analysis_mode: str
    """``static`` or ``laminar_flow``."""
    q: float
    """Wavevector, 1/Angstrom."""
    dt: float
    """Frame period, s."""
    phi: np.ndarray
    """Angles of the fitted matrices, degrees."""
    noise_sigma: np.ndarray
    """Noise standard deviation of ``c2`` per angle (the fit's weights)."""
    t: np.ndarray
    """Times of the frames, ``k * dt`` (s)."""
    names: tuple[str, ...]
    """Parameter names in the fit's order."""
    values: np.ndarray
    """Fitted values, in ``names`` order."""
    std: np.ndarray
    """Reported standard errors (``result.json`` ``std``), in ``names`` order."""
    reduced_chi2: float
    """Reduced chi-square of the fit."""
    converged: bool
    """Whether the fit converged."""

    def value(self, name: str) -> float:
        """Fitted value of parameter ``name``."""
        return float(self.values[self.names.index(name)])

    def scaling_text(self, k: int) -> str:
        """``contrast 0.500 +- 0.002, offset 1.000 +- 0.001`` for angle ``k`` ('' if unknown)."""
        parts = []
        for base in ("contrast", "offset"):
            for name in (f"{base}[{k}]", base):
                if name in self.names:
                    j = self.names.index(name)
                    std = self.std[j]
                    spread = f" \u00b1 {std:.2g}" if np.isfinite(std) and std > 0 else ""
                    parts.append(f"{base} {self.values[j]:.4g}{spread}")
                    break
        return ", ".join(parts)


def _get(arrays: Mapping[str, Any], name: str) -> Any:
    """``arrays[name]`` or None, for a dict or an open HDF5 file alike."""
    try:
        return arrays[name] if name in arrays else None
    except (KeyError, TypeError):
        return None


def _decode_names(raw: Any) -> tuple[str, ...]:
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(raw).tolist())


def figure_info(result_doc: Mapping[str, Any], fit_arrays: Mapping[str, Any], *, dataset: str | None = None) -> NLSQFigureInfo:
    """Collect the facts from ``nlsq/result.json`` (``result_doc``) and ``fit.h5``'s arrays.

    Arrays win where both have a value; ``result_doc`` fills what the arrays lack.
    """
    data = result_doc.get("data") or {}
    parameters = result_doc.get("parameters") or {}
    raw_names = _get(fit_arrays, "parameters/names")
    names = _decode_names(raw_names) if raw_names is not None else tuple(parameters)
    raw_values = _get(fit_arrays, "parameters/values")
    if raw_values is not None:
        values = np.asarray(raw_values, dtype=np.float64)
    else:
        values = np.array([float(parameters[n]["value"]) for n in names])
    std = np.array([float((parameters.get(n) or {}).get("std", np.nan) or np.nan) for n in names])
    phi_raw = _get(fit_arrays, "phi")
    phi = np.asarray(phi_raw if phi_raw is not None else data.get("phi", []), dtype=np.float64)
    sigma_raw = _get(fit_arrays, "noise_sigma")
    sigma = np.asarray(sigma_raw if sigma_raw is not None else data.get("noise_sigma", []), dtype=np.float64)
    if sigma.size != phi.size:
        sigma = np.ones(phi.size)
    dt = float(data.get("dt", np.nan))
    t_raw = _get(fit_arrays, "t")
    if t_raw is not None:
        t = np.asarray(t_raw, dtype=np.float64)
    else:
        n_frames = int(np.asarray(fit_arrays["c2_exp"]).shape[-1])
        t = np.arange(n_frames, dtype=np.float64) * dt
    if not np.isfinite(dt) and t.size > 1:
        dt = float(t[1] - t[0])
    return NLSQFigureInfo(
        dataset=str(dataset or result_doc.get("dataset") or ""),
        analysis_mode=str(result_doc.get("analysis_mode", "static")),
        q=float(data.get("q", np.nan)),
        dt=dt,
        phi=phi,
        noise_sigma=sigma,
        t=t,
        names=names,
        values=values,
        std=std,
        reduced_chi2=float(result_doc.get("reduced_chi2", np.nan)),
        converged=bool(result_doc.get("converged", False)),
    )


# -- file names --------------------------------------------------------------------------


def _angle_token(phi: float) -> str:
    """``-57.0`` -> ``-57``, ``12.345`` -> ``12.35``: the angle as written in a file name."""
    value = round(float(phi), 2) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{value:g}"


def c2_plot_name(k: int, phi: float) -> str:
    """File name of angle ``k``'s ``c2`` figure: ``c2_phi_<k>_<angle>deg.png``."""
    return f"c2_phi_{k}_{_angle_token(phi)}deg.png"


def nlsq_plot_paths(dataset_dir: Path, phi: np.ndarray) -> list[Path]:
    """Every NLSQ figure path of a data set folder: one per angle, then ``transport.png``."""
    folder = Path(dataset_dir) / "nlsq" / "plots"
    return [folder / c2_plot_name(k, p) for k, p in enumerate(np.asarray(phi).tolist())] + [folder / "transport.png"]


# -- c2 per angle ------------------------------------------------------------------------


def c2_panels(c2_exp: np.ndarray, c2_fit: np.ndarray, sigma: float, max_pixels: int = MAX_PIXELS) -> dict[str, Any]:
    """The three drawn matrices of one angle, downsampled, and their colour limits.

    Returns ``measured`` (diagonal replaced by :func:`corrected_diagonal`), ``fitted``,
    ``residual`` (normalised by ``sigma``, diagonal left out; NaN where a block holds only
    the diagonal), ``factor`` (frames per drawn pixel), ``c2_limits`` (shared by measured
    and fitted) and ``residual_limit`` (half-width of its symmetric scale). Block means
    are linear, so the residual's blocks come from the two matrices' block sums: two
    passes over the data, no full-size temporary.
    """
    exp = np.asarray(c2_exp)
    fit = np.asarray(c2_fit)
    if exp.shape != fit.shape or exp.ndim != 2:
        raise ValueError(f"measured {exp.shape} and fitted {fit.shape} matrices differ or are not 2-D")
    scale = float(sigma) if np.isfinite(sigma) and sigma > 0 else 1.0
    factor = block_factor(max(exp.shape), max_pixels)
    exp_sums, exp_counts = block_sums(exp, factor)
    fit_sums, fit_counts = block_sums(fit, factor)
    exp_diag, exp_diag_counts = diagonal_block_sums(np.diagonal(exp), factor, exp.shape)
    fit_diag, fit_diag_counts = diagonal_block_sums(np.diagonal(fit), factor, fit.shape)
    new_diag, new_diag_counts = diagonal_block_sums(corrected_diagonal(exp), factor, exp.shape)
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
    return {
        "measured": measured,
        "fitted": fitted,
        "residual": residual,
        "factor": factor,
        "c2_limits": robust_limits(measured, fitted),
        "residual_limit": symmetric_limit(residual),
    }


class C2Figure:
    """The three-panel ``c2`` figure, built once per thread and redrawn for every angle.

    Measured and fitted ``c2`` share one colour scale and one colour bar; the residual has
    its own, symmetric about 0. Building and fully rendering a figure costs several times
    what changes from one angle to the next, so each writer thread keeps one figure
    (:func:`c2_figure`): the parts shared by every angle of a data set (axes, ticks, axis
    labels, panel titles) are rendered once into a background, and each angle restores it
    and draws only its images, colour bars, title and notes on top (Agg blitting). Axes
    are placed by hand (constrained layout would double the time); the three panels share
    the ``t2`` axis, labelled once.
    """

    WIDTH, HEIGHT = 15.5, 5.6
    """Figure size, inches (1550 x 560 pixels)."""
    SIDE = 3.75
    """Side of each image panel, inches."""

    def __init__(self) -> None:
        from . import new_figure

        self.figure = new_figure(self.WIDTH, self.HEIGHT, layout=None)
        self.canvas = self.figure.canvas
        bottom = 0.95 / self.HEIGHT
        height = self.SIDE / self.HEIGHT
        lefts = (0.8, 4.7, 10.0)  # inches: measured, fitted | colour bar | residual | colour bar
        placeholder = np.zeros((2, 2))
        self.axes, self.images = [], []
        for left, title, cmap in zip(lefts, ("measured c\u2082", "fitted c\u2082", "normalised residual"), ("viridis", "viridis", "RdBu_r")):
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
        self.c2_colorbar = self.figure.colorbar(self.images[0], cax=c2_bar)
        self.c2_colorbar.set_label("c\u2082, measured and fitted (dimensionless)")
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
            ax.set_xlim(*limits)
            ax.set_ylim(*limits)
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
        from . import write_png

        factor = panels["factor"]
        start, blocks_end, data_end = block_edges(info.t, factor)
        n_frames = info.t.size
        shared = [f"reduced \u03c7\u00b2 of the fit = {info.reduced_chi2:.4g}"]
        if factor > 1:
            shared.append(f"drawn as {factor}\u00d7{factor}-frame block means ({n_frames} \u2192 {int(np.ceil(n_frames / factor))} px)")
        shared.append("diagonal t\u2081 = t\u2082 not fitted: measured shows the mean of its neighbours, residual leaves it blank")
        shared_notes = "; ".join(shared)
        if self.background_key != ((start, data_end), shared_notes):
            self._render_background((start, data_end), shared_notes)
        vmin, vmax = panels["c2_limits"]
        limit = panels["residual_limit"]
        shown = ((panels["measured"], vmin, vmax), (panels["fitted"], vmin, vmax), (panels["residual"], -limit, limit))
        for image, (matrix, low, high) in zip(self.images, shown):
            image.set_data(matrix)
            image.set_extent((start, blocks_end, start, blocks_end))
            image.set_clim(low, high)
        self.residual_colorbar.set_label("(c\u2082 measured \u2212 c\u2082 fitted) / \u03c3" + (", block mean" if factor > 1 else ""))
        head = f"{info.dataset}: " if info.dataset else ""
        self.title.set_text(f"{head}\u03c6 = {float(info.phi[k]):g}\u00b0 (angle {k + 1} of {info.phi.size}), q = {info.q:g} \u00c5\u207b\u00b9")
        notes = [f"noise \u03c3 of this angle = {info.noise_sigma[k]:.3g}"]
        scaling = info.scaling_text(k)
        if scaling:
            notes.append(scaling)
        self.notes.set_text("; ".join(notes))

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
    """Draw angle ``k``: measured, fitted and normalised residual, and save it as PNG at ``path``.

    ``arrays`` maps ``c2_exp`` and ``c2_fit`` to ``(n_angles, N, N)`` arrays or open HDF5
    datasets; only angle ``k`` is read.
    """
    panels = c2_panels(arrays["c2_exp"][k], arrays["c2_fit"][k], info.noise_sigma[k])
    c2_figure().draw(path, panels, info, k)


# -- J(t) and gamma_dot(t) ---------------------------------------------------------------


@dataclass(frozen=True)
class TransportCurves:
    """``J(t)`` and ``gamma_dot(t)`` with their 1-sigma bands, on the model's time grid."""

    t: np.ndarray
    """Times (s): ``k * dt``, with ``dt/2`` for ``k = 0``."""
    D: np.ndarray
    """Transport coefficient ``J(t)``, Angstrom^2/s."""
    D_std: np.ndarray | None
    """Its 1-sigma, or None when no band could be made."""
    gamma_dot: np.ndarray | None
    """Shear rate, 1/s (laminar flow only)."""
    gamma_dot_std: np.ndarray | None
    """Its 1-sigma, or None."""
    band_source: str
    """Where the bands come from: ``saved (jackknife)`` or ``saved (covariance)`` (``fit.h5``
    ``bands/*``), ``covariance`` (propagated here), or ``none: <why>``."""


def rate_with_std(
    t: np.ndarray, prefactor: float, exponent: float, offset: float, covariance: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``max(prefactor t^exponent + offset, 1e-10)`` and its linearly propagated 1-sigma.

    ``covariance`` is the 3 x 3 covariance of ``(prefactor, exponent, offset)``; the
    gradient is ``(t^e, p t^e ln t, 1)``, zero where the floor is active. Returns
    ``(rate, None)`` when the covariance is missing or not finite.
    """
    times = np.asarray(t, dtype=np.float64)
    power = np.power(times, exponent)
    raw = prefactor * power + offset
    rate = np.maximum(raw, RATE_FLOOR)
    if covariance is None:
        return rate, None
    cov = np.asarray(covariance, dtype=np.float64)
    if cov.shape != (3, 3) or not np.all(np.isfinite(cov)):
        return rate, None
    gradient = np.stack([power, prefactor * power * np.log(times), np.ones_like(times)], axis=1)
    gradient[raw <= RATE_FLOOR] = 0.0
    variance = np.einsum("ti,ij,tj->t", gradient, cov, gradient)
    return rate, np.sqrt(np.maximum(variance, 0.0))


def _sub_covariance(covariance: np.ndarray | None, names: tuple[str, ...], wanted: tuple[str, ...]) -> np.ndarray | None:
    if covariance is None:
        return None
    cov = np.asarray(covariance, dtype=np.float64)
    if cov.shape != (len(names), len(names)) or not all(n in names for n in wanted):
        return None
    index = [names.index(n) for n in wanted]
    return cov[np.ix_(index, index)]


def transport_curves(info: NLSQFigureInfo, covariance: np.ndarray | None, bands: Mapping[str, Any] | None = None) -> TransportCurves:
    """The curves of ``transport.png``: saved bands when ``bands`` has them, else from ``covariance``.

    ``bands`` maps ``t``, ``D``, ``D_std`` (and ``gamma_dot``, ``gamma_dot_std`` for laminar
    flow; ``D_std_jackknife`` when the jackknife made them), as saved under ``bands/`` in
    ``fit.h5``. A saved ``t`` of 0 for frame 0 is drawn at ``dt/2``, where the model
    evaluates the rates.
    """
    laminar = info.analysis_mode == "laminar_flow"
    if bands is not None and all(_get(bands, key) is not None for key in ("t", "D", "D_std")):
        gamma = _get(bands, "gamma_dot") if laminar else None
        gamma_std = _get(bands, "gamma_dot_std") if laminar else None
        t = np.array(bands["t"], dtype=np.float64, copy=True)
        if t.size > 1 and t[0] <= 0.0:
            t[0] = 0.5 * (t[1] - t[0])  # the model evaluates frame 0 at dt/2
        jackknife = _get(bands, "D_std_jackknife")
        saved_std = np.asarray(bands["D_std"], dtype=np.float64)
        kind = "jackknife" if jackknife is not None and np.array_equal(np.asarray(jackknife), saved_std) else "covariance"
        return TransportCurves(
            t=t,
            D=np.asarray(bands["D"], dtype=np.float64),
            D_std=saved_std,
            gamma_dot=None if gamma is None else np.asarray(gamma, dtype=np.float64),
            gamma_dot_std=None if gamma_std is None else np.asarray(gamma_std, dtype=np.float64),
            band_source=f"saved ({kind})",
        )
    t = np.array(info.t, dtype=np.float64, copy=True)
    if t.size:
        t[0] = 0.5 * info.dt
    cov_d = _sub_covariance(covariance, info.names, DIFFUSION_NAMES)
    D, D_std = rate_with_std(t, *(info.value(n) for n in DIFFUSION_NAMES), cov_d)
    gamma = gamma_std = None
    if laminar and all(n in info.names for n in SHEAR_NAMES):
        cov_g = _sub_covariance(covariance, info.names, SHEAR_NAMES)
        gamma, gamma_std = rate_with_std(t, *(info.value(n) for n in SHEAR_NAMES), cov_g)
    if covariance is None:
        source = "none: no covariance saved"
    elif D_std is None:
        source = "none: covariance not finite"
    else:
        source = "covariance"
    return TransportCurves(t=t, D=D, D_std=D_std, gamma_dot=gamma, gamma_dot_std=gamma_std, band_source=source)


def _draw_rate(ax: Any, t: np.ndarray, rate: np.ndarray, std: np.ndarray | None, color: str, label: str) -> None:
    ax.plot(t, rate, color=color, lw=1.8, label=label)
    positive = rate[rate > 0]
    if std is not None:
        ax.fill_between(t, rate - std, rate + std, color=color, alpha=0.25, lw=0, label="1$\\sigma$ band")
    ax.set_xscale("log")
    if positive.size == rate.size and positive.size and positive.max() / positive.min() > 30:
        ax.set_yscale("log")
        top = float(np.max(rate + (std if std is not None else 0.0)))
        ax.set_ylim(float(positive.min()) / 2.0, top * 1.5)
    ax.set_xlabel("t (s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=9)


def draw_transport(path: str | Path, curves: TransportCurves, info: NLSQFigureInfo) -> None:
    """Draw ``J(t)`` (and ``gamma_dot(t)``) with their 1-sigma bands; save as PNG at ``path``."""
    from . import new_figure, save_png

    laminar = curves.gamma_dot is not None
    width, height = (12.0 if laminar else 6.5), 4.8
    figure = new_figure(width, height, layout=None)  # placed by hand: constrained layout doubles the time
    spacing = {"left": 0.95 / width, "right": 1 - 0.2 / width, "bottom": 0.6 / height, "top": 1 - 0.75 / height, "wspace": 0.28}
    axes = figure.subplots(1, 2 if laminar else 1, squeeze=False, gridspec_kw=spacing)[0]

    def fitted(names: tuple[str, ...]) -> str:
        parts = []
        for name in names:
            if name in info.names:
                j = info.names.index(name)
                std = info.std[j]
                parts.append(f"{name} = {info.values[j]:.4g}" + (f" \u00b1 {std:.2g}" if np.isfinite(std) else ""))
        return "\n".join(parts)

    _draw_rate(axes[0], curves.t, curves.D, curves.D_std, "tab:blue", "$J(t) = D_0 t^{\\alpha} + D_{\\mathrm{offset}}$")
    axes[0].set_ylabel("J(t) (\u00c5$^2$/s)")
    axes[0].set_title("transport coefficient J(t)")
    axes[0].text(0.02, 0.02, fitted(DIFFUSION_NAMES), transform=axes[0].transAxes, fontsize=8, va="bottom", family="monospace")
    if laminar:
        _draw_rate(
            axes[1],
            curves.t,
            curves.gamma_dot,
            curves.gamma_dot_std,
            "tab:red",
            "$\\dot\\gamma(t) = \\dot\\gamma_0 t^{\\beta} + \\dot\\gamma_{\\mathrm{offset}}$",
        )
        axes[1].set_ylabel("$\\dot\\gamma(t)$ (1/s)")
        axes[1].set_title("shear rate $\\dot\\gamma(t)$")
        axes[1].text(0.02, 0.02, fitted(SHEAR_NAMES), transform=axes[1].transAxes, fontsize=8, va="bottom", family="monospace")
    head = f"{info.dataset}: " if info.dataset else ""
    band = {
        "saved (jackknife)": "bands saved with the fit (jackknife)",
        "saved (covariance)": "bands saved with the fit (parameter covariance)",
        "covariance": "bands from the parameter covariance",
    }.get(curves.band_source, f"no band ({curves.band_source.removeprefix('none: ')})")
    figure.suptitle(f"{head}NLSQ, {info.analysis_mode}, q = {info.q:g} \u00c5$^{{-1}}$; 1$\\sigma$ {band}", fontsize=12, y=1 - 0.1 / height, va="top")
    save_png(figure, path)


# -- the hook the pipeline calls -----------------------------------------------------------


def _bands(fit_arrays: Mapping[str, Any]) -> dict[str, Any] | None:
    bands = {key: _get(fit_arrays, f"bands/{key}") for key in ("t", "D", "D_std", "D_std_jackknife", "gamma_dot", "gamma_dot_std")}
    nested = _get(fit_arrays, "bands")
    if isinstance(nested, Mapping):
        for key in bands:
            if bands[key] is None:
                bands[key] = _get(nested, key)
    found = {key: np.asarray(value) for key, value in bands.items() if value is not None}
    return found or None


def submit_nlsq_figures(writer, out_dir: Path, result_doc: dict, fit_arrays: Mapping[str, Any]) -> list[Path]:
    """Queue every NLSQ figure of one data set on ``writer``; return their paths.

    Parameters
    ----------
    writer:
        The :class:`homodyne_mpi.io.AsyncWriter`; each figure is one ``submit_call``, drawn
        in its threads.
    out_dir:
        The data set's results folder (the one holding ``nlsq/``); figures go to
        ``out_dir/nlsq/plots/``.
    result_doc:
        The ``nlsq/result.json`` mapping.
    fit_arrays:
        The datasets of ``nlsq/fit.h5`` by name (``c2_exp``, ``c2_fit``, ``t``, ``phi``,
        ``covariance``, ``parameters/names``, ``parameters/values``, ``noise_sigma``,
        optional ``bands/*``), as arrays or open HDF5 datasets. Not copied: leave them
        unchanged (and an HDF5 file open) until the writer has finished.

    Returns ``[]`` (and warns once) when matplotlib is not installed.
    """
    from . import plotting_available

    if not plotting_available():
        return []
    out_dir = Path(out_dir)
    info = figure_info(result_doc, fit_arrays, dataset=result_doc.get("dataset") or out_dir.name)
    n_angles = int(np.shape(fit_arrays["c2_exp"])[0])
    if n_angles != info.phi.size:
        raise ValueError(f"fit arrays hold {n_angles} angles but phi has {info.phi.size}")
    paths = nlsq_plot_paths(out_dir, info.phi)
    for k, path in enumerate(paths[:-1]):
        writer.submit_call(path, draw_c2_angle, fit_arrays, k, info)
    covariance = _get(fit_arrays, "covariance")
    curves = transport_curves(info, None if covariance is None else np.asarray(covariance), _bands(fit_arrays))
    if curves.band_source.startswith("none"):
        log.warning("%s: J(t) drawn without a 1-sigma band (%s)", info.dataset, curves.band_source.removeprefix("none: "))
    writer.submit_call(paths[-1], draw_transport, curves, info)
    return paths
