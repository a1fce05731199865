"""Chunk kernels: ``J^T J``, ``J^T r`` and ``chi2`` of one rank's points, in JAX.

A point's Jacobian row is the chain rule of three scalar derivatives of ``g1**2`` (by the
diffusion integral, the strain and ``cos(phi0 - phi)``) with gathered rows of per-frame
tables of the integrals and their parameter derivatives: no autodiff over the points.
Contrast and offset columns are sparse (a point touches one pair), so their blocks of
``J^T J`` are accumulated per scaling pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..model import ModelSpec, ParameterLayout
from ..model.slopes import g1_squared_and_slopes, paper_shear_g1_squared_and_slopes
from ..model.transport import diffusion_integral, shear_integral
from .losses import loss_rho, loss_weight

PHI0_INDEX = 6
"""Position of ``phi0`` among the laminar-flow physical parameters."""


@dataclass(frozen=True)
class KernelSetup:
    """Static inputs of the kernels (hashable, so kernels are compiled once per setup)."""

    spec: ModelSpec
    layout: ParameterLayout
    loss: str = "linear"
    loss_scale: float = 1.0
    pair_span: int = 0
    """Most scaling pairs one chunk of the point set touches (``chunk_pair_span``); 0: the
    bound for whole upper triangles (``pairs_per_chunk``)."""

    @property
    def n_pairs(self) -> int:
        """Fitted (contrast, offset) pairs."""
        return self.layout.n_scaling_pairs

    @property
    def n_physical(self) -> int:
        """Physical parameters."""
        return self.layout.n_physical


def frame_tables(physical: jnp.ndarray, spec: ModelSpec):
    """``(C, dC, G, dG)``: the running integrals ``C`` (Angstrom^2) and ``G`` (strain), ``(N,)``,
    and their ``(N, 3)`` derivatives by ``D0, alpha, D_offset`` and by ``gamma_dot_t0, beta,
    gamma_dot_t_offset``; ``G``/``dG`` are zeros when static."""
    diffusion = partial(diffusion_integral, n_frames=spec.n_frames, dt=spec.dt)
    C, dC = diffusion(physical), jax.jacfwd(diffusion)(physical)[:, :3]
    if not spec.has_shear:
        return C, dC, jnp.zeros_like(C), jnp.zeros_like(dC)
    strain = partial(shear_integral, n_frames=spec.n_frames, dt=spec.dt)
    return C, dC, strain(physical), jax.jacfwd(strain)(physical)[:, 3:6]


class PointTables(NamedTuple):
    """Everything a point's model and Jacobian row gather from, built once per evaluation."""

    frames: jnp.ndarray
    """``(N, 8)`` rows ``[C, dC (3), G, dG (3)]`` (see ``frame_tables``)."""
    angles: jnp.ndarray
    """``(n_angles, 4)`` rows ``[contrast, offset, cos(phi0 - phi), -sin(phi0 - phi)]``
    (``(n_angles, 2)`` without shear)."""
    half_phase: jnp.ndarray | None
    """``(n_angles N, 2)`` rows ``[sin, cos](k_a G_n)`` for the ``paper`` shear form, else None."""


def point_tables(theta, phi_deg, setup: KernelSetup) -> PointTables:
    """The tables of ``point_model_and_jacobian`` at ``theta`` (``paper``: ``sin``/``cos`` of ``k_a G_n``,
    ``k_a = q h cos(phi0 - phi_a) / 2``, give ``Phi/2 = k_a (G_j - G_i)`` by angle addition)."""
    spec, layout = setup.spec, setup.layout
    contrast, offset, physical = layout.split(theta)
    C, dC, G, dG = frame_tables(physical, spec)
    frames = jnp.concatenate([C[:, None], dC, G[:, None], dG], axis=1)
    if not spec.has_shear:
        return PointTables(frames, jnp.stack([contrast, offset], axis=1), None)
    angle_rad = jnp.deg2rad(physical[PHI0_INDEX] - phi_deg)
    projections = jnp.cos(angle_rad)
    angles = jnp.stack([contrast, offset, projections, -jnp.sin(angle_rad)], axis=1)
    if spec.shear_form != "paper":
        return PointTables(frames, angles, None)
    arguments = ((0.5 * spec.q * spec.gap) * projections[:, None] * G[None, :]).ravel()
    return PointTables(frames, angles, jnp.stack([jnp.sin(arguments), jnp.cos(arguments)], axis=1))


