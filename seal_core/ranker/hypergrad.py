"""The one-step hypergradient of SEAL's upper objective in the selector weights.

Unrolling one lower-level step ``theta' = theta - eta * sum_i w_i * grad l_i(theta) / B``, the
upper objective ``U(theta')`` (the safe-set loss, or a signed sum of reference-set losses) has

    dU(theta')/dw_i = -(eta/B) * <grad U(theta'), grad l_i(theta)>
                    = -(eta/B) * <grad U(theta), grad l_i(theta)> + O(eta^2),

the first-order form used here (the gradient of ``U`` is taken once per step, at ``theta_t``). Both
gradients are over the trainable (LoRA) parameters only. When every trainable parameter is the
weight of a bias-free ``nn.Linear`` (LoRA's ``A`` and ``B``), the dots of a whole micro-batch come
from one batched backward (:func:`row_alignments`): a linear layer's per-sample gradient is
``sum_t g_t a_t^T`` (output gradient times input, over the sample's positions), so
``<G, grad l_b> = sum_t g_t . (G a_t)``, read off hooks as the backward passes, and no per-sample
gradient is ever built. Otherwise (gradient checkpointing, which replays forwards; other
parameters) each sample gets its own backward (:func:`alignments`). Either way only the dot
products are kept.

The functions take parameters and loss closures, not a data pipeline, so they run unchanged on a
toy module (tests/test_hypergradient.py checks them against finite differences of the unrolled
objective) and in the ranker's loop (:class:`HypergradientSignal`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import torch

from ..errors import SealError
from ..tokenization import IGNORE_INDEX

LossFn = Callable[[], torch.Tensor]
# Seeds of the reference sets' batch orders: far from the pool's (seed + epoch) and the safe set's.
_REFERENCE_SEED_STRIDE = 104729


def _grad_dtype(p: torch.Tensor) -> torch.dtype:
    # Dot products of bf16 gradients lose most of their digits; accumulate in at least float32.
    return torch.promote_types(p.dtype, torch.float32)


def reference_gradient(params: Sequence[torch.nn.Parameter], losses: Iterable[LossFn],
                       reduce: Optional[Callable[[Sequence[torch.nn.Parameter]], None]] = None) -> list[torch.Tensor]:
    """``grad sum_k losses[k]()`` over ``params``, one tensor per parameter (float32 or wider).

    One backward per closure, accumulated (a batch in micro-batches). ``reduce`` is called once the
    local gradients sit in ``.grad`` (torch.distributed: sum the ranks' shares). The parameters'
    ``.grad`` are left as they were found.
    """
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    for fn in losses:
        fn().backward()
    if reduce is not None:
        reduce(params)
    out = [torch.zeros_like(p, dtype=_grad_dtype(p)) if p.grad is None else p.grad.detach().to(_grad_dtype(p))
           for p in params]
    for p, g in zip(params, saved):
        p.grad = g
    return out


def alignments(params: Sequence[torch.nn.Parameter], direction: Sequence[torch.Tensor],
               losses: Iterable[LossFn]) -> torch.Tensor:
    """``<direction, grad losses[i]()>`` for each closure, one backward each; no gradient is kept."""
    params = list(params)
    dots = []
    for fn in losses:
        grads = torch.autograd.grad(fn(), params, allow_unused=True)
        dots.append(sum(((g.to(v.dtype) * v).sum() for g, v in zip(grads, direction) if g is not None),
                        torch.zeros((), dtype=direction[0].dtype, device=direction[0].device)))
    if not dots:
        return torch.zeros(0, dtype=direction[0].dtype, device=direction[0].device)
    return torch.stack(dots)


def row_alignments(model: torch.nn.Module, params: Sequence[torch.nn.Parameter], direction: Sequence[torch.Tensor],
                   loss: Callable[[], torch.Tensor]) -> Optional[torch.Tensor]:
    """``<direction, grad loss()[b]>`` for each row ``b`` of one batched loss, from one backward.

    ``loss`` returns per-row losses ``[B]`` in which row ``b`` depends on row ``b``'s activations
    only (a transformer over a padded batch). Each parameter must be the weight of a bias-free
    ``nn.Linear`` that runs once per forward; for anything else this returns ``None`` and the caller
    falls back to :func:`alignments`. No parameter's ``.grad`` is touched.
    """
    replays = getattr(model, "is_activation_checkpointing", None)  # transformers 5; the older name is deprecated
    if replays is None:
        replays = getattr(model, "is_gradient_checkpointing", False)
    if replays:
        return None  # the recomputed forward would fire the hooks a second time
    want = {id(p): v for p, v in zip(params, direction)}
    layers = [(m, want[id(m.weight)]) for m in model.modules()
              if isinstance(m, torch.nn.Linear) and id(m.weight) in want and m.bias is None]
    if len(layers) != len(want):
        return None
    acc: dict = {"dots": None, "calls": 0, "ok": True}

    def on_forward(v: torch.Tensor):
        def hook(module, inputs, output):
            if not output.requires_grad:
                return
            acc["calls"] += 1
            a = inputs[0].detach()

            def on_grad(g: torch.Tensor) -> None:
                if g.shape[0] != a.shape[0] or g.dim() < 2:
                    acc["ok"] = False
                    return
                # sum_t g_t . (G a_t) per row, in float32 or wider: bf16 dots lose most of their digits
                ga = a.to(v.dtype).reshape(a.shape[0], -1, a.shape[-1]) @ v.T
                d = (g.to(v.dtype).reshape(g.shape[0], -1, g.shape[-1]) * ga).sum(dim=(1, 2))
                acc["dots"] = d if acc["dots"] is None else acc["dots"] + d

            output.register_hook(on_grad)
        return hook

    handles = [m.register_forward_hook(on_forward(v)) for m, v in layers]
    try:
        losses = loss()
        torch.autograd.grad(losses.sum(), list(params), allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    if not acc["ok"] or acc["calls"] != len(layers):
        return None  # a layer ran twice (weight tying, a replayed forward) or not at all: not this shape
    if acc["dots"] is None:
        return torch.zeros(losses.shape[0], dtype=direction[0].dtype, device=direction[0].device)
    return acc["dots"]


def hypergradient(params: Sequence[torch.nn.Parameter], direction: Sequence[torch.Tensor],
                  losses: Iterable[LossFn], lr: float, batch_size: int) -> torch.Tensor:
    """``dU(theta - lr * sum_i w_i grad l_i / B)/dw_i`` to first order in ``lr``: ``-(lr/B) <grad U, grad l_i>``.

    ``direction`` is ``grad U`` (:func:`reference_gradient`), ``losses`` the samples' ``l_i`` closures
    and ``batch_size`` the ``B`` the lower step divides by (the global batch, not a rank's share).
    """
    return hypergradient_from_dots(alignments(params, direction, losses), lr, batch_size)


def hypergradient_from_dots(dots: torch.Tensor, lr: float, batch_size: int) -> torch.Tensor:
    """``-(lr/B) <grad U, grad l_i>`` from the dot products however they were computed."""
    return -(lr / batch_size) * dots


def first_target_labels(labels: torch.Tensor, k: int) -> torch.Tensor:
    """``labels`` with each answer (a run of target positions) cut to its first ``k`` targets; 0: unchanged.

    Safety alignment sits mostly in an answer's first tokens (Qi et al. 2024, "Safety alignment
    should be made more than just a few tokens deep"), so the gradient of those alone can be asked for.
    """
    if k <= 0:
        return labels
    keep = labels != IGNORE_INDEX
    pos = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    starts = keep & ~torch.nn.functional.pad(keep[:, :-1], (1, 0), value=False)
    run_start = torch.cummax(torch.where(starts, pos, torch.full_like(pos, -1)), dim=1).values
    out = labels.clone()
    out[keep & (pos - run_start >= k)] = IGNORE_INDEX
    return out


def split_by_refusal(answers: Sequence[str]) -> tuple[list[int], list[int]]:
    """Positions of the answers the text-based refusal detector flags, and of the rest (helpful)."""
    from ..evaluation.refusal import is_refusal

    refusals = [i for i, a in enumerate(answers) if is_refusal(a)]
    flagged = set(refusals)
    return refusals, [i for i in range(len(answers)) if i not in flagged]


@dataclass(frozen=True)
class ReferencePart:
    """One term ``sign * mean_batch(l)`` of the upper objective: a set cycled in batches of its own."""

    name: str
    source: str  # "safe" or "anchors": which encoded list ``indices`` point into
    indices: tuple[int, ...]
    sign: float


def reference_parts(mode: str, answers: Sequence[str], n_anchors: int) -> list[ReferencePart]:
    """The upper objective's terms for ``selector.safe_gradient`` (``whole`` uses the step's safe batch: none).

    ``refusal_vs_helpful``: the safe set's refusals minus its helpful answers (He, Xia, Henderson 2024,
    "What's in your 'safe' data?"); ``anchors``: the refusals minus the unsafe anchors.
    """
    if mode == "whole":
        return []
    refusals, helpful = split_by_refusal(answers)
    if not refusals:
        raise SealError(f"selector.safe_gradient={mode}: the refusal detector finds no refusal among the "
                        f"{len(answers)} safe-set answers")
    parts = [ReferencePart("refusals", "safe", tuple(refusals), 1.0)]
    if mode == "refusal_vs_helpful":
        if not helpful:
            raise SealError("selector.safe_gradient=refusal_vs_helpful: every safe-set answer is a refusal, "
                            "so there is no helpful part to contrast")
        parts.append(ReferencePart("helpful", "safe", tuple(helpful), -1.0))
    else:
        if not n_anchors:
            raise SealError("selector.safe_gradient=anchors needs anchors (--anchors FILE)")
        parts.append(ReferencePart("anchors", "anchors", tuple(range(n_anchors)), -1.0))
    return parts


def next_reference_batch(part: ReferencePart, cursors: dict, lengths: Sequence[int], batch_size: int,
                         seed: int, salt: int) -> list[int]:
    """The part's next batch (indices into its source); ``cursors[name] = [epoch, pos]`` advances."""
    from ..tokenization import length_grouped_batches

    epoch, pos = cursors.get(part.name, [0, 0])

    def order(ep: int) -> list[list[int]]:
        own = [lengths[i] for i in part.indices]
        batches = length_grouped_batches(own, batch_size, seed=seed + _REFERENCE_SEED_STRIDE * (ep + 1) + salt)
        return [[part.indices[j] for j in b] for b in batches]

    batches = order(epoch)
    if pos >= len(batches):
        epoch, pos = epoch + 1, 0
        batches = order(epoch)
    cursors[part.name] = [epoch, pos + 1]
    return batches[pos]


