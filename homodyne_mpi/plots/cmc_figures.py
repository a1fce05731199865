"""CMC figures: posterior marginals, a pairwise plot, and per-shard health.

``marginals.png``: per physical parameter, the combined draws, each retained shard's Gaussian and the
NLSQ estimate; ``pairs.png``: 2-D histograms, marginals and correlations of the combined draws;
``shard_health.png`` (:mod:`.shard_health`). A missing array of ``cmc/posterior.h5`` (``draws``,
``names``, ``fixed``, ``shards/{mean,covariance,index}``) skips its panel with one warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..vocabulary import PHYSICAL_PARAMETERS
from .backend import decode_names, figure_with_grid, lookup, plotting_available, save_png
from .shard_health import cmc_title, draw_shard_health, shard_state

log = logging.getLogger(__name__)

PHYSICAL_ORDER = PHYSICAL_PARAMETERS["laminar_flow"]
"""Physical parameters in the model's order; the figures show those the posterior holds."""

UNITS = {
    "D0": "\u00c5$^2$ s$^{-(1+\\alpha)}$",
    "D_offset": "\u00c5$^2$/s",
    "gamma_dot_t0": "s$^{-(1+\\beta)}$",
    "gamma_dot_t_offset": "1/s",
    "phi0": "deg",
}

FIGURE_NAMES = ("marginals.png", "pairs.png", "shard_health.png")
Pair = tuple[float, float]


def _label(name: str, exponent: int = 0) -> str:
    """Axis label: ``name (unit)``, with ``x1e<exponent>`` when the values are scaled."""
    unit = UNITS.get(name, "")
    scale = f"$\\times 10^{{{exponent}}}$" if exponent else ""
    inside = " ".join(part for part in (scale, unit) if part)
    return f"{name} ({inside})" if inside else name


