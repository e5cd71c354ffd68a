"""SEAL bilevel data ranker (Shen, Chen, Das, Chen 2024).

Upper level: the loss on a small safe set. Lower level: the selector-weighted
loss on the fine-tuning pool. The selector holds one logit ``z_i`` per pool
sample, keyed by ``sample_id`` (never by position: the pool is sorted by id on
load, so shuffling or dropping samples cannot move a score to another row).
Weights are ``w = N*softmax(z)`` or ``w = 2*sigmoid(z)``.

Each step, following the reference implementation's alternating scheme:

1. LoRA update on ``gamma*L_safe + (1-gamma)*mean_B(w_i*l_i)`` with ``w`` fixed;
2. selector update on ``mean_B(w_i*d_i)`` with ``d_i`` fixed, where ``d_i = l_i``
   for ``seal`` and ``d_i = l_i(theta) - l_i(theta_lower)`` for ``seal-penalty``
   (the penalty reformulation's value-function term, which the reference code
   drops; ``theta_lower`` is a second adapter trained only on the weighted pool
   loss).

``gamma`` starts at ``gamma0`` and drops by ``delta`` after each epoch.

The selector's default gradient estimate is centred: with
``c = sum_B(w_i*d_i)/sum_B(w_i)`` the surrogate ``mean_B(w_i*(d_i - c))`` has
gradient ``(N/B)*p_j*(d_j - c)`` for batch members and exactly zero for the
rest, an unbiased estimate (up to ``c``) of the full objective's gradient
``p_j*(d_j - sum_i p_i*d_i)``. The literal reference update ``mean_B(w_i*d_i)``
pushes every visited sample down whatever its loss (its softmax normaliser term
only counts the batch), so its ranking mostly follows visiting order.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import to_dict
from ..errors import SealError
from ..io import atomic_path
from ..training import (adapter_state, load_adapter_state, load_checked_checkpoint, rng_state, seed_all,
                        set_rng_state, trim_log)
from .config import RankConfig

ProgressFn = Callable[[dict], None]

_CKPT_NAME = "last.pt"
# Keys that may differ between a checkpointed run and its resumption.
_RESUME_FREE_KEYS = {"progress", "max_steps", "out", "checkpoint_every", "device", "score_batch_size"}


@dataclass
class SealState:
    """What the training loop leaves behind for scoring."""

    sample_ids: list[str]
    z: torch.Tensor
    weights: torch.Tensor
    model: torch.nn.Module
    steps: int
    completed: bool


def selector_weights(z: torch.Tensor, weighting: str) -> torch.Tensor:
    if weighting == "softmax":
        return z.numel() * torch.softmax(z, dim=0)
    return 2.0 * torch.sigmoid(z)


def selector_objective(z: torch.Tensor, idx: torch.Tensor, d: torch.Tensor, update: str, weighting: str,
                       c: float = 0.0) -> torch.Tensor:
    """Surrogate whose gradient w.r.t. ``z`` is the selector's update direction.

    ``reference``: ``mean_B(w_i*d_i)`` through the full weights, normaliser included.
    ``centered``: gradient ``(1/B)*dw_j/dz_j*(d_j - c)`` for batch members and exactly 0
    elsewhere; for softmax weights ``dw_j/dz_j`` is taken with the normaliser fixed,
    i.e. ``N*p_j``, matching the full gradient ``p_j*(d_j - sum_i p_i*d_i)`` in expectation.
    """
    if update == "reference":
        return (selector_weights(z, weighting)[idx] * d).mean()
    zb = z[idx]
    if weighting == "softmax":
        w_local = z.numel() * torch.exp(zb - torch.logsumexp(z.detach(), 0))
    else:
        w_local = 2.0 * torch.sigmoid(zb)
    return (w_local * (d - c)).mean()


def selector_entropy(z: torch.Tensor) -> float:
    """Entropy of softmax(z) over log N: 1.0 means uniform weights."""
    p = torch.softmax(z.detach().double(), 0)
    h = -(p * torch.log(p.clamp_min(1e-300))).sum().item()
    return h / math.log(max(z.numel(), 2))


def _split(idx: list[int], size: int) -> list[list[int]]:
    return [idx[i : i + size] for i in range(0, len(idx), size)]


def train_seal(
    cfg: RankConfig,
    model,
    tokenizer,
    pool_enc: list,
    safe_enc: list,
    out_dir: Path,
    resume: bool = False,
    on_progress: Optional[ProgressFn] = None,
) -> SealState:
    """Run the bilevel loop; ``pool_enc`` must be sorted by ``sample_id``.

    Returns the selector and the LoRA-adapted model. Checkpoints go to
    ``out_dir/checkpoints/last.pt`` every ``cfg.checkpoint_every`` steps and at
    every epoch end; ``resume=True`` continues from there.
    """
    from ..models import LoraSettings, adapter_parameters, add_lora
    from ..tokenization import collate, length_grouped_batches, per_sample_loss

    penalty = cfg.method == "seal-penalty"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    sample_ids = [e.sample_id for e in pool_enc]
    n = len(pool_enc)
    if n == 0 or not safe_enc:
        raise SealError("SEAL needs at least one pool sample and one safe-set sample after tokenisation")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    seed_all(cfg.seed)
    baseline = None
    if not penalty and cfg.selector.baseline == "initial" and not (resume and (out_dir / "checkpoints" / _CKPT_NAME).exists()):
        from .run import score_losses

        # l_i(theta_0): LoRA starts at B=0, so the unadapted model's losses are the initial ones.
        baseline = torch.as_tensor(score_losses(model, tokenizer, pool_enc, cfg.score_batch_size, cfg.progress,
                                                desc="initial losses"), dtype=torch.float32, device=device)
    lora = LoraSettings(r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                        target_modules=tuple(cfg.lora.target_modules))
    model = add_lora(model, lora, adapter_name="default")
    if penalty:
        model = add_lora(model, lora, adapter_name="lower")
        model.set_adapter("default")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()

    upper_params = adapter_parameters(model, "default")
    opt = torch.optim.AdamW(upper_params, lr=cfg.model_lr, weight_decay=0.0)
    lower_params = adapter_parameters(model, "lower") if penalty else []
    opt_lower = torch.optim.AdamW(lower_params, lr=cfg.model_lr, weight_decay=0.0) if penalty else None
    z = torch.zeros(n, dtype=torch.float32, device=device, requires_grad=True)
    sel = cfg.selector
    sel_opt = (torch.optim.Adam([z], lr=sel.lr, betas=sel.betas) if sel.optimizer == "adam"
               else torch.optim.SGD([z], lr=sel.lr))

    pool_lengths = [e.n_tokens for e in pool_enc]
    safe_lengths = [e.n_tokens for e in safe_enc]
    steps_per_epoch = len(length_grouped_batches(pool_lengths, cfg.batch_size, seed=cfg.seed, shuffle=True))
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    epoch, batch_pos, step = 0, 0, 0
    safe_epoch, safe_pos = 0, 0
    center = None
    ckpt_dir = out_dir / "checkpoints"
    ckpt_path = ckpt_dir / _CKPT_NAME
    log_path = out_dir / "train_log.jsonl"
    resolved = to_dict(cfg)

    if resume and ckpt_path.exists():
        ck = load_checked_checkpoint(ckpt_path, sample_ids, resolved, _RESUME_FREE_KEYS, "pool")
        with torch.no_grad():
            z.copy_(ck["z"])
        load_adapter_state(model, ck["adapters"]["default"])
        opt.load_state_dict(ck["opt"]["default"])
        if penalty:
            load_adapter_state(model, ck["adapters"]["lower"])
            opt_lower.load_state_dict(ck["opt"]["lower"])
        sel_opt.load_state_dict(ck["opt"]["selector"])
        epoch, batch_pos, step = ck["epoch"], ck["batch_pos"], ck["step"]
        safe_epoch, safe_pos = ck["safe_epoch"], ck["safe_pos"]
        center, baseline = ck["center"], ck["baseline"]
        if baseline is not None:
            baseline = baseline.to(device)
        set_rng_state(ck["rng"])
        trim_log(log_path, step)
    elif log_path.exists():
        log_path.unlink()

    def save_checkpoint() -> None:
        ck = {
            "config": resolved, "sample_ids": sample_ids, "z": z.detach().cpu(),
            "adapters": {"default": adapter_state(model, "default")},
            "opt": {"default": opt.state_dict(), "selector": sel_opt.state_dict()},
            "epoch": epoch, "batch_pos": batch_pos, "step": step,
            "safe_epoch": safe_epoch, "safe_pos": safe_pos, "rng": rng_state(),
            "center": center, "baseline": baseline.cpu() if baseline is not None else None,
        }
        if penalty:
            ck["adapters"]["lower"] = adapter_state(model, "lower")
            ck["opt"]["lower"] = opt_lower.state_dict()
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(ckpt_path) as tmp:
            torch.save(ck, tmp)

    def safe_batch() -> list[int]:
        nonlocal safe_epoch, safe_pos
        order = length_grouped_batches(safe_lengths, cfg.safe_batch_size, seed=cfg.seed + 7919 * (safe_epoch + 1))
        if safe_pos >= len(order):
            safe_epoch, safe_pos = safe_epoch + 1, 0
            order = length_grouped_batches(safe_lengths, cfg.safe_batch_size, seed=cfg.seed + 7919 * (safe_epoch + 1))
        b = order[safe_pos]
        safe_pos += 1
        return b

    def batch_of(enc: list, idx: list[int]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in collate([enc[i] for i in idx], pad_id).items()}

    def weighted_pool_pass(idx: list[int], w: torch.Tensor, scale: float, train: bool) -> torch.Tensor:
        """Per-sample losses of ``idx``; backpropagates ``scale*mean(w*l)`` when ``train``."""
        out = torch.empty(len(idx), device=device)
        pos = 0
        for mb in _split(idx, cfg.micro_batch_size):
            if train:
                l = per_sample_loss(model, batch_of(pool_enc, mb))
                (scale * (w[pos : pos + len(mb)] * l).sum() / len(idx)).backward()
            else:
                with torch.no_grad():
                    l = per_sample_loss(model, batch_of(pool_enc, mb))
            out[pos : pos + len(mb)] = l.detach().float()
            pos += len(mb)
        return out

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, desc=f"rank[{cfg.method}]", unit="step",
               disable=not cfg.progress, dynamic_ncols=True)
    completed = True
    try:
        while epoch < cfg.epochs:
            order = length_grouped_batches(pool_lengths, cfg.batch_size, seed=cfg.seed + epoch, shuffle=True)
            gamma = cfg.gamma(epoch)
            while batch_pos < len(order):
                if cfg.max_steps and step >= cfg.max_steps:
                    completed = False
                    break
                idx = order[batch_pos]
                s_idx = safe_batch()
                w = selector_weights(z.detach(), sel.weighting)[idx]

                # 1. Upper model: gamma*L_safe + (1-gamma)*mean(w*l), weights fixed.
                if penalty:
                    model.set_adapter("default")
                opt.zero_grad(set_to_none=True)
                safe_loss = 0.0
                if gamma > 0:
                    for mb in _split(s_idx, cfg.micro_batch_size):
                        ls = per_sample_loss(model, batch_of(safe_enc, mb))
                        (gamma * ls.sum() / len(s_idx)).backward()
                        safe_loss += ls.detach().sum().item() / len(s_idx)
                else:
                    with torch.no_grad():
                        safe_loss = sum(per_sample_loss(model, batch_of(safe_enc, mb)).sum().item()
                                        for mb in _split(s_idx, cfg.micro_batch_size)) / len(s_idx)
                # With gamma = 1 the pool term carries no gradient: its losses are only read.
                l_upper = weighted_pool_pass(idx, w, 1.0 - gamma, train=gamma < 1.0)
                opt.step()

                # 1b. Penalty variant: lower adapter on mean(w*l) alone.
                d = l_upper
                l_lower = None
                if penalty:
                    model.set_adapter("lower")
                    opt_lower.zero_grad(set_to_none=True)
                    l_lower = weighted_pool_pass(idx, w, 1.0, train=True)
                    opt_lower.step()
                    model.set_adapter("default")
                    d = l_upper - l_lower
                elif baseline is not None:
                    d = l_upper - baseline[idx]

                # 2. Selector on mean(w*d), losses fixed.
                wd = w.detach()
                batch_mean = ((wd * d).sum() / wd.sum()).item()
                m = sel.center_momentum
                center = batch_mean if center is None else m * center + (1.0 - m) * batch_mean
                sel_opt.zero_grad(set_to_none=True)
                selector_objective(z, torch.as_tensor(idx, device=device), d, sel.update, sel.weighting,
                                   c=center).backward()
                sel_opt.step()

                step += 1
                batch_pos += 1
                rec = {
                    "step": step, "epoch": epoch + 1, "gamma": gamma, "safe_loss": safe_loss,
                    "pool_loss": l_upper.mean().item(),
                    "weighted_pool_loss": (w * l_upper).mean().item(),
                    "selector_entropy": selector_entropy(z),
                    "d_mean": d.mean().item(), "center": center,
                }
                if l_lower is not None:
                    rec["lower_pool_loss"] = l_lower.mean().item()
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                bar.update(1)
                bar.set_postfix(ep=epoch + 1, safe=f"{safe_loss:.3f}", pool=f"{rec['pool_loss']:.3f}",
                                g=f"{gamma:.2f}", H=f"{rec['selector_entropy']:.4f}")
                if on_progress:
                    on_progress({**rec, "total_steps": total_steps})
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    save_checkpoint()
            if not completed:
                break
            epoch, batch_pos = epoch + 1, 0
            save_checkpoint()
    except torch.OutOfMemoryError:
        raise SealError(
            f"out of memory training the ranker on {cfg.model} (micro_batch_size={cfg.micro_batch_size}, "
            f"max_length={cfg.max_length}); lower them or set gradient_checkpointing=true"
        ) from None
    finally:
        bar.close()
    if not completed:
        save_checkpoint()
    if penalty:
        model.set_adapter("default")
    z_final = z.detach()
    return SealState(sample_ids, z_final, selector_weights(z_final, sel.weighting), model, step, completed)
