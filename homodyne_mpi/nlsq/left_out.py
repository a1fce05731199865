"""Every jackknife refit's first normal equations from one shared pass at the optimum.

A refit without frame block ``b`` starts at the full fit's optimum, where every point has
the same Jacobian row and residual in every refit; only which points count differs. So
one pass computes, per chunk, the stacked design ``S`` (``kernels.chunk_design``) and from
it the chunk's whole sums (``S^T S``, ``sum r^2``, ``sum rho``) and the same sums over the
points touching each block (``i`` or ``j`` in it, counted once). A point touches at most
two blocks, so the latter are one scatter-add of the points' outer products over the
``K x K`` block pairs ``(block(i), block(j))``, then each block's row and column
(``touching_sums``). The rows are packed as the fit's (``kernels.packed_sums``), added in
the fit's chunk order, and each kept system is the whole minus the block's part
(``kept_systems``): rounding relative ``1e-16`` of the whole data's terms.
"""

from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .kernels import (
    KernelSetup,
    assemble_normal_equations,
    chunk_design,
    packed_sums,
    pairs_per_chunk,
    point_tables,
    unpack_accumulators,
)
from .solver import Evaluation


def block_of_frames(blocks: np.ndarray, n_frames: int) -> np.ndarray:
    """``(N,)`` int32 index of the block that holds each frame (``blocks`` ``(K, 2)`` cover ``0..N-1``)."""
    blocks = np.asarray(blocks)
    index = np.full(n_frames, -1, dtype=np.int32)
    for b, (start, stop) in enumerate(blocks):
        index[start:stop] = b
    if np.any(index < 0):
        raise ValueError("the frame blocks do not cover every frame")
    return index


def touching_sums(by_pair: jnp.ndarray) -> jnp.ndarray:
    """``(K, M)`` sums over the points touching each block, from the ``(K, K, M)`` sums ``by_pair[a, c]``
    of the points with ``block(i) = a``, ``block(j) = c``: block ``b``'s row and its column off the diagonal."""
    n_blocks = by_pair.shape[0]
    off_diagonal = 1.0 - jnp.eye(n_blocks, dtype=by_pair.dtype)
    return by_pair.sum(axis=1) + (by_pair * off_diagonal[:, :, None]).sum(axis=0)


def chunk_left_out_rows(tables, pair_of_angle, chunk, block_of_frame, n_blocks: int, setup: KernelSetup):
    """``(1 + K, L)`` packed rows (``pack_chunk``) of one chunk at the tables' ``theta``: its whole
    sums, then those of the points touching each block (``block_of_frame`` on the device)."""
    design = chunk_design(tables, pair_of_angle, chunk, setup)
    stacked = design.stacked
    n_points, width = stacked.shape
    span = pairs_per_chunk(setup, n_points)
    outer = (stacked[:, :, None] * stacked[:, None, :]).reshape(n_points, width * width)
    per_point = jnp.concatenate([outer, design.squares[:, None], design.rho[:, None]], axis=1)
    pair = block_of_frame[chunk[1]] * n_blocks + block_of_frame[chunk[2]]
    by_pair = jax.ops.segment_sum(per_point, pair, num_segments=n_blocks * n_blocks)
    touching = touching_sums(by_pair.reshape(n_blocks, n_blocks, -1))
    whole = jnp.concatenate([(stacked.T @ stacked).ravel(), jnp.sum(design.squares)[None], jnp.sum(design.rho)[None]])
    sums = jnp.concatenate([whole[None], touching])

    def packed(row):
        return packed_sums(row[: width * width].reshape(width, width), row[-2], row[-1], design.first, setup, span)

    return jax.vmap(packed)(sums)


@partial(jax.jit, static_argnames=("setup", "n_blocks"))
def chunk_left_out_terms(theta, phi_deg, pair_of_angle, block, block_of_frame, *, setup: KernelSetup, n_blocks: int):
    """``(n_chunks, (1 + K) L)``: each chunk's ``chunk_left_out_rows``, flattened."""
    tables = point_tables(theta, phi_deg, setup)

    def one_chunk(chunk):
        return chunk_left_out_rows(tables, pair_of_angle, chunk, block_of_frame, n_blocks, setup).ravel()

    return jax.lax.map(one_chunk, block)


def kept_systems(total: np.ndarray, n_blocks: int, setup: KernelSetup) -> list[Evaluation]:
    """Per block, ``(J^T W J, J^T W r, chi2, cost)`` of the points that do not touch it, from
    ``total``, the sum over all chunks of ``chunk_left_out_terms``' rows (whole, then per block)."""
    rows = np.asarray(total, dtype=np.float64).reshape(1 + n_blocks, -1)
    systems = []
    for part in rows[1:]:
        terms = unpack_accumulators(rows[0] - part, setup)
        hessian, gradient = assemble_normal_equations(terms, setup)
        systems.append((hessian, gradient, terms[2], terms[3]))
    return systems


def first_systems(objective, blocks: np.ndarray, theta: np.ndarray) -> list[Evaluation]:
    """Every refit's first system at ``theta`` in one counted pass (collective; same on every rank).

    Entry ``b`` equals, up to rounding, the fit's ``objective(theta)`` with
    ``excluded_frames = blocks[b]`` (``blocks``: ``(K, 2)`` frame ranges ``[start, stop)``).
    """
    start = time.perf_counter()
    setup, n_blocks = objective.setup, len(blocks)
    block_of_frame = jnp.asarray(block_of_frames(blocks, setup.spec.n_frames))
    theta_device = jnp.asarray(theta, dtype=jnp.float64)
    rows = chunk_left_out_terms(
        theta_device, objective.phi, objective.pair_of_angle, objective.block, block_of_frame, setup=setup, n_blocks=n_blocks
    )
    return kept_systems(objective.reduce(np.asarray(jax.block_until_ready(rows)), start), n_blocks, setup)
