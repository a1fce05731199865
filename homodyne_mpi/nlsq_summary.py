"""What a reader of an NLSQ fit is told: bound flags, degeneracy warnings, parameter cells.

Pure functions of ``nlsq/result.json``'s mapping (no JAX, so the report loads without it),
shared by the run's log and ``homodyne-mpi report`` so that both say the same thing.
"""

from __future__ import annotations

import numpy as np

CORRELATION_LIMIT = 0.99
"""``|corr|`` of two free physical parameters above which they are reported as degenerate."""

EIGENVALUE_LIMIT = 0.01
"""Smallest eigenvalue of the free physical parameters' correlation matrix below which a
combination of three or more of them is reported as degenerate (a pair at ``|corr| = 0.99``
has the eigenvalue ``1 - 0.99``: the same limit as ``CORRELATION_LIMIT``, for any number of parameters)."""

MEMBER_SHARE = 0.05
"""A parameter belongs to a degenerate combination when its squared weight in the
(unit) eigenvector is at least this share."""

FRAME_SHARED_HINT_RATIO = 2.0
"""Median ``std_jackknife / std_model`` of the free physical parameters above which an
independent-noise fit is told that its noise is shared along frames (independent noise
gives 1.0 to 1.15, speckle data 2 to 6: ``docs/uncertainty.md``)."""

RATE_TIMES = 5
"""Times (log-spaced over the measured frames) at which the report prints ``D(t)`` and ``gamma_dot(t)``."""


def degeneracy(
    names: list[str],
    values: np.ndarray,
    std: np.ndarray,
    correlation: np.ndarray,
    physical: list[str],
    model_correlation: np.ndarray | None = None,
    wide_profile: list | None = None,
) -> dict:
    """result.json's ``degeneracy``: ``pairs`` ``[[a, b, corr], ...]`` of free physical parameters with
    ``|corr| > 0.99`` (over ``names``; ``model_correlation``'s where larger: the jackknife hides the
    correlations of a parameter held on a bound), ``groups`` (combinations of three or more, from
    ``degenerate_groups``), ``poorly_determined`` (``std > |value|``), ``wide_profile`` (profile sides wider
    than the error bar, ``[name, "minus"|"plus", half_width, reached, value]``) and ``warning`` (any of them
    non-empty)."""
    index = {name: k for k, name in enumerate(names)}
    fitted = [n for n in physical if n in index and std[index[n]] > 0]
    pairs = []
    groups = degenerate_groups(fitted, [index[n] for n in fitted], correlation, model_correlation)
    for a_pos, a in enumerate(fitted):
        for b in fitted[a_pos + 1 :]:
            value = float(correlation[index[a], index[b]])
            if model_correlation is not None and abs(model_correlation[index[a], index[b]]) > abs(value):
                value = float(model_correlation[index[a], index[b]])
            if abs(value) > CORRELATION_LIMIT:
                pairs.append([a, b, value])
    poor = [n for n in fitted if std[index[n]] > abs(values[index[n]])]
    wide = list(wide_profile or [])
    return {
        "warning": bool(pairs or groups or poor or wide),
        "correlation_limit": CORRELATION_LIMIT,
        "eigenvalue_limit": EIGENVALUE_LIMIT,
        "pairs": pairs,
        "groups": groups,
        "poorly_determined": poor,
        "wide_profile": wide,
    }


