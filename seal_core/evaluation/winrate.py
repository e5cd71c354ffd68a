"""Win-rate statistics with AlpacaEval's definitions.

Each preference ``p`` in [0, 1] is the probability that the candidate's answer
is preferred over the baseline's (0.5 is a tie). AlpacaEval reports the mean
preference as the win rate and the standard error of that mean; it also counts
hard wins, losses and ties and a "discrete" win rate where a tie is half a win.

With a single preference the sample standard deviation is undefined, so
``standard_error`` is NaN (as ``pandas.Series.sem`` gives); it is written as
``null`` in JSON.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

# Averaging the two judge orders computes (p1 + (1 - p2)) / 2, which can land a
# rounding error away from 0.5 for an exact tie; AlpacaEval's ``== 1.5`` test
# would then call it a win or a loss.
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class WinRateSummary:
    """Win-rate statistics over ``n_total`` preferences (rates in percent)."""

    win_rate: float
    standard_error: float
    n_wins: int
    n_losses: int
    n_ties: int
    discrete_win_rate: float
    n_total: int
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; NaN becomes None so the result is valid JSON."""
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WinRateSummary":
        return cls(**{f.name: (math.nan if d.get(f.name) is None else d[f.name]) for f in dataclasses.fields(cls)})


def _as_array(preferences: Iterable[float]) -> np.ndarray:
    p = np.asarray(list(preferences), dtype=np.float64)
    if p.ndim != 1:
        raise ValueError("preferences must be a flat sequence of numbers")
    if p.size == 0:
        raise ValueError("cannot summarise an empty list of preferences (no prompt was judged)")
    if not np.all(np.isfinite(p)):
        raise ValueError("preferences contain NaN or infinite values")
    if np.any((p < 0) | (p > 1)):
        bad = p[(p < 0) | (p > 1)][0]
        raise ValueError(f"preferences must lie in [0, 1], got {bad!r}")
    return p


def bootstrap_ci(
    p: np.ndarray, *, n_bootstrap: int = 2000, seed: int = 0, confidence: float = 0.95, chunk: int = 200
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``p`` (same units as ``p``)."""
    if n_bootstrap < 1:
        raise ValueError("n_bootstrap must be >= 1")
    rng = np.random.default_rng(seed)
    n = p.size
    means = np.empty(n_bootstrap, dtype=np.float64)
    # Resampled in chunks so 2000 x n indices are never held at once for large n.
    for start in range(0, n_bootstrap, chunk):
        stop = min(start + chunk, n_bootstrap)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = p[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def summarize(
    preferences: Iterable[float], *, seed: int = 0, n_bootstrap: int = 2000, confidence: float = 0.95
) -> WinRateSummary:
    """AlpacaEval-style summary of candidate-preference probabilities.

    ``win_rate = 100 * mean(p)``; ``standard_error = 100 * std(p, ddof=1) / sqrt(n)``
    (NaN for n = 1); wins/losses/ties count ``p > 0.5``, ``p < 0.5`` and ``p == 0.5``
    (within 1e-9); ``discrete_win_rate = 100 * (wins + ties / 2) / n``;
    ``ci_low``/``ci_high`` is a seeded percentile bootstrap interval of the win rate.
    Raises ValueError on empty input or values outside [0, 1].
    """
    p = _as_array(preferences)
    n = int(p.size)
    diff = p - 0.5
    n_ties = int(np.sum(np.abs(diff) <= TIE_TOLERANCE))
    n_wins = int(np.sum(diff > TIE_TOLERANCE))
    n_losses = int(np.sum(diff < -TIE_TOLERANCE))
    se = float(100.0 * np.std(p, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    lo, hi = bootstrap_ci(p, n_bootstrap=n_bootstrap, seed=seed, confidence=confidence)
    return WinRateSummary(
        win_rate=float(100.0 * p.mean()),
        standard_error=se,
        n_wins=n_wins,
        n_losses=n_losses,
        n_ties=n_ties,
        discrete_win_rate=float(100.0 * (n_wins + n_ties / 2.0) / n),
        n_total=n,
        ci_low=100.0 * lo,
        ci_high=100.0 * hi,
    )
