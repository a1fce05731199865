"""Every jackknife refit's first normal equations from one shared pass at the optimum.

A refit without frame block ``b`` starts at the full fit's optimum ``theta_hat`` and its
first Levenberg-Marquardt iteration needs the normal equations (``J^T W J``, ``J^T W r``,
``chi2``, robust cost) of the points that touch no frame of ``b``. At ``theta_hat``
every point has the same Jacobian row and residual in every refit; only which points
count differs. So one pass computes, per chunk, the stacked design ``S``
(``kernels.chunk_design``) once, and from it

- the chunk's whole sums ``S^T S``, ``sum r^2``, ``sum rho``;
- the same sums over the points that touch each block ``b`` (``i`` or ``j`` in ``b``;
  a point with both in ``b`` counted once).

A point touches at most two blocks (those of its two frames), so the per-block sums are
taken with one scatter-add of the points' outer products over the ``K x K`` pairs of
blocks ``(block(i), block(j))``, then the pair sums of each block's row and column
(``touching_sums``): linear in the points, not ``K`` Gram products per chunk. Each row is
packed as the fit's kernel packs its chunks (``kernels.packed_sums``), the rows are
added over all chunks in the fit's fixed chunk order (``DistributedObjective.reduce``,
the same bits on any number of ranks), and the system of the kept points is the whole
minus the block's part (``kept_systems``). Rounding: the difference of two sums of
about ``n`` points each, i.e. relative ``1e-16`` of the whole data's terms.
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
    """``(K, M)`` sums over the points touching each block, from the ``(K, K, M)`` pair sums.

    ``by_pair[a, c]`` sums the points with ``block(i) = a`` and ``block(j) = c``. Block
    ``b``'s points are its row ``by_pair[b, :]`` (``i`` in ``b``) and its column without
    the diagonal ``by_pair[a != b, b]`` (``j`` in ``b``, ``i`` not).
    """
    n_blocks = by_pair.shape[0]
    off_diagonal = 1.0 - jnp.eye(n_blocks, dtype=by_pair.dtype)
    return by_pair.sum(axis=1) + (by_pair * off_diagonal[:, :, None]).sum(axis=0)


def chunk_left_out_rows(tables, pair_of_angle, chunk, block_of_frame, n_blocks: int, setup: KernelSetup):
    """``(1 + K, L)`` packed rows of one chunk: its whole sums, then those of the points touching each block.

    ``block_of_frame`` is ``block_of_frames`` as a device array; rows are ``pack_chunk``
    rows (``L`` as the fit's kernel), the points' residuals and Jacobian rows at the
    tables' ``theta`` (no frames excluded: padding has zero weight and adds nothing).
    """
    design = chunk_design(tables, pair_of_angle, chunk, setup)
    stacked = design.stacked
    n_points, width = stacked.shape
    span = pairs_per_chunk(setup, n_points)
    per_point = jnp.concatenate(
        [
            (stacked[:, :, None] * stacked[:, None, :]).reshape(n_points, width * width),
            design.squares[:, None],
            design.rho[:, None],
        ],
        axis=1,
    )
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
    """Per block, ``(J^T W J, J^T W r, chi2, cost)`` of the points that do not touch it.

    ``total`` is the sum over all chunks of ``chunk_left_out_terms``' rows: the whole
    data's packed sums, then each block's; the kept points' sums are their difference.
    """
    rows = np.asarray(total, dtype=np.float64).reshape(1 + n_blocks, -1)
    systems = []
    for part in rows[1:]:
        terms = unpack_accumulators(rows[0] - part, setup)
        hessian, gradient = assemble_normal_equations(terms, setup)
        systems.append((hessian, gradient, terms[2], terms[3]))
    return systems


def first_systems(objective, blocks: np.ndarray, theta: np.ndarray) -> list[Evaluation]:
    """Every refit's first system at ``theta`` in one counted pass (collective; same on every rank).

    ``objective`` is the fit's ``DistributedObjective`` (its points, kernel setup, and
    ordered reduction); ``blocks`` the ``(K, 2)`` frame ranges ``[start, stop)``. Entry
    ``b`` equals, up to rounding, ``objective(theta)`` with ``excluded_frames = blocks[b]``.
    """
    start = time.perf_counter()
    setup, n_blocks = objective.setup, len(blocks)
    block_of_frame = jnp.asarray(block_of_frames(blocks, setup.spec.n_frames))
    rows = chunk_left_out_terms(
        jnp.asarray(theta, dtype=jnp.float64),
        objective.phi,
        objective.pair_of_angle,
        objective.block,
        block_of_frame,
        setup=setup,
        n_blocks=n_blocks,
    )
    return kept_systems(objective.reduce(np.asarray(jax.block_until_ready(rows)), start), n_blocks, setup)
