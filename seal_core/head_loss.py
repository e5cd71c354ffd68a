"""Next-token NLL through the LM head in chunks, so at most a budget of logits exists at once.

The vocabulary makes the logits the largest tensors of a step: with SmolLM2's 49152 entries,
8 x 512 target tokens give 800 MB of float32 logits, and cross-entropy keeps its log-softmax and
then the logits' gradient, as large again each. :func:`head_nll` applies the head to
``logits_budget // vocab`` rows at a time, in the forward and in the backward alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _nll(head, h, targets, softcap):
    logits = head(h).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="none")


def _is_plain_linear(head) -> bool:
    # F.linear on its weight must be exactly what calling the module does: no subclass, no hooks,
    # no forward patched onto the instance (accelerate's offload hooks do that).
    return (type(head) is torch.nn.Linear and not head._forward_hooks and not head._forward_pre_hooks
            and "forward" not in vars(head))


class _FrozenLinearNLL(torch.autograd.Function):
    """NLL through a frozen linear head, its input gradient formed chunk by chunk in the forward.

    With W fixed, d nll_r / d h_r = (softmax(z_r) - onehot(y_r)) * (dz_r/ds_r) W depends on row r
    alone (s_r = W h_r, z_r the soft-capped logits), so it is built while the chunk's logits exist
    and kept as an [N, hidden] tensor; the backward only scales its rows by the incoming gradient,
    and no logits are recomputed.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, softcap, rows):
        nll = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        jac = torch.empty_like(h)
        for i in range(0, h.shape[0], rows):
            y = targets[i: i + rows]
            z = F.linear(h[i: i + rows], weight, bias).float()
            if softcap:
                z = torch.tanh(z / softcap) * softcap
            nll[i: i + rows] = F.cross_entropy(z, y, reduction="none")
            dz = torch.softmax(z, dim=-1)
            dz[torch.arange(len(y), device=y.device), y] -= 1.0
            if softcap:
                # d(c*tanh(s/c))/ds = 1 - tanh(s/c)^2 = 1 - (z/c)^2
                dz.mul_(z.div_(softcap).square_().neg_().add_(1.0))
            del z
            jac[i: i + rows] = dz.to(weight.dtype) @ weight
        ctx.save_for_backward(jac)
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        (jac,) = ctx.saved_tensors
        return grad_nll.to(jac.dtype).unsqueeze(1) * jac, None, None, None, None, None


def head_nll(head, h, targets, softcap, logits_budget: int):
    """Per-row ``cross_entropy(head(h).float(), targets)`` (soft-capped logits), ``logits_budget`` logits at a time.

    ``h``: [N, hidden] hidden states, ``targets``: [N] token ids. Differentiable with respect to
    ``h`` and the head's parameters. Within one chunk (N * vocab <= budget) it is the plain
    computation. Beyond it, a frozen ``nn.Linear`` head (LoRA never trains it) goes through
    :class:`_FrozenLinearNLL`; any other head (a trainable or adapted one) is checkpointed per
    chunk, so its backward recomputes one chunk's logits at a time.
    """
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    rows = max(1, logits_budget // vocab)
    n = h.shape[0]
    if n <= rows:
        return _nll(head, h, targets, softcap)
    head_trains = any(p.requires_grad for p in head.parameters())
    starts = range(0, n, rows)
    if not torch.is_grad_enabled() or not (h.requires_grad or head_trains):
        return torch.cat([_nll(head, h[i: i + rows], targets[i: i + rows], softcap) for i in starts])
    if _is_plain_linear(head) and not head_trains:
        return _FrozenLinearNLL.apply(h, head.weight, head.bias, targets, softcap, rows)
    return torch.cat([checkpoint(_nll, head, h[i: i + rows], targets[i: i + rows], softcap, use_reentrant=False)
                      for i in starts])


__all__ = ["head_nll"]
