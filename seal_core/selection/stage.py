"""The ``select`` stage: match the pool to the scores, choose, and write the selected rows in rank order."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..faults import fault_point
from ..io import atomic_path, fingerprint_file, save_resolved_config, write_json
from ..schema import CANONICAL_SCHEMA
from .buckets import RankBuckets, bucket_rows
from .config import SelectConfig, SelectionResult
from .export import JsonlExporter
from .pool import Pool, open_pool
from .progress import ProgressBar
from .score_index import ScoreIndex, choose, lookup, read_score_index

_ID_BATCH = 1 << 20
# The summary fields also stored in selected.parquet's key-value metadata.
_PARQUET_SUMMARY_KEYS = ("mode", "requested", "k", "threshold_score", "inputs")


@dataclass
class _PoolMatch:
    """Where each pool row's sample is in the score index (-1: no score, or an id seen before)."""

    positions: np.ndarray
    present: np.ndarray  # per scored sample: it is in the pool
    n_missing_scores: int = 0
    n_duplicates: int = 0
    missing_examples: list[str] = field(default_factory=list)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _sample(ids: np.ndarray, limit: int = 3) -> str:
    return ", ".join(b.decode("utf-8", "replace") for b in ids[:limit])


def _match_pool(index: ScoreIndex, src: Pool, cfg: SelectConfig) -> _PoolMatch:
    """One pass over the pool's ids: each row's score position, and which scored samples are present."""
    pos_dtype = np.int32 if len(index) < 2**31 - 1 else np.int64
    match = _PoolMatch(np.empty(src.num_rows, pos_dtype), np.zeros(len(index), bool))
    present = match.present
    row = 0
    with ProgressBar(cfg.progress, src.num_rows, "select: index pool") as bar:
        # Big batches: binary searches of a sorted batch of ids walk the index more locally.
        for batch in src.batches(["sample_id"], max(cfg.batch_size, _ID_BATCH)):
            pos = lookup(index, batch.column(0), str(src.path))
            found = pos >= 0
            match.n_missing_scores += int(np.count_nonzero(~found))
            if len(match.missing_examples) < 3 and not found.all():
                match.missing_examples += batch.column(0).take(pa.array(np.flatnonzero(~found)[:3])).to_pylist()
            found_pos = pos[found]
            first = np.zeros(len(found_pos), bool)
            first[np.unique(found_pos, return_index=True)[1]] = True
            dup = present[found_pos] | ~first
            match.n_duplicates += int(np.count_nonzero(dup))
            present[found_pos] = True
            pos[np.flatnonzero(found)[dup]] = -1
            match.positions[row : row + len(pos)] = pos
            row += len(pos)
            bar.update(len(pos))
    if row != src.num_rows:  # a file changed under us
        raise InputError(f"pool {src.path}: read {row} rows, metadata says {src.num_rows}")
    return match


def _check_coverage(match: _PoolMatch, index: ScoreIndex, src: Pool, pool: Any, warn: Callable[[str], None]) -> int:
    """The number of candidates (scored samples in the pool); warns about the samples on one side only."""
    n_scores = len(index)
    n_candidates = int(np.count_nonzero(match.present))
    if n_candidates == 0:
        raise InputError(f"no sample of the pool {pool} has a score in {index.path} "
                         "(were they computed from a different pool?)")
    n_not_in_pool = n_scores - n_candidates
    if n_not_in_pool:
        warn(f"{n_not_in_pool} of {n_scores} scored samples are not in the pool {pool} and cannot be selected "
             f"(e.g. {_sample(index.ids[np.flatnonzero(~match.present)[:3]])})")
    if match.n_missing_scores:
        warn(f"{match.n_missing_scores} of {src.num_rows} pool samples have no score in {index.path} and are never "
             f"selected (e.g. {', '.join(match.missing_examples[:3])})")
    if match.n_duplicates:
        warn(f"{match.n_duplicates} pool rows repeat an earlier sample_id; each sample is selected at most once")
    return n_candidates


def _bucket_selected_rows(src: Pool, match: _PoolMatch, rank_of: np.ndarray, cfg: SelectConfig,
                          buckets: RankBuckets) -> None:
    """Stream every pool row; the selected ones go to their rank bucket."""
    row = 0
    with ProgressBar(cfg.progress, src.num_rows, "select: copy rows") as bar:
        for batch in src.batches(None, cfg.batch_size):
            m = batch.num_rows
            pos = match.positions[row : row + m]
            row += m
            bar.update(m)
            fault_point("select:batch")
            ranks = np.zeros(m, np.int64)
            ok = pos >= 0
            ranks[ok] = rank_of[pos[ok]]
            keep = np.flatnonzero(ranks > 0)
            if keep.size == 0:
                continue
            t = pa.Table.from_batches([batch]).take(pa.array(keep))
            try:
                t = t.select(CANONICAL_SCHEMA.names).cast(CANONICAL_SCHEMA)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise InputError(f"pool {src.path} does not match the canonical sample schema: {e}") from None
            buckets.add(t, ranks[keep])


