"""``homodyne-mpi report RESULT_DIR``: a plain-text summary of saved results.

Per data set folder under ``RESULT_DIR``: the NLSQ fit (convergence, chi2, parameters with
uncertainties, scaling) and the CMC posterior (summaries, shard health and why shards were left
out, the combination), with timings and ranks; a batch summary adds the failed data sets.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from .errors import InputError
from .fit_matrices import describe_fit_file
from .nlsq_summary import degeneracy_lines, noise_lines, parameter_cell, rate_lines
from .plots.redraw import find_dataset_dirs, read_result_json
from .plots.shard_health import shard_reason, shard_state
from .vocabulary import PARAMETER_UNITS, PHYSICAL_PARAMETERS

PHYSICAL_ORDER = PHYSICAL_PARAMETERS["laminar_flow"]
_SCALING = re.compile(r"^(contrast|offset)(?:\[(\d+)\])?$")
SHARD_COLUMNS = (("rhat_max", ".4f"), ("ess_min", ".0f"), ("divergences", ".0f"), ("seconds", ".1f"))
"""Per-shard numbers of the CMC shard table and their formats."""


def _num(value: Any, spec: str = ".6g") -> str:
    """A number for a table: ``format(value, spec)``, ``-`` for None, ``nan`` kept."""
    if value is None:
        return "-"
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def _unit(name: str) -> str:
    """The unit column of a parameter: its ``PARAMETER_UNITS`` entry, blank when dimensionless."""
    unit = PARAMETER_UNITS.get(name, "")
    return "" if unit == "dimensionless" else unit


def _seconds(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return format(number, ".0f" if number >= 100 else ".2f" if number >= 1 else ".3g")


def _table(header: list[str], rows: list[list[str]], indent: str = "    ", left: tuple[int, ...] = (0,)) -> list[str]:
    """Columns padded to their widest cell; columns in ``left`` left-aligned, the rest right."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [str(c).ljust(w) if i in left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return (indent + "  ".join(parts)).rstrip()

    return [line(header)] + [line(row) for row in rows]


def _timings(timing: Any) -> str:
    return ", ".join(f"{key} {_seconds(value)}" for key, value in timing.items()) if isinstance(timing, dict) and timing else "-"


def _parameter_order(names: list[str]) -> tuple[list[str], list[str]]:
    physical = [n for n in PHYSICAL_ORDER if n in names]
    physical += [n for n in names if n not in physical and not _SCALING.match(n)]
    scaling = [n for n in names if _SCALING.match(n)]
    return physical, scaling


def _nlsq_section(doc: dict) -> list[str]:
    state = "converged" if doc.get("converged") else "NOT CONVERGED"
    lines = [
        f"  NLSQ ({doc.get('analysis_mode', '?')}, shear_form {doc.get('shear_form', '?')}, per-angle scaling {doc.get('per_angle_scaling', '?')})",
        f"    status        {state} after {doc.get('iterations', '?')} iterations ({doc.get('reason', 'no reason recorded')})",
        f"    fit quality   reduced chi2 {_num(doc.get('reduced_chi2'), '.4f')} "
        f"(chi2 {_num(doc.get('chi2'), '.6g')} over {doc.get('n_points', '?')} points, {doc.get('n_free_parameters', '?')} free parameters)",
    ]
    data = doc.get("data") or {}
    if data:
        lines.append(
            f"    data          {data.get('source', '?')} ({data.get('layout', '?')}); q {_num(data.get('q'))} 1/Angstrom; "
            f"dt {_num(data.get('dt'))} s ({data.get('dt_source', '?')}); frames {data.get('start_frame', '?')}..{data.get('end_frame', '?')}; "
            f"{len(data.get('phi') or [])} angle(s)"
        )
    lines.append(f"    uncertainty   std = {doc.get('uncertainty', 'model')} standard error")
    parameters = doc.get("parameters") or {}
    physical, scaling = _parameter_order(list(parameters))
    show_jk = any((entry or {}).get("std_jackknife") is not None for entry in parameters.values())
    header = ["parameter", "value", "std", "std_model"] + (["std_jackknife"] if show_jk else []) + ["unit"]
    rows = []
    for name in physical:
        entry = parameters[name] or {}
        std, bound = _num(entry.get("std"), ".3g"), entry.get("at_bound")
        rows.append(
            [name + (" (fixed)" if entry.get("fixed") else ""), _num(entry.get("value"))]
            + [f"at {bound} bound, one-sided {std}" if bound else std, _num(entry.get("std_model"), ".3g")]
            + ([_num(entry.get("std_jackknife"), ".3g")] if show_jk else [])
            + [_unit(name)]
        )
    if rows:
        lines += _table(header, rows, left=(0, len(header) - 1))
    lines += [
        f"    bound         {name}: {parameter_cell(entry)}"
        for name, entry in parameters.items()
        if (entry or {}).get("at_bound") and name in physical
    ]
    jackknife = doc.get("jackknife") or {}
    if jackknife.get("refits_unconverged"):
        lines.append(
            f"    jackknife     {len(jackknife['refits_unconverged'])} of {jackknife.get('blocks')} refits unconverged, excluded (frames {', '.join(jackknife['refits_unconverged'])})"
        )
    lines += [
        f"    WARNING       {line.removeprefix('WARNING: ')}" if line.startswith("WARNING") else f"    noise         {line}"
        for line in noise_lines(doc)
    ]
    warnings = degeneracy_lines(doc)
    lines += [f"    WARNING       {line}" for line in warnings]
    if warnings:
        lines += ["      " + line for line in rate_lines(doc)]
    if scaling:
        lines += _scaling_table(parameters, scaling, data.get("phi") or [])
    return lines


