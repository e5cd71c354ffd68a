"""SEAL bilevel data ranker (Shen, Chen, Das, Chen 2024).

Upper level: the loss on a small safe set. Lower level: the selector-weighted
loss on the fine-tuning pool. The selector (:mod:`.selector`) holds one logit
``z_i`` per pool sample, keyed by ``sample_id`` (never by position in the file:
the pool is sorted by id on load, so shuffling or dropping samples cannot move a
score to another row).

Each step, following the reference implementation's alternating scheme:

1. LoRA update on ``gamma*L_safe + (1-gamma)*mean_B(w_i*l_i)`` with ``w`` fixed;
2. (``seal-penalty`` only) the lower adapter ``theta_lower`` on ``mean_B(w_i*l_i)``
   alone: the penalty reformulation's value-function term, which the reference
   code drops;
3. selector update from the fixed signal ``d_i``: ``l_i`` for ``seal``,
   ``l_i(theta) - l_i(theta_0)`` with ``selector.baseline=initial``, and
   ``l_i(theta) - l_i(theta_lower)`` for ``seal-penalty``; the rule
   (``selector.update``) turns ``d`` into the selector's gradient. With
   ``selector.update=hypergradient`` ``d_i`` is instead the one-step hypergradient
   ``dL_safe(theta')/dw_i`` (:mod:`.hypergrad`), taken at ``theta_t`` before step 1.

``gamma`` starts at ``gamma0`` and drops by ``delta`` after each epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..config import to_dict
from ..errors import SealError
from ..training import (Dist, ProgressFn, TrainingRun, adapter_state, attach_lora, load_adapter_state, micro_batches,
                        oom_as_error, seed_all)
from .config import RankConfig
from .hypergrad import HypergradientSignal, load_anchors
from .selector import FreeLogitSelector, selector_entropy, selector_objective, selector_weights

# Keys that may differ between a checkpointed run and its resumption (they do not change the maths).
# processes is checked apart, against the checkpoint's world size, with a message that says so.
_RESUME_FREE_KEYS = {"progress", "max_steps", "out", "checkpoint_every", "device", "score_batch_size", "processes",
                     "logits_budget"}
# Safe-set batches are reshuffled per safe epoch with seeds far from the pool's (seed + epoch).
_SAFE_SEED_STRIDE = 7919


@dataclass
class SealState:
    """What the training loop leaves behind for scoring."""

    sample_ids: list[str]
    z: torch.Tensor
    weights: torch.Tensor
    model: torch.nn.Module
    steps: int
    completed: bool


@dataclass
class SealLoopState:
    """Where the loop is, and the fixed baseline ``l_i(theta_0)`` of ``selector.baseline=initial``.

    ``ref_cursors``: ``[epoch, pos]`` of each reference set ``selector.safe_gradient`` cycles through.
    """

    epoch: int = 0
    batch_pos: int = 0
    step: int = 0
    safe_epoch: int = 0
    safe_pos: int = 0
    baseline: Optional[torch.Tensor] = None
    ref_cursors: dict = field(default_factory=dict)

    def to_checkpoint(self) -> dict:
        return {"epoch": self.epoch, "batch_pos": self.batch_pos, "step": self.step,
                "safe_epoch": self.safe_epoch, "safe_pos": self.safe_pos,
                "baseline": self.baseline.cpu() if self.baseline is not None else None,
                "ref_cursors": {k: list(v) for k, v in self.ref_cursors.items()}}

    @classmethod
    def from_checkpoint(cls, ck: dict, device) -> "SealLoopState":
        baseline = ck["baseline"].to(device) if ck["baseline"] is not None else None
        return cls(ck["epoch"], ck["batch_pos"], ck["step"], ck["safe_epoch"], ck["safe_pos"], baseline,
                   {k: list(v) for k, v in ck.get("ref_cursors", {}).items()})


class _Data:
    """The id-sorted pool and the safe set, tokenised, batched onto the model's device."""

    def __init__(self, cfg: RankConfig, pool_enc: list, safe_enc: list, pad_id: int, device, dist: Dist):
        self.cfg, self.pool, self.safe, self.pad_id, self.device = cfg, pool_enc, safe_enc, pad_id, device
        self.dist = dist
        self.pool_lengths = [e.n_tokens for e in pool_enc]
        self.safe_lengths = [e.n_tokens for e in safe_enc]

    def tensors(self, enc: list, idx: list[int]) -> dict[str, torch.Tensor]:
        from ..tokenization import collate

        return {k: v.to(self.device) for k, v in collate([enc[i] for i in idx], self.pad_id).items()}

    def pool_order(self, epoch: int) -> list[list[int]]:
        from ..tokenization import length_grouped_batches

        return length_grouped_batches(self.pool_lengths, self.cfg.batch_size, seed=self.cfg.seed + epoch, shuffle=True)

    def next_safe_batch(self, state: SealLoopState) -> list[int]:
        """The next safe-set batch; the safe set is cycled independently of the pool's epochs."""
        from ..tokenization import length_grouped_batches

        def order():
            seed = self.cfg.seed + _SAFE_SEED_STRIDE * (state.safe_epoch + 1)
            return length_grouped_batches(self.safe_lengths, self.cfg.safe_batch_size, seed=seed)

        batches = order()
        if state.safe_pos >= len(batches):
            state.safe_epoch, state.safe_pos = state.safe_epoch + 1, 0
            batches = order()
        b = batches[state.safe_pos]
        state.safe_pos += 1
        return b

    def safe_loss(self, model, s_idx: list[int], gamma: float) -> float:
        """Mean safe-set loss of ``s_idx``; backpropagates ``gamma*L_safe`` when ``gamma > 0``.

        Under torch.distributed this rank takes its share of ``s_idx``; the loss is divided by the
        global batch size, so the ranks' summed gradients and losses are the one-process ones.
        """
        from ..tokenization import per_sample_loss

        parts = micro_batches(self.dist.share(s_idx), self.cfg.micro_batch_size)
        if gamma <= 0:
            with torch.no_grad():
                total = sum(per_sample_loss(model, self.tensors(self.safe, mb), self.cfg.logits_budget).sum().item()
                            for mb in parts) / len(s_idx)
            return self.dist.sum_scalar(total, self.device)
        total = 0.0
        for mb in parts:
            ls = per_sample_loss(model, self.tensors(self.safe, mb), self.cfg.logits_budget)
            (gamma * ls.sum() / len(s_idx)).backward()
            total += ls.detach().sum().item() / len(s_idx)
        return self.dist.sum_scalar(total, self.device)

    def pool_losses(self, model, idx: list[int], w: torch.Tensor, scale: float, train: bool) -> torch.Tensor:
        """Per-sample losses of ``idx``; backpropagates ``scale*mean(w*l)`` when ``train``.

        Under torch.distributed this rank computes its share and the losses are gathered.
        """
        from ..tokenization import per_sample_loss

        n = len(idx)
        if self.dist.enabled:
            idx, w = self.dist.share(idx), w[self.dist.positions(n)]
        out = torch.empty(len(idx), device=self.device)
        pos = 0
        for mb in micro_batches(idx, self.cfg.micro_batch_size):
            if train:
                l = per_sample_loss(model, self.tensors(self.pool, mb), self.cfg.logits_budget)
                (scale * (w[pos: pos + len(mb)] * l).sum() / n).backward()
            else:
                with torch.no_grad():
                    l = per_sample_loss(model, self.tensors(self.pool, mb), self.cfg.logits_budget)
            out[pos: pos + len(mb)] = l.detach().float()
            pos += len(mb)
        return self.dist.gather(out, n)