def _summary(cfg: SelectConfig, index: ScoreIndex, src: Pool, match: _PoolMatch, selected: np.ndarray,
             n_candidates: int) -> dict[str, Any]:
    k = len(selected)
    scores = index.scores
    summary: dict[str, Any] = {
        "mode": cfg.mode,
        "requested": {cfg.mode: getattr(cfg, cfg.mode)},
        "k": k,
        "fraction": k / n_candidates,
        "n_scores": len(index),
        "n_pool_rows": src.num_rows,
        "n_candidates": n_candidates,
        "scores_missing_from_pool": len(index) - n_candidates,
        "pool_missing_from_scores": match.n_missing_scores,
        "pool_duplicate_rows": match.n_duplicates,
        "threshold_score": _finite(scores[selected[-1]]) if k else None,
        "threshold_sample_id": index.ids[selected[-1]].decode("utf-8") if k else None,
        "best_score": _finite(float(np.max(scores[selected]))) if k else None,
        "mean_selected_score": _finite(float(np.mean(scores[selected]))) if k else None,
        # bottom_k writes the ranking's tail read backwards, worst first.
        "tie_break": "score asc, sample_id desc" if cfg.mode == "bottom_k" else "score desc, sample_id asc",
        "inputs": {
            "scores": {"path": str(index.path), "fingerprint": fingerprint_file(index.path)},
            "pool": {"path": str(src.path), "fingerprint": fingerprint_file(src.path)},
        },
    }
    try:
        from ..ranker.scores import read_scores_metadata

        scores_meta = read_scores_metadata(index.path)
        if "method" in scores_meta:
            summary["scores_method"] = scores_meta["method"]
    except InputError:
        pass
    return summary


def _write_selected(out: Path, buckets: RankBuckets, cfg: SelectConfig, summary: dict[str, Any]) -> JsonlExporter:
    """``selected.parquet`` and the JSONL export, in rank order; returns the exporter's counts."""
    kv = {"seal": json.dumps({"stage": "select", **{name: summary[name] for name in _PARQUET_SUMMARY_KEYS}},
                             default=str)}
    schema = CANONICAL_SCHEMA.with_metadata(kv)
    n_rows = 0
    with atomic_path(out / "selected.parquet") as tmp, JsonlExporter(cfg.export, cfg.alpaca_multiturn, out) as ex:
        with pq.ParquetWriter(tmp, schema) as writer:
            for t in buckets.sorted_tables(cfg.batch_size):
                writer.write_table(t.replace_schema_metadata(kv))
                ex.write(t)
                fault_point("select:write")
                n_rows += t.num_rows
    assert n_rows == summary["k"], (n_rows, summary["k"])
    return ex


def select(
    scores: str | os.PathLike,
    pool: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: SelectConfig,
    warn: Callable[[str], None] | None = None,
) -> SelectionResult:
    """Write ``selected.parquet`` (+ JSONL export), ``selection.json`` and ``config.json`` to ``out_dir``.

    ``warn`` is called with each warning as it happens (the result lists them too).
    """
    cfg = config
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    warnings: list[str] = []

    def _warn(msg: str) -> None:
        warnings.append(msg)
        if warn is not None:
            warn(msg)

    index = read_score_index(scores, cfg.batch_size, cfg.progress)
    src = open_pool(pool)
    match = _match_pool(index, src, cfg)
    n_candidates = _check_coverage(match, index, src, pool, _warn)

    selected = choose(index, match.present, cfg)
    k = len(selected)
    if k == 0:
        _warn(f"no sample has score >= {cfg.min_score}; the selection is empty")
    rank_of = np.zeros(len(index), match.positions.dtype)
    rank_of[selected] = np.arange(1, k + 1, dtype=match.positions.dtype)

    budget = cfg.memory_mb << 20
    rows_per_bucket = bucket_rows(budget, src.row_bytes)
    out.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".select.", dir=out))
    try:
        buckets = RankBuckets(max(1, math.ceil(k / rows_per_bucket)), rows_per_bucket, budget, tmp_dir,
                              CANONICAL_SCHEMA)
        _bucket_selected_rows(src, match, rank_of, cfg, buckets)
        summary = _summary(cfg, index, src, match, selected, n_candidates)
        ex = _write_selected(out, buckets, cfg, summary)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

    export_path = out / "selected.jsonl" if cfg.export != "none" else None
    rejects_path = out / "export_rejects.jsonl" if cfg.export == "alpaca" else None
    # Files of an earlier run with another export mode would no longer match selected.parquet.
    for stale, keep_it in ((out / "selected.jsonl", export_path), (out / "export_rejects.jsonl", rejects_path)):
        if keep_it is None and stale.exists():
            stale.unlink()
    summary["export"] = {"format": cfg.export, "rows": ex.n_written, "rejected": dict(ex.rejects)}
    if ex.rejects:
        _warn(f"{sum(ex.rejects.values())} selected samples have no {cfg.export} form "
              f"({', '.join(f'{r}: {n}' for r, n in sorted(ex.rejects.items()))}); listed in {rejects_path}, "
              "kept in selected.parquet")
    summary["warnings"] = warnings
    save_resolved_config(out, cfg)
    write_json(out / "selection.json", summary)
    return SelectionResult(out, out / "selected.parquet", export_path, rejects_path, summary, warnings)