def half_phase_trig(half_phase, angle, frame_i, frame_j, n_frames: int):
    """``sin`` and ``cos`` of ``Phi/2`` at each point by the angle-addition rule."""
    row = angle * n_frames
    sin_j, cos_j = half_phase[row + frame_j].T
    sin_i, cos_i = half_phase[row + frame_i].T
    return sin_j * cos_i - cos_j * sin_i, cos_j * cos_i + sin_j * sin_i


def point_model_and_jacobian(tables: PointTables, angle, frame_i, frame_j, setup: KernelSetup):
    """Model ``c2``, physical Jacobian ``(B, n_physical)`` and ``g1**2`` at a chunk of points."""
    spec = setup.spec
    steps = tables.frames[frame_j] - tables.frames[frame_i]
    diffusion_step, diffusion_slopes = steps[:, 0], steps[:, 1:4]
    per_angle = tables.angles[angle]
    point_contrast, point_offset = per_angle[:, 0], per_angle[:, 1]
    if spec.has_shear:
        projection, minus_sine = per_angle[:, 2], per_angle[:, 3]
        strain_step, strain_slopes = steps[:, 4], steps[:, 5:8]
    else:
        projection = strain_step = diffusion_step
    if tables.half_phase is not None:
        sine, cosine = half_phase_trig(tables.half_phase, angle, frame_i, frame_j, spec.n_frames)
        g1_sq, d_diffusion, d_strain, d_projection = paper_shear_g1_squared_and_slopes(
            diffusion_step, strain_step, projection, sine, cosine, spec
        )
    else:
        g1_sq, d_diffusion, d_strain, d_projection = g1_squared_and_slopes(diffusion_step, strain_step, projection, spec)
    columns = [d_diffusion[:, None] * diffusion_slopes]
    if spec.has_shear:
        d_phi0 = d_projection * minus_sine * (jnp.pi / 180.0)
        columns += [d_strain[:, None] * strain_slopes, d_phi0[:, None]]
    jacobian = point_contrast[:, None] * jnp.concatenate(columns, axis=1)
    model = point_offset + point_contrast * g1_sq
    return model, jacobian, g1_sq


