"""The random baseline: a seeded score that depends only on (seed, sample_id).

Hashing each id (instead of drawing from an RNG in input order) makes the score
of a sample the same whatever order, subset or machine the pool comes in, so a
random selection is reproducible from the seed alone.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

_SCALE = float(2**53)


def random_scores(sample_ids: Iterable[str], seed: int = 0) -> np.ndarray:
    """Uniform scores in [0, 1), one per id: blake2b(seed, sample_id) -> 53-bit fraction."""
    key = str(int(seed)).encode()
    out = []
    for sid in sample_ids:
        h = hashlib.blake2b(sid.encode("utf-8"), digest_size=8, key=key)
        # 53 bits: exactly representable in float64, so distinct hashes stay distinct scores.
        out.append((int.from_bytes(h.digest(), "little") >> 11) / _SCALE)
    return np.asarray(out, dtype=np.float64)