def _scaling_table(parameters: dict, names: list[str], phi: list) -> list[str]:
    """Contrast and offset per angle in one table (or the shared pair)."""
    per_angle: dict[int | None, dict[str, dict]] = {}
    for name in names:  # contrast, offset, contrast[k] or offset[k]
        base, _, angle = name.rstrip("]").partition("[")
        per_angle.setdefault(int(angle) if angle else None, {})[base] = parameters[name] or {}
    rows = []
    for index in sorted(per_angle, key=lambda i: -1 if i is None else i):
        row = ["all" if index is None else str(index), "-" if index is None or index >= len(phi) else _num(phi[index], "g")]
        for entry in (per_angle[index].get("contrast", {}), per_angle[index].get("offset", {})):
            row += [_num(entry.get("value"), ".5g") + (" (fixed)" if entry.get("fixed") else ""), _num(entry.get("std"), ".2g")]
        rows.append(row)
    return ["    per-angle scaling"] + _table(["angle", "phi (deg)", "contrast", "std", "offset", "std"], rows, indent="      ")


def _cmc_section(doc: dict) -> list[str]:
    lines = ["  CMC" + (f" ({doc['analysis_mode']})" if doc.get("analysis_mode") else "")]
    status, reason = doc.get("status", "ok"), doc.get("reason")
    if status != "ok" and reason:
        lines.append(f"    status        {status.upper()}: {str(reason).strip().splitlines()[0]}")
    if doc.get("calibration_warning"):
        lines.append(f"    warning       {doc['calibration_warning']}")
    parameters = doc.get("parameters") or {}
    physical, scaling = _parameter_order(list(parameters))
    rows = []
    for name in physical + scaling:
        entry = parameters[name] or {}
        cells = [_num(entry.get(key), ".6g" if key != "std" else ".3g") for key in ("mean", "std", "q05", "q50", "q95")]
        rows.append([name + (" (fixed)" if entry.get("fixed") else ""), *cells, _unit(_SCALING.sub(r"\1", name))])
    if rows:
        lines += _table(["parameter", "mean", "std", "q05", "q50", "q95", "unit"], rows, left=(0, 6))
    shards = doc.get("shards") or []
    states = [shard_state(s) for s in shards]
    counts = ", ".join(f"{states.count(state)} {state}" for state in ("retained", "excluded", "failed"))
    lines.append(f"    shards        {len(shards)} total: {counts}")
    finite = lambda key: [float(s[key]) for s in shards if isinstance(s.get(key), (int, float)) and not math.isnan(float(s[key]))]  # noqa: E731
    rhat, ess, div = finite("rhat_max"), finite("ess_min"), finite("divergences")
    if rhat or ess or div:
        lines.append(
            f"    health        worst R-hat {_num(max(rhat) if rhat else None, '.4f')}, smallest ESS {_num(min(ess) if ess else None, '.0f')}, "
            f"divergences {_num(sum(div) if div else None, '.0f')} in all"
        )
    if shards:
        rows = []
        for shard, state in zip(shards, states):
            why = shard_reason(shard, state) if state != "retained" else ""
            ids = [str(shard.get(key, default)) for key, default in (("index", "?"), ("rank", "-"), ("n_points", "-"))]
            metrics = [_num(shard.get(key), spec) for key, spec in SHARD_COLUMNS]
            rows.append([*ids, *metrics, state + (f": {why[:100]}" if why else "")])
        header = ["shard", "rank", "points", "R-hat max", "ESS min", "divergences", "seconds", "status"]
        lines += _table(header, rows, indent="      ", left=(0, len(header) - 1))
    combination = doc.get("combination") or {}
    if combination:
        scalars = [
            f"{key} {value}" for key, value in combination.items() if isinstance(value, (str, int, float, bool)) or value is None
        ]
        others = [f"{key} ({len(value)} entries)" for key, value in combination.items() if isinstance(value, (list, dict))]
        lines.append(f"    combination   {'; '.join(scalars + others)}")
    return lines