class _Learners:
    """What the loop trains: the upper adapter, the lower adapter (seal-penalty) and the selector."""

    def __init__(self, cfg: RankConfig, model, n: int, device):
        from ..models import adapter_parameters

        self.penalty = cfg.method == "seal-penalty"
        names = ("default", "lower") if self.penalty else ("default",)
        model = attach_lora(model, cfg.lora, names, cfg.gradient_checkpointing)
        self.model = model
        self.params = adapter_parameters(model, "default")
        self.opt = torch.optim.AdamW(self.params, lr=cfg.model_lr, weight_decay=0.0)
        self.params_lower = adapter_parameters(model, "lower") if self.penalty else []
        self.opt_lower = (torch.optim.AdamW(self.params_lower, lr=cfg.model_lr, weight_decay=0.0)
                          if self.penalty else None)
        # The selector is built here, in this one place (method=seal-probe swaps in its own in train_seal).
        self.selector = FreeLogitSelector(n, cfg.selector, device)

    def to_checkpoint(self) -> dict:
        sel = self.selector.to_checkpoint()
        ck = {**sel, "adapters": {"default": adapter_state(self.model, "default")},
              "opt": {"default": self.opt.state_dict(), **sel["opt"]}}
        if self.penalty:
            ck["adapters"]["lower"] = adapter_state(self.model, "lower")
            ck["opt"]["lower"] = self.opt_lower.state_dict()
        return ck

    def load_checkpoint(self, ck: dict) -> None:
        self.selector.load_checkpoint(ck)
        load_adapter_state(self.model, ck["adapters"]["default"])
        self.opt.load_state_dict(ck["opt"]["default"])
        if self.penalty:
            load_adapter_state(self.model, ck["adapters"]["lower"])
            self.opt_lower.load_state_dict(ck["opt"]["lower"])


