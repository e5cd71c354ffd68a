"""The compliance-direction ranker: forward passes only, in the spirit of DataShield.

A harmful fine-tuning sample is a request the model should refuse, answered compliantly. Two
anchor sets fix a direction in each layer's hidden states: *refusal* anchors (the safe set's
answers the keyword refusal detector flags) and *compliant* anchors (``--anchors``: a few unsafe
requests answered compliantly; without it, the safe set's other answers). Per layer ``l``, after
whitening with the pool's statistics,

    v_l = normalise(mean_compliant h_resp - mean_refusal h_resp)
    score(x) = -<v_l, h_resp(x) - mu_resp> + prompt_weight * <v_l, h_prompt(x) - mu_prompt>

with ``h_resp`` the mean hidden state over the answer tokens and ``h_prompt`` the state at the
last prompt token (:mod:`.features`). Higher score = keep: the first term is low for an answer
that complies; the second is low for a request the model itself leans towards refusing. Their sum
is the answer's compliance in excess of what the model's own state at the end of the request
predicts: a compliant answer to a request the model would refuse (harmful data) scores lowest, a
compliant answer to an ordinary request and a refusal of a harmful one sit near zero.

Whitening: each feature kind is centred on its own pool mean (a constant shift of the score, so
the ranking is that of a single ``mu``) and both kinds share one covariance, that of the 2N
centred pool rows, so the two terms use one metric and the same raw direction. The hidden size
exceeds the pool size on small pools, so the covariance is shrunk toward ``(tr/d) I``
(Ledoit-Wolf's estimate of the amount unless ``compliance.shrinkage`` fixes it). The layer is the
one whose leave-one-out AUROC (refusal anchors above compliant ones) on the anchors is highest;
the pool's labels are never seen, and the pool enters only through its label-free statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from ..errors import SealError
from ..metrics import auroc

# Below this norm the anchor means coincide and no direction exists.
_EPS = 1e-12


# ----------------------------------------------------------------------------- whitening


def ledoit_wolf_shrinkage(x: np.ndarray) -> float:
    """Ledoit & Wolf (2004) optimal alpha for ``(1-alpha) S + alpha (tr S / d) I``; ``x`` centred [n, d]."""
    n, d = x.shape
    x = x.astype(np.float64, copy=False)
    x2 = x * x
    var = x2.sum(0) / n
    mu = var.sum() / d
    delta_ = float(((x.T @ x) ** 2).sum()) / n**2
    beta_ = float((x2.T @ x2).sum())
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * var.sum() + d * mu**2) / d
    if delta <= 0:
        return 1.0
    return float(min(max(beta, 0.0), delta) / delta)


def whitener(x: np.ndarray, shrinkage: Optional[float] = None) -> tuple[np.ndarray, float]:
    """``(W, alpha)``: W = Sigma^(-1/2) (symmetric) of the shrunk covariance of centred rows ``x``."""
    n, d = x.shape
    x = x.astype(np.float64, copy=False)
    cov = x.T @ x / max(n, 1)
    scale = float(np.trace(cov)) / d
    if not scale > 0:
        return np.eye(d), 1.0
    alpha = ledoit_wolf_shrinkage(x) if shrinkage is None else float(shrinkage)
    # A floor keeps the inverse finite when Ledoit-Wolf returns ~0 on a singular covariance.
    alpha = min(max(alpha, 1e-6), 1.0)
    shrunk = (1.0 - alpha) * cov + alpha * scale * np.eye(d)
    evals, evecs = np.linalg.eigh(shrunk)
    evals = np.maximum(evals, alpha * scale)
    return (evecs / np.sqrt(evals)) @ evecs.T, alpha


# ----------------------------------------------------------------------------- direction and scores


def unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > _EPS else np.zeros_like(v)


def compliance_direction(compliant: np.ndarray, refusal: np.ndarray) -> np.ndarray:
    """Unit vector from the refusal anchors' mean to the compliant anchors' mean (whitened rows)."""
    return unit(compliant.mean(0) - refusal.mean(0))


def project(v: np.ndarray, resp: np.ndarray, prompt: np.ndarray, prompt_weight: float) -> np.ndarray:
    """``-<v, resp> + prompt_weight <v, prompt>`` per row (whitened, centred features); higher = keep."""
    return -(resp @ v) + prompt_weight * (prompt @ v)


def _loo_directions(own: np.ndarray, other_mean: np.ndarray, sign: float) -> np.ndarray:
    """Per row i of ``own``: the direction with row i left out of its set's mean (``sign`` +1: compliant)."""
    n = len(own)
    loo_mean = (own.sum(0, keepdims=True) - own) / (n - 1)
    diff = sign * (loo_mean - other_mean[None])
    norms = np.linalg.norm(diff, axis=1, keepdims=True)
    return np.where(norms > _EPS, diff / np.maximum(norms, _EPS), 0.0)


