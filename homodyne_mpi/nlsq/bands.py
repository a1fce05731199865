"""``D(t)`` and ``gamma_dot(t)`` with 1-sigma bands from a fit's covariance or replicates.

The derived rates are often far better determined than ``D0`` and ``alpha`` separately
(their errors are strongly correlated), so the bands are propagated from the full
covariance (delta method) or, for the jackknife, taken from the replicates' own curves
with the same correction for independent noise as the parameters (``jackknife.py``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..model import ModelSpec, ParameterLayout
from ..model.transport import power_law_rate, rate_times


@partial(jax.jit, static_argnames=("spec",))
def rate_curves(physical: jnp.ndarray, spec: ModelSpec) -> jnp.ndarray:
    """``(D(t), gamma_dot(t))`` stacked, shape ``(2, N)`` (Angstrom^2/s and 1/s).

    Static modes give ``gamma_dot = 0``. Times as the model uses them (``dt/2`` at 0).
    """
    t = rate_times(spec.n_frames, spec.dt)
    diffusion = power_law_rate(t, physical[0], physical[1], physical[2])
    if not spec.has_shear:
        return jnp.stack([diffusion, jnp.zeros_like(diffusion)])
    return jnp.stack([diffusion, power_law_rate(t, physical[3], physical[4], physical[5])])


@partial(jax.jit, static_argnames=("spec",))
def rate_jacobian(physical: jnp.ndarray, spec: ModelSpec) -> jnp.ndarray:
    """``(2, N, n_phys)`` derivative of ``rate_curves`` by the physical parameters (compiled once per spec)."""
    return jax.jacfwd(rate_curves)(physical, spec)


def delta_method_std(theta: np.ndarray, covariance: np.ndarray, layout: ParameterLayout, spec: ModelSpec) -> np.ndarray:
    """1-sigma of both curves, ``(2, N)``, by linear propagation of the covariance."""
    physical_slice = layout.physical_slice
    physical = jnp.asarray(theta[physical_slice])
    jacobian = np.asarray(rate_jacobian(physical, spec))  # (2, N, n_phys)
    block = covariance[physical_slice, physical_slice]
    variance = np.einsum("cnp,pq,cnq->cn", jacobian, block, jacobian)
    return np.sqrt(np.clip(variance, 0.0, None))


def jackknife_std(theta: np.ndarray, jackknife, model_std: np.ndarray, layout: ParameterLayout, spec: ModelSpec) -> np.ndarray:
    """1-sigma of both curves, ``(2, N)``, from the jackknife replicates' curves.

    Pointwise ``var_model + max(0, var_replicates - var_independent)`` over the converged
    refits (scaled as ``jackknife_covariance``), where
    ``var_independent`` propagates ``jackknife.covariance_independent``: what the
    replicates' spread would be from independent noise alone (``jackknife.py``).
    """
    if len(jackknife.kept) < 2:
        return model_std
    curves = np.stack([np.asarray(rate_curves(jnp.asarray(r[layout.physical_slice]), spec)) for r in jackknife.kept])
    deviations = curves - curves.mean(axis=0)
    replicate_variance = (len(jackknife.blocks) - 1) / curves.shape[0] * np.sum(deviations**2, axis=0)
    independent_variance = delta_method_std(theta, jackknife.covariance_independent, layout, spec) ** 2
    return np.sqrt(model_std**2 + np.clip(replicate_variance - independent_variance, 0.0, None))


def band_arrays(theta, covariance_model, jackknife, layout: ParameterLayout, spec: ModelSpec) -> dict[str, np.ndarray]:
    """``bands/...`` datasets of ``fit.h5``; ``*_std`` follow the jackknife when present.

    ``bands/t`` holds the times the rates are evaluated at (``dt/2`` for frame 0).
    """
    curves = np.asarray(rate_curves(jnp.asarray(theta[layout.physical_slice]), spec))
    model_std = delta_method_std(theta, covariance_model, layout, spec)
    arrays = {
        "bands/t": np.asarray(rate_times(spec.n_frames, spec.dt)),
        "bands/D": curves[0],
        "bands/D_std_model": model_std[0],
    }
    chosen = model_std
    if jackknife is not None:
        chosen = jackknife_std(theta, jackknife, model_std, layout, spec)
        arrays["bands/D_std_jackknife"] = chosen[0]
    arrays["bands/D_std"] = chosen[0]
    if spec.has_shear:
        arrays["bands/gamma_dot"] = curves[1]
        arrays["bands/gamma_dot_std_model"] = model_std[1]
        arrays["bands/gamma_dot_std"] = chosen[1]
        if jackknife is not None:
            arrays["bands/gamma_dot_std_jackknife"] = chosen[1]
    return arrays