def upper_step(learners: _Learners, data: _Data, idx: list[int], s_idx: list[int], w: torch.Tensor,
               gamma: float) -> tuple[float, torch.Tensor]:
    """LoRA step on ``gamma*L_safe + (1-gamma)*mean_B(w_i*l_i)``, weights fixed -> (safe loss, pool losses)."""
    if learners.penalty:
        learners.model.set_adapter("default")
    learners.opt.zero_grad(set_to_none=True)
    safe_loss = data.safe_loss(learners.model, s_idx, gamma)
    # With gamma = 1 the pool term carries no gradient: its losses are only read.
    l_upper = data.pool_losses(learners.model, idx, w, 1.0 - gamma, train=gamma < 1.0)
    data.dist.sum_grads(learners.params)
    learners.opt.step()
    return safe_loss, l_upper


def lower_step(learners: _Learners, data: _Data, idx: list[int], w: torch.Tensor) -> torch.Tensor:
    """seal-penalty: the lower adapter's step on ``mean_B(w_i*l_i)`` alone -> its pool losses."""
    learners.model.set_adapter("lower")
    learners.opt_lower.zero_grad(set_to_none=True)
    l_lower = data.pool_losses(learners.model, idx, w, 1.0, train=True)
    data.dist.sum_grads(learners.params_lower)
    learners.opt_lower.step()
    learners.model.set_adapter("default")
    return l_lower


def selector_signal(l_upper: torch.Tensor, l_lower: Optional[torch.Tensor], baseline: Optional[torch.Tensor],
                    idx: list[int]) -> torch.Tensor:
    """``d_i`` the selector minimises: the loss, or its change against the lower adapter or theta_0."""
    if l_lower is not None:
        return l_upper - l_lower
    if baseline is not None:
        return l_upper - baseline[idx]
    return l_upper


def bilevel_step(learners: _Learners, data: _Data, state: SealLoopState, idx: list[int], gamma: float,
                 hyper: Optional[HypergradientSignal] = None) -> dict:
    """One step of the alternating scheme; returns its log record (without step and epoch).

    ``hyper`` (selector.update=hypergradient) computes ``d`` at ``theta_t``, before the LoRA step.
    """
    s_idx = data.next_safe_batch(state)
    w = learners.selector.weights()[idx]
    d_hyper = (hyper(learners.model, learners.params, data, state.ref_cursors, idx, s_idx)
               if hyper is not None else None)
    safe_loss, l_upper = upper_step(learners, data, idx, s_idx, w, gamma)
    l_lower = lower_step(learners, data, idx, w) if learners.penalty else None
    d = d_hyper if d_hyper is not None else selector_signal(l_upper, l_lower, state.baseline, idx)
    learners.selector.step(idx, w, d)
    rec = {"gamma": gamma, "safe_loss": safe_loss, "pool_loss": l_upper.mean().item(),
           "weighted_pool_loss": (w * l_upper).mean().item(), "selector_entropy": selector_entropy(learners.selector.z),
           "d_mean": d.mean().item(), "center": learners.selector.rule.center}
    if l_lower is not None:
        rec["lower_pool_loss"] = l_lower.mean().item()
    return rec


