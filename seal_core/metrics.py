"""Ranking metrics shared by ``seal inspect``, benchmarks and reports (no sklearn)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

KEEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _key(scores: Sequence[float]) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    # NaN means "unscored": ranked last, as in the scores file.
    return np.where(np.isnan(s), -np.inf, s)


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ascending, tied values sharing their average rank."""
    v = np.asarray(values)
    n = len(v)
    order = np.argsort(v, kind="mergesort")
    sv = v[order]
    # `!=` rather than np.diff: -inf - -inf is NaN, which would split a tie.
    cut = np.flatnonzero(sv[1:] != sv[:-1]) + 1
    starts = np.r_[0, cut]
    ends = np.r_[cut, n]
    ranks = np.empty(n, np.float64)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2.

    Mann-Whitney U from average ranks; NaN when either class is empty. NaN
    scores count as the lowest score.
    """
    y = np.asarray(positives, dtype=bool)
    s = _key(scores)
    if len(s) != len(y):
        raise ValueError(f"scores and positives differ in length ({len(s)} vs {len(y)})")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def label_aurocs(scores: Sequence[float], labels: Sequence[Any]) -> dict[str, float]:
    """For each label L: AUROC that the score ranks the other samples above L's.

    1.0 means every L sample is below every other sample (the score pushes L
    down), 0.5 is chance, 0.0 means L is ranked on top.
    """
    lab = np.asarray([str(x) for x in labels], dtype=object)
    return {str(L): auroc(scores, lab != L) for L in sorted(set(lab.tolist()))}


def keep_order(scores: Sequence[float], sample_ids: Sequence[str] | None = None) -> np.ndarray:
    """Indices best-first; ties by sample_id when given (the selection rule), else by position."""
    key = _key(scores)
    if sample_ids is not None:
        return np.lexsort((np.asarray(sample_ids, dtype=object), -key))
    return np.argsort(-key, kind="stable")


def label_mix(
    scores: Sequence[float],
    labels: Sequence[Any],
    fractions: Sequence[float] = KEEP_FRACTIONS,
    sample_ids: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Label counts and shares of the kept set at each keep fraction.

    The kept set is the top ``k = floor(f*N + 0.5)`` (at least 1) samples, the
    same rule as ``seal select --top-p``.
    """
    from .selection import k_for_fraction

    lab = [str(x) for x in labels]
    if len(lab) != len(scores):
        raise ValueError(f"scores and labels differ in length ({len(scores)} vs {len(lab)})")
    names = sorted(set(lab))
    order = keep_order(scores, sample_ids)
    ranked = np.asarray(lab, dtype=object)[order]
    out = []
    for f in fractions:
        k = k_for_fraction(f, len(ranked))
        kept = ranked[:k].tolist()
        counts = {L: kept.count(L) for L in names}
        out.append({"fraction": float(f), "k": k, "counts": counts,
                    "shares": {L: (c / k if k else 0.0) for L, c in counts.items()}})
    return out
