"""Top-k selection: keep the best-scored pool samples, exactly and in bounded memory.

Semantics (documented in ``seal select --help`` too):

- Candidates are the pool samples that have a score. Scored samples missing
  from the pool, and pool samples missing from the scores, are counted and
  reported (with a warning); they are never selected. Duplicate pool rows
  (same ``sample_id``) are kept once.
- Order is the scores file's ranking: score descending, then ``sample_id``
  ascending (the same rule as :func:`seal_core.ranker.scores.rank_order`); a
  NaN score ranks as ``-inf``. The ``rank`` column of the scores file is not
  trusted: the order is recomputed from ``score`` and ``sample_id``.
- ``top_k``: the first ``min(k, N)`` candidates. ``top_p``: the first
  ``k = floor(p * N + 0.5)`` (nearest integer, halves up), at least 1, where
  N is the number of candidates. ``min_score``: every candidate with
  ``score >= min_score`` (inclusive). ``bottom_k``: the last ``min(k, N)``
  candidates of that order, written worst first (score ascending, then
  ``sample_id`` descending); ``threshold_score`` is then the highest score kept.

How it streams (10M rows fit in well under a gigabyte besides the rows being
copied): pass 1 reads only ``sample_id`` and ``score`` from the scores file,
as fixed-width byte strings and float64 sorted by id (:mod:`.score_index`);
pass 2 reads only the pool's ``sample_id`` column and maps every pool row to
its score position by binary search; the threshold is found with
``np.partition`` and ties at the threshold are resolved by id among the tied
rows only; pass 3 streams the pool rows, keeps the selected ones and
distributes them into rank-range buckets (:mod:`.buckets`: temporary Arrow
files when the selection is larger than the memory budget), which are then
sorted one at a time and appended to ``selected.parquet`` (:mod:`.stage`).

Modules: :mod:`.config` (settings), :mod:`.ids` (ids as fixed-width bytes),
:mod:`.score_index` (the scores file, the choice of the selected positions),
:mod:`.pool` (reading a pool), :mod:`.export` (the JSONL export),
:mod:`.buckets` (ordering the selected rows), :mod:`.stage` (the ``select`` stage).
"""

from .config import EXPORTS, SelectConfig, SelectionResult, k_for_fraction
from .export import alpaca_record
from .ids import fixed_width_ids
from .pool import Pool, open_pool
from .score_index import ScoreIndex, choose, lookup, ranked_selection, read_score_index, resolve_scores_path
from .stage import select

__all__ = [
    "EXPORTS",
    "Pool",
    "ScoreIndex",
    "SelectConfig",
    "SelectionResult",
    "alpaca_record",
    "choose",
    "fixed_width_ids",
    "k_for_fraction",
    "lookup",
    "open_pool",
    "ranked_selection",
    "read_score_index",
    "resolve_scores_path",
    "select",
]
