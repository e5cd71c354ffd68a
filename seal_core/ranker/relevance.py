"""``relevance`` and ``prior``: two forward-only signals from one answer scored with and without its request.

    gap_t(x)     = l_t(answer | empty request) - l_t(answer | request)     per answer token t, nats
    relevance(x) = min(0, mean_t gap_t + relevance.margin * SE(gap))       SE = sd_t(gap_t) / sqrt(n)
    prior(x)     = -l(answer | empty request)

``mean_t gap_t`` is the pointwise mutual information between request and answer under the unadapted
model, averaged over the answer's tokens. A fitting answer is more likely after its own request than
after an empty one; an answer to another request (mismatch) or garbage is *less* likely after it: on
seal-bench (SmolLM2-135M, max_length 160) the 90th percentile of mismatched and garbage rows is below
zero (-0.05, -0.03) and the median of every other kind above it (0.19 to 0.58). Only a negative value
is taken as evidence: above zero the gap mostly measures how specific an answer is, and a refusal
("I can't help with that") is generic by design, so the raw gap would rank the refusals of harmful
requests (safe data) below the harmful answers (AUROC 0.29 harmful vs refusals).

The margin asks for the evidence to be more than noise. A refusal's gap is small either way (after
an empty request "I'm sorry, I can't" is likely too), so its mean falls below zero by chance: at
margin 0, 23% of the benchmark's refusals get a negative relevance and are ranked with the junk.
Counting a row only when its mean gap is below zero by more than one standard error of that mean
(margin 1, the default) flags 9% of the refusals and still 75% of the garbage and 87% of the
mismatched answers (garbage+mismatch vs rest AUROC 0.905 alone, 0.966 at margin 0; the loss 0.79).
The standard error needs the two passes' losses token by token, not per row, because the two losses
of one token are strongly correlated: the variance of their difference is far below the sum of
their variances. Every row not flagged is tied at 0. The zero is the signal's own: the request made
the answer less likely than no request at all.

``prior`` is how likely the aligned model finds the answer with no request in view. An aligned model
writes refusals readily and harmful compliance reluctantly, so the prior ranks harmful answers low
(AUROC 0.82 harmful vs rest) and keeps refusals (0.91 harmful vs refusals), where the conditional
loss (``method=loss``) keeps only 81% of the refusals in its top 70%.

Both losses are taken over the same tokens: the final answer's run of target tokens as the
conditional encoding kept it (``truncation`` may have cut the answer's end), with the empty request
rendered by the model's own chat template (so a default system prompt stays in both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..encoded import EncodedPool
from ..errors import SealError
from ..tokenization import TokenNLL, encode_messages, score_losses

# Rows rebuilt and scored per block, so the two re-encoded copies of a large pool never exist whole.
_BLOCK_ROWS = 8192


def empty_request_prefix(tokenizer) -> np.ndarray:
    """The tokens the chat template puts before an answer to an empty request (system prompt included)."""
    enc = encode_messages(tokenizer, [{"role": "user", "content": ""}, {"role": "assistant", "content": "ok"}],
                          max_length=1 << 20, train_on="final", truncation="right")
    if enc is None:
        raise SealError("the tokenizer's chat template renders no answer for an empty request")
    first = next(i for i, t in enumerate(enc.labels) if t >= 0)
    return np.asarray(enc.input_ids[:first], dtype=np.int32)


def _final_runs(pool: EncodedPool) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (token positions in the pool's buffer) of each row's last run of target tokens."""
    starts = np.empty(len(pool), dtype=np.int64)
    ends = np.empty(len(pool), dtype=np.int64)
    for i in range(len(pool)):
        lo, hi = int(pool.offsets[i]), int(pool.offsets[i + 1])
        pos = np.flatnonzero(pool.target[lo:hi])
        if not len(pos):
            raise SealError(f"sample {pool.sample_ids[i].as_py()} has no target token")
        end = int(pos[-1]) + 1
        gaps = np.flatnonzero(np.diff(pos) != 1)
        start = int(pos[gaps[-1] + 1]) if len(gaps) else int(pos[0])
        starts[i], ends[i] = lo + start, lo + end
    return starts, ends


