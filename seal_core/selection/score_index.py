"""A scores file held as sorted fixed-width ids and their scores, and the choice of the selected positions."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import InputError
from .config import SelectConfig, k_for_fraction
from .ids import fixed_width_ids, max_id_bytes
from .progress import ProgressBar

# Streamed reads: without pre-buffering, Arrow would keep every column chunk it has read
# cached until the file is closed (the whole id column of a 10M pool: ~250 MB).
READ_BUFFER = 1 << 20


@dataclass
class ScoreIndex:
    """A scores file's ids (sorted, fixed-width bytes) and their scores (NaN as -inf), aligned."""

    path: Path
    ids: np.ndarray
    scores: np.ndarray
    width: int

    def __len__(self) -> int:
        return len(self.ids)


def resolve_scores_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        if (p / "scores.parquet").is_file():
            return p / "scores.parquet"
        raise InputError(f"scores: {p} is a directory without scores.parquet")
    if not p.exists():
        raise InputError(f"scores file not found: {p}")
    return p


def _open_scores_file(p: Path) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(p, pre_buffer=False, buffer_size=READ_BUFFER)
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read scores file {p}: {e}") from None
    names = pf.schema_arrow.names
    for col in ("sample_id", "score"):
        if col not in names:
            raise InputError(f"{p}: not a scores file (missing column {col!r}; has {', '.join(names) or 'none'})")
    score_type = pf.schema_arrow.field("score").type
    if not (pa.types.is_floating(score_type) or pa.types.is_integer(score_type) or pa.types.is_decimal(score_type)):
        raise InputError(f"{p}: column score must be numeric, got {score_type}")
    if pf.metadata.num_rows == 0:
        raise InputError(f"{p}: the scores file has no rows")
    return pf


def read_score_index(path: str | os.PathLike, batch_size: int = 65536, progress: bool = False) -> ScoreIndex:
    """Read only ``sample_id`` and ``score`` of a scores file, sorted by id; reject duplicates."""
    p = resolve_scores_path(path)
    pf = _open_scores_file(p)
    n = pf.metadata.num_rows
    ids: np.ndarray | None = None
    scores = np.empty(n, np.float64)
    width = 0
    i = 0
    with ProgressBar(progress, n, "select: read scores") as bar:
        try:
            for batch in pf.iter_batches(batch_size=batch_size, columns=["sample_id", "score"]):
                col = batch.column(0)
                m = len(col)
                w = max(max_id_bytes(col, str(p)), 1)
                if ids is None or w > width:
                    width = max(w, width)
                    ids = np.zeros(n, f"S{width}") if ids is None else ids.astype(f"S{width}")
                ids[i : i + m] = fixed_width_ids(col, width, str(p))[0]
                scores[i : i + m] = pc.fill_null(batch.column(1).cast(pa.float64()), math.nan).to_numpy(
                    zero_copy_only=False)
                i += m
                bar.update(m)
        except (OSError, pa.ArrowInvalid) as e:
            raise InputError(f"cannot read scores file {p}: {e}") from None
    assert ids is not None
    scores[np.isnan(scores)] = -np.inf
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    scores = scores[order]
    del order
    dup = np.flatnonzero(ids[1:] == ids[:-1])
    if dup.size:
        first = ids[dup[0]].decode("utf-8", "replace")
        raise InputError(f"{p}: sample_id {first!r} appears more than once ({dup.size} duplicate rows); "
                         "a scores file has one row per sample")
    return ScoreIndex(p, ids, scores, width)


def lookup(index: ScoreIndex, ids: pa.Array, what: str = "pool") -> np.ndarray:
    """Position of each id in ``index`` (-1 where absent)."""
    fixed, fits = fixed_width_ids(ids, index.width, what)
    if len(fixed) == 0:
        return np.zeros(0, np.int64)
    # Sorted queries make the binary searches walk memory in order (about 2x faster).
    query_order = np.argsort(fixed, kind="stable")
    pos = np.empty(len(fixed), np.int64)
    pos[query_order] = np.searchsorted(index.ids, fixed[query_order])
    np.minimum(pos, len(index) - 1, out=pos)
    found = fits & (index.ids[pos] == fixed)
    return np.where(found, pos, -1)


def _bottom(cand_pos: np.ndarray, cand_scores: np.ndarray, k: int) -> np.ndarray:
    """The last ``k`` candidates of the ranking (score desc, sample_id asc), worst first."""
    n = len(cand_pos)
    k = min(k, n)
    threshold = np.partition(cand_scores, k - 1)[k - 1]
    chosen = cand_scores < threshold
    need = k - int(np.count_nonzero(chosen))
    # Among tied scores the ranking puts the smallest ids first, so its last ones are the largest ids.
    tied = np.flatnonzero(cand_scores == threshold)
    chosen[tied[len(tied) - need:]] = True
    # Worst first: score ascending, then sample_id descending (the ranking read backwards).
    selected = cand_pos[chosen][::-1]
    return selected[np.argsort(cand_scores[chosen][::-1], kind="stable")]


def choose(index: ScoreIndex, eligible: np.ndarray | None, config: SelectConfig) -> np.ndarray:
    """Positions in ``index`` of the selected samples, best first (``bottom_k``: worst first)."""
    cand_pos = np.flatnonzero(eligible) if eligible is not None else np.arange(len(index))
    cand_scores = index.scores[cand_pos]
    n = len(cand_pos)
    if config.bottom_k is not None:
        return _bottom(cand_pos, cand_scores, config.bottom_k) if n else np.zeros(0, np.int64)
    if config.top_k is not None:
        k = min(config.top_k, n)
    elif config.top_p is not None:
        k = k_for_fraction(config.top_p, n)
    else:
        k = int(np.count_nonzero(cand_scores >= config.min_score))
    if k == 0:
        return np.zeros(0, np.int64)
    if config.min_score is not None:
        chosen = cand_scores >= config.min_score
    else:
        threshold = np.partition(cand_scores, n - k)[n - k]
        chosen = cand_scores > threshold
        need = k - int(np.count_nonzero(chosen))
        # cand_pos is in id order, so the first tied positions are the smallest ids.
        tied = np.flatnonzero(cand_scores == threshold)
        chosen[tied[:need]] = True
    selected = cand_pos[chosen]
    order = np.argsort(-cand_scores[chosen], kind="stable")
    return selected[order]


def ranked_selection(
    scores_path: str | os.PathLike,
    top_k: int | None = None,
    top_p: float | None = None,
    min_score: float | None = None,
    bottom_k: int | None = None,
) -> list[str]:
    """The selected ``sample_id``s of a scores file alone (no pool), best first (``bottom_k``: worst first)."""
    cfg = SelectConfig(top_k=top_k, top_p=top_p, min_score=min_score, bottom_k=bottom_k, export="none")
    index = read_score_index(scores_path)
    return [b.decode("utf-8") for b in index.ids[choose(index, None, cfg)]]