def degenerate_groups(
    fitted: list[str], positions: list[int], correlation: np.ndarray, model_correlation: np.ndarray | None = None
) -> list[dict]:
    """Combinations of three or more of the ``fitted`` parameters (rows ``positions`` of the correlation
    matrices) that the data barely fix, though no pair of them need reach ``|corr| > 0.99``.

    Each eigenvalue ``lam < EIGENVALUE_LIMIT`` of the parameters' correlation matrix (the reported one, or
    ``model_correlation``'s where its smallest eigenvalue is smaller) is a unit combination of the
    standardised parameters whose variance is ``lam``; its members are the parameters whose squared weight
    is at least ``MEMBER_SHARE``. Returned per combination: ``parameters``, ``eigenvalue``, ``source``
    (``reported`` or ``model``), ``weights`` (name -> eigenvector entry) and ``multiple_correlation``
    (name -> ``sqrt(1 - 1 / (R^-1)_kk)``, how well the other fitted parameters predict it linearly).
    Combinations of two are left to the pairs.
    """
    if len(fitted) < 3:
        return []
    candidates = [("reported", correlation)]
    if model_correlation is not None:
        candidates.append(("model", model_correlation))
    spectra = []
    for source, matrix in candidates:
        block = np.asarray(matrix, dtype=float)[np.ix_(positions, positions)]
        if np.all(np.isfinite(block)):
            eigenvalues, vectors = np.linalg.eigh(0.5 * (block + block.T))
            spectra.append((float(eigenvalues[0]), source, block, eigenvalues, vectors))
    if not spectra:
        return []
    _, source, block, eigenvalues, vectors = min(spectra, key=lambda spectrum: spectrum[0])
    inverse = np.linalg.pinv(block)
    multiple = np.sqrt(np.clip(1.0 - 1.0 / np.maximum(np.diag(inverse), 1.0), 0.0, 1.0))
    groups = []
    for lam, vector in zip(eigenvalues, vectors.T):
        members = [k for k in range(len(fitted)) if vector[k] ** 2 >= MEMBER_SHARE]
        if lam >= EIGENVALUE_LIMIT or len(members) < 3:
            continue
        groups.append(
            {
                "parameters": [fitted[k] for k in members],
                "eigenvalue": float(max(lam, 0.0)),
                "source": source,
                "weights": {fitted[k]: float(vector[k]) for k in members},
                "multiple_correlation": {fitted[k]: float(multiple[k]) for k in members},
            }
        )
    return groups


def group_line(group: dict) -> str:
    """One degenerate combination of three or more parameters, as a warning."""
    names = group["parameters"]
    listed = ", ".join(names[:-1]) + " and " + names[-1]
    predicted = ", ".join(f"{name} {value:.4f}" for name, value in group["multiple_correlation"].items())
    return (
        f"{listed} are nearly degenerate together (smallest eigenvalue of their {group['source']} correlation"
        f" {group['eigenvalue']:.2g}; each predicted by the others with multiple correlation {predicted}):"
        " the data fix a combination of them, not each one"
    )


def bound_lines(doc: dict) -> list[str]:
    """A warning per physical parameter held on a bound: the others' errors are conditional on it."""
    return [
        f"{name} is held at its {side} bound: the errors of the parameters that trade against it are"
        " conditional on that bound and may be too small; widen the bound unless it is physical"
        for name, side in (doc.get("at_bound") or {}).items()
        if name.split("[")[0] not in ("contrast", "offset")
    ]


def degeneracy_lines(doc: dict) -> list[str]:
    """Warning lines (empty when the parameters are determined) pointing to ``D(t)``/``gamma_dot(t)``."""
    entry = doc.get("degeneracy") or {}
    lines = bound_lines(doc)
    if not entry.get("warning"):
        return lines
    lines += [
        f"{a} and {b} are nearly degenerate (correlation {value:+.4f}): the data fix a combination of them, not each one"
        for a, b, value in entry.get("pairs", [])
    ]
    lines += [group_line(group) for group in entry.get("groups", [])]
    if entry.get("poorly_determined"):
        lines.append("std exceeds |value| for " + ", ".join(entry["poorly_determined"]))
    lines += [profile_line(*side) for side in entry.get("wide_profile", [])]
    shear = "gamma_dot" in (doc.get("rates") or {})
    rates = "D(t) and gamma_dot(t)" if shear else "D(t)"
    lines.append(
        f"quote {rates} with {'their bands' if shear else 'its band'} (nlsq/fit.h5 bands/*, and the table below) rather than these parameters one by one"
    )
    return lines