def paired_encodings(pool: EncodedPool, prefix: np.ndarray) -> tuple[EncodedPool, EncodedPool]:
    """(with request, without request): both score only each row's final answer run, the same tokens."""
    starts, ends = _final_runs(pool)
    cond_target = np.zeros_like(pool.target)
    for s, e in zip(starts, ends):
        cond_target[s:e] = True
    cond = EncodedPool(pool.sample_ids, pool.tokens, cond_target, pool.offsets, ends - starts, pool.truncated)
    runs = [pool.tokens[s:e] for s, e in zip(starts, ends)]
    lengths = np.array([len(prefix) + len(r) for r in runs], dtype=np.int64)
    offsets = np.zeros(len(runs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate([np.concatenate([prefix, r]) for r in runs]).astype(np.int32) if runs else \
        np.zeros(0, dtype=np.int32)
    target = np.concatenate([np.r_[np.zeros(len(prefix), bool), np.ones(len(r), bool)] for r in runs]) if runs else \
        np.zeros(0, dtype=bool)
    uncond = EncodedPool(pool.sample_ids, tokens, target, offsets, ends - starts, pool.truncated)
    return cond, uncond


@dataclass
class AnswerLosses:
    """Each row's answer scored with and without its request (float64, rows in ``encoded`` order).

    ``pmi_mean`` and ``pmi_se`` are the mean over the answer's tokens of the per-token gap
    ``l_t(no request) - l_t(request)`` and its standard error (NaN when the request pass was skipped;
    ``inf`` for a one-token answer, whose gap has no spread to judge it by).
    """

    cond: np.ndarray
    uncond: np.ndarray
    pmi_mean: np.ndarray
    pmi_se: np.ndarray


def _gap_stats(c: np.ndarray, u: np.ndarray) -> tuple[float, float]:
    # Both runs are the same answer tokens; an empty prefix (a template-less tokenizer) leaves the
    # answer's first token unpredicted in the request-free copy, so they are aligned at the end.
    n = min(len(c), len(u))
    if n == 0:
        return math.nan, math.nan
    gap = u[len(u) - n:].astype(np.float64) - c[len(c) - n:].astype(np.float64)
    se = float(gap.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return float(gap.mean()), se


def answer_losses(model, tokenizer, encoded, batch_size: int, progress: bool = True, dist=None,
                  logits_budget: int = 2**24, with_request: bool = True,
                  cond_tokens: Optional[TokenNLL] = None) -> AnswerLosses:
    """``l(answer | request)``, ``l(answer | empty request)`` and their per-token gap, for each row.

    ``with_request=False`` skips the request pass and the gap (``cond`` and the gap are NaN).
    ``cond_tokens`` (per-token NLLs of ``encoded``'s targets, from a pass that already ran, e.g.
    :func:`~.features.features_and_losses` under ``train_on=final``, where the targets are the final
    answer) stands in for the request pass.
    """
    if not isinstance(encoded, EncodedPool):
        encoded = EncodedPool.from_encoded([e.to_encoded() if hasattr(e, "to_encoded") else e for e in encoded])
    prefix = empty_request_prefix(tokenizer)
    out = AnswerLosses(*(np.full(len(encoded), np.nan) for _ in range(4)))
    for b in range(0, len(encoded), _BLOCK_ROWS):
        rows = np.arange(b, min(b + _BLOCK_ROWS, len(encoded)))
        block = encoded if len(rows) == len(encoded) else encoded.take(rows)
        cond, uncond = paired_encodings(block, prefix)
        if not with_request:
            out.uncond[rows] = score_losses(model, tokenizer, uncond, batch_size, progress,
                                            desc="answers without request", dist=dist, logits_budget=logits_budget)
            continue
        if cond_tokens is None:
            out.cond[rows], c_tok = score_losses(model, tokenizer, cond, batch_size, progress,
                                                 desc="answers with request", dist=dist, logits_budget=logits_budget,
                                                 token_nll=True)
            c_row = c_tok.row
        else:
            out.cond[rows] = [cond_tokens.row(i).astype(np.float64).mean() for i in rows]
            c_row = lambda j, b=b: cond_tokens.row(b + j)  # noqa: E731 - block row -> pool row
        out.uncond[rows], u_tok = score_losses(model, tokenizer, uncond, batch_size, progress,
                                               desc="answers without request", dist=dist,
                                               logits_budget=logits_budget, token_nll=True)
        for j, i in enumerate(rows):
            out.pmi_mean[i], out.pmi_se[i] = _gap_stats(c_row(j), u_tok.row(j))
    return out


def relevance_signal(pmi_mean: np.ndarray, pmi_se: np.ndarray, margin: float) -> np.ndarray:
    """``min(0, mean gap + margin * its standard error)``: below zero only for answers the request
    makes less likely by more than ``margin`` standard errors (the module's docstring says why)."""
    # margin 0 is the plain mean gap, also for a one-token answer (0 * inf would be NaN).
    bound = np.asarray(pmi_mean, dtype=np.float64) + (margin * np.asarray(pmi_se) if margin > 0 else 0.0)
    return np.minimum(0.0, bound)


__all__ = ["AnswerLosses", "answer_losses", "relevance_signal", "paired_encodings", "empty_request_prefix"]
