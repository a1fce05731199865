"""Pure functions that decide who gets what: no MPI calls here."""

from __future__ import annotations

import numpy as np


def balanced_counts(n_items: int, n_parts: int) -> np.ndarray:
    """Sizes of ``n_parts`` contiguous blocks covering ``n_items``, the first ``n_items % n_parts`` one larger.

    A part may be empty when there are fewer items than parts (it then contributes zeros to every sum).
    """
    if n_parts < 1 or n_items < 0:
        raise ValueError("balanced_counts needs n_parts >= 1 and n_items >= 0")
    base, extra = divmod(n_items, n_parts)
    counts = np.full(n_parts, base, dtype=np.int64)
    counts[:extra] += 1
    return counts
