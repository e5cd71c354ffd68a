"""``relevance`` and ``prior``: two forward-only signals from one answer scored with and without its request.

    relevance(x) = min(0, l(answer | empty request) - l(answer | request))      nats per answer token
    prior(x)     = -l(answer | empty request)

``l(answer | empty request) - l(answer | request)`` is the pointwise mutual information between
request and answer under the unadapted model, averaged over the answer's tokens. A fitting answer is
more likely after its own request than after an empty one; an answer to another request (mismatch)
or garbage is *less* likely after it: on seal-bench (SmolLM2-135M, max_length 160) the 90th
percentile of mismatched and garbage rows is below zero (-0.05, -0.03) and the median of every other
kind above it (0.19 to 0.58). Only a negative value is taken as evidence: above zero the gap mostly
measures how specific an answer is, and a refusal ("I can't help with that") is generic by design,
so the raw gap would rank the refusals of harmful requests (safe data) below the harmful answers
(AUROC 0.29 harmful vs refusals). Clipped at zero, the gap flags junk (garbage+mismatch vs rest
AUROC 0.97, the loss 0.79) and leaves every other row tied. The zero is the signal's own: the
request made the answer less likely than no request at all.

``prior`` is how likely the aligned model finds the answer with no request in view. An aligned model
writes refusals readily and harmful compliance reluctantly, so the prior ranks harmful answers low
(AUROC 0.82 harmful vs rest) and keeps refusals (0.91 harmful vs refusals), where the conditional
loss (``method=loss``) keeps only 81% of the refusals in its top 70%.

Both losses are taken over the same tokens: the final answer's run of target tokens as the
conditional encoding kept it (``truncation`` may have cut the answer's end), with the empty request
rendered by the model's own chat template (so a default system prompt stays in both).
"""

from __future__ import annotations

import numpy as np

from ..encoded import EncodedPool
from ..errors import SealError
from ..tokenization import encode_messages, score_losses

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


def answer_losses(model, tokenizer, encoded, batch_size: int, progress: bool = True, dist=None,
                  logits_budget: int = 2**24, with_request: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(l(answer | request), l(answer | empty request)) of each ``encoded`` row, in order.

    ``with_request=False`` skips the first pass (its array is NaN).
    """
    if not isinstance(encoded, EncodedPool):
        encoded = EncodedPool.from_encoded([e.to_encoded() if hasattr(e, "to_encoded") else e for e in encoded])
    prefix = empty_request_prefix(tokenizer)
    cond_loss, uncond_loss = np.full(len(encoded), np.nan), np.full(len(encoded), np.nan)
    for b in range(0, len(encoded), _BLOCK_ROWS):
        rows = np.arange(b, min(b + _BLOCK_ROWS, len(encoded)))
        block = encoded if len(rows) == len(encoded) else encoded.take(rows)
        cond, uncond = paired_encodings(block, prefix)
        if with_request:
            cond_loss[rows] = score_losses(model, tokenizer, cond, batch_size, progress, desc="answers with request",
                                           dist=dist, logits_budget=logits_budget)
        uncond_loss[rows] = score_losses(model, tokenizer, uncond, batch_size, progress,
                                         desc="answers without request", dist=dist, logits_budget=logits_budget)
    return cond_loss, uncond_loss


def relevance_from_losses(cond_loss: np.ndarray, uncond_loss: np.ndarray) -> np.ndarray:
    """``min(0, l(answer | empty request) - l(answer | request))``: below zero only for answers the
    request makes less likely (see the module's docstring for why the positive side is cut)."""
    return np.minimum(0.0, np.asarray(uncond_loss) - np.asarray(cond_loss))


__all__ = ["answer_losses", "relevance_from_losses", "paired_encodings", "empty_request_prefix"]
