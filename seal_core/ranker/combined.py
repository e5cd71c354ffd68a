"""``method=combined``: several ranking signals of one pool, averaged as ranks, from one model load.

Each signal scores a different failure: the compliance direction (:mod:`.compliance`) pushes down
compliant answers to requests the model would refuse and keeps refusals, but says nothing about
junk; the relevance (:mod:`.relevance`) pushes down garbage and mismatched answers and is neutral on
harmful ones; the unadapted model's loss pushes down garbage but rewards short chatty text; a
seal-probe selector (:mod:`.probe`) trained by the bilevel loop ranks harmful rows lowest but drops
refusals of the same requests with them. They live on unrelated scales, so each becomes a
normalised rank in (0, 1] (ties share their average rank) and the score is their weighted mean
(``combined.signals``, ``combined.weights``). The forward-only signals are computed first, on the
unadapted model; the probe is trained last (it attaches LoRA).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import SealError
from ..io import write_json
from ..metrics import average_ranks
from .compliance import compliance_scores


def normalised_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks / n in (0, 1], ascending, ties averaged; NaN stays NaN and is left out of n."""
    v = np.asarray(values, dtype=np.float64)
    out = np.full(len(v), math.nan)
    finite = ~np.isnan(v)
    if finite.any():
        out[finite] = average_ranks(v[finite]) / finite.sum()
    return out


def rank_average(signals: Sequence[Sequence[float]], weights: Sequence[float]) -> np.ndarray:
    """Weighted mean of the signals' normalised ranks (higher = keep); NaN where any signal is NaN."""
    ranks = [normalised_ranks(s) for s in signals]
    return sum(w * r for w, r in zip(weights, ranks)) / float(sum(weights))


def _base_signals(cfg, model, tokenizer, pool, encoded, dist, trained_probe=None
                  ) -> tuple[dict, np.ndarray, dict, object]:
    """The forward-only signals of ``combined.signals`` (compliance, loss, relevance, prior) on the unadapted model.

    Returns ``(signals, losses, info, probe_features)``. With ``probe`` among the signals, the probe's
    features and the pool's losses come from one pass (:func:`~.features.features_and_losses`), and
    under ``train_on=final`` those losses are also the relevance's ``l(answer | request)``: the
    default signals cost two passes over the pool (that one and the empty-request one), not three.
    With ``trained_probe`` (a :class:`~.probe.TrainedProbe`, for ``seal score``) that pass gives the
    selector's logits as ``signals["probe"]`` batch by batch instead, and ``probe_features`` is None.
    """
    from ..tokenization import score_losses
    from .relevance import answer_losses, relevance_signal

    wanted = set(cfg.combined.signals) if cfg.method == "combined" else {"compliance"}
    signals, info, probe_features, cond_tokens = {}, {}, None, None
    losses = np.full(len(encoded), math.nan)
    if "compliance" in wanted:
        signals["compliance"], info = compliance_scores(cfg, model, tokenizer, pool, encoded, dist)
    if "probe" in wanted:
        from .features import features_and_losses, projected_features_and_losses
        from .probe import probe_inputs, probe_layer

        # Under train_on=final the pass's token losses are relevance's l_t(answer | request) as well.
        token_nll = "relevance" in wanted and cfg.train_on == "final"
        if trained_probe is not None:
            signals["probe"], losses, cond_tokens = projected_features_and_losses(
                model, tokenizer, encoded, trained_probe.meta["layer"], trained_probe.logits, cfg.score_batch_size,
                cfg.progress, desc="probe scores and losses", dist=dist, logits_budget=cfg.logits_budget,
                token_nll=token_nll)
        else:
            resp, last, losses, cond_tokens = features_and_losses(
                model, tokenizer, encoded, probe_layer(model, cfg.probe.layer), cfg.score_batch_size, cfg.progress,
                desc="probe features and losses", dist=dist, logits_budget=cfg.logits_budget, token_nll=token_nll)
            probe_features = probe_inputs(resp, last, cfg.probe.features)
            del resp, last
    if wanted & {"relevance", "prior"}:
        # Under train_on=final the pool's loss is over the final answer alone: the conditional loss itself.
        have_cond = cfg.train_on == "final" and not np.isnan(losses).all()
        need_gap = "relevance" in wanted
        al = answer_losses(model, tokenizer, encoded, cfg.score_batch_size, cfg.progress, dist=dist,
                           logits_budget=cfg.logits_budget, with_request=need_gap or not have_cond,
                           cond_tokens=cond_tokens if need_gap and have_cond else None)
        del cond_tokens
        if need_gap:
            signals["relevance"] = relevance_signal(al.pmi_mean, al.pmi_se, cfg.relevance.margin)
        signals["prior"] = -al.uncond
        if cfg.train_on == "final":
            # The final answer is all that carries loss: the same loss, not computed twice.
            losses = losses if have_cond else al.cond
    if cfg.method == "combined" and np.isnan(losses).all() and len(losses):
        losses = score_losses(model, tokenizer, encoded, cfg.score_batch_size, cfg.progress, desc="losses",
                              dist=dist, logits_budget=cfg.logits_budget)
    if "loss" in wanted:
        signals["loss"] = -losses
    return signals, losses, info, probe_features


