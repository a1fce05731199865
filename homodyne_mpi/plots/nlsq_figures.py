"""NLSQ figures: measured vs fitted ``c2`` with the normalised residual, and J(t), gamma_dot(t).

``c2_phi_<k>_<angle>deg.png`` per angle (:mod:`.c2_figure`); ``transport.png``: ``J(t) = D0 t^alpha +
D_offset`` (Angstrom^2/s) and ``gamma_dot(t) = gamma_dot_t0 t^beta + gamma_dot_t_offset`` (1/s) with
the 1-sigma bands saved under ``bands/`` in ``fit.h5`` (nothing here recomputes a rate).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..fit_matrices import matrix_frames_of
from .backend import decode_names, figure_with_grid, lookup, plotting_available, save_png
from .c2_figure import draw_c2_angle

log = logging.getLogger(__name__)

DIFFUSION_NAMES = ("D0", "alpha", "D_offset")
SHEAR_NAMES = ("gamma_dot_t0", "beta", "gamma_dot_t_offset")


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
    """Times of the matrices' rows and columns, ``matrix_frames * dt`` (s); every frame's
    ``k * dt`` unless ``fit.h5`` keeps a downsampled grid."""
    names: tuple[str, ...]
    """Parameter names in the fit's order, then their fitted ``values`` and reported standard errors
    (``result.json`` ``std``)."""
    values: np.ndarray
    std: np.ndarray
    reduced_chi2: float
    """Reduced chi-square of the fit, and whether it ``converged``."""
    converged: bool
    frame_step: int = 1
    """Frames between the matrices' rows: 1, or ``k`` of a downsampled ``fit.h5``."""

    def scaling_text(self, k: int) -> str:
        """``contrast 0.500 +- 0.002, offset 1.000 +- 0.001`` for angle ``k`` ('' if unknown)."""
        parts = []
        for base in ("contrast", "offset"):
            name = next((name for name in (f"{base}[{k}]", base) if name in self.names), None)
            if name is not None:
                j = self.names.index(name)
                spread = f" \u00b1 {self.std[j]:.2g}" if np.isfinite(self.std[j]) and self.std[j] > 0 else ""
                parts.append(f"{base} {self.values[j]:.4g}{spread}")
        return ", ".join(parts)


def figure_info(result_doc: Mapping[str, Any], fit_arrays: Mapping[str, Any], *, dataset: str | None = None) -> NLSQFigureInfo:
    """The facts from ``fit.h5``'s arrays, and from ``nlsq/result.json`` (``result_doc``) what they lack."""
    data = result_doc.get("data") or {}
    parameters = result_doc.get("parameters") or {}
    raw_names = lookup(fit_arrays, "parameters/names")
    names = decode_names(raw_names) if raw_names is not None else tuple(parameters)
    raw_values = lookup(fit_arrays, "parameters/values")
    values = np.asarray(
        raw_values if raw_values is not None else [float(parameters[n]["value"]) for n in names], dtype=np.float64
    )
    std = np.array([float((parameters.get(n) or {}).get("std", np.nan) or np.nan) for n in names])
    phi, sigma = (np.asarray(lookup(fit_arrays, key, data.get(key, [])), dtype=np.float64) for key in ("phi", "noise_sigma"))
    if sigma.size != phi.size:
        sigma = np.ones(phi.size)
    dt = float(data.get("dt", np.nan))
    frames = matrix_frames_of(fit_arrays)
    t_raw = lookup(fit_arrays, "t")
    if t_raw is not None:
        t_all = np.asarray(t_raw, dtype=np.float64)
    else:
        t_all = np.arange(0 if frames is None or not frames.size else frames[-1] + 1, dtype=np.float64) * dt
    if not np.isfinite(dt) and t_all.size > 1:
        dt = float(t_all[1] - t_all[0])
    t = t_all if frames is None else t_all[frames]
    step = int(frames[1] - frames[0]) if frames is not None and frames.size > 1 else 1
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
        frame_step=step,
    )


def c2_plot_name(k: int, phi: float) -> str:
    """File name of angle ``k``'s ``c2`` figure: ``c2_phi_<k>_<angle>deg.png``, the angle to 0.01 deg (``-57``, ``12.35``)."""
    return f"c2_phi_{k}_{round(float(phi), 2) + 0.0:g}deg.png"  # + 0.0 turns -0.0 into 0.0


@dataclass(frozen=True)
class TransportCurves:
    """``J(t)`` and ``gamma_dot(t)`` with their 1-sigma bands, as saved in ``fit.h5``."""

    t: np.ndarray
    """Times (s): ``k * dt``, with ``dt/2`` for ``k = 0``."""
    D: np.ndarray
    """Transport coefficient ``J(t)`` and its 1-sigma ``D_std``, Angstrom^2/s."""
    D_std: np.ndarray
    gamma_dot: np.ndarray | None
    """Shear rate and its 1-sigma ``gamma_dot_std``, 1/s (laminar flow only, else None)."""
    gamma_dot_std: np.ndarray | None
    band_source: str
    """``jackknife`` or ``covariance``: what the saved bands came from."""


