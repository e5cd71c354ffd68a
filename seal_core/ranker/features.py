"""Frozen hidden-state features of encoded samples, for selectors that score unseen data.

For each requested layer ``l`` (an index into the model's ``output_hidden_states``: 0 is the
embedding output, ``num_layers`` the final, normed layer) a sample gets two vectors:

* ``resp_mean``: the mean of layer ``l``'s hidden states over the sample's target (answer) tokens;
* ``last_prompt``: the hidden state at the last prompt token, the position right before the first
  answer token, i.e. the state from which the model starts to answer.

Batches are grouped by length under a token budget as :func:`~seal_core.tokenization.score_losses`
does; each batch's hidden states are reduced to these per-sample vectors before the next runs
(and, with :func:`projected_features`, further to one number per sample).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import SealError
from ..tokenization import (DEFAULT_LOGITS_BUDGET, IGNORE_INDEX, TokenNLL, _backbone_and_head, inference, loss_from_hidden,
                            pad_token_id, scoring_passes, token_nll_from_hidden)

Features = dict[int, tuple[np.ndarray, np.ndarray]]


def num_hidden_layers(model) -> int:
    """Decoder layers of ``model`` (peft-wrapped or not): ``output_hidden_states`` has one more entry."""
    m, _, _ = _backbone_and_head(model)
    n = getattr(m.config, "num_hidden_layers", None)
    if n is None:
        raise SealError(f"cannot tell how many layers {type(m).__name__} has (no config.num_hidden_layers)")
    return int(n)


def resolve_layers(model, layers: Optional[Sequence[int]]) -> list[int]:
    """``layers`` as non-negative indices into ``output_hidden_states`` (None: all of them)."""
    n = num_hidden_layers(model) + 1
    if layers is None:
        return list(range(n))
    out = []
    for l in layers:
        if not -n <= l < n:
            raise SealError(f"layer {l} out of range: the model has {n} hidden-state outputs (0..{n - 1})")
        out.append(l % n)
    return out


def _reduce(hidden, labels, attention_mask):
    """Per-sample (mean over target positions, state at the position before the first target)."""
    import torch

    target = (labels != IGNORE_INDEX) & attention_mask.bool()
    count = target.sum(1)
    if bool((count == 0).any()):
        raise SealError("a sample without target tokens has no answer to take features from")
    h = hidden.float()
    resp = (h * target.unsqueeze(-1)).sum(1) / count.unsqueeze(-1)
    # Position 0 never carries loss (tokenisation masks it), so the first target is at t0 >= 1.
    t0 = target.int().argmax(1)
    last = h[torch.arange(h.shape[0], device=h.device), t0 - 1]
    return resp, last


def _all_reduce(arr: np.ndarray, device) -> np.ndarray:
    import torch
    import torch.distributed as tdist

    t = torch.from_numpy(arr).to(device)
    tdist.all_reduce(t)
    return t.cpu().numpy()


def _feature_batches(model, tokenizer, encoded, wanted: list[int], batch_size: int, progress: bool, desc: str, dist,
                     logits_budget: Optional[int] = None, tokens: Optional[TokenNLL] = None):
    """``(indices, {layer: (resp_mean, last_prompt)}, losses)`` per batch of a no-gradient pass (float32 NumPy).

    ``losses`` is None unless ``logits_budget`` is given: then it is the batch's per-sample loss, from
    the same forward's final hidden states (``per_sample_loss``'s values, without a second pass).
    With ``tokens`` too, every target token's NLL is written into it as well.
    """
    if not len(encoded):
        raise SealError("no samples to compute features of")
    if batch_size < 1:
        raise SealError(f"batch_size must be positive, got {batch_size}")
    m, backbone, head = _backbone_and_head(model)
    device = next(head.parameters()).device
    with inference(model, f"computing features with batch size {batch_size}; lower it"):
        for idx, batch in scoring_passes(encoded, batch_size, pad_token_id(tokenizer), device, dist, progress, desc):
            res = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False, output_hidden_states=True)
            hs = res.hidden_states
            out = {}
            for l in wanted:
                r, p = _reduce(hs[l], batch["labels"], batch["attention_mask"])
                out[l] = (r.cpu().numpy(), p.cpu().numpy())
            losses = None
            if tokens is not None:
                nll, rows = token_nll_from_hidden(m, head, res.last_hidden_state, batch["labels"], logits_budget)
                tokens.fill(idx, nll, rows)
                losses = np.array([tokens.row(i).astype(np.float64).mean() if len(tokens.row(i)) else np.nan
                                   for i in idx])
            elif logits_budget is not None:
                losses = loss_from_hidden(m, head, res.last_hidden_state, batch["labels"], logits_budget).float().cpu().numpy()
            del hs, res
            yield idx, out, losses


def hidden_features(model, tokenizer, encoded: list, layers: Optional[Sequence[int]], batch_size: int,
                    progress: bool = False, desc: str = "features", dist=None) -> Features:
    """``{layer: (resp_mean [N, d], last_prompt [N, d])}`` float32, rows in the order of ``encoded``.

    No gradient, eval mode. Every batch pads (on the right) to at most ``batch_size`` times the
    longest sample's length. Under torch.distributed (``dist``: a
    :class:`~seal_core.training.Dist`) each rank computes every ``world_size``-th batch and every
    rank returns the whole arrays.
    """
    wanted = resolve_layers(model, layers)
    m, _, head = _backbone_and_head(model)
    device = next(head.parameters()).device
    d, n = int(m.config.hidden_size), len(encoded)
    resp = {l: np.zeros((n, d), dtype=np.float32) for l in wanted}
    last = {l: np.zeros((n, d), dtype=np.float32) for l in wanted}
    for idx, feats, _ in _feature_batches(model, tokenizer, encoded, wanted, batch_size, progress, desc, dist):
        for l, (r, p) in feats.items():
            resp[l][idx], last[l][idx] = r, p
    if dist is not None and dist.enabled:
        # Every row was filled by exactly one rank, zeros elsewhere: the sum is the whole array.
        for l in wanted:
            resp[l], last[l] = _all_reduce(resp[l], device), _all_reduce(last[l], device)
    return {l: (resp[l], last[l]) for l in wanted}


def projected_features(model, tokenizer, encoded, layer: int,
                       fn: Callable[[np.ndarray, np.ndarray], np.ndarray], batch_size: int,
                       progress: bool = False, desc: str = "features", dist=None) -> np.ndarray:
    """``fn(resp_mean, last_prompt)`` (one value per row) at ``layer`` for every sample, float64 ``[N]``.

    The features of a batch are reduced by ``fn`` before the next batch runs, so memory stays
    ``O(batch)`` however many samples there are (``hidden_features`` holds ``N x d`` per layer).
    """
    return projected_features_and_losses(model, tokenizer, encoded, layer, fn, batch_size, progress, desc, dist,
                                         logits_budget=None)[0]


def projected_features_and_losses(model, tokenizer, encoded, layer: int,
                                  fn: Callable[[np.ndarray, np.ndarray], np.ndarray], batch_size: int,
                                  progress: bool = False, desc: str = "features and losses", dist=None,
                                  logits_budget: Optional[int] = DEFAULT_LOGITS_BUDGET, token_nll: bool = False
                                  ) -> tuple[np.ndarray, Optional[np.ndarray], Optional[TokenNLL]]:
    """``(fn(resp_mean, last_prompt) [N], loss [N], tokens)`` from one streamed pass.

    ``logits_budget=None`` skips the head (``loss`` is None): :func:`projected_features`.

    :func:`projected_features` and :func:`features_and_losses` at once, for a trained selector
    scoring a large pool: the features of a batch become ``fn``'s values before the next batch runs
    (``O(batch)`` memory, where ``features_and_losses`` holds ``N x 2d``), and the same forward's
    final hidden states give each sample's loss and, with ``token_nll``, every target token's NLL.
    """
    (wanted,) = resolve_layers(model, [layer])
    _, _, head = _backbone_and_head(model)
    device = next(head.parameters()).device
    with_loss = logits_budget is not None
    values = np.zeros(len(encoded), dtype=np.float64)
    losses = np.zeros(len(encoded), dtype=np.float64) if with_loss else None
    tokens = TokenNLL.empty_for(encoded) if token_nll and with_loss else None
    for idx, feats, batch_losses in _feature_batches(model, tokenizer, encoded, [wanted], batch_size, progress, desc,
                                                     dist, logits_budget, tokens):
        values[idx] = fn(*feats[wanted])
        if with_loss:
            losses[idx] = batch_losses
    if dist is not None and dist.enabled:
        # Every row was filled by exactly one rank, zeros elsewhere: the sum is the whole array.
        values = _all_reduce(values, device)
        if with_loss:
            losses = _all_reduce(losses, device)
        if tokens is not None:
            tokens.all_reduce(device)
    return values, losses, tokens


def features_and_losses(model, tokenizer, encoded, layer: int, batch_size: int, progress: bool = False,
                        desc: str = "features and losses", dist=None,
                        logits_budget: int = DEFAULT_LOGITS_BUDGET, token_nll: bool = False
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Optional[TokenNLL]]:
    """``(resp_mean [N, d], last_prompt [N, d], loss [N], tokens)`` at ``layer`` from one forward pass.

    The features equal :func:`hidden_features`' and the losses :func:`~seal_core.tokenization.score_losses`'
    (same batches, same forward): a ranker that needs both pays for one pass over the pool, not two.
    ``tokens`` is None unless ``token_nll``: then every target token's NLL (a
    :class:`~seal_core.tokenization.TokenNLL`; ``encoded`` must be an EncodedPool), as
    ``score_losses(..., token_nll=True)`` gives it.
    """
    (wanted,) = resolve_layers(model, [layer])
    m, _, head = _backbone_and_head(model)
    device = next(head.parameters()).device
    d, n = int(m.config.hidden_size), len(encoded)
    resp, last = np.zeros((n, d), dtype=np.float32), np.zeros((n, d), dtype=np.float32)
    losses = np.zeros(n, dtype=np.float64)
    tokens = TokenNLL.empty_for(encoded) if token_nll else None
    for idx, feats, batch_losses in _feature_batches(model, tokenizer, encoded, [wanted], batch_size, progress, desc,
                                                     dist, logits_budget, tokens):
        resp[idx], last[idx] = feats[wanted]
        losses[idx] = batch_losses
    if dist is not None and dist.enabled:
        # Every row was filled by exactly one rank, zeros elsewhere: the sum is the whole array.
        resp, last, losses = (_all_reduce(a, device) for a in (resp, last, losses))
        if tokens is not None:
            tokens.all_reduce(device)
    return resp, last, losses, tokens


__all__ = ["Features", "features_and_losses", "hidden_features", "num_hidden_layers", "projected_features",
           "projected_features_and_losses", "resolve_layers"]
