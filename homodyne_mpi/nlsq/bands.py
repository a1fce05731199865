"""``D(t)`` and ``gamma_dot(t)`` with 1-sigma bands from a fit's covariance or replicates.

The rates are often far better determined than the strongly correlated ``D0`` and
``alpha``, so the bands come from the full covariance (delta method) or the jackknife
replicates' own curves, corrected for independent noise as the parameters are.
"""

from __future__ import annotations

import numpy as np

from ..model import ModelSpec, ParameterLayout
from ..model.transport import RATE_FLOOR


def rate_times(spec: ModelSpec) -> np.ndarray:
    """Times (s) the rates are evaluated at, as the model does: ``k * dt``, ``dt/2`` for ``k = 0``."""
    t = np.arange(spec.n_frames, dtype=float) * spec.dt
    t[0] = 0.5 * spec.dt
    return t


def power_law_with_slopes(t: np.ndarray, prefactor: float, exponent: float, offset: float):
    """``(rate, slopes)``: ``max(prefactor t^exponent + offset, RATE_FLOOR)`` and its
    derivatives by ``(prefactor, exponent, offset)``, shape ``(N, 3)`` (0 where floored)."""
    power = t**exponent
    rate = prefactor * power + offset
    above = rate > RATE_FLOOR
    slopes = np.stack([power, prefactor * power * np.log(t), np.ones_like(t)], axis=1) * above[:, None]
    return np.where(above, rate, RATE_FLOOR), slopes


def rate_curves_and_jacobian(physical: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(D(t), gamma_dot(t))`` stacked ``(2, N)`` (Angstrom^2/s and 1/s) and their derivatives
    by the physical parameters ``(2, N, n_phys)``; ``gamma_dot = 0`` when static. NumPy in
    closed form: JAX would cost a compilation per job for a few thousand numbers."""
    t = rate_times(spec)
    curves = np.zeros((2, len(t)))
    jacobian = np.zeros((2, len(t), len(physical)))
    curves[0], jacobian[0, :, 0:3] = power_law_with_slopes(t, *physical[0:3])
    if spec.has_shear:
        curves[1], jacobian[1, :, 3:6] = power_law_with_slopes(t, *physical[3:6])
    return curves, jacobian


def delta_method_std(theta: np.ndarray, covariance: np.ndarray, layout: ParameterLayout, spec: ModelSpec) -> np.ndarray:
    """1-sigma of both curves, ``(2, N)``, by linear propagation of the covariance."""
    physical_slice = layout.physical_slice
    jacobian = rate_curves_and_jacobian(np.asarray(theta[physical_slice], dtype=float), spec)[1]
    block = covariance[physical_slice, physical_slice]
    variance = np.einsum("cnp,pq,cnq->cn", jacobian, block, jacobian)
    return np.sqrt(np.clip(variance, 0.0, None))


def jackknife_std(theta: np.ndarray, jackknife, model_std: np.ndarray, layout: ParameterLayout, spec: ModelSpec) -> np.ndarray:
    """1-sigma of both curves, ``(2, N)``: ``var_model + max(0, var_replicates - var_independent)``
    over the converged refits (scaled as ``jackknife_covariance``), ``var_independent`` from
    ``jackknife.covariance_independent``."""
    if len(jackknife.kept) < 2:
        return model_std
    curves = np.stack([rate_curves_and_jacobian(r[layout.physical_slice], spec)[0] for r in jackknife.kept])
    deviations = curves - curves.mean(axis=0)
    replicate_variance = (len(jackknife.blocks) - 1) / curves.shape[0] * np.sum(deviations**2, axis=0)
    independent_variance = delta_method_std(theta, jackknife.covariance_independent, layout, spec) ** 2
    return np.sqrt(model_std**2 + np.clip(replicate_variance - independent_variance, 0.0, None))


def band_arrays(theta, covariance_model, jackknife, layout: ParameterLayout, spec: ModelSpec) -> dict[str, np.ndarray]:
    """``bands/...`` datasets of ``fit.h5`` (``bands/t``: ``rate_times``); ``*_std`` follow the jackknife when present."""
    curves = rate_curves_and_jacobian(np.asarray(theta[layout.physical_slice], dtype=float), spec)[0]
    model_std = delta_method_std(theta, covariance_model, layout, spec)
    chosen = model_std if jackknife is None else jackknife_std(theta, jackknife, model_std, layout, spec)
    arrays = {"bands/t": rate_times(spec)}
    for row, name in enumerate(("D", "gamma_dot") if spec.has_shear else ("D",)):
        arrays[f"bands/{name}"] = curves[row]
        arrays[f"bands/{name}_std_model"] = model_std[row]
        arrays[f"bands/{name}_std"] = chosen[row]
        if jackknife is not None:
            arrays[f"bands/{name}_std_jackknife"] = chosen[row]
    return arrays