def transport_curves(info: NLSQFigureInfo, bands: Mapping[str, Any] | None) -> TransportCurves | None:
    """The curves of ``transport.png`` from ``fit.h5``'s ``bands/*`` (by short name); None when
    ``t``, ``D`` or ``D_std`` is missing."""
    if bands is None or any(lookup(bands, key) is None for key in ("t", "D", "D_std")):
        return None
    shear = [lookup(bands, key) if info.analysis_mode == "laminar_flow" else None for key in ("gamma_dot", "gamma_dot_std")]
    gamma, gamma_std = (None if band is None else np.asarray(band, dtype=np.float64) for band in shear)
    jackknife = lookup(bands, "D_std_jackknife")
    saved_std = np.asarray(bands["D_std"], dtype=np.float64)
    from_jackknife = jackknife is not None and np.array_equal(np.asarray(jackknife), saved_std)
    t, D = (np.asarray(bands[key], dtype=np.float64) for key in ("t", "D"))
    return TransportCurves(t, D, saved_std, gamma, gamma_std, "jackknife" if from_jackknife else "covariance")


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
    laminar = curves.gamma_dot is not None
    width, height, cols = (12.0 if laminar else 6.5), 4.8, (2 if laminar else 1)
    figure, grid = figure_with_grid(width, height, 1, cols, left=0.95, right=0.2, bottom=0.6, top=0.75, wspace=0.28)
    axes = grid[0]

    def fitted(names: tuple[str, ...]) -> str:
        """``name = value +- std``, a line per parameter of ``names`` that the fit has."""
        columns = [info.names.index(name) for name in names if name in info.names]
        spreads = [f" \u00b1 {info.std[j]:.2g}" if np.isfinite(info.std[j]) else "" for j in columns]
        return "\n".join(f"{info.names[j]} = {info.values[j]:.4g}{spread}" for j, spread in zip(columns, spreads))

    diffusion = ("$J(t) = D_0 t^{\\alpha} + D_{\\mathrm{offset}}$", "J(t) (\u00c5$^2$/s)", "transport coefficient J(t)")
    panels: list[tuple] = [(curves.D, curves.D_std, "tab:blue", *diffusion, DIFFUSION_NAMES)]
    if curves.gamma_dot is not None:
        label = "$\\dot\\gamma(t) = \\dot\\gamma_0 t^{\\beta} + \\dot\\gamma_{\\mathrm{offset}}$"
        shear = (label, "$\\dot\\gamma(t)$ (1/s)", "shear rate $\\dot\\gamma(t)$")
        panels.append((curves.gamma_dot, curves.gamma_dot_std, "tab:red", *shear, SHEAR_NAMES))
    for ax, (rate, std, color, label, ylabel, title, names) in zip(axes, panels):
        _draw_rate(ax, curves.t, rate, std, color, label)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.text(0.02, 0.02, fitted(names), transform=ax.transAxes, fontsize=8, va="bottom", family="monospace")
    head = f"{info.dataset}: " if info.dataset else ""
    band = {"jackknife": "bands from the jackknife", "covariance": "bands from the parameter covariance"}[curves.band_source]
    title = f"{head}NLSQ, {info.analysis_mode}, q = {info.q:g} \u00c5$^{{-1}}$; 1$\\sigma$ {band}"
    figure.suptitle(title, fontsize=12, y=1 - 0.1 / height, va="top")
    save_png(figure, path)


def _bands(fit_arrays: Mapping[str, Any]) -> dict[str, Any] | None:
    """The saved ``bands/*`` arrays of ``fit.h5`` by their short names, or None if there are none."""
    keys = ("t", "D", "D_std", "D_std_jackknife", "gamma_dot", "gamma_dot_std")
    found = {key: np.asarray(band) for key in keys if (band := lookup(fit_arrays, f"bands/{key}")) is not None}
    return found or None


def submit_nlsq_figures(writer, out_dir: Path, result_doc: dict, fit_arrays: Mapping[str, Any]) -> list[Path]:
    """Queue every NLSQ figure of one data set in ``out_dir/nlsq/plots/`` on ``writer`` (an
    :class:`homodyne_mpi.io.AsyncWriter`); return their paths. ``result_doc`` is ``nlsq/result.json``,
    ``fit_arrays`` ``nlsq/fit.h5``'s datasets by name, not copied: keep them unchanged and open until the
    writer is done. Without ``c2_exp`` no c2 figures; without matplotlib, ``[]`` (warns once)."""
    if not plotting_available():
        return []
    out_dir = Path(out_dir)
    info = figure_info(result_doc, fit_arrays, dataset=result_doc.get("dataset") or out_dir.name)
    folder = out_dir / "nlsq" / "plots"
    c2_paths = [folder / c2_plot_name(k, p) for k, p in enumerate(info.phi.tolist())]
    transport_path = folder / "transport.png"
    if lookup(fit_arrays, "c2_exp") is None:
        message = "%s: fit.h5 holds no c2 matrices (output.fit_matrices: none); skipping the %d c2 figure(s)"
        log.info(message, info.dataset, len(c2_paths))
        c2_paths = []
    elif int(np.shape(fit_arrays["c2_exp"])[0]) != info.phi.size:
        raise ValueError(f"fit arrays hold {np.shape(fit_arrays['c2_exp'])[0]} angles but phi has {info.phi.size}")
    for k, path in enumerate(c2_paths):
        writer.submit_call(path, draw_c2_angle, fit_arrays, k, info)
    curves = transport_curves(info, _bands(fit_arrays))
    if curves is None:
        message = "%s: fit.h5 has no bands/t, bands/D, bands/D_std; skipping %s (rerun the fit to write them)"
        log.warning(message, info.dataset, transport_path.name)
        return c2_paths
    writer.submit_call(transport_path, draw_transport, curves, info)
    return [*c2_paths, transport_path]
