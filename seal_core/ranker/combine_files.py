"""``seal combine``: one ranking from several scores files of the same pool, by weighted rank average.

Expensive scoring stays apart from cheap combination (as DSIR keeps scoring apart from selection):
a ``seal rank`` run per signal writes its ``scores.parquet`` once, and any blend of them is a
rank average that reads only ``sample_id`` and ``score``. Each file's scores become normalised
ranks in (0, 1] (ties share their average rank) and

    score = sum_k w_k * rank_k / sum_k w_k          higher = keep

so signals on unrelated scales (a loss, a selector logit, a compliance projection) count by their
weights alone. A sample unscored (NaN) in any file is unscored in the result and ranks last. The
files must score the same set of samples: a blend over the ones two files happen to share would
silently drop the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import to_dict
from ..errors import ConfigError, InputError, SealError
from ..io import fingerprint_file, save_resolved_config
from .combined import rank_average
from .scores import read_scores_metadata, softmax_weights, write_scores


@dataclass
class CombineConfig:
    scores: list[str] = field(default_factory=list, metadata={
        "help": "Two or more scores.parquet files (or `seal rank` output directories) of the same pool."})
    weights: list[float] = field(default_factory=list, metadata={
        "help": "One non-negative weight per scores file, in the same order; default: all 1."})
    out: str = field(default="", metadata={"help": "Output directory (scores.parquet, config.json)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar while reading."})

    def __post_init__(self):
        if self.weights and self.scores and len(self.weights) != len(self.scores):
            raise ConfigError(f"weights: {len(self.weights)} given for {len(self.scores)} scores files; "
                              f"give one per file")
        if any(not math.isfinite(w) or w < 0 for w in self.weights):
            raise ConfigError(f"weights must be finite and >= 0, got {self.weights}")
        if self.weights and sum(self.weights) <= 0:
            raise ConfigError("weights: at least one must be positive")


def _id_mismatch(path: Path, ids: np.ndarray, ref_path: Path, ref: np.ndarray) -> str:
    extra = np.setdiff1d(ids, ref, assume_unique=True)
    missing = np.setdiff1d(ref, ids, assume_unique=True)
    example = (extra[:1] if len(extra) else missing[:1])[0].decode("utf-8", "replace")
    return (f"{path}: scores another set of samples than {ref_path} ({len(extra)} ids only here, {len(missing)} "
            f"only there, e.g. {example!r}); combine the scores of one pool")


def combine(cfg: CombineConfig) -> Path:
    """Write ``cfg.out/scores.parquet``, the weighted rank average of ``cfg.scores``; returns its path."""
    from ..selection.score_index import read_score_index

    if len(cfg.scores) < 2:
        raise SealError(f"seal combine needs at least two scores files, got {len(cfg.scores)}")
    if not cfg.out:
        raise SealError("no output directory given (--out)")
    weights = list(cfg.weights) or [1.0] * len(cfg.scores)
    indexes = [read_score_index(p, progress=cfg.progress) for p in cfg.scores]
    ref = indexes[0]
    width = max(ix.width for ix in indexes)
    ref_ids = ref.ids.astype(f"S{width}")
    signals = []
    for ix in indexes:
        ids = ix.ids.astype(f"S{width}")
        if len(ids) != len(ref_ids) or not np.array_equal(ids, ref_ids):
            raise InputError(_id_mismatch(ix.path, ids, ref.path, ref_ids))
        # read_score_index stores NaN as -inf (for ranking); here unscored must stay unscored.
        signals.append(np.where(np.isneginf(ix.scores), math.nan, ix.scores))
    combined = rank_average(signals, weights)
    sample_ids = [i.decode("utf-8") for i in ref.ids]
    out = Path(cfg.out)
    save_resolved_config(out, cfg)
    meta = {"method": "combine", "config": to_dict(cfg),
            "inputs": {"scores": [{"path": str(ix.path), "fingerprint": fingerprint_file(ix.path), "weight": w,
                                   "method": read_scores_metadata(ix.path).get("method")}
                                  for ix, w in zip(indexes, weights)]}}
    return write_scores(out / "scores.parquet", sample_ids, combined, softmax_weights(combined), None, meta)


__all__ = ["CombineConfig", "combine"]
