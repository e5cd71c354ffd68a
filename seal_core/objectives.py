"""Fine-tuning objectives: what the unsafe responses add to the task NLL.

Every objective trains on the task data's answer tokens with the usual NLL. Those that use an
unsafe set (pairs of a harmful prompt and a compliant, unsafe answer) add a term computed at the
unsafe answers' tokens, ``sign * unsafe_weight * mean_t term(q_t, y_t)``, where ``q_t`` is the
model's next-token distribution and ``y_t`` the unsafe answer's token:

* ``sft``: no unsafe term (with ``mix_safe`` it is the SafeInstr baseline).
* ``ta-sft`` (Lu, Sinha & Varakantham, ICLR 2025, arXiv 2412.06843): the earth mover's distance
  between ``q_t`` and the unsafe token, *maximised* (``sign = -1``). The ground cost is
  ``C(i, j) = 1 - cos(e_i, e_j)`` over the model's own frozen input embeddings. The target is
  one-hot, so the transport plan is forced (all mass goes to ``y``) and the EMD is exact:
  ``EMD(q, δ_y) = Σ_i q_i C(i, y) = 1 - <qᵀÊ, ê_y>`` with ``Ê`` the row-normalised embeddings.
  That is one V x d product per position, never a V x V cost matrix; and it is bounded in
  [0, 2], so pushing it up cannot diverge as gradient ascent on the NLL does.
* ``unlikelihood`` (Welleck et al., 2019): ``-log(1 - p(y_t))``, minimised (``sign = +1``).

The softmax over the vocabulary is taken at the unsafe answer positions only, ``logits_budget``
logits at a time, each chunk checkpointed so its backward recomputes one chunk's logits
(:func:`head_token_terms`). A new objective is one :class:`Objective` subclass added to
:data:`OBJECTIVES`; the config's choices and the CLI flag follow from it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, ClassVar

from .errors import ConfigError, SealError

# -log(1 - p + eps): finite when the model is certain, and, unlike clamping p, its gradient stays
# non-zero there, at the very tokens the unlikelihood term most needs to push down.
_UL_EPS = 1e-6


class Objective:
    """One training objective: how the unsafe answers' tokens enter the loss."""

    name: ClassVar[str]
    uses_unsafe: ClassVar[bool] = True
    # +1: the unsafe term is minimised with the NLL; -1: it is maximised.
    sign: ClassVar[float] = 1.0

    def prepare(self, model) -> None:
        """Compute what the term needs from the model once per run (before any step)."""

    def token_terms(self, logits, targets):
        """The term at each row: ``logits`` [n, V] float32, ``targets`` [n] token ids -> [n] float32."""
        raise NotImplementedError


class SFT(Objective):
    name = "sft"
    uses_unsafe = False


class TASFT(Objective):
    """TA-SFT's token-level EMD to the unsafe token under the embeddings' cosine cost, maximised."""

    name = "ta-sft"
    sign = -1.0

    def __init__(self) -> None:
        self.unit_embeddings = None

    def prepare(self, model) -> None:
        import torch

        weight = model.get_input_embeddings().weight.detach()
        # Normalised in float32; kept in the model's dtype (a float32 copy of an 8B model's
        # embeddings alone would take 2 GB). Frozen: the cost is the base model's geometry.
        unit = torch.nn.functional.normalize(weight.float(), dim=-1)
        self.unit_embeddings = unit.to(weight.dtype)

    def token_terms(self, logits, targets):
        import torch

        e = self.unit_embeddings
        if e is None:
            raise RuntimeError("TASFT.prepare(model) must run before token_terms")
        if e.shape[0] != logits.shape[-1]:
            raise SealError(f"ta-sft needs as many input embeddings as output logits "
                            f"({e.shape[0]} != {logits.shape[-1]})")
        q = torch.softmax(logits, dim=-1)
        # Σ_i q_i (1 - cos(e_i, e_y)) = 1 - Σ_i q_i <ê_i, ê_y>: one [n, d] x [d, V] product (the
        # same FLOPs as qᵀÊ). The cosines may be bf16 entry by entry, but q and the sum stay float32:
        # rounding qᵀÊ to bf16 would quantise the EMD, which lives in [0, 2], to about 4e-3.
        cos = (e[targets] @ e.T).float()
        return 1.0 - (q * cos).sum(dim=-1)


class Unlikelihood(Objective):
    """Token-level unlikelihood of the unsafe answers: -log(1 - p(y_t)), minimised."""

    name = "unlikelihood"

    def token_terms(self, logits, targets):
        import torch

        logp = torch.log_softmax(logits, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
        return -torch.log((-torch.expm1(logp)).clamp_min(0.0) + _UL_EPS)


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (SFT, TASFT, Unlikelihood)}