def noise_lines(doc: dict) -> list[str]:
    """The noise model: with ``frame_shared`` its ``gamma`` (a note); with independent noise, a warning
    when the jackknife says the noise is shared along frames (``FRAME_SHARED_HINT_RATIO``)."""
    frame_noise = doc.get("frame_noise")
    if doc.get("noise_model") == "frame_shared" and frame_noise:
        return [
            f"noise model frame_shared: gamma = fs^2/s^2 = {frame_noise['gamma']:.4g}; generalised least squares,"
            " std from its covariance"
        ]
    parameters = doc.get("parameters") or {}
    ratios = [
        entry["std_ratio_jackknife_to_model"]
        for name, entry in parameters.items()
        if entry
        and not entry.get("fixed")
        and entry.get("std_ratio_jackknife_to_model")
        and name.split("[")[0] not in ("contrast", "offset")
    ]
    if not ratios or float(np.median(ratios)) <= FRAME_SHARED_HINT_RATIO:
        return []
    return [
        f"WARNING: the jackknife errors are {float(np.median(ratios)):.1f} times the independent-noise ones: the noise is"
        " shared along frames (speckle, intensity normalisation); the jackknife widens the errors, but the fit still"
        " weighs the points as independent and can land far along a valley -- optimization.nlsq.noise_model:"
        " frame_shared fits for it (docs/nlsq.md)"
    ]


def profile_line(name: str, side: str, half_width: float, reached: bool, value: float) -> str:
    """One wide side of a parameter's chi2 profile, as a warning."""
    where = f"{value:.4g} ({'-' if side == 'minus' else '+'}{half_width:.1f} model std)"
    if reached:
        return f"{name}: chi2 rises by 1 only at {where}; its error bar understates the uncertainty on that side"
    return f"{name}: chi2 rises by less than 1 out to {where}; the data do not bound {name} on that side"


def parameter_cell(entry: dict) -> str:
    """``value +- std``, or for a parameter on a bound the value, the bound and the one-sided std."""
    value, std = entry.get("value"), entry.get("std")
    if value is None:
        return "?"
    if entry.get("fixed"):
        return f"{value:.6g} (fixed)"
    side = entry.get("at_bound")
    if side in ("upper", "lower"):
        reach = f"down to about {value - std:.4g}" if side == "upper" else f"up to about {value + std:.4g}"
        return f"{value:.6g} at its {side} bound (no symmetric error; the data allow {reach}, 1 std)"
    return f"{value:.6g} +- {std:.3g}"


def rate_lines(doc: dict) -> list[str]:
    """``t, D +- std, gamma_dot +- std`` rows at the document's ``rates`` times."""
    rates = doc.get("rates") or {}
    if not rates.get("t"):
        return []
    shear = "gamma_dot" in rates
    lines = ["t (s)        D(t) +- std (A^2/s)" + ("          gamma_dot(t) +- std (1/s)" if shear else "")]
    for k, t in enumerate(rates["t"]):
        row = f"{t:<12.4g} {rates['D'][k]:.5g} +- {rates['D_std'][k]:.2g}"
        if shear:
            row = f"{row:<42} {rates['gamma_dot'][k]:.5g} +- {rates['gamma_dot_std'][k]:.2g}"
        lines.append(row)
    return lines


def log_lines(doc: dict) -> list[str]:
    """The fit as the run's log shows it: status, parameters (value +- std, std_model), warnings."""
    state = "converged" if doc.get("converged") else "NOT converged"
    lines = [
        f"NLSQ {state} after {doc.get('iterations')} iterations ({doc.get('reason')}); reduced chi2 {doc.get('reduced_chi2', float('nan')):.4f}",
        f"  {'parameter':<20} value +- std ({doc.get('uncertainty', 'model')})      [std_model]",
    ]
    for name, entry in (doc.get("parameters") or {}).items():
        model = entry.get("std_model")
        lines.append(f"  {name:<20} {parameter_cell(entry)}" + (f"    [{model:.3g}]" if model is not None else ""))
    jackknife = doc.get("jackknife") or {}
    if jackknife.get("refits_unconverged"):
        lines.append(
            f"  jackknife: {len(jackknife['refits_unconverged'])} of {jackknife['blocks']} refits unconverged and excluded (frames {', '.join(jackknife['refits_unconverged'])})"
        )
    lines += ["  " + line if not line.startswith("WARNING") else line for line in noise_lines(doc)]
    warnings = degeneracy_lines(doc)
    if warnings:
        lines += ["WARNING: " + line for line in warnings] + ["  " + line for line in rate_lines(doc)]
    return lines