def rank_combined(cfg, model, tokenizer, pool, encoded, out: Path, dist=None, train_probe=None
                  ) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """``method=compliance`` or ``combined`` on the ``encoded`` pool rows -> (scores, losses, info, signals).

    ``losses`` are the unadapted model's (NaN for ``compliance``, which never computes them).
    ``train_probe(features)`` (needed when ``probe`` is a signal) trains the seal-probe selector on the
    model as it is, from the probe features given, and returns its logits for the ``encoded`` rows.
    The fitted compliance layer, the anchors and their per-layer leave-one-out AUROC go to
    ``out/compliance.json`` and one printed line; ``info["signals"]`` lists the signals and weights.
    ``signals`` maps each averaged signal's name to its values (empty for ``compliance``, whose score
    is its one signal).
    """
    signals, losses, info, probe_features = _base_signals(cfg, model, tokenizer, pool, encoded, dist)
    used: dict = {}
    if cfg.method == "compliance":
        scores = signals["compliance"]
    else:
        if "probe" in cfg.combined.signals:
            if train_probe is None:
                raise SealError("combined.signals has 'probe' but no way to train it was given")
            signals["probe"] = np.asarray(train_probe(probe_features), dtype=np.float64)
        names, w = list(cfg.combined.signals), cfg.combined.resolved_weights()
        scores = rank_average([signals[n] for n in names], w)
        info["signals"] = dict(zip(names, w))
        used = {n: signals[n] for n in names}
    if info.get("anchors") and (dist is None or dist.is_main):
        write_json(Path(out) / "compliance.json", {k: v for k, v in info.items() if k != "signals"})
        a = info["anchors"]
        print(f"compliance: layer {info['layer']} (anchors' leave-one-out AUROC {info['loo_auroc']:.3f}; "
              f"{a['compliant_encoded']} compliant anchors from {a['compliant_source']}, {a['refusal_encoded']} "
              f"refusal anchors, {a['dropped_as_pool_rows']} dropped as pool rows)", flush=True)
    return scores, losses, info, used


def check_rescorable(cfg) -> None:
    """SealError unless every signal of the combined run ``cfg`` can be computed on a new pool."""
    if "compliance" in cfg.combined.signals:
        raise SealError("seal score cannot recompute a combined run's compliance signal (its direction is fitted "
                        "to the run's pool and anchors and not kept); run `seal rank --method combined` on the pool")


def score_combined(cfg, model, tokenizer, pool, encoded, trained_probe) -> tuple[np.ndarray, np.ndarray, dict]:
    """A finished ``combined`` run's score of any pool (``seal score``) -> (scores, losses, signals).

    ``cfg`` is the run's resolved config. The probe's logits come from ``trained_probe`` (no bilevel
    loop); every other signal needs only the unadapted model and is computed afresh on this pool, so
    a pool scored this way gets what ``seal rank`` would have given it had it been the training pool,
    up to the probe having learnt from other rows. The rank average is over this pool's rows: a row's
    signals depend on the row alone, its combined score on the company it is ranked in.
    """
    names = list(cfg.combined.signals)
    check_rescorable(cfg)
    signals, losses, _, _ = _base_signals(cfg, model, tokenizer, pool, encoded, None, trained_probe=trained_probe)
    scores = rank_average([signals[n] for n in names], cfg.combined.resolved_weights())
    return scores, losses, {n: signals[n] for n in names}


__all__ = ["check_rescorable", "normalised_ranks", "rank_average", "rank_combined", "score_combined"]