def build_objective(name: str, model=None) -> Objective:
    """The objective ``name``, prepared on ``model`` when given."""
    if name not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    objective = OBJECTIVES[name]()
    if model is not None:
        objective.prepare(model)
    return objective


def head_token_terms(head, h, targets, softcap, logits_budget: int, term: Callable):
    """``term(logits, targets)`` per row of ``h`` [N, hidden], ``logits_budget`` logits at a time.

    Each chunk's logits (soft-capped like the model's own) exist only inside the chunk; with
    gradients on, the chunk is checkpointed, so the backward too holds one chunk's logits at once.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    rows = max(1, logits_budget // vocab)

    def chunk(h_c, y_c):
        z = head(h_c).float()
        if softcap:
            z = torch.tanh(z / softcap) * softcap
        return term(z, y_c)

    starts = range(0, h.shape[0], rows)
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in head.parameters()))
    if h.shape[0] <= rows or not needs_grad:
        return torch.cat([chunk(h[i: i + rows], targets[i: i + rows]) for i in starts])
    return torch.cat([checkpoint(chunk, h[i: i + rows], targets[i: i + rows], use_reentrant=False)
                      for i in starts])


def answer_token_terms(model, batch: dict, objective: Objective, logits_budget: int, exclude_ids=()):
    """The objective's term at every target token of ``batch`` (collated) but ``exclude_ids``, flattened."""
    import torch

    from .tokenization import IGNORE_INDEX, _backbone_and_head

    m, backbone, head = _backbone_and_head(model)
    device = next(head.parameters()).device
    labels = batch["labels"].to(device)
    mask = batch.get("attention_mask")
    hidden = backbone(input_ids=batch["input_ids"].to(device),
                      attention_mask=None if mask is None else mask.to(device), use_cache=False).last_hidden_state
    # Position t predicts label t + 1, as in per_sample_loss.
    next_labels = labels[:, 1:]
    keep = next_labels != IGNORE_INDEX
    if len(exclude_ids):
        keep &= ~torch.isin(next_labels, torch.as_tensor(list(exclude_ids), device=device))
    softcap = getattr(m.config, "final_logit_softcapping", None)
    return head_token_terms(head, hidden[:, :-1][keep], next_labels[keep], softcap, logits_budget,
                            objective.token_terms)


@dataclass
class UnsafeSet:
    """The tokenised unsafe responses a run trains against, with its objective and weight (lambda)."""

    objective: Objective
    encoded: list
    weight: float
    # Special tokens (end of turn, padding) are left out of the unsafe term: pushing them down after
    # a harmful request would teach the model not to end its turn, not to avoid the answer.
    exclude_ids: tuple = ()

    def n_terms(self, i: int) -> int:
        e = self.encoded[i]
        if not self.exclude_ids:
            return e.n_target_tokens
        return sum(1 for lab in e.labels if lab != -100 and lab not in self.exclude_ids)

    def backward(self, model, idx: list[int], pad_id: int, device, dist, micro_batch_size: int,
                 logits_budget: int) -> float:
        """Back-propagate ``sign * weight * mean term`` over the unsafe batch ``idx``; returns this rank's
        share of the mean term (the ranks' shares sum to the one-process value, as the NLL's do)."""
        from .tokenization import collate
        from .training import micro_batches

        # The mean is over the whole (global) batch's answer tokens, whichever rank holds them.
        denom = float(max(1, sum(self.n_terms(i) for i in idx)))
        scale = self.objective.sign * self.weight / denom
        total = 0.0
        for mb in micro_batches(dist.share(idx), micro_batch_size):
            batch = {k: v.to(device) for k, v in collate([self.encoded[i] for i in mb], pad_id).items()}
            terms = answer_token_terms(model, batch, self.objective, logits_budget, self.exclude_ids).sum()
            (terms * scale).backward()
            total += terms.item() / denom
        return total


def unsafe_batch(n: int, size: int, seed: int, step: int) -> list[int]:
    """Indices of the unsafe samples of optimiser step ``step`` (0-based): ``min(size, n)`` of ``n``.

    The samples are read off an endless stream, one seeded permutation of ``range(n)`` after
    another, ``size`` per step. The batch is a function of (seed, step) alone, so a resumed run
    draws what the uninterrupted one drew, and every rank draws the same global batch.
    """
    size = min(size, n)
    out: list[int] = []
    perms: dict[int, list[int]] = {}
    for k in range(step * size, (step + 1) * size):
        cycle = k // n
        if cycle not in perms:
            perm = list(range(n))
            random.Random(f"unsafe-{seed}-{cycle}").shuffle(perm)
            perms[cycle] = perm
        out.append(perms[cycle][k % n])
    return out


__all__ = ["OBJECTIVES", "Objective", "SFT", "TASFT", "Unlikelihood", "UnsafeSet", "build_objective",
           "head_token_terms", "answer_token_terms", "unsafe_batch"]
