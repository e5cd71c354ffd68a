"""The scores file every ranker writes: one row per pool sample.

Columns: ``sample_id``, ``score`` (higher means keep), ``rank`` (1 = best),
``weight`` (the ranker's sample weight; for baselines, the score mapped to a
weight) and ``loss`` (per-sample loss under the final model, NaN where a method
has none). ``method=combined`` adds one ``signal_<name>`` column per signal it
averaged (the signal's own value, higher = keep), so a user can see which signal
dropped a sample and re-weight without rescoring. Ranks break ties by
``sample_id`` so selection is exact and reproducible.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..io import write_parquet

SCORES_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("score", pa.float64()),
        ("rank", pa.int64()),
        ("weight", pa.float64()),
        ("loss", pa.float64()),
    ]
)

METADATA_KEY = "seal"


def rank_order(sample_ids: Sequence[str], scores: Sequence[float]) -> np.ndarray:
    """Indices sorted best-first: score descending, then sample_id ascending; NaN last."""
    s = np.asarray(scores, dtype=np.float64)
    ids = np.asarray(sample_ids, dtype=object)
    # lexsort sorts by the last key first; -inf for NaN puts unscored samples at the bottom.
    key = np.where(np.isnan(s), -np.inf, s)
    return np.lexsort((ids, -key))


def build_scores_table(
    sample_ids: Sequence[str],
    scores: Sequence[float],
    weights: Sequence[float] | None = None,
    losses: Sequence[float] | None = None,
    signals: dict[str, Sequence[float]] | None = None,
) -> pa.Table:
    """The scores table, best first; ``signals`` become ``signal_<name>`` float64 columns after ``loss``."""
    n = len(sample_ids)
    if len(set(sample_ids)) != n:
        raise ValueError("sample_ids must be unique")
    order = rank_order(sample_ids, scores)
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(1, n + 1)
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.asarray(weights if weights is not None else np.full(n, np.nan), dtype=np.float64)
    losses = np.asarray(losses if losses is not None else np.full(n, np.nan), dtype=np.float64)
    # Stored best-first so `head()` in pandas/DuckDB shows the kept samples.
    table = pa.table(
        {
            "sample_id": pa.array([sample_ids[i] for i in order], pa.string()),
            "score": pa.array(scores[order]),
            "rank": pa.array(ranks[order]),
            "weight": pa.array(weights[order]),
            "loss": pa.array(losses[order]),
        },
        schema=SCORES_SCHEMA,
    )
    for name, values in (signals or {}).items():
        v = np.asarray(values, dtype=np.float64)
        if v.shape != (n,):
            raise ValueError(f"signal {name!r} has {v.size} values for {n} samples")
        table = table.append_column(pa.field(f"signal_{name}", pa.float64()), pa.array(v[order]))
    return table


def softmax_weights(scores: Sequence[float]) -> np.ndarray:
    """``N * softmax(score)``: a weight for methods that learn none, on SEAL's scale (NaN scores get 0)."""
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    if not np.isfinite(s).any():
        return np.full(len(s), np.nan)
    e = np.exp(s - np.max(s[np.isfinite(s)]))
    return len(s) * e / e.sum()


def write_scores(
    path: str | Path,
    sample_ids: Sequence[str],
    scores: Sequence[float],
    weights: Sequence[float] | None = None,
    losses: Sequence[float] | None = None,
    metadata: dict[str, Any] | None = None,
    signals: dict[str, Sequence[float]] | None = None,
) -> Path:
    """Write ``scores.parquet`` atomically; ``metadata`` (resolved config, model id,
    input fingerprints) goes into the Parquet key-value metadata as JSON under ``seal``."""
    table = build_scores_table(sample_ids, scores, weights, losses, signals)
    kv = {METADATA_KEY: json.dumps(metadata or {}, sort_keys=True, default=str)}
    return write_parquet(path, table, kv)


def read_scores_metadata(path: str | Path) -> dict[str, Any]:
    try:
        md = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read scores file {path}: {e}") from None
    raw = md.get(METADATA_KEY.encode())
    return json.loads(raw) if raw else {}