def loo_scores(comp: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray],
               prompt_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Each anchor's score under the direction fitted without it: (compliant scores, refusal scores)."""
    (cr, cp), (rr, rp) = comp, ref
    vc = _loo_directions(cr, rr.mean(0), +1.0)
    vr = _loo_directions(rr, cr.mean(0), -1.0)
    sc = -(cr * vc).sum(1) + prompt_weight * (cp * vc).sum(1)
    sr = -(rr * vr).sum(1) + prompt_weight * (rp * vr).sum(1)
    return sc, sr


def separation(sc: np.ndarray, sr: np.ndarray) -> float:
    """Standardised gap of refusal over compliant scores; breaks ties between layers of equal AUROC."""
    sd = np.sqrt((sc.var() + sr.var()) / 2.0)
    return float((sr.mean() - sc.mean()) / sd) if sd > _EPS else 0.0


@dataclass
class LayerFit:
    layer: int
    loo_auroc: float
    separation: float
    shrinkage: float
    scores: np.ndarray
    # (u, mu_resp, mu_prompt): score(x) = -<u, resp - mu_resp> + prompt_weight * <u, prompt - mu_prompt>
    # with u = W v (W symmetric), so rows outside the fit are scored from three d-vectors.
    projector: tuple = ()


def fit_layer(layer: int, pool: tuple[np.ndarray, np.ndarray], comp: tuple[np.ndarray, np.ndarray],
              ref: tuple[np.ndarray, np.ndarray], shrinkage: Optional[float], prompt_weight: float) -> LayerFit:
    """Whiten with the pool, fit the direction on the anchors, score the pool; pairs are (resp, prompt)."""
    mu_r, mu_p = pool[0].mean(0), pool[1].mean(0)
    centred = np.concatenate([pool[0] - mu_r, pool[1] - mu_p])
    w, alpha = whitener(centred, shrinkage)

    def white(pair):
        return ((pair[0] - mu_r) @ w, (pair[1] - mu_p) @ w)

    pool_w, comp_w, ref_w = white(pool), white(comp), white(ref)
    sc, sr = loo_scores(comp_w, ref_w, prompt_weight)
    loo = auroc(np.concatenate([sr, sc]), np.r_[np.ones(len(sr), bool), np.zeros(len(sc), bool)])
    v = compliance_direction(comp_w[0], ref_w[0])
    return LayerFit(layer, loo, separation(sc, sr), alpha, project(v, *pool_w, prompt_weight), (w @ v, mu_r, mu_p))


def apply_projector(projector: tuple, resp: np.ndarray, prompt: np.ndarray, prompt_weight: float) -> np.ndarray:
    """A fitted layer's score of raw (unwhitened) feature rows: :func:`project` after the fit's whitening."""
    u, mu_r, mu_p = projector
    return -((resp - mu_r) @ u) + prompt_weight * ((prompt - mu_p) @ u)


def fit_subset(sample_ids: Sequence[str], n: int) -> Optional[np.ndarray]:
    """Positions of the ``n`` rows whose sha256(sample_id) is smallest, sorted; ``None`` if all rows fit.

    A hash of the id, not the row order or a label, so the same pool in any order fits the same
    statistics, and a row's presence in the fit says nothing about it.
    """
    import hashlib

    if n <= 0 or len(sample_ids) <= n:
        return None
    keys = [hashlib.sha256(str(i).encode("utf-8")).digest() for i in sample_ids]
    return np.sort(np.asarray(sorted(range(len(keys)), key=keys.__getitem__)[:n], dtype=np.int64))