def _dataset_section(folder: Path, outcome: dict | None) -> list[str]:
    lines = [f"== data set {folder.name} ({folder}) =="]
    if outcome and outcome.get("status") not in (None, "ok"):
        lines.append(f"  FAILED: {outcome.get('error')}")
    found = False
    for method, section in (("nlsq", _nlsq_section), ("cmc", _cmc_section)):
        path = folder / method / "result.json"
        if path.is_file():
            found = True
            doc = read_result_json(path)
            lines += [
                *section(doc),
                f"    timings (s)   {_timings(doc.get('timing_s'))}",
                f"    ranks         {doc.get('n_ranks', '?')}",
            ]
            matrices = describe_fit_file(folder / method / "fit.h5") if method == "nlsq" else None
            if matrices is not None:
                lines.append(f"    fit.h5        {matrices}")
            plots = folder / method / "plots"
            if plots.is_dir():
                lines.append(f"    figures       {len(list(plots.glob('*.png')))} PNG in {plots}")
    if not found:
        lines.append("  no results")
    return lines


def format_report(result_dir: Path) -> str:
    """The report of ``result_dir`` as text (what ``homodyne-mpi report`` prints)."""
    root = Path(result_dir)
    summary_path = root / "batch_summary.json"
    summary = read_result_json(summary_path) if summary_path.is_file() else None
    try:
        folders = find_dataset_dirs(root)
    except InputError:  # no data set folders: the batch summary alone is reported
        if summary is None:
            raise
        folders = []
    lines = [f"homodyne-mpi report: {root}"]
    outcomes: dict[str, dict] = {}
    if summary is not None:
        datasets = summary.get("datasets") or []
        outcomes = {str(d.get("name")): d for d in datasets if isinstance(d, dict)}
        lines.append(
            f"batch: {summary.get('n_datasets', len(datasets))} data set(s), {summary.get('n_failed', 0)} failed; "
            f"method {summary.get('method', '?')}; {summary.get('n_ranks', '?')} rank(s); wall {_seconds(summary.get('wall_s', '?'))} s"
        )
    for folder in folders:
        lines += ["", *_dataset_section(folder, outcomes.get(folder.name))]
    reported = {folder.name for folder in folders}
    for name, outcome in outcomes.items():
        if name not in reported and outcome.get("status") != "ok":
            lines += [
                "",
                f"== data set {name} ({outcome.get('source', '?')}) ==",
                f"  FAILED ({outcome.get('error_type', 'error')}): {outcome.get('error')}",
            ]
    return "\n".join(lines)


def print_report(result_dir: Path) -> int:
    """Print the report of ``result_dir``; returns 0. Missing or corrupt results: InputError."""
    print(format_report(result_dir))
    return 0
