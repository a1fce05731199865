"""How much memory the frame-shared noise fit's per-chunk sums take, checked before any fitting.

``kernels.chunk_frame_noise_rows`` gives one row of sums per chunk; a rank holds the rows of all
its chunks until they are reduced (``nlsq/gls.py``, docs/nlsq.md), so the rows, not the
points, bound the memory at large angle and frame counts.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

MAX_ROW_BYTES = 2**30
"""Most bytes of per-chunk sums (``kernels.chunk_frame_noise_rows``) one rank may hold at once."""


def row_length(setup) -> int:
    """Numbers in one chunk's row of sums (``kernels.chunk_frame_noise_terms``)."""
    q = setup.n_physical + 3
    return setup.layout.n_angles * (q * q + setup.spec.n_frames * (q + 1) + 1)


def check_row_memory(objective) -> None:
    """Refuse, on every rank alike and before any fitting, when the largest rank's chunk rows of
    sums would exceed ``MAX_ROW_BYTES`` (``InputError``: one line, exit code 2)."""
    most_chunks = int(max(np.diff(objective.layout.edges)))
    row_bytes = most_chunks * row_length(objective.setup) * 8
    if row_bytes > MAX_ROW_BYTES:
        spec = objective.setup.spec
        raise InputError(
            f"noise_model frame_shared would hold {row_bytes / 2**30:.3g} GiB of per-frame sums on a rank "
            f"({most_chunks} chunks x {objective.setup.layout.n_angles} angles x {spec.n_frames} frames; limit "
            f"{MAX_ROW_BYTES / 2**30:.3g} GiB) -- run on more ranks, raise optimization.nlsq.chunk_size, "
            "select fewer frames, or use optimization.nlsq.noise_model: independent"
        )
