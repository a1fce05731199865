"""Shard health of a CMC run: the figure ``cmc/plots/shard_health.png`` and a shard's state.

Per shard: the largest R-hat, the smallest ESS and the divergences (a fraction of the draws when
recorded); excluded shards red, failed grey, with the reasons listed.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

RHAT_CLIP = 2.0
"""R-hat bars are cut here (their value written on top), so a diverged shard does not
flatten the others and the limit line stays readable."""


def cmc_title(info: Any, what: str) -> str:
    """``<data set>: CMC <what> (<combination method>)``, the title of every CMC figure (``info``: a ``CMCFigureInfo``)."""
    head = f"{info.dataset}: " if info.dataset else ""
    method = info.combination.get("method")
    return f"{head}CMC {what}" + (f" ({method})" if method else "")


def _number(value: Any) -> float:
    try:
        return float(value) if value is not None else np.nan
    except (TypeError, ValueError):
        return np.nan


def shard_state(shard: Mapping[str, Any]) -> str:
    """``retained``, ``excluded`` (passed sampling, left out by a check) or ``failed`` (raised)."""
    if shard.get("error"):
        return "failed"
    if shard.get("excluded_reason"):
        return "excluded"
    return "retained" if shard.get("ok", True) else "failed"


def shard_reason(shard: Mapping[str, Any], state: str) -> str:
    """Why a shard was left out, in one line (the error's first line for a failed shard)."""
    if state == "failed" and shard.get("error"):
        return (str(shard["error"]).strip().splitlines() or ["error"])[0]
    return str(shard.get("excluded_reason") or "no reason recorded").splitlines()[0]


def draw_shard_health(path: str | Path, info: Any) -> None:
    """Bars of R-hat, ESS and divergences per shard of ``info`` (a ``CMCFigureInfo``); save as PNG."""
    from matplotlib.patches import Patch

    from .backend import new_figure, save_png

    shards = info.shards
    index = np.array([int(s.get("index", i)) for i, s in enumerate(shards)])
    status = [shard_state(s) for s in shards]
    style = {"retained": ("tab:blue", ""), "excluded": ("tab:red", "//"), "failed": ("0.6", "xx")}
    rates = [s.get("divergence_rate") for s, state in zip(shards, status) if state != "failed"]
    # (result.json key, axis label, the combination's limit drawn as a line, if any)
    metrics = [("rhat_max", "R-hat (max over parameters)", "max_rhat"), ("ess_min", "ESS (min over parameters)", "")]
    if rates and all(isinstance(rate, (int, float)) for rate in rates):
        metrics.append(("divergence_rate", "divergent transitions\n(fraction of draws)", "max_divergence_rate"))
    else:
        metrics.append(("divergences", "divergent transitions", ""))
    reasons = [
        f"shard {i} {state}: {shard_reason(s, state)}"
        for i, s, state in zip(index.tolist(), shards, status)
        if state != "retained"
    ]
    if info.error:
        reasons.insert(0, f"CMC failed: {info.error}")
    width = min(max(8.0, 0.28 * len(shards) + 3.0), 24.0)
    wrapped = [line for reason in reasons for line in textwrap.wrap(reason, width=int(width * 15), subsequent_indent="    ")]
    more = [f"... and {len(wrapped) - 10} more lines (see cmc/result.json)"] if len(wrapped) > 10 else []
    shown_reasons = wrapped[:10] + more
    figure = new_figure(width, 7.5 + 0.18 * len(shown_reasons))
    height_ratios = [1, 1, 1] + ([0.05 + 0.07 * len(shown_reasons)] if shown_reasons else [])
    grid = figure.add_gridspec(len(height_ratios), 1, height_ratios=height_ratios)
    axes = [figure.add_subplot(grid[0])]
    axes += [figure.add_subplot(grid[k], sharex=axes[0]) for k in (1, 2)]
    for ax, (key, label, limit) in zip(axes, metrics):
        threshold = info.combination.get(limit) if limit else None
        values = np.array([_number(s.get(key)) for s in shards])
        finite = values[np.isfinite(values)]
        base, clip = 0.0, np.inf  # only R-hat bars are cut
        if key == "rhat_max":
            base = min(1.0, float(finite.min()) if finite.size else 1.0) - 0.005
            clip = max(RHAT_CLIP, 1.5 * float(threshold or 1.0))
        heights = np.where(np.isfinite(values), np.minimum(values, clip) - base, 0.0)
        for state, (color, hatch) in style.items():
            chosen = np.array([st == state for st in status], dtype=bool)
            if chosen.any():
                ax.bar(index[chosen], heights[chosen], bottom=base, color=color, hatch=hatch, edgecolor="k", linewidth=0.4)
        for x in index[~np.isfinite(values)]:
            ax.text(x, 0.03, "n/a", ha="center", va="bottom", fontsize=7, color="0.3", transform=ax.get_xaxis_transform())
        if key == "rhat_max":
            top = min(max(float(finite.max()) if finite.size else 1.0, float(threshold or 1.0)), clip)
            ax.set_ylim(base, top + 0.35 * (top - base) + 0.005)  # head room for the legend
            for x, value in zip(index, values):
                if np.isfinite(value) and value > clip:  # off the scale: bar cut at the top, value written
                    ax.text(x, clip, f"{value:.4g}", ha="center", va="bottom", fontsize=7, color="k")
        if threshold is not None:
            ax.axhline(float(threshold), color="k", ls="--", lw=1.0, label=f"limit {float(threshold):g}")
        ax.set_ylabel(label, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        if ax is not axes[-1]:
            ax.tick_params(labelbottom=False)
    axes[-1].set_xlabel("shard index")
    if index.size and index.size <= 40:
        axes[-1].set_xticks(index)
    handles = [
        Patch(facecolor=color, edgecolor="k", hatch=hatch, label=f"{state} ({status.count(state)})")
        for state, (color, hatch) in style.items()
    ]
    handles += axes[0].get_legend_handles_labels()[0]  # and the limit line's
    axes[0].legend(handles=handles, loc="upper left", ncols=len(handles), fontsize=8, framealpha=0.9)
    if shown_reasons:
        text_ax = figure.add_subplot(grid[3])
        text_ax.set_axis_off()
        reason_text = text_ax.text(
            0.0, 1.0, "\n".join(shown_reasons), ha="left", va="top", fontsize=8, color="0.2", transform=text_ax.transAxes
        )
        reason_text.set_in_layout(False)
    figure.suptitle(cmc_title(info, f"shard health, {len(shards)} shard(s)"), fontsize=12)
    save_png(figure, path)
