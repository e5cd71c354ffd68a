"""DSIR baseline: hashed n-gram importance weights toward the safe set.

Xie et al. 2023, "Data Selection for Language Models via Importance
Resampling". Each conversation (all message contents, lowercased, split into
words and punctuation runs) becomes hashed unigram + bigram counts. Two
bag-of-n-grams distributions are fitted with add-one (Laplace) smoothing:
``p_target`` on the safe set and ``p_raw`` on the pool. A sample's score is its
log importance weight ``sum_f count_f * (log p_target[f] - log p_raw[f])``:
higher means more like the safe set, so it ranks first.

The score is unnormalised, as in DSIR (longer conversations get larger
magnitudes); ``length_normalize=True`` divides by the number of n-grams, which
ranks by average per-n-gram evidence instead.

Buckets come from ``zlib.crc32`` of the n-gram's UTF-8 bytes: a stable hash
(Python's ``hash()`` is salted per process, which would change scores between
runs).
"""

from __future__ import annotations

import re
import zlib
from typing import Iterable, Mapping, Sequence

import numpy as np

# Words and runs of punctuation (the WordPunct tokenisation DSIR uses).
_TOKEN = re.compile(r"\w+|[^\w\s]+")


def conversation_text(sample: Mapping) -> str:
    return "\n".join(m["content"] for m in sample["messages"])


def hashed_ngrams(text: str, n_buckets: int, ngrams: Sequence[int] = (1, 2)) -> np.ndarray:
    """Bucket ids of every n-gram occurrence in ``text``."""
    toks = _TOKEN.findall(text.lower())
    out: list[int] = []
    crc = zlib.crc32
    for n in ngrams:
        if n == 1:
            grams: Iterable[str] = toks
        else:
            grams = (" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1))
        out.extend(crc(g.encode("utf-8")) % n_buckets for g in grams)
    return np.asarray(out, dtype=np.uint16 if n_buckets <= 1 << 16 else np.uint32)


def _featurise(samples: Sequence[Mapping], n_buckets: int, ngrams: Sequence[int]) -> list[np.ndarray]:
    return [hashed_ngrams(conversation_text(s), n_buckets, ngrams) for s in samples]


def _log_distribution(feats: list[np.ndarray], n_buckets: int, smoothing: float) -> np.ndarray:
    counts = np.zeros(n_buckets, np.float64)
    for f in feats:
        counts += np.bincount(f, minlength=n_buckets)
    return np.log(counts + smoothing) - np.log(counts.sum() + smoothing * n_buckets)


def dsir_scores(
    pool_samples: Sequence[Mapping],
    safe_samples: Sequence[Mapping],
    n_buckets: int = 10000,
    ngrams: Sequence[int] = (1, 2),
    length_normalize: bool = False,
    smoothing: float = 1.0,
) -> np.ndarray:
    """Log importance weight of each pool sample toward the safe set (higher = keep)."""
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
    if not ngrams or any(n < 1 for n in ngrams):
        raise ValueError(f"ngrams must be positive integers, got {ngrams!r}")
    pool_feats = _featurise(pool_samples, n_buckets, ngrams)
    log_target = _log_distribution(_featurise(safe_samples, n_buckets, ngrams), n_buckets, smoothing)
    log_raw = _log_distribution(pool_feats, n_buckets, smoothing)
    ratio = log_target - log_raw
    out = np.empty(len(pool_feats), np.float64)
    for i, f in enumerate(pool_feats):
        w = float(ratio[f].sum())
        out[i] = w / len(f) if (length_normalize and len(f)) else w
    return out
