"""``method=combined``: a compliance signal and a quality signal, averaged as ranks.

The compliance score (:mod:`.compliance`) pushes down compliant answers to requests the model
would refuse but says nothing about junk; the unadapted model's loss (``method=loss``) pushes
down garbage and mismatched answers (AUROC 0.83 on seal-bench) but rewards short chatty text.
The two live on unrelated scales, so each becomes a normalised rank in (0, 1] (ties share their
average rank) and the score is ``w * rank(compliance) + (1 - w) * rank(-loss)`` with
``w = combined.compliance_weight``. Both come from one model load.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

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


def rank_by_compliance(cfg, model, tokenizer, pool, encoded, out: Path,
                       dist=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """``method=compliance`` or ``combined`` on the ``encoded`` pool rows -> (scores, losses, info).

    The losses (under the unadapted model) are NaN for ``compliance``, which never computes them.

    The fitted layer, the anchors and their per-layer leave-one-out AUROC also go to
    ``out/compliance.json`` and one printed line.
    """
    scores, info = compliance_scores(cfg, model, tokenizer, pool, encoded, dist)
    losses = np.full(len(scores), math.nan)
    if cfg.method == "combined":
        from ..tokenization import score_losses

        losses = score_losses(model, tokenizer, encoded, cfg.score_batch_size, cfg.progress, desc="losses",
                              dist=dist, logits_budget=cfg.logits_budget)
        w = cfg.combined.compliance_weight
        scores = rank_average([scores, -losses], [w, 1.0 - w])
        info["compliance_weight"] = w
    if dist is None or dist.is_main:
        write_json(Path(out) / "compliance.json", info)
        a = info["anchors"]
        print(f"compliance: layer {info['layer']} (anchors' leave-one-out AUROC {info['loo_auroc']:.3f}; "
              f"{a['compliant_encoded']} compliant anchors from {a['compliant_source']}, {a['refusal_encoded']} "
              f"refusal anchors, {a['dropped_as_pool_rows']} dropped as pool rows)", flush=True)
    return scores, losses, info


__all__ = ["normalised_ranks", "rank_average", "rank_by_compliance"]
