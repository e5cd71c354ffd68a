"""Downstream LoRA fine-tuning on curated (selected) samples.

The default recipe follows the paper's Llama-3 setting: 2 epochs, constant
learning rate 1e-5 (AdamW, no weight decay), LoRA r=16, alpha=16 on q_proj and
v_proj. Loss is taken on assistant tokens only (see :mod:`.tokenization`).

Loss reduction (``loss_reduction``):

* ``"sample"`` (default): each sample's mean NLL over its target tokens, averaged
  over the samples of the effective batch. Every sample weighs the same whatever
  its length, so short answers (e.g. refusals mixed in with ``mix_safe``) are not
  drowned out by long ones; this is also the per-sample loss the ranker scores.
* ``"token"``: mean NLL over all target tokens of the effective batch (what a
  standard causal-LM trainer does), so long answers weigh more.

Either way the reduction is over the *effective* batch (``batch_size``), not the
micro-batch, so gradient accumulation gives the same update as one big batch.

Outputs in ``out``: ``adapter/`` (peft ``save_pretrained``), ``config.json``
(resolved config), ``summary.json``, ``train_log.jsonl`` (one line per step),
``checkpoints/last.pt`` (resumable state), ``dropped.parquet`` (samples that
tokenisation could not use), and ``merged/`` with ``merge=True``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

from .config import to_dict
from .errors import ConfigError, SealError
from .ranker.config import LoraConfig

ProgressFn = Callable[[dict], None]

_CKPT_NAME = "last.pt"
# Keys that may differ between a checkpointed run and its resumption (they do not change the maths).
_RESUME_FREE_KEYS = {"out", "progress", "max_steps", "checkpoint_every", "device", "merge"}


@dataclass
class FinetuneConfig:
    data: str = field(default="", metadata={"help": "Training data: a `seal select` output dir (selected.parquet), "
                                                     "an ingest output dir, a canonical Parquet or a raw file."})
    out: str = field(default="", metadata={"help": "Output directory (adapter/, config.json, summary.json, ...)."})
    model: str = field(default="smollm2-135m-instruct",
                       metadata={"help": "Base model: a named default, Hub id, local dir or .gguf file."})
    epochs: int = field(default=2, metadata={"help": "Passes over the training set (paper: 2)."})
    lr: float = field(default=1e-5, metadata={"help": "LoRA learning rate, constant (paper: 1e-5)."})
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "LoRA settings (paper: r=16, alpha=16, q_proj+v_proj)."})
    max_length: int = field(default=512, metadata={"help": "Token limit per sample (truncation policy applies above it)."})
    truncation: Literal["left", "right", "keep_prompt", "drop"] = field(
        default="left", metadata={"help": "Over-long samples: cut the start (keep the answer), cut the end, keep the "
                                          "request and the answer's start (keep_prompt), or drop."})
    train_on: Literal["final", "all"] = field(default="final", metadata={"help": "Which assistant turns carry loss."})
    loss_reduction: Literal["sample", "token"] = field(
        default="sample", metadata={"help": "'sample': mean of per-sample mean losses; 'token': mean over all target "
                                            "tokens of the batch (long answers weigh more)."})
    batch_size: int = field(default=8, metadata={"help": "Effective batch per optimizer step."})
    micro_batch_size: int = field(default=8, metadata={"help": "Samples per forward pass; gradients accumulate up to batch_size."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0: no clipping)."})
    seed: int = field(default=0, metadata={"help": "Seed for data order and LoRA initialisation."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N."})
    dtype: str = field(default="auto", metadata={"help": "auto (cuda: bfloat16, cpu: float32), float32, bfloat16, float16."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory on long sequences (GPU)."})
    checkpoint_every: int = field(default=50, metadata={"help": "Write a resumable checkpoint every N steps (0: only at epoch ends)."})
    max_steps: int = field(default=0, metadata={"help": "Stop after this many steps in total (0: no limit); resume later with --resume."})
    max_samples: int = field(default=0, metadata={"help": "Use only the first N samples of data, in file order (for a "
                                                          "`seal select` output: the N best ranked); 0: all."})
    mix_safe: str = field(default="", metadata={"help": "Safety examples appended to the training set (the paper's "
                                                        "SEAL+SafeInstr setting): any path data accepts."})
    merge: bool = field(default=False, metadata={"help": "Also write out/merged/: the base model with the adapter merged in."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        for name in ("epochs", "max_length", "batch_size", "micro_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.micro_batch_size > self.batch_size:
            self.micro_batch_size = self.batch_size
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        for name in ("checkpoint_every", "max_steps", "max_samples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {self.max_length}")


@dataclass
class TrainResult:
    model: object
    steps: int
    completed: bool
    first_loss: Optional[float]
    final_loss: Optional[float]
    epoch_losses: list


# ----------------------------------------------------------------------------- data


def _load(path: str, what: str) -> list[dict]:
    from .ingest import load_required_samples

    return load_required_samples(path, what)


# ----------------------------------------------------------------------------- training


def _split(idx: list[int], size: int) -> list[list[int]]:
    return [idx[i: i + size] for i in range(0, len(idx), size)]


def train_lora(cfg: FinetuneConfig, model, tokenizer, encoded: list, out_dir: Path, resume: bool = False,
               on_progress: Optional[ProgressFn] = None) -> TrainResult:
    """LoRA SFT of ``model`` on ``encoded`` (tokenised samples, in a fixed order).

    Checkpoints go to ``out_dir/checkpoints/last.pt`` every ``cfg.checkpoint_every``
    steps, at every epoch end and when ``max_steps`` stops the run; ``resume=True``
    continues from there and gives the same weights as an uninterrupted run.
    """
    import torch
    from tqdm.auto import tqdm

    from .io import atomic_path
    from .models import LoraSettings, add_lora
    from .training import (adapter_state, load_adapter_state, load_checked_checkpoint, rng_state, seed_all,
                           set_rng_state, trim_log)
    from .tokenization import collate, length_grouped_batches, per_sample_loss

    if not encoded:
        raise SealError("no training sample left after tokenisation")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sample_ids = [e.sample_id for e in encoded]
    lengths = [e.n_tokens for e in encoded]

    seed_all(cfg.seed)
    lora = LoraSettings(r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                        target_modules=tuple(cfg.lora.target_modules))
    model = add_lora(model, lora, adapter_name="default")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    params = [p for k, p in model.named_parameters() if ".default." in k and "lora_" in k]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

    steps_per_epoch = len(length_grouped_batches(lengths, cfg.batch_size, seed=cfg.seed, shuffle=True))
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    epoch, batch_pos, step = 0, 0, 0
    first_loss: Optional[float] = None
    last_loss: Optional[float] = None
    epoch_losses: list[float] = []
    loss_sum, loss_n = 0.0, 0  # running sums of the current epoch's step losses
    ckpt_dir = out_dir / "checkpoints"
    ckpt_path = ckpt_dir / _CKPT_NAME
    log_path = out_dir / "train_log.jsonl"
    resolved = to_dict(cfg)

    if resume and ckpt_path.exists():
        ck = load_checked_checkpoint(ckpt_path, sample_ids, resolved, _RESUME_FREE_KEYS, "training data")
        load_adapter_state(model, ck["adapter"])
        opt.load_state_dict(ck["opt"])
        epoch, batch_pos, step = ck["epoch"], ck["batch_pos"], ck["step"]
        first_loss, last_loss = ck["first_loss"], ck["last_loss"]
        epoch_losses, loss_sum, loss_n = list(ck["epoch_losses"]), ck["loss_sum"], ck["loss_n"]
        set_rng_state(ck["rng"])
        trim_log(log_path, step)
    else:
        if resume:
            print(f"no checkpoint at {ckpt_path}; starting from scratch", file=sys.stderr)
        if log_path.exists():
            log_path.unlink()

    def save_checkpoint() -> None:
        ck = {
            "config": resolved, "sample_ids": sample_ids, "adapter": adapter_state(model, "default"),
            "opt": opt.state_dict(), "epoch": epoch, "batch_pos": batch_pos, "step": step,
            "first_loss": first_loss, "last_loss": last_loss, "epoch_losses": epoch_losses,
            "loss_sum": loss_sum, "loss_n": loss_n, "rng": rng_state(),
        }
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(ckpt_path) as tmp:
            torch.save(ck, tmp)

    bar = tqdm(total=total_steps, initial=step, desc="finetune", unit="step", disable=not cfg.progress,
               dynamic_ncols=True)
    completed = True
    t0 = time.time()
    try:
        while epoch < cfg.epochs:
            order = length_grouped_batches(lengths, cfg.batch_size, seed=cfg.seed + epoch, shuffle=True)
            while batch_pos < len(order):
                if cfg.max_steps and step >= cfg.max_steps:
                    completed = False
                    break
                idx = order[batch_pos]
                if cfg.loss_reduction == "token":
                    denom = float(sum(encoded[i].n_target_tokens for i in idx))
                else:
                    denom = float(len(idx))
                opt.zero_grad(set_to_none=True)
                batch_loss = 0.0
                n_tokens = 0
                for mb in _split(idx, cfg.micro_batch_size):
                    items = [encoded[i] for i in mb]
                    batch = {k: v.to(device) for k, v in collate(items, pad_id).items()}
                    l = per_sample_loss(model, batch)
                    if cfg.loss_reduction == "token":
                        w = torch.tensor([e.n_target_tokens for e in items], dtype=l.dtype, device=l.device)
                        contrib = (l * w).sum() / denom
                    else:
                        contrib = l.sum() / denom
                    contrib.backward()
                    batch_loss += contrib.item()
                    n_tokens += sum(e.n_tokens for e in items)
                grad_norm = None
                if cfg.max_grad_norm > 0:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                opt.step()

                step += 1
                batch_pos += 1
                if first_loss is None:
                    first_loss = batch_loss
                last_loss = batch_loss
                loss_sum, loss_n = loss_sum + batch_loss, loss_n + 1
                rec = {"step": step, "epoch": epoch + 1, "loss": batch_loss, "lr": cfg.lr,
                       "samples": len(idx), "tokens": n_tokens, "grad_norm": grad_norm,
                       "elapsed_s": round(time.time() - t0, 3)}
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                bar.update(1)
                bar.set_postfix(ep=epoch + 1, loss=f"{batch_loss:.4f}")
                if on_progress:
                    on_progress({**rec, "total_steps": total_steps})
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    save_checkpoint()
            if not completed:
                break
            epoch_losses.append(loss_sum / max(loss_n, 1))
            epoch, batch_pos, loss_sum, loss_n = epoch + 1, 0, 0.0, 0
            save_checkpoint()
    except torch.OutOfMemoryError:
        raise SealError(
            f"out of memory fine-tuning {cfg.model} (micro_batch_size={cfg.micro_batch_size}, "
            f"max_length={cfg.max_length}); lower them or set gradient_checkpointing=true"
        ) from None
    finally:
        bar.close()
    if not completed:
        save_checkpoint()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    return TrainResult(model, step, completed, first_loss, last_loss, epoch_losses)


# ----------------------------------------------------------------------------- saving


def save_adapter(model, path: Path) -> Path:
    from .io import atomic_dir

    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))
    return path


def save_merged(model, tokenizer, path: Path) -> Path:
    """Merge the LoRA adapter into the base weights and save a standalone model.

    Half-precision weights are upcast to float32 first: a small LoRA update added to
    bfloat16 weights would be mostly rounded away.
    """
    import torch

    from .io import atomic_dir

    if next(model.parameters()).dtype in (torch.bfloat16, torch.float16):
        model = model.float()
    merged = model.merge_and_unload()
    quantizer = getattr(merged, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if getattr(method, "value", method) == "gguf":
        # transformers dequantises GGUF weights on load but keeps the quantizer, which then refuses to
        # save; the weights are plain dense tensors, so drop the marker and save them as such.
        merged.hf_quantizer = None
        merged.is_quantized = False
        if hasattr(merged, "quantization_method"):
            merged.quantization_method = None
        if hasattr(merged.config, "quantization_config"):
            del merged.config.quantization_config
    with atomic_dir(path) as tmp:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return path


# ----------------------------------------------------------------------------- entry point


def finetune(cfg: FinetuneConfig, resume: bool = False, on_progress: Optional[ProgressFn] = None) -> Path:
    """Fine-tune a LoRA adapter on ``cfg.data`` (+ ``cfg.mix_safe``); returns the output directory."""
    import pyarrow as pa

    from .io import fingerprint_file, save_resolved_config, write_json, write_parquet
    from .models import load_model, model_id
    from .tokenization import encode_samples

    if not cfg.out:
        raise SealError("no output directory given (--out)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    data = _load(cfg.data, "training data")
    if cfg.max_samples:
        data = data[: cfg.max_samples]
    safe = _load(cfg.mix_safe, "mix-safe data") if cfg.mix_safe else []
    samples = data + safe
    # A fixed order (by id; stable, so duplicates keep theirs) makes the run independent of file order.
    samples.sort(key=lambda s: s["sample_id"])
    save_resolved_config(out, cfg)

    # The base is always loaded with seed 0: only "tiny-random" depends on it, and generation
    # must rebuild the very same base weights to apply the adapter to.
    model, tok = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, seed=0)
    enc, dropped = encode_samples(tok, samples, cfg.max_length, cfg.train_on, cfg.truncation)
    if dropped:
        write_parquet(out / "dropped.parquet", pa.Table.from_pylist(
            [{"sample_id": d["sample_id"], "reason": d["reason"]} for d in dropped]))
    if not enc:
        raise SealError(f"no training sample fits max_length={cfg.max_length} "
                        f"({len(dropped)} dropped; see {out / 'dropped.parquet'})")

    result = train_lora(cfg, model, tok, enc, out, resume=resume, on_progress=on_progress)
    if not result.completed:
        print(f"stopped after {result.steps} steps (max_steps); checkpoint saved, continue with --resume",
              file=sys.stderr)
    save_adapter(result.model, out / "adapter")
    if cfg.merge:
        save_merged(result.model, tok, out / "merged")

    def fp(path: str) -> str:
        # The canonical file the samples came from, not the whole directory (which holds exports too).
        from .ingest import canonical_paths

        files = canonical_paths(path) or [Path(path).expanduser()]
        return fingerprint_file(files[0]) if files[0].exists() else path

    summary = {
        "model": cfg.model,
        "model_id": model_id(cfg.model),
        "inputs": {"data": {"path": cfg.data, "fingerprint": fp(cfg.data), "n": len(data)}},
        "n_data": len(data),
        "n_mix_safe": len(safe),
        "n_samples": len(samples),
        "n_trained": len(enc),
        "n_dropped": len(dropped),
        "n_truncated": sum(e.truncated for e in enc),
        "n_target_tokens": sum(e.n_target_tokens for e in enc),
        "loss_reduction": cfg.loss_reduction,
        "steps": result.steps,
        "epochs": cfg.epochs,
        "completed": result.completed,
        "first_loss": result.first_loss,
        "final_loss": result.final_loss,
        "epoch_losses": result.epoch_losses,
        "adapter": str(out / "adapter"),
        "merged": str(out / "merged") if cfg.merge else None,
        "wall_seconds": round(time.time() - t0, 2),
    }
    if cfg.mix_safe:
        summary["inputs"]["mix_safe"] = {"path": cfg.mix_safe, "fingerprint": fp(cfg.mix_safe), "n": len(safe)}
    write_json(out / "summary.json", summary)
    return out


__all__ = ["FinetuneConfig", "TrainResult", "finetune", "train_lora", "save_adapter", "save_merged"]