def train_seal(cfg: RankConfig, model, tokenizer, pool_enc: list, safe_enc: list, out_dir: Path,
               resume: bool = False, on_progress: Optional[ProgressFn] = None, dist: Dist = Dist(),
               probe_features=None) -> SealState:
    """Run the bilevel loop; ``pool_enc`` must be sorted by ``sample_id``.

    ``probe_features`` (seal-probe): the selector's input features, when the caller already has them.

    Returns the selector and the LoRA-adapted model. Checkpoints go to
    ``out_dir/checkpoints/last.safetensors`` every ``cfg.checkpoint_every`` steps, at every epoch end
    and when ``max_steps`` stops the run; ``resume=True`` continues from there.
    """
    from ..tokenization import pad_token_id, score_losses

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not pool_enc or not safe_enc:
        raise SealError("SEAL needs at least one pool sample and one safe-set sample after tokenisation")
    device = next(model.parameters()).device
    sample_ids = [e.sample_id for e in pool_enc]
    run = TrainingRun(out_dir, to_dict(cfg), sample_ids, free_keys=_RESUME_FREE_KEYS, data_name="pool",
                      desc=f"rank[{cfg.method}]", progress=cfg.progress, on_progress=on_progress, dist=dist)
    data = _Data(cfg, pool_enc, safe_enc, pad_token_id(tokenizer), device, dist)

    # setup: seed, the initial losses (LoRA starts at B=0, so the bare model's are l_i(theta_0)), learners
    seed_all(cfg.seed)
    state = SealLoopState()
    if cfg.method == "seal" and cfg.selector.baseline == "initial" and not run.can_resume(resume):
        state.baseline = torch.as_tensor(score_losses(model, tokenizer, pool_enc, cfg.score_batch_size, cfg.progress,
                                                      desc="initial losses", dist=dist,
                                                      logits_budget=cfg.logits_budget),
                                         dtype=torch.float32, device=device)
    learners = _Learners(cfg, model, len(pool_enc), device)
    if cfg.method == "seal-probe":  # logits from a network over frozen features (LoRA's B is still 0)
        from .probe import probe_selector

        learners.selector = probe_selector(cfg, model, tokenizer, pool_enc, dist, probe_features)
    ck = run.restore(resume)
    if ck is not None:
        learners.load_checkpoint(ck)
        state = SealLoopState.from_checkpoint(ck, device)

    hyper = (HypergradientSignal(cfg, tokenizer, safe_enc, load_anchors(cfg, tokenizer))
             if cfg.selector.update == "hypergradient" else None)

    def checkpoint() -> None:
        run.save({**learners.to_checkpoint(), **state.to_checkpoint()})

    total_steps = len(data.pool_order(0)) * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    oom = (f"out of memory training the ranker on {cfg.model} (micro_batch_size={cfg.micro_batch_size}, "
           f"max_length={cfg.max_length}); lower them or set gradient_checkpointing=true")
    with run.progress(total_steps, state.step), oom_as_error(oom):
        for idx in run.steps(state, cfg.epochs, cfg.max_steps, cfg.checkpoint_every, data.pool_order, checkpoint):
            # one bilevel step: upper LoRA, lower LoRA (penalty), selector
            gamma = cfg.gamma(state.epoch)
            rec = {"step": state.step + 1, "epoch": state.epoch + 1,
                   **bilevel_step(learners, data, state, idx, gamma, hyper)}
            run.log(rec, ep=state.epoch + 1, safe=f"{rec['safe_loss']:.3f}", pool=f"{rec['pool_loss']:.3f}",
                    g=f"{gamma:.2f}", H=f"{rec['selector_entropy']:.4f}")
    if learners.penalty:
        learners.model.set_adapter("default")
    z = learners.selector.z.detach()
    weights = selector_weights(z, cfg.selector.weighting)
    return SealState(sample_ids, z, weights, learners.model, state.step, run.completed)


__all__ = ["SealState", "SealLoopState", "train_seal", "bilevel_step", "upper_step", "lower_step",
           "selector_signal", "selector_objective", "selector_weights", "selector_entropy"]