def pairs_per_chunk(setup: KernelSetup, chunk_size: int) -> int:
    """Most scaling pairs one chunk can touch: ``setup.pair_span`` when set (measured), else the bound
    ``ceil((B-1)/P) + 1`` for whole upper triangles of ``P = N(N-1)/2`` points per angle."""
    if setup.n_pairs <= 1:
        return setup.n_pairs
    if setup.pair_span > 0:
        return int(min(setup.n_pairs, setup.pair_span))
    per_angle = setup.spec.n_frames * (setup.spec.n_frames - 1) // 2
    return int(min(setup.n_pairs, -(-(chunk_size - 1) // per_angle) + 1))


def chunk_pair_span(angle_chunks: np.ndarray, pair_of_angle: np.ndarray) -> int:
    """Most scaling pairs any chunk touches, from ``(n_chunks, >= 2)`` angle indices whose first
    and last columns are each chunk's first and last angle."""
    if angle_chunks.size == 0:
        return 1
    pairs = np.asarray(pair_of_angle)[np.asarray(angle_chunks)[:, [0, -1]]]
    return int((pairs[:, 1] - pairs[:, 0]).max()) + 1


def point_loss_weights(residual, setup: KernelSetup):
    """Loss weights ``rho'((r/f)^2)`` of the points (ones for the linear loss)."""
    if setup.loss == "linear":
        return jnp.ones_like(residual)
    return loss_weight((residual / setup.loss_scale) ** 2, setup.loss)


class ChunkDesign(NamedTuple):
    """One chunk's weighted design at ``theta``: every Gram sum of its points is made of it."""

    stacked: jnp.ndarray
    """``(B, n_phys + 1 + 2 K)`` rows ``[X, a M, b M]``: ``X = sqrt(W) [J_p, r]``, then the
    contrast and offset columns over the chunk's ``K`` pairs (one-hot membership ``M``)."""
    squares: jnp.ndarray
    """``(B,)`` squared residuals ``r^2`` (dimensionless: c2 over noise units)."""
    rho: jnp.ndarray
    """``(B,)`` robust loss ``rho((r/f)^2)`` of each point (the cost is ``f^2`` times their sum)."""
    first: jnp.ndarray
    """Index of the first scaling pair the chunk touches (0 without fitted pairs)."""


def chunk_design(tables: PointTables, pair_of_angle, chunk, setup: KernelSetup, excluded_frames=None, model_tables=None):
    """``ChunkDesign`` of one chunk ``(angle, i, j, value, weight)`` of angle-sorted points.

    ``W = rho'((r/f)^2)``, ``r = weight*(model - value)``, ``a = sqrt(W) weight g1^2``, ``b = sqrt(W) weight``.
    ``excluded_frames = [start, stop)`` zero-weights the points with ``i`` or ``j`` in it;
    ``model_tables`` (at ``theta'``) takes the residuals from ``theta'``, the Jacobian at ``theta``.
    """
    angle, frame_i, frame_j, value, weight = chunk
    if excluded_frames is not None:
        start, stop = excluded_frames[0], excluded_frames[1]
        touches = ((frame_i >= start) & (frame_i < stop)) | ((frame_j >= start) & (frame_j < stop))
        weight = jnp.where(touches, 0.0, weight)
    model, jac_phys, g1_sq = point_model_and_jacobian(tables, angle, frame_i, frame_j, setup)
    if model_tables is not None:
        model = point_model_and_jacobian(model_tables, angle, frame_i, frame_j, setup)[0]
    residual = weight * (model - value)
    design = jnp.concatenate([weight[:, None] * jac_phys, residual[:, None]], axis=1)
    z = (residual / setup.loss_scale) ** 2
    if setup.loss == "linear":
        root_weight = jnp.ones_like(residual)
    else:
        root_weight = jnp.sqrt(point_loss_weights(residual, setup))
        design = root_weight[:, None] * design
    squares, rho = residual * residual, loss_rho(z, setup.loss)
    if setup.n_pairs == 0:
        return ChunkDesign(design, squares, rho, jnp.zeros((), dtype=jnp.int32))
    span = pairs_per_chunk(setup, chunk[0].shape[0])
    pair = pair_of_angle[angle]
    first = pair[0]
    membership = ((pair - first)[:, None] == jnp.arange(span)[None, :]).astype(design.dtype)
    a = root_weight * weight * g1_sq
    b = root_weight * weight
    stacked = jnp.concatenate([design, a[:, None] * membership, b[:, None] * membership], axis=1)
    return ChunkDesign(stacked, squares, rho, first)


def gram_terms(full, first, setup: KernelSetup, span: int):
    """``(gram, pair_moments)`` from ``full = S^T S`` over (some) rows of ``ChunkDesign.stacked``.

    ``gram = X^T X`` (physical ``J^T W J``, last column ``J_p^T W r``); ``pair_moments``: per pair
    the sums ``a^2, ab, b^2, a X, b X`` from pair ``first`` on (rows past ``n_pairs``: scratch).
    """
    n_design = setup.n_physical + 1
    width = 3 + 2 * n_design
    gram = full[:n_design, :n_design]
    if setup.n_pairs == 0:
        return gram, jnp.zeros((0, width))
    a_rows = jnp.arange(span) + n_design
    b_rows = a_rows + span
    local = jnp.concatenate(
        [
            jnp.stack([full[a_rows, a_rows], full[a_rows, b_rows], full[b_rows, b_rows]], axis=1),
            full[a_rows, :n_design],
            full[b_rows, :n_design],
        ],
        axis=1,
    )
    moments = jnp.zeros((setup.n_pairs + span, width))
    return gram, jax.lax.dynamic_update_slice(moments, local, (first, 0))


def chunk_accumulators(tables: PointTables, pair_of_angle, chunk, setup: KernelSetup, excluded_frames=None, model_tables=None):
    """``(gram, pair_moments, sum r^2, f^2 sum rho((r/f)^2))`` of one chunk from one Gram matrix of its
    ``chunk_design`` (with ``model_tables`` ``gram``'s last column is ``J(theta)^T W r(theta')``)."""
    design = chunk_design(tables, pair_of_angle, chunk, setup, excluded_frames, model_tables)
    stacked = design.stacked
    gram, moments = gram_terms(stacked.T @ stacked, design.first, setup, pairs_per_chunk(setup, chunk[0].shape[0]))
    return gram, moments, jnp.sum(design.squares), setup.loss_scale**2 * jnp.sum(design.rho)


def pack_chunk(gram, moments, chi2, cost, setup: KernelSetup):
    """One chunk's accumulator terms as one row ``[gram, pair moments, chi2, cost]`` (``unpack_accumulators``)."""
    return jnp.concatenate([gram.ravel(), moments[: setup.n_pairs].ravel(), jnp.reshape(chi2, (1,)), jnp.reshape(cost, (1,))])


def packed_sums(full, chi2, rho_sum, first, setup: KernelSetup, span: int):
    """The packed row (``pack_chunk``) of some points of a chunk from their sums ``S^T S``,
    ``r^2`` and ``rho((r/f)^2)``; ``first`` and ``span`` as in ``gram_terms``."""
    gram, moments = gram_terms(full, first, setup, span)
    return pack_chunk(gram, moments, chi2, setup.loss_scale**2 * rho_sum, setup)


@partial(jax.jit, static_argnames=("setup",))
def chunk_terms(theta, phi_deg, pair_of_angle, block, excluded_frames=None, theta_model=None, *, setup: KernelSetup):
    """``(n_chunks, L)``: each chunk's packed ``chunk_accumulators`` (``lax.map``: one chunk's memory),
    to be added in global chunk order; ``excluded_frames``, ``theta_model`` as in ``chunk_design``."""
    tables = point_tables(theta, phi_deg, setup)
    model_tables = None if theta_model is None else point_tables(theta_model, phi_deg, setup)

    def one_chunk(chunk):
        return pack_chunk(*chunk_accumulators(tables, pair_of_angle, chunk, setup, excluded_frames, model_tables), setup)

    return jax.lax.map(one_chunk, block)


def block_accumulators(theta, phi_deg, pair_of_angle, block, excluded_frames=None, *, setup: KernelSetup):
    """``(gram, pair_moments, chi2, cost)`` of a whole block (its chunks summed in order)."""
    rows = np.asarray(chunk_terms(theta, phi_deg, pair_of_angle, block, excluded_frames, setup=setup))
    return unpack_accumulators(rows.sum(axis=0), setup)


def chunk_frame_sensitivity(tables: PointTables, pair_of_angle, chunk, setup: KernelSetup):
    """``(N, P)`` per-frame sums ``sum_{p touches f} w_p J_p`` of one chunk's weighted Jacobian rows:
    the change of ``J^T W r`` when every residual on frame ``f`` moves by one noise unit."""
    angle, frame_i, frame_j, value, weight = chunk
    model, jac_phys, g1_sq = point_model_and_jacobian(tables, angle, frame_i, frame_j, setup)
    lever = point_loss_weights(weight * (model - value), setup) * weight
    n_frames, n_pairs = setup.spec.n_frames, setup.n_pairs

    def frame_sum(values):
        by_i = jax.ops.segment_sum(values, frame_i, num_segments=n_frames)
        return by_i + jax.ops.segment_sum(values, frame_j, num_segments=n_frames)

    physical = frame_sum(lever[:, None] * jac_phys)
    if n_pairs == 0:
        return physical
    pair = pair_of_angle[angle]

    def pair_sum(values):
        by_i = jax.ops.segment_sum(values, frame_i * n_pairs + pair, num_segments=n_frames * n_pairs)
        by_j = jax.ops.segment_sum(values, frame_j * n_pairs + pair, num_segments=n_frames * n_pairs)
        return (by_i + by_j).reshape(n_frames, n_pairs)

    return jnp.concatenate([pair_sum(lever * g1_sq), pair_sum(lever), physical], axis=1)


@partial(jax.jit, static_argnames=("setup",))
def chunk_frame_sensitivities(theta, phi_deg, pair_of_angle, block, *, setup: KernelSetup):
    """``(n_chunks, N * P)``: each chunk's ``chunk_frame_sensitivity``, flattened."""
    tables = point_tables(theta, phi_deg, setup)
    return jax.lax.map(lambda chunk: chunk_frame_sensitivity(tables, pair_of_angle, chunk, setup).ravel(), block)


def block_frame_sensitivity(theta, phi_deg, pair_of_angle, block, *, setup: KernelSetup) -> np.ndarray:
    """``(N, P)`` sum of ``chunk_frame_sensitivity`` over a block (chunks added in order)."""
    rows = np.asarray(chunk_frame_sensitivities(theta, phi_deg, pair_of_angle, block, setup=setup))
    return rows.sum(axis=0).reshape(setup.spec.n_frames, -1)


def chunk_frame_noise_terms(tables: PointTables, pair_of_angle, chunk, setup: KernelSetup):
    """One chunk's sums for the frame-shared noise model (``nlsq/gls.py``), flattened: per angle the
    Gram matrix of ``X = weight [J_p, g1^2, 1, model - value]`` (``(n_angles, q, q)``, ``q = n_phys +
    3``: physical, contrast and offset columns, residual), per angle and frame the sums of ``X``'s rows
    over the points touching the frame with a last column counting them (``(n_angles, N, q + 1)``),
    and the points of each angle (``(n_angles,)``). Zero-weight points (padding) count for nothing."""
    angle, frame_i, frame_j, value, weight = chunk
    model, jac_phys, g1_sq = point_model_and_jacobian(tables, angle, frame_i, frame_j, setup)
    design = weight[:, None] * jnp.concatenate(
        [jac_phys, g1_sq[:, None], jnp.ones_like(g1_sq)[:, None], (model - value)[:, None]], axis=1
    )
    n_angles, n_frames = setup.layout.n_angles, setup.spec.n_frames
    real = (weight > 0).astype(design.dtype)
    members = (angle[:, None] == jnp.arange(n_angles)[None, :]).astype(design.dtype)
    grams = jnp.einsum("ba,bi,bj->aij", members, design, design)
    rows = jnp.concatenate([design, real[:, None]], axis=1)
    slots = n_angles * n_frames
    frames = jax.ops.segment_sum(rows, angle * n_frames + frame_i, num_segments=slots)
    frames = frames + jax.ops.segment_sum(rows, angle * n_frames + frame_j, num_segments=slots)
    return jnp.concatenate([grams.ravel(), frames.ravel(), members.T @ real])


@partial(jax.jit, static_argnames=("setup",))
def chunk_frame_noise_rows(theta, phi_deg, pair_of_angle, block, *, setup: KernelSetup):
    """``(n_chunks, L)``: each chunk's ``chunk_frame_noise_terms``, to be added in global chunk order."""
    tables = point_tables(theta, phi_deg, setup)
    return jax.lax.map(lambda chunk: chunk_frame_noise_terms(tables, pair_of_angle, chunk, setup), block)


def pack_accumulators(terms) -> np.ndarray:
    """One float64 buffer of the accumulator terms, for a single Allreduce."""
    return np.concatenate([np.asarray(term, dtype=np.float64).ravel() for term in terms])


def unpack_accumulators(buffer: np.ndarray, setup: KernelSetup):
    """Inverse of ``pack_accumulators``: ``(gram, pair_moments, chi2, cost)``."""
    n_design = setup.n_physical + 1
    width = 3 + 2 * n_design
    sizes = [n_design * n_design, setup.n_pairs * width, 1, 1]
    parts = np.split(np.asarray(buffer), np.cumsum(sizes)[:-1])
    return (parts[0].reshape(n_design, n_design), parts[1].reshape(setup.n_pairs, width), float(parts[2][0]), float(parts[3][0]))


def assemble_normal_equations(terms, setup: KernelSetup):
    """Full ``J^T W J`` ``(P, P)`` and ``J^T W r`` ``(P,)`` in parameter-vector order."""
    gram, moments = terms[0], terms[1]
    n_pairs, n_phys = setup.n_pairs, setup.n_physical
    size = 2 * n_pairs + n_phys
    hessian = np.zeros((size, size))
    gradient = np.zeros(size)
    phys = slice(2 * n_pairs, size)
    hessian[phys, phys] = gram[:n_phys, :n_phys]
    gradient[phys] = gram[:n_phys, n_phys]
    contrast, offset = np.arange(n_pairs), n_pairs + np.arange(n_pairs)
    a_design, b_design = moments[:, 3 : 4 + n_phys], moments[:, 4 + n_phys :]
    hessian[contrast, contrast], hessian[offset, offset] = moments[:, 0], moments[:, 2]
    hessian[contrast, offset] = hessian[offset, contrast] = moments[:, 1]
    hessian[contrast, phys], hessian[phys, contrast] = a_design[:, :n_phys], a_design[:, :n_phys].T
    hessian[offset, phys], hessian[phys, offset] = b_design[:, :n_phys], b_design[:, :n_phys].T
    gradient[contrast], gradient[offset] = a_design[:, n_phys], b_design[:, n_phys]
    return hessian, gradient
