"""``seal score``: score a pool with the selector a ``seal rank`` run trained, without retraining.

The run is a ``--method seal-probe`` run, or a ``--method combined`` run whose signals include
``probe`` (the default). The pool need not be the one the selector was trained on: each sample is
tokenised with the run's settings, its features are taken from the run's base model (no LoRA: the
features the selector saw in training), and ``f_phi`` gives its score. For a combined run the other
signals (prior, relevance, loss) need only the unadapted model and are computed on this pool in the
same two passes as in ``seal rank``, then rank-averaged with the run's weights over this pool's rows.
Writes ``scores.parquet`` in the schema of ``seal rank`` (``weight`` is ``N*softmax(score)`` over
this pool's scored samples; ``loss`` is NaN for seal-probe, whose loss would need the trained LoRA,
and the unadapted model's loss for combined, as ``seal rank`` writes it), ``config.json`` and, for
samples tokenisation could not use, ``dropped.parquet``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..config import to_dict
from ..errors import ConfigError, SealError
from ..io import fingerprint_file, save_resolved_config, write_parquet
from .pool import open_pool
from .scores import write_scores


@dataclass
class ScoreConfig:
    ranker: str = field(default="", metadata={"help": "Output directory of a `seal rank --method seal-probe` run, or of a "
                                                      "`--method combined` run with the probe signal (the default)."})
    pool: str = field(default="", metadata={"help": "Pool to score: ingest output dir, canonical Parquet, or a raw file."})
    out: str = field(default="", metadata={"help": "Output directory (scores.parquet, config.json)."})
    batch_size: int = field(default=16, metadata={"help": "Feature pass batch at the longest length; shorter samples "
                                                          "go more at once, in batches of the same number of tokens."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N."})
    dtype: str = field(default="", metadata={"help": "Model dtype; empty (default): the ranker run's, so the features "
                                                     "match those the selector was trained on."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")


def _fingerprint(path: str) -> str:
    p = Path(path)
    return fingerprint_file(p) if p.is_file() else path


def _run_config(ranker: str):
    """The combined run's resolved RankConfig, read back from its config.json (data, never code)."""
    import json

    from ..config import from_dict
    from .config import RankConfig

    path = Path(ranker) / "config.json"
    try:
        return from_dict(RankConfig, json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise SealError(f"{path}: cannot read the run's config ({str(e).splitlines()[0] if str(e) else e})") from None


def score(cfg: ScoreConfig) -> Path:
    """Score ``cfg.pool`` with the selector in ``cfg.ranker``; returns ``cfg.out/scores.parquet``."""
    from dataclasses import replace

    import torch

    from ..models import load_model
    from .features import projected_features
    from .probe import load_trained_probe
    from .scores import softmax_weights
    from .selector import selector_weights

    if not cfg.ranker or not cfg.out:
        raise SealError("seal score needs --ranker (a seal-probe or combined run directory) and --out")
    t0 = time.time()
    probe = load_trained_probe(cfg.ranker)
    m = probe.meta
    run_cfg = None
    if probe.method == "combined":
        # The passes run at this command's batch size; every setting that changes a score is the run's.
        run_cfg = replace(_run_config(cfg.ranker), score_batch_size=cfg.batch_size, progress=cfg.progress,
                          device=cfg.device)
        from .combined import check_rescorable

        check_rescorable(run_cfg)  # before the model loads
    pool = open_pool(cfg.pool, "pool")
    out = Path(cfg.out)
    save_resolved_config(out, cfg)
    model, tok = load_model(m["model"], device=cfg.device, dtype=cfg.dtype or m["dtype"], seed=m["seed"])
    enc, dropped = pool.encode(tok, m["max_length"], m["train_on"], m["truncation"])
    ids = pool.sample_ids
    scores, weights, losses = (np.full(len(ids), math.nan) for _ in range(3))
    signals: dict[str, np.ndarray] = {}
    pos = pool.positions(enc)
    if len(enc) and run_cfg is not None:
        from .combined import score_combined

        scores[pos], losses[pos], found = score_combined(run_cfg, model, tok, pool, enc, probe)
        for name, values in found.items():
            signals[name] = np.full(len(ids), math.nan)
            signals[name][pos] = values
        weights = softmax_weights(scores)
    elif len(enc):
        # Each batch's features become its logits before the next batch runs: memory is O(batch), not N x 2d.
        z = projected_features(model, tok, enc, m["layer"], probe.logits, cfg.batch_size, cfg.progress,
                               desc="score features")
        scores[pos] = z
        weights[pos] = selector_weights(torch.as_tensor(z), m["weighting"]).numpy()
    if dropped:
        write_parquet(out / "dropped.parquet", pa.Table.from_pylist(
            [{"sample_id": d["sample_id"], "reason": d["reason"]} for d in dropped]))
    meta = {
        "method": probe.method, "stage": "score", "model": m["model"], "model_id": m["model_id"], "config": to_dict(cfg),
        "selector": m, "inputs": {"pool": {"path": cfg.pool, "fingerprint": _fingerprint(cfg.pool), "n": len(pool)},
                                  "ranker": {"path": str(cfg.ranker)}},
        "dropped": len(dropped), "wall_seconds": round(time.time() - t0, 2),
    }
    if run_cfg is not None:
        meta["signals"] = dict(zip(run_cfg.combined.signals, run_cfg.combined.resolved_weights()))
        meta["relevance"] = to_dict(run_cfg.relevance)
    return write_scores(out / "scores.parquet", ids, scores, weights, None if run_cfg is None else losses, meta,
                        signals or None)


__all__ = ["ScoreConfig", "score"]