def _axis_range(low: float, high: float) -> tuple[float, float, int]:
    """``(low, high)``, widened when empty, and the power of ten (0 if none) that keeps tick labels short."""
    if not high > low:
        low, high = low - 0.5 * (abs(low) + 1e-12), high + 0.5 * (abs(high) + 1e-12)
    size = max(abs(low), abs(high))
    if not np.isfinite(size) or size == 0:
        return low, high, 0
    exponent = int(math.floor(math.log10(size)))
    return low, high, 3 * (exponent // 3) if exponent >= 4 or exponent <= -3 else 0


@dataclass
class CMCFigureInfo:
    """What the CMC figures draw, gathered from ``result.json`` and ``posterior.h5``."""

    dataset: str
    """Data set name."""
    names: tuple[str, ...]
    """Names of the posterior's columns, and the ``physical`` ones among them in model order."""
    physical: tuple[str, ...]
    draws: np.ndarray | None
    """Combined posterior draws (n_draws, P), or None if not saved."""
    shard_index: np.ndarray | None = None
    """Per saved shard (S rows): its index, posterior means (S, P) and standard deviations
    (S, P; the covariance diagonals)."""
    shard_means: np.ndarray | None = None
    shard_stds: np.ndarray | None = None
    retained: set[int] = field(default_factory=set)
    """Indices of the shards the combination used."""
    shards: list[dict] = field(default_factory=list)
    """``result.json``'s ``shards`` records, ``combination`` mapping and ``parameters`` mapping
    (the ``summary``: mean, std, q05, q50, q95 per name)."""
    combination: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    nlsq: dict[str, float] = field(default_factory=dict)
    """NLSQ estimates by name, drawn as reference lines when known."""
    analysis_mode: str = ""
    """``static`` or ``laminar_flow``."""
    error: str = ""
    """The run's error when CMC failed as a whole (``result.json`` ``error``)."""

    def column(self, name: str) -> int:
        return self.names.index(name)


def _array(posterior: Mapping[str, Any], key: str) -> np.ndarray | None:
    """A copy of ``posterior[key]``, else None."""
    value = lookup(posterior, key)
    return None if value is None else np.array(value)


def cmc_figure_info(
    cmc_doc: Mapping[str, Any],
    posterior: Mapping[str, Any],
    *,
    dataset: str | None = None,
    nlsq_doc: Mapping[str, Any] | None = None,
) -> CMCFigureInfo:
    """Gather the figures' inputs; arrays are copied, missing ones left as None (with a warning)."""
    dataset = str(dataset or cmc_doc.get("dataset") or "")
    label = dataset or "cmc"  # of the warnings
    summary = dict(cmc_doc.get("parameters") or {})
    draws = _array(posterior, "draws")
    names_raw = _array(posterior, "names")
    names = decode_names(names_raw) if names_raw is not None else tuple(summary)
    if names_raw is None and draws is not None:
        log.warning("%s: posterior has no 'names'; taking the columns in result.json order", label)
    if draws is not None and (draws.ndim != 2 or draws.shape[1] != len(names)):
        log.warning("%s: posterior 'draws' has shape %s, not (n_draws, %d); no draws drawn", label, draws.shape, len(names))
        draws = None
    fixed = _array(posterior, "fixed")
    if fixed is not None and fixed.shape == (len(names),):
        fixed_names = {n for n, f in zip(names, fixed.astype(bool)) if f}
    else:
        fixed_names = {n for n, entry in summary.items() if isinstance(entry, Mapping) and entry.get("fixed")}
    physical = tuple(n for n in PHYSICAL_ORDER if n in names and n not in fixed_names)
    shards = [dict(s) for s in cmc_doc.get("shards") or []]
    combination = dict(cmc_doc.get("combination") or {})
    if isinstance(combination.get("used"), list):
        retained = {int(i) for i in combination["used"]}
    else:
        retained = {int(s.get("index", i)) for i, s in enumerate(shards) if shard_state(s) == "retained"}
    info = CMCFigureInfo(
        dataset=dataset,
        names=names,
        physical=physical,
        draws=draws,
        retained=retained,
        shards=shards,
        combination=combination,
        summary=summary,
        analysis_mode=str(cmc_doc.get("analysis_mode", "")),
        error=str(cmc_doc.get("error") or ""),
    )
    means = _array(posterior, "shards/mean")
    covariances = _array(posterior, "shards/covariance")
    n_rows = next((a.shape[0] for a in (means, covariances) if a is not None), 0)
    index = _array(posterior, "shards/index")
    if index is None or index.shape != (n_rows,):
        index = np.array(sorted(retained))[:n_rows] if len(retained) == n_rows else np.arange(n_rows)
    info.shard_index = index.astype(int)
    if means is not None and means.shape == (n_rows, len(names)):
        info.shard_means = means
    if covariances is not None and covariances.shape == (n_rows, len(names), len(names)):
        info.shard_stds = np.sqrt(np.maximum(np.diagonal(covariances, axis1=1, axis2=2), 0.0))
    if draws is not None and (info.shard_means is None or info.shard_stds is None):
        only = "marginals show the combined posterior only"
        log.warning("%s: posterior has no per-shard summaries (shards/mean, shards/covariance); " + only, label)
    for name, entry in ((nlsq_doc or {}).get("parameters") or {}).items():
        if isinstance(entry, Mapping) and entry.get("value") is not None:
            info.nlsq[name] = float(entry["value"])
    if not info.analysis_mode and nlsq_doc:
        info.analysis_mode = str(nlsq_doc.get("analysis_mode", ""))
    if not info.analysis_mode and info.physical:
        info.analysis_mode = "laminar_flow" if "gamma_dot_t0" in names else "static"
    return info


def _retained_rows(info: CMCFigureInfo) -> list[int]:
    """Rows of the per-shard arrays that belong to retained shards (all rows if unknown)."""
    if info.shard_index is None:
        return []
    if not info.shards:
        return list(range(info.shard_index.size))
    return [row for row, index in enumerate(info.shard_index.tolist()) if index in info.retained]


def _grid(n: int) -> tuple[int, int]:
    cols = 2 if n == 4 else max(min(n, 4), 1)
    return math.ceil(n / cols), cols


def _marginal_sources(info: CMCFigureInfo, j: int, shard_rows: list[int]) -> tuple[list[Pair], list[Pair]]:
    """Per retained shard, its Gaussian (mean, std) for column ``j``; and the x spans to show."""
    curves: list[Pair] = []
    spans: list[Pair] = []
    if info.draws is not None:
        column = info.draws[:, j]
        column = column[np.isfinite(column)]
        if column.size:
            low, high = np.percentile(column, [0.1, 99.9])
            spans.append((float(low), float(high)))
    if info.shard_means is None or info.shard_stds is None:
        return curves, spans
    for row in shard_rows:
        mean, std = float(info.shard_means[row, j]), float(info.shard_stds[row, j])
        if np.isfinite(mean) and np.isfinite(std) and std > 0:
            curves.append((mean, std))
            spans.append((mean - 3.5 * std, mean + 3.5 * std))
    return curves, spans


def draw_marginals(path: str | Path, info: CMCFigureInfo) -> None:
    """Histogram of the combined draws per physical parameter, with each retained shard's posterior."""
    names = info.physical or info.names
    rows, cols = _grid(len(names))
    width, height = 4.2 * cols, 3.4 * rows + 0.9
    margins = {"left": 0.7, "right": 0.25, "bottom": 1.15, "top": 0.75, "wspace": 0.32, "hspace": 0.55}
    figure, axes_grid = figure_with_grid(width, height, rows, cols, **margins)
    axes = axes_grid.ravel()
    shard_rows = _retained_rows(info)
    for ax, name in zip(axes, names):
        j = info.column(name)
        curves, spans = _marginal_sources(info, j, shard_rows)
        if not spans:
            ax.text(0.5, 0.5, "no draws saved", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(name)
            continue
        low, high, exponent = _axis_range(min(s[0] for s in spans), max(s[1] for s in spans))
        unit = 10.0**exponent
        grid = np.linspace(low, high, 300)
        for n_curve, (mean, std) in enumerate(curves):
            density = np.exp(-0.5 * ((grid - mean) / std) ** 2) / (std / unit * math.sqrt(2.0 * math.pi))
            shard_label = "retained shards" if n_curve == 0 else None
            ax.plot(grid / unit, density, color="tab:orange", lw=0.9, alpha=0.75, label=shard_label)
        if info.draws is not None:
            column = info.draws[:, j]
            shown = column[np.isfinite(column)] / unit
            ax.hist(shown, bins=50, range=(low / unit, high / unit), density=True, color="tab:blue", alpha=0.55, label="combined")
        entry = info.summary.get(name) or {}
        if entry.get("q05") is not None and entry.get("q95") is not None:
            low_q, high_q = float(entry["q05"]) / unit, float(entry["q95"]) / unit
            ax.axvspan(low_q, high_q, color="tab:blue", alpha=0.08, lw=0, label="combined 5-95%")
        if name in info.nlsq:
            ax.axvline(info.nlsq[name] / unit, color="k", ls="--", lw=1.0, label="NLSQ")
        title = name
        if entry.get("mean") is not None and entry.get("std") is not None:
            title += f" = {float(entry['mean']):.5g} \u00b1 {float(entry['std']):.2g}"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(_label(name, exponent))
        ax.set_ylabel("density")
        ax.set_xlim(low / unit, high / unit)
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    legend: dict[str, Any] = {}  # label -> the first handle drawn with it
    for ax in axes[: len(names)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        placement = {"loc": "lower center", "bbox_to_anchor": (0.5, 0.0), "ncols": len(legend), "fontsize": 9}
        figure.legend(list(legend.values()), list(legend), **placement)
    kept = len(shard_rows) if info.shard_index is not None and info.shard_index.size else len(info.retained)
    what = f"posterior marginals: combined and {kept} retained shard(s) of {len(info.shards) or '?'}"
    figure.suptitle(cmc_title(info, what), fontsize=12, y=1 - 0.12 / height)
    save_png(figure, path)


def draw_pairs(path: str | Path, info: CMCFigureInfo, bins: int = 40) -> None:
    """Pairwise plot of the physical parameters from the combined draws."""
    names = info.physical or info.names
    n = len(names)
    if info.draws is None:
        raise ValueError("draw_pairs needs the combined draws")
    draws = info.draws[:, [info.column(name) for name in names]]
    draws = draws[np.all(np.isfinite(draws), axis=1)]
    size = max(2.0 * n, 5.0)
    margins = {"left": 1.0, "right": 0.15, "bottom": 0.8, "top": 0.45, "wspace": 0.1, "hspace": 0.1}
    figure, axes = figure_with_grid(size + 0.3, size + 0.4, n, n, **margins)
    percentiles = np.percentile(draws, [0.5, 99.5], axis=0).T if draws.shape[0] else [(0.0, 1.0)] * n
    lows, highs, exponents = zip(*(_axis_range(float(low), float(high)) for low, high in percentiles))
    units = [10.0**exponent for exponent in exponents]
    ranges = [(low / unit, high / unit) for low, high, unit in zip(lows, highs, units)]
    scaled = draws / np.array(units)
    nlsq = [info.nlsq.get(name, np.nan) / units[j] for j, name in enumerate(names)]
    correlation = np.atleast_2d(np.corrcoef(draws, rowvar=False)) if draws.shape[0] > 2 else np.full((n, n), np.nan)
    for i in range(n):
        for j in range(n):
            ax = axes[i, j]
            if j > i:
                ax.set_axis_off()
                value = correlation[i, j]
                if np.isfinite(value):
                    label, color = f"\u03c1 = {value:+.2f}", "tab:red" if abs(value) > 0.7 else "0.2"
                    ax.text(0.5, 0.5, label, ha="center", va="center", transform=ax.transAxes, fontsize=10, color=color)
                continue
            if i == j:
                ax.hist(scaled[:, j], bins=bins, range=ranges[j], color="tab:blue", alpha=0.7)
                if np.isfinite(nlsq[j]):
                    ax.axvline(nlsq[j], color="k", ls="--", lw=0.9)
                ax.set_yticks([])
                ax.set_xlim(*ranges[j])
            else:
                counts, _, _ = np.histogram2d(scaled[:, j], scaled[:, i], bins=bins, range=[ranges[j], ranges[i]])
                shown = np.ma.masked_equal(counts.T, 0)
                extent = (*ranges[j], *ranges[i])
                ax.imshow(shown, origin="lower", extent=extent, aspect="auto", cmap="Blues", interpolation="nearest")
                if np.isfinite(nlsq[j]) and np.isfinite(nlsq[i]):
                    ax.plot(nlsq[j], nlsq[i], marker="+", color="k", ms=8)
            ax.tick_params(labelsize=7)
            if i == n - 1:
                ax.set_xlabel(_label(names[j], exponents[j]), fontsize=8)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(_label(names[i], exponents[i]), fontsize=8)
            elif j > 0 or i == 0:
                ax.set_yticklabels([])
    nlsq_note = "; dashed line and + mark the NLSQ fit" if info.nlsq else ""
    what = f"pairwise posterior, {draws.shape[0]} combined draws{nlsq_note}"
    figure.suptitle(cmc_title(info, what), fontsize=12, y=1 - 0.1 / (size + 0.4))
    save_png(figure, path)


def submit_cmc_figures(
    writer, out_dir: Path, cmc_doc: dict, posterior: Mapping[str, Any], *, nlsq_doc: Mapping[str, Any] | None = None
) -> list[Path]:
    """Queue the CMC figures of one data set in ``out_dir/cmc/plots/`` on ``writer``; return the paths
    queued. From ``cmc_doc`` (``cmc/result.json``), ``posterior`` (``cmc/posterior.h5``'s arrays, copied)
    and ``nlsq_doc`` (reference lines); a figure without its inputs is skipped with a warning, and
    without matplotlib nothing is queued (one warning)."""
    if not plotting_available():
        return []
    out_dir = Path(out_dir)
    info = cmc_figure_info(cmc_doc, posterior, dataset=cmc_doc.get("dataset") or out_dir.name, nlsq_doc=nlsq_doc)
    marginals, pairs, health = (out_dir / "cmc" / "plots" / name for name in FIGURE_NAMES)
    can_marginals = bool(info.names) and (info.draws is not None or info.shard_means is not None)
    can_pairs = bool(info.names) and info.draws is not None and info.draws.shape[0] > 1
    if not can_marginals and not can_pairs:
        message = "%s: no posterior draws (cmc/posterior.h5 missing or empty); skipping %s and %s"
        log.warning(message, info.dataset, *FIGURE_NAMES[:2])
    elif not can_pairs:
        log.warning("%s: posterior.h5 has no combined 'draws'; skipping %s", info.dataset, pairs.name)
    if not info.shards:
        log.warning("%s: result.json lists no shards; skipping %s", info.dataset, health.name)
    queued = [path for path, ready in zip((marginals, pairs, health), (can_marginals, can_pairs, info.shards)) if ready]
    draw = {marginals: draw_marginals, pairs: draw_pairs, health: draw_shard_health}
    for path in queued:
        writer.submit_call(path, draw[path], info)
    return queued
