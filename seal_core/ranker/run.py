"""``seal rank``: train a ranker (or compute a baseline) and score every pool sample.

Output (``cfg.out``): ``scores.parquet`` (one row per pool sample, see
:mod:`.scores`), ``config.json`` (the resolved config), ``dropped.parquet``
(pool samples tokenisation could not use, with the reason; they are kept in
the scores with a NaN score, ranked last), ``train_log.jsonl`` and
``checkpoints/`` for the bilevel methods.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa

from ..config import to_dict
from ..errors import SealError
from ..ingest import load_required_samples
from ..io import fingerprint_file, save_resolved_config, write_parquet
from ..progress import ProgressFn
from ..training import Dist, device_for
from ..training.launch import run_training_stage
from .config import RankConfig
from .pool import open_pool
from .scores import softmax_weights, write_scores
from .seal import train_seal


def _fingerprint(path: str) -> str:
    p = Path(path)
    return fingerprint_file(p) if p.exists() else path


def rank(cfg: RankConfig, resume: bool = False, on_progress: Optional[ProgressFn] = None) -> Path:
    """Run ``cfg.method`` and write ``cfg.out/scores.parquet``; returns its path."""
    if not cfg.out:
        raise SealError("no output directory given (--out)")
    # Under torchrun every rank trains; rank 0 alone holds the lock and writes.
    return run_training_stage("rank", cfg, resume, lambda dist: _rank(cfg, Path(cfg.out), resume, on_progress, dist),
                              launched=lambda: Path(cfg.out) / "scores.parquet")


def _train_bilevel(cfg: RankConfig, model, tok, enc, out: Path, resume: bool, on_progress, dist: Dist, meta: dict,
                  probe_features=None):
    """The bilevel loop (seal, seal-penalty, seal-probe) on the encoded pool; records the run in ``meta``."""
    from ..tokenization import encode_samples

    safe = load_required_samples(cfg.safe, "safe set")
    meta["inputs"]["safe"] = {"path": cfg.safe, "fingerprint": _fingerprint(cfg.safe), "n": len(safe)}
    safe_enc, safe_dropped = encode_samples(tok, safe, cfg.max_length, cfg.train_on, cfg.truncation)
    if not safe_enc:
        raise SealError(f"no safe-set sample fits max_length={cfg.max_length}")
    state = train_seal(cfg, model, tok, enc, safe_enc, out, resume=resume, on_progress=on_progress, dist=dist,
                       probe_features=probe_features)
    if not state.completed and dist.is_main:
        print(f"stopped after {state.steps} steps (max_steps); checkpoint saved, resume with --resume")
    meta.update(steps=state.steps, completed=state.completed, safe_dropped=len(safe_dropped))
    return state


def _rank(cfg: RankConfig, out: Path, resume: bool, on_progress: Optional[ProgressFn], dist: Dist) -> Path:
    t0 = time.time()
    pool = open_pool(cfg.pool, "pool")
    ids = pool.sample_ids
    meta = {
        "method": cfg.method,
        "model": cfg.model,
        "config": to_dict(cfg),
        "inputs": {"pool": {"path": cfg.pool, "fingerprint": _fingerprint(cfg.pool), "n": len(pool)}},
    }
    if dist.is_main:
        save_resolved_config(out, cfg)

    weights = losses = None
    signals: dict[str, np.ndarray] = {}
    dropped: list[dict] = []
    if cfg.method == "random":
        from .baselines import random_scores

        scores = np.asarray(random_scores(ids, cfg.seed), dtype=np.float64)
    elif cfg.method == "dsir":
        from .dsir import dsir_scores

        safe = load_required_samples(cfg.safe, "safe set")
        meta["inputs"]["safe"] = {"path": cfg.safe, "fingerprint": _fingerprint(cfg.safe), "n": len(safe)}
        scores = np.asarray(dsir_scores(pool.samples(), safe, n_buckets=cfg.dsir_buckets), dtype=np.float64)
    else:
        from ..models import load_model, model_id
        from ..tokenization import score_losses

        model, tok = load_model(cfg.model, device=device_for(dist, cfg.device), dtype=cfg.dtype, seed=cfg.seed)
        meta["model_id"] = model_id(cfg.model)
        enc, dropped = pool.encode(tok, cfg.max_length, cfg.train_on, cfg.truncation)
        pos = pool.positions(enc)
        if cfg.method == "loss":
            losses = np.full(len(ids), math.nan)
            losses[pos] = score_losses(model, tok, enc, cfg.score_batch_size, cfg.progress, desc="loss baseline",
                                       dist=dist, logits_budget=cfg.logits_budget)
            # High loss under the unadapted model = unlike what the model already does: drop first.
            scores = -losses
        elif cfg.method in ("relevance", "prior"):
            from .relevance import answer_losses, relevance_signal

            al = answer_losses(model, tok, enc, cfg.score_batch_size, cfg.progress, dist=dist,
                               logits_budget=cfg.logits_budget, with_request=cfg.method == "relevance")
            scores, losses = np.full(len(ids), math.nan), np.full(len(ids), math.nan)
            scores[pos] = (relevance_signal(al.pmi_mean, al.pmi_se, cfg.relevance.margin)
                           if cfg.method == "relevance" else -al.uncond)
            # The loss column: the answer's loss as the method saw it (with the request, or without).
            losses[pos] = al.cond if cfg.method == "relevance" else al.uncond
        elif cfg.method in ("compliance", "combined"):
            from .combined import rank_combined

            def train_probe(features=None):
                # The bilevel loop of method=seal-probe, on the model the forward-only signals just used.
                state = _train_bilevel(replace(cfg, method="seal-probe"), model, tok, enc, out, resume, on_progress,
                                       dist, meta, probe_features=features)
                if dist.is_main:
                    # Kept so that `seal score` can give the combined score of a pool never trained on.
                    from .probe import export_selector

                    feature_dtype = str(state.model.get_input_embeddings().weight.dtype).replace("torch.", "")
                    export_selector(out, cfg, meta["model_id"], feature_dtype)
                return state.z.cpu().numpy()

            scores, losses = np.full(len(ids), math.nan), np.full(len(ids), math.nan)
            scores[pos], losses[pos], meta["compliance"], found = rank_combined(cfg, model, tok, pool, enc, out, dist,
                                                                                train_probe)
            for name, values in found.items():
                signals[name] = np.full(len(ids), math.nan)
                signals[name][pos] = values
            meta["inputs"].update({k: {"path": getattr(cfg, k), "fingerprint": _fingerprint(getattr(cfg, k))}
                                   for k in ("safe", "anchors") if getattr(cfg, k)})
        else:
            state = _train_bilevel(cfg, model, tok, enc, out, resume, on_progress, dist, meta)
            final_losses = score_losses(state.model, tok, enc, cfg.score_batch_size, cfg.progress, desc="final losses",
                                        dist=dist, logits_budget=cfg.logits_budget)
            scores, weights, losses = (np.full(len(ids), math.nan) for _ in range(3))
            scores[pos] = state.z.cpu().numpy().astype(np.float64)
            weights[pos] = state.weights.cpu().numpy().astype(np.float64)
            losses[pos] = final_losses
            if cfg.method == "seal-probe" and dist.is_main:
                from .probe import export_selector

                feature_dtype = str(state.model.get_input_embeddings().weight.dtype).replace("torch.", "")
                export_selector(out, cfg, meta["model_id"], feature_dtype)
    if not dist.is_main:
        return out / "scores.parquet"
    if dropped:
        write_parquet(out / "dropped.parquet", pa.Table.from_pylist(
            [{"sample_id": d["sample_id"], "reason": d["reason"]} for d in dropped]))
    if weights is None:
        # Baselines have no learnt weights; the softmax of the score gives the same ordering on the
        # same N*softmax scale as SEAL's weights.
        weights = softmax_weights(scores)
    meta["dropped"] = len(dropped)
    meta["wall_seconds"] = round(time.time() - t0, 2)
    return write_scores(out / "scores.parquet", ids, scores, weights, losses, meta, signals)