def answer_text(tokenizer, enc) -> str:
    """The answer an encoded sample trains on, decoded from its target tokens (end-of-turn dropped)."""
    return tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX], skip_special_tokens=True).strip()


def load_anchors(cfg, tokenizer) -> list:
    """The encoded ``cfg.anchors`` rows (unsafe prompt + compliant answer) when the variant needs them."""
    if cfg.selector.safe_gradient != "anchors":
        return []
    from ..ingest import load_required_samples
    from ..tokenization import encode_samples

    enc, _ = encode_samples(tokenizer, load_required_samples(cfg.anchors, "anchors"), cfg.max_length, cfg.train_on,
                            cfg.truncation)
    if not enc:
        raise SealError(f"no anchor in {cfg.anchors} fits max_length={cfg.max_length}")
    return enc


class HypergradientSignal:
    """``d_i`` of ``selector.update=hypergradient``: :func:`hypergradient` for each sample of a pool batch.

    ``data`` is the ranker's batching (``tensors(enc, idx)``, ``pool``, ``dist``). Under torch.distributed
    each rank takes its share of every reference batch (the gradients are summed across ranks) and
    of the pool batch (the hypergradients are gathered), so every rank gets the whole batch's ``d``.
    """

    def __init__(self, cfg, tokenizer, safe_enc: list, anchors_enc: list):
        self.cfg, self.k = cfg, cfg.selector.first_tokens
        self.sources = {"safe": safe_enc, "anchors": anchors_enc}
        self.lengths = {name: [e.n_tokens for e in enc] for name, enc in self.sources.items()}
        mode = cfg.selector.safe_gradient
        answers = [answer_text(tokenizer, e) for e in safe_enc] if mode != "whole" else []
        self.parts = reference_parts(mode, answers, len(anchors_enc))

    def _loss(self, model, data, enc: list, mb: list[int]) -> torch.Tensor:
        from ..tokenization import per_sample_loss

        batch = data.tensors(enc, mb)
        batch["labels"] = first_target_labels(batch["labels"], self.k)
        return per_sample_loss(model, batch, self.cfg.logits_budget)

    def direction(self, model, params, data, cursors: dict, s_idx: list[int]) -> list[torch.Tensor]:
        """``grad U`` at the current parameters: the step's safe batch, or one batch of each reference part."""
        from ..training import micro_batches

        if self.parts:
            terms = [(self.sources[p.source], p.sign,
                      next_reference_batch(p, cursors, self.lengths[p.source], self.cfg.safe_batch_size,
                                           self.cfg.seed, salt))
                     for salt, p in enumerate(self.parts)]
        else:
            terms = [(self.sources["safe"], 1.0, s_idx)]
        closures = [lambda enc=enc, mb=mb, c=sign / len(b): c * self._loss(model, data, enc, mb).sum()
                    for enc, sign, b in terms
                    for mb in micro_batches(data.dist.share(b), self.cfg.micro_batch_size)]
        return reference_gradient(params, closures, data.dist.sum_grads)

    def __call__(self, model, params, data, cursors: dict, idx: list[int], s_idx: list[int]) -> torch.Tensor:
        v = self.direction(model, params, data, cursors, s_idx)
        from ..training import micro_batches

        parts = []
        for mb in micro_batches(data.dist.share(idx), self.cfg.micro_batch_size):
            dots = row_alignments(model, params, v, lambda mb=mb: self._loss(model, data, data.pool, mb))
            if dots is None:
                dots = alignments(params, v, [lambda i=i: self._loss(model, data, data.pool, [i])[0] for i in mb])
            parts.append(dots)
        dots = torch.cat(parts) if parts else torch.zeros(0, dtype=v[0].dtype, device=v[0].device)
        local = hypergradient_from_dots(dots, self.cfg.model_lr, len(idx))
        return data.dist.gather(local.float(), len(idx))


__all__ = ["reference_gradient", "alignments", "row_alignments", "hypergradient", "hypergradient_from_dots", "first_target_labels", "split_by_refusal",
           "ReferencePart", "reference_parts", "next_reference_batch", "answer_text", "load_anchors",
           "HypergradientSignal"]
