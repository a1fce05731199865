"""Cost per LM iteration of the rank-independent reduction against one plain Allreduce.

Usage: mpiexec -n R python scripts/bench_reduction.py [--sizes 1e6,1e7] [--output FILE]

For a laminar-flow problem with 6 angles (one row of 180 accumulator numbers per chunk
of 8192 points), each rank holds its chunks' rows (random numbers) as the fit's kernel
leaves them, and the script times, median over 50 repetitions:

- ``allreduce``: sum the rows locally, then one ``Allreduce`` (the reduction before the
  chunk tree: bits depend on the rank count);
- ``ordered``: ``Comm.sum_in_chunk_order`` (local tree nodes, one ``Allgatherv``, tree
  completed on every rank: same bits on any rank count).

With ``--kernel`` rank 0 also times one accumulation pass (``chunk_terms``) over its own
share of the points of a simulated problem, the work the reduction is compared with.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import numpy as np  # noqa: E402
from bench_common import machine, write_json  # noqa: E402

from homodyne_mpi.parallel import get_comm  # noqa: E402
from homodyne_mpi.parallel.chunk_order import chunk_layout  # noqa: E402

ROW = 8 * 8 + 6 * 19 + 2
"""Accumulator numbers per chunk: 8x8 physical Gram block, 6 pairs x 19 moments, chi2, cost."""


def median_seconds(function, comm, repeats: int = 50) -> float:
    """Median wall time of ``function()`` across repetitions, the slowest rank's each time."""
    times = []
    for _ in range(repeats):
        comm.barrier()
        start = time.perf_counter()
        function()
        elapsed = time.perf_counter() - start
        times.append(max(comm.allgather_rows(np.array([elapsed]))))
    return statistics.median(times)


def kernel_seconds(n_points: int, n_ranks: int) -> float:
    """One ``chunk_terms`` pass over ``n_points / n_ranks`` laminar points (best of 3), seconds."""
    import jax
    import jax.numpy as jnp

    from homodyne_mpi.data.points import PointSet
    from homodyne_mpi.model import ModelSpec, ParameterLayout
    from homodyne_mpi.nlsq.fit import device_block
    from homodyne_mpi.nlsq.kernels import KernelSetup, chunk_terms

    n_frames = int(np.sqrt(2 * n_points / 6)) + 1
    spec = ModelSpec("laminar_flow", "paper", 0.0054, 0.1, n_frames, gap=2e6)
    layout = ParameterLayout("laminar_flow", 6)
    theta = jnp.asarray(layout.join(np.full(6, 0.3), np.ones(6), np.array([1e4, -0.5, 5.0, 1e-4, 0.2, 1e-5, 4.0])))
    phi = jnp.asarray([-60.0, -30.0, 0.0, 30.0, 60.0, 90.0])
    local = n_points // n_ranks
    rng = np.random.default_rng(0)
    frame_i = rng.integers(0, n_frames - 1, local).astype(np.int32)
    points = PointSet(
        np.sort(rng.integers(0, 6, local)).astype(np.int32),
        frame_i,
        (frame_i + 1).astype(np.int32),
        rng.random(local),
        np.ones(local),
    )
    block = device_block(points, 8192)
    setup = KernelSetup(spec, layout)
    compiled = chunk_terms.lower(theta, phi, jnp.arange(6), block, setup=setup).compile()
    best = np.inf
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(compiled(theta, phi, jnp.arange(6), block))
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e6,1e7")
    parser.add_argument("--kernel", action="store_true", help="also time one accumulation pass on rank 0")
    parser.add_argument("--output", default="bench_results/bench_reduction.json")
    args = parser.parse_args()
    comm = get_comm()
    document = {
        "benchmark": "ordered reduction",
        "command": " ".join(["python", *sys.argv]),
        "ranks": comm.size,
        "machine": machine(),
        "sizes": {},
    }
    for size in args.sizes.split(","):
        n_points = int(float(size))
        layout = chunk_layout(n_points, 8192, comm.size)
        first, stop = layout.chunks_of(comm.rank)
        rows = np.random.default_rng(comm.rank).standard_normal((stop - first, ROW))
        entry = {
            "chunks": layout.n_chunks,
            "allreduce_s": median_seconds(lambda rows=rows: comm.allreduce_sum(rows.sum(axis=0)), comm),
            "ordered_s": median_seconds(
                lambda rows=rows, first=first, layout=layout: comm.sum_in_chunk_order(rows, first, layout.n_chunks), comm
            ),
        }
        if args.kernel and comm.is_root:
            entry["accumulation_s_per_rank"] = kernel_seconds(n_points, comm.size)
        document["sizes"][size] = entry
    if comm.is_root:
        write_json(args.output, document)


if __name__ == "__main__":
    main()