def choose_layer(fits: Sequence[LayerFit]) -> LayerFit:
    """Highest anchor leave-one-out AUROC, then the widest separation, then the lowest index."""
    return max(fits, key=lambda f: (f.loo_auroc, f.separation, -f.layer))


def compliance_fit(pool_feats: Mapping, comp_feats: Mapping, ref_feats: Mapping, shrinkage: Optional[float],
                   prompt_weight: float) -> tuple[LayerFit, list[LayerFit]]:
    """Fit every layer of the feature dicts (``{layer: (resp, prompt)}``) -> (chosen, all)."""
    if len(next(iter(comp_feats.values()))[0]) < 2 or len(next(iter(ref_feats.values()))[0]) < 2:
        raise SealError("the compliance direction needs at least 2 compliant and 2 refusal anchors")
    fits = [fit_layer(l, pool_feats[l], comp_feats[l], ref_feats[l], shrinkage, prompt_weight) for l in pool_feats]
    # A layer where the compliant and refusal anchors' means coincide has no direction (every score 0):
    # choosing it would hand back an arbitrary order that looks like a ranking.
    usable = [f for f in fits if np.any(f.scores)]
    if not usable:
        raise SealError(f"the compliant and refusal anchors give the same mean features at every layer "
                        f"({', '.join(str(l) for l in pool_feats)}): no compliance direction; use anchors that "
                        f"differ (--anchors FILE of compliant answers)")
    return choose_layer(usable), fits


# ----------------------------------------------------------------------------- anchors


def _norm(text) -> str:
    return " ".join(str(text or "").split()).lower()


def final_answer(sample: Mapping) -> str:
    msgs = list(sample["messages"])
    return next((str(m["content"] or "") for m in reversed(msgs) if m["role"] == "assistant"), "")


def text_key(sample: Mapping) -> tuple[str, str]:
    """(request, answer): the last user turn before the final answer and that answer, whitespace- and case-folded."""
    msgs = list(sample["messages"])
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
    prompt = next((m["content"] for m in reversed(msgs[:last]) if m["role"] == "user"), "")
    return _norm(prompt), _norm(msgs[last]["content"] if last < len(msgs) else "")


def split_refusals(samples: Iterable[Mapping]) -> tuple[list[Mapping], list[Mapping]]:
    """(refusals, the rest) by the keyword refusal detector on each sample's final answer."""
    from ..evaluation.refusal import is_refusal

    refusals, rest = [], []
    for s in samples:
        (refusals if is_refusal(final_answer(s)) else rest).append(s)
    return refusals, rest


def drop_pool_rows(anchors: list[Mapping], pool_ids: set, pool_keys: set) -> tuple[list[Mapping], int]:
    """The anchors that are no pool row (by ``sample_id`` or by request+answer text), and how many were dropped."""
    kept = [a for a in anchors if a["sample_id"] not in pool_ids and text_key(a) not in pool_keys]
    return kept, len(anchors) - len(kept)


@dataclass
class Anchors:
    compliant: list
    refusal: list
    source: str
    dropped_as_pool_rows: int

    def summary(self) -> dict:
        return {"compliant": len(self.compliant), "refusal": len(self.refusal), "compliant_source": self.source,
                "dropped_as_pool_rows": self.dropped_as_pool_rows}


def build_anchors(safe: list[Mapping], anchors: Optional[list[Mapping]], pool_shards: Iterable[list[Mapping]]) -> Anchors:
    """Refusal anchors from the safe set; compliant ones from ``anchors`` or the safe set's non-refusals."""
    pool_ids, pool_keys = set(), set()
    for shard in pool_shards:
        for s in shard:
            pool_ids.add(s["sample_id"])
            pool_keys.add(text_key(s))
    refusal, rest = split_refusals(safe)
    compliant, source = (list(anchors), "anchors") if anchors is not None else (rest, "safe-set non-refusals")
    refusal, d_ref = drop_pool_rows(refusal, pool_ids, pool_keys)
    compliant, d_comp = drop_pool_rows(compliant, pool_ids, pool_keys)
    return Anchors(compliant, refusal, source, d_ref + d_comp)


# ----------------------------------------------------------------------------- the ranker


def _encode_anchors(cfg, tokenizer, anchors: Anchors) -> tuple[list, list]:
    from ..tokenization import encode_samples

    enc_c, _ = encode_samples(tokenizer, anchors.compliant, cfg.max_length, cfg.train_on, cfg.truncation)
    enc_r, _ = encode_samples(tokenizer, anchors.refusal, cfg.max_length, cfg.train_on, cfg.truncation)
    if len(enc_c) < 2 or len(enc_r) < 2:
        where = cfg.anchors or f"the safe set {cfg.safe} (non-refusals)"
        raise SealError(f"method={cfg.method} needs >= 2 compliant anchors (from {where}) and >= 2 refusal anchors "
                        f"(refusals in the safe set {cfg.safe}) that are not pool rows and fit max_length="
                        f"{cfg.max_length}; got {len(enc_c)} and {len(enc_r)}")
    return enc_c, enc_r


def compliance_scores(cfg, model, tokenizer, pool, encoded, dist=None) -> tuple[np.ndarray, dict]:
    """Scores of the ``encoded`` pool rows (same order) and what was fitted (layer, anchors, per-layer AUROC)."""
    from ..ingest import load_required_samples
    from .features import hidden_features, projected_features

    safe = load_required_samples(cfg.safe, "safe set")
    user = load_required_samples(cfg.anchors, "anchors") if cfg.anchors else None
    anchors = build_anchors(safe, user, pool.shards())
    enc_c, enc_r = _encode_anchors(cfg, tokenizer, anchors)
    layers = list(cfg.compliance.layers) or None
    pw = cfg.compliance.prompt_weight

    def feats(enc, desc):
        return hidden_features(model, tokenizer, enc, layers, cfg.score_batch_size, cfg.progress, desc=desc, dist=dist)

    # Every candidate layer's features are held for the fit, so a large pool fits on a subset
    # (compliance.fit_rows) and is then scored at the chosen layer alone, a batch at a time.
    ids = encoded.sample_ids.to_pylist() if hasattr(encoded, "sample_ids") else [e.sample_id for e in encoded]
    sub = fit_subset(ids, cfg.compliance.fit_rows)
    fit_enc = encoded if sub is None else (encoded.take(sub) if hasattr(encoded, "take") else
                                           [encoded[i] for i in sub])
    chosen, fits = compliance_fit(feats(fit_enc, "pool features" if sub is None else "pool features (fit rows)"),
                                  feats(enc_c, "compliant anchors"), feats(enc_r, "refusal anchors"),
                                  cfg.compliance.shrinkage, pw)
    scores = chosen.scores
    if sub is not None:
        scores = projected_features(model, tokenizer, encoded, chosen.layer,
                                    lambda r, p: apply_projector(chosen.projector, r, p, pw),
                                    cfg.score_batch_size, cfg.progress, desc="compliance scores", dist=dist)
    info = {"layer": chosen.layer, "loo_auroc": round(chosen.loo_auroc, 4),
            "fit_rows": len(ids) if sub is None else len(sub),
            "anchors": {**anchors.summary(), "compliant_encoded": len(enc_c), "refusal_encoded": len(enc_r)},
            "loo_auroc_by_layer": {str(f.layer): round(f.loo_auroc, 4) for f in fits},
            "separation_by_layer": {str(f.layer): round(f.separation, 4) for f in fits},
            "shrinkage_by_layer": {str(f.layer): round(f.shrinkage, 4) for f in fits}}
    return scores, info


__all__ = ["Anchors", "LayerFit", "apply_projector", "build_anchors", "choose_layer", "compliance_direction", "compliance_fit",
           "compliance_scores", "drop_pool_rows", "fit_layer", "fit_subset", "ledoit_wolf_shrinkage", "loo_scores", "project",
           "split_refusals", "text_key", "whitener"]
