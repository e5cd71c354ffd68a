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

Objective (``objective``, :mod:`.objectives`): ``sft`` trains on the NLL above; ``ta-sft`` and
``unlikelihood`` add a term over an unsafe set (``unsafe``: harmful prompts with unsafe answers),
``unsafe_batch_size`` of them per step, weighted by ``unsafe_weight``, averaged over their answer tokens.

Outputs in ``out``: ``adapter/`` (peft ``save_pretrained``), ``config.json``
(resolved config), ``summary.json``, ``train_log.jsonl`` (one line per step),
``checkpoints/last.safetensors`` (resumable state), ``dropped.parquet`` (samples that
tokenisation could not use, and the set each was in), and ``merged/`` with ``merge=True``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

from .config import to_dict
from .errors import ConfigError, SealError
from .objectives import OBJECTIVES, UnsafeSet, build_objective, unsafe_batch
from .ranker.config import LoraConfig
from .progress import ProgressFn
from .tokenization import DEFAULT_LOGITS_BUDGET

# Keys that may differ between a checkpointed run and its resumption (they do not change the maths).
# processes is checked apart, against the checkpoint's world size, with a message that says so.
_RESUME_FREE_KEYS = {"out", "progress", "max_steps", "checkpoint_every", "device", "merge", "processes",
                     "logits_budget"}

# The objectives' names, from their registry: a new objective there is a new choice here and on the CLI.
ObjectiveName = Literal[tuple(OBJECTIVES)]


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
    logits_budget: int = field(default=DEFAULT_LOGITS_BUDGET, metadata={
        "help": "Most LM-head logits (target tokens x vocabulary) held at once, forward and backward: the head "
                "runs on logits_budget // vocab tokens at a time. Lower it to save memory; the loss does not change."})
    checkpoint_every: int = field(default=50, metadata={"help": "Write a resumable checkpoint every N steps (0: only at epoch ends)."})
    max_steps: int = field(default=0, metadata={"help": "Stop after this many steps in total (0: no limit); resume later with --resume."})
    max_samples: int = field(default=0, metadata={"help": "Use only the first N samples of data, in file order (for a "
                                                          "`seal select` output: the N best ranked); 0: all."})
    mix_safe: str = field(default="", metadata={"help": "Safety examples appended to the training set (the paper's "
                                                        "SEAL+SafeInstr setting): any path data accepts."})
    objective: ObjectiveName = field(default="sft", metadata={
        "help": "Training objective (see docs/finetune.md): 'sft' (NLL on data only); 'ta-sft' (NLL minus "
                "unsafe_weight x the token-level EMD of the model's predictions from the unsafe answers, under "
                "the embeddings' cosine cost); 'unlikelihood' (NLL plus unsafe_weight x -log(1 - p) of the "
                "unsafe answers' tokens). The last two need --unsafe."})
    unsafe: str = field(default="", metadata={"help": "Unsafe responses for ta-sft / unlikelihood: (harmful prompt, "
                                                     "unsafe answer) samples in any format data accepts."})
    unsafe_weight: float = field(default=0.5, metadata={
        "help": "lambda: weight of the unsafe term against the task NLL (ta-sft, unlikelihood)."})
    unsafe_batch_size: int = field(default=8, metadata={
        "help": "Unsafe samples per optimiser step, drawn in a seeded order (ta-sft, unlikelihood)."})
    merge: bool = field(default=False, metadata={"help": "Also write out/merged/: the base model with the adapter merged in."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    processes: int = field(default=1, metadata={"help": "Train on this many local processes (torch.distributed: one "
                                                         "per GPU, gloo on CPU); > 1 relaunches under torchrun."})

    def __post_init__(self):
        for name in ("epochs", "max_length", "batch_size", "micro_batch_size", "logits_budget"):
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
        if self.processes < 1:
            raise ConfigError(f"processes must be >= 1, got {self.processes}")
        self._check_objective()

    def _check_objective(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if OBJECTIVES[self.objective].uses_unsafe and not self.unsafe:
            raise ConfigError(f"objective {self.objective} needs unsafe responses: give --unsafe FILE "
                              "(finetune.unsafe in a run config); see docs/finetune.md for how to make them")
        if not OBJECTIVES[self.objective].uses_unsafe and self.unsafe:
            raise ConfigError(f"unsafe is not used by objective {self.objective}; drop it, or choose "
                              f"{' or '.join(n for n, c in OBJECTIVES.items() if c.uses_unsafe)}")
        if isinstance(self.unsafe_batch_size, bool) or not isinstance(self.unsafe_batch_size, int) \
                or self.unsafe_batch_size <= 0:
            raise ConfigError(f"unsafe_batch_size must be a positive integer, got {self.unsafe_batch_size!r}")
        if not self.unsafe_weight >= 0:
            raise ConfigError(f"unsafe_weight must be >= 0, got {self.unsafe_weight}")


@dataclass
class TrainResult:
    model: object
    steps: int
    completed: bool
    first_loss: Optional[float]
    final_loss: Optional[float]
    epoch_losses: list


# ----------------------------------------------------------------------------- training


@dataclass
class FinetuneLoopState:
    """Where the loop is and the losses seen so far (the current epoch's as running sums)."""

    epoch: int = 0
    batch_pos: int = 0
    step: int = 0
    first_loss: Optional[float] = None
    last_loss: Optional[float] = None
    epoch_losses: list = field(default_factory=list)
    loss_sum: float = 0.0
    loss_n: int = 0

    def to_checkpoint(self) -> dict:
        return {"epoch": self.epoch, "batch_pos": self.batch_pos, "step": self.step,
                "first_loss": self.first_loss, "last_loss": self.last_loss, "epoch_losses": self.epoch_losses,
                "loss_sum": self.loss_sum, "loss_n": self.loss_n}

    @classmethod
    def from_checkpoint(cls, ck: dict) -> "FinetuneLoopState":
        return cls(ck["epoch"], ck["batch_pos"], ck["step"], ck["first_loss"], ck["last_loss"],
                   list(ck["epoch_losses"]), ck["loss_sum"], ck["loss_n"])

    def record(self, loss: float) -> None:
        if self.first_loss is None:
            self.first_loss = loss
        self.last_loss = loss
        self.loss_sum, self.loss_n = self.loss_sum + loss, self.loss_n + 1

    def end_epoch(self) -> None:
        self.epoch_losses.append(self.loss_sum / max(self.loss_n, 1))
        self.epoch, self.batch_pos, self.loss_sum, self.loss_n = self.epoch + 1, 0, 0.0, 0


@dataclass
class StepStats:
    """One optimiser step: the loss it minimised, its parts, and what it saw."""

    loss: float  # nll + sign * unsafe_weight * unsafe
    nll: float
    unsafe: Optional[float]  # the mean unsafe term over the unsafe batch's answer tokens (None: sft)
    tokens: int
    grad_norm: Optional[float]


def _task_backward(cfg: FinetuneConfig, model, encoded: list, idx: list[int], pad_id: int, device, dist) -> float:
    """Back-propagate the task NLL of the effective batch ``idx``; returns this rank's share of it."""
    import torch

    from .tokenization import collate, per_sample_loss
    from .training import micro_batches

    # The reduction is over the effective batch, not the micro-batch, so accumulation equals one big batch.
    if cfg.loss_reduction == "token":
        denom = float(sum(encoded[i].n_target_tokens for i in idx))
    else:
        denom = float(len(idx))
    batch_loss = 0.0
    for mb in micro_batches(dist.share(idx), cfg.micro_batch_size):
        items = [encoded[i] for i in mb]
        batch = {k: v.to(device) for k, v in collate(items, pad_id).items()}
        l = per_sample_loss(model, batch, cfg.logits_budget)
        if cfg.loss_reduction == "token":
            w = torch.tensor([e.n_target_tokens for e in items], dtype=l.dtype, device=l.device)
            contrib = (l * w).sum() / denom
        else:
            contrib = l.sum() / denom
        contrib.backward()
        batch_loss += contrib.item()
    return batch_loss


def train_step(cfg: FinetuneConfig, model, opt, params: list, encoded: list, idx: list[int], pad_id: int,
               device, dist=None, unsafe: Optional[UnsafeSet] = None, unsafe_idx: Sequence[int] = ()) -> StepStats:
    """One optimiser step on the effective batch ``idx`` (and the unsafe batch ``unsafe_idx``).

    Under torch.distributed (``dist``) this rank computes its share of both batches; the
    denominators are the global batches', so the summed gradients and losses equal the one-process ones.
    """
    import torch

    from .training import Dist

    dist = dist or Dist()
    opt.zero_grad(set_to_none=True)
    nll = dist.sum_scalar(_task_backward(cfg, model, encoded, idx, pad_id, device, dist), device)
    loss, term = nll, None
    if unsafe is not None:
        share = unsafe.backward(model, list(unsafe_idx), pad_id, device, dist, cfg.micro_batch_size, cfg.logits_budget)
        term = dist.sum_scalar(share, device)
        loss = nll + unsafe.objective.sign * unsafe.weight * term
    dist.sum_grads(params)
    grad_norm = None
    if cfg.max_grad_norm > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
    opt.step()
    return StepStats(loss, nll, term, sum(encoded[i].n_tokens for i in idx), grad_norm)


def sft_step(cfg: FinetuneConfig, model, opt, params: list, encoded: list, idx: list[int], pad_id: int,
             device, dist=None) -> tuple[float, int, Optional[float]]:
    """A plain SFT :func:`train_step` -> (batch loss, tokens, grad norm before clipping)."""
    s = train_step(cfg, model, opt, params, encoded, idx, pad_id, device, dist)
    return s.loss, s.tokens, s.grad_norm


def train_lora(cfg: FinetuneConfig, model, tokenizer, encoded: list, out_dir: Path, resume: bool = False,
               on_progress: Optional[ProgressFn] = None, dist=None, unsafe: Sequence = ()) -> TrainResult:
    """LoRA fine-tuning of ``model`` on ``encoded`` (tokenised samples, in a fixed order) with
    ``cfg.objective``; ``unsafe`` are the tokenised unsafe responses that ta-sft / unlikelihood need.

    Each step's unsafe batch is :func:`~seal_core.objectives.unsafe_batch` of the step number.
    Checkpoints go to ``out_dir/checkpoints/last.safetensors`` every ``cfg.checkpoint_every``
    steps, at every epoch end and when ``max_steps`` stops the run; ``resume=True``
    continues from there and gives the same weights as an uninterrupted run.
    """
    import torch

    from .models import adapter_parameters
    from .tokenization import length_grouped_batches, pad_token_id
    from .training import Dist, TrainingRun, adapter_state, attach_lora, load_adapter_state, oom_as_error, seed_all

    if not encoded:
        raise SealError("no training sample left after tokenisation")
    if OBJECTIVES[cfg.objective].uses_unsafe and not unsafe:
        raise SealError(f"objective {cfg.objective}: no unsafe response left after tokenisation")
    dist = dist or Dist()
    device = next(model.parameters()).device
    lengths = [e.n_tokens for e in encoded]
    # The unsafe set's ids too, so --resume refuses a checkpoint made against other unsafe responses.
    ids = [e.sample_id for e in encoded] + [f"unsafe:{e.sample_id}" for e in unsafe]
    run = TrainingRun(Path(out_dir), to_dict(cfg), ids, free_keys=_RESUME_FREE_KEYS,
                      data_name="training data", desc="finetune", progress=cfg.progress, on_progress=on_progress,
                      dist=dist)

    # setup: seed, LoRA, optimiser, then the checkpoint's state over them when resuming
    seed_all(cfg.seed)
    model = attach_lora(model, cfg.lora, ("default",), cfg.gradient_checkpointing)
    params = adapter_parameters(model, "default")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    objective = build_objective(cfg.objective, model)
    unsafe_set = (UnsafeSet(objective, list(unsafe), cfg.unsafe_weight, tuple(sorted(set(tokenizer.all_special_ids))))
                  if objective.uses_unsafe else None)
    state = FinetuneLoopState()
    ck = run.restore(resume)
    if ck is not None:
        load_adapter_state(model, ck["adapter"])
        opt.load_state_dict(ck["opt"])
        state = FinetuneLoopState.from_checkpoint(ck)

    def checkpoint() -> None:
        run.save({"adapter": adapter_state(model, "default"), "opt": opt.state_dict(), **state.to_checkpoint()})

    def order(epoch: int) -> list[list[int]]:
        return length_grouped_batches(lengths, cfg.batch_size, seed=cfg.seed + epoch, shuffle=True)

    total_steps = len(order(0)) * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    t0 = time.time()
    oom = (f"out of memory fine-tuning {cfg.model} (micro_batch_size={cfg.micro_batch_size}, "
           f"max_length={cfg.max_length}); lower them or set gradient_checkpointing=true")
    with run.progress(total_steps, state.step), oom_as_error(oom):
        for idx in run.steps(state, cfg.epochs, cfg.max_steps, cfg.checkpoint_every, order, checkpoint,
                             end_epoch=state.end_epoch):
            # one optimiser step over the effective batch (and the step's unsafe batch), then its log line
            uidx = unsafe_batch(len(unsafe), cfg.unsafe_batch_size, cfg.seed, state.step) if unsafe_set else []
            st = train_step(cfg, model, opt, params, encoded, idx, pad_token_id(tokenizer), device, dist,
                            unsafe_set, uidx)
            state.record(st.loss)
            rec = {"step": state.step + 1, "epoch": state.epoch + 1, "loss": st.loss, "lr": cfg.lr,
                   "samples": len(idx), "tokens": st.tokens, "grad_norm": st.grad_norm}
            if unsafe_set is not None:
                rec.update(nll=st.nll, unsafe=st.unsafe, unsafe_samples=len(uidx))
            run.log({**rec, "elapsed_s": round(time.time() - t0, 3)}, ep=state.epoch + 1, loss=f"{st.loss:.4f}")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    return TrainResult(model, state.step, run.completed, state.first_loss, state.last_loss, state.epoch_losses)


# ----------------------------------------------------------------------------- saving


def save_adapter(model, path: Path) -> Path:
    from .io import atomic_dir

    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))
        _sort_set_fields(model, tmp / "adapter_config.json")
    return path


def _sort_set_fields(model, config_path: Path) -> None:
    """Rewrite the peft config's set-valued fields (``target_modules``) sorted.

    peft holds them as sets and writes them in hash order, which changes from one process to the
    next (string hashing is salted per process): the same adapter would get other bytes, and a
    fingerprint of the adapter (generate's resume key, a cache key downstream) another value.
    """
    fields = [k for k, v in vars(model.peft_config["default"]).items() if isinstance(v, set)]
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for k in fields:
        config[k] = sorted(config[k])
    # The layout peft writes: sorted keys, indent 2.
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


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
    from .training.launch import run_training_stage

    if not cfg.out:
        raise SealError("no output directory given (--out)")
    # Under torchrun every rank trains its share of each batch; rank 0 alone holds the lock and writes.
    return run_training_stage("finetune", cfg, resume,
                              lambda dist: _finetune(cfg, Path(cfg.out), resume, on_progress, dist),
                              launched=lambda: Path(cfg.out))


def _input_fingerprint(path: str) -> str:
    """The canonical file the samples came from, not the whole directory (which holds exports too)."""
    from .ingest import canonical_paths
    from .io import fingerprint_file

    files = canonical_paths(path) or [Path(path).expanduser()]
    return fingerprint_file(files[0]) if files[0].exists() else path


def _encode_set(cfg: FinetuneConfig, tok, samples: list[dict], what: str) -> tuple[list, list[dict]]:
    """``samples`` in id order (stable for duplicates, so the run is independent of file order), tokenised."""
    from .tokenization import encode_samples

    samples = sorted(samples, key=lambda s: s["sample_id"])
    enc, dropped = encode_samples(tok, samples, cfg.max_length, cfg.train_on, cfg.truncation)
    return enc, [{"sample_id": d["sample_id"], "set": what, "reason": d["reason"]} for d in dropped]


def _finetune(cfg: FinetuneConfig, out: Path, resume: bool, on_progress: Optional[ProgressFn], dist) -> Path:
    import pyarrow as pa

    from .ingest import load_required_samples
    from .io import save_resolved_config, write_parquet
    from .models import load_model
    from .training import device_for

    t0 = time.time()

    data = load_required_samples(cfg.data, "training data")
    if cfg.max_samples:
        data = data[: cfg.max_samples]
    safe = load_required_samples(cfg.mix_safe, "mix-safe data") if cfg.mix_safe else []
    unsafe = load_required_samples(cfg.unsafe, "unsafe responses") if cfg.unsafe else []
    if dist.is_main:
        save_resolved_config(out, cfg)

    # The base is always loaded with seed 0: only "tiny-random" depends on it, and generation
    # must rebuild the very same base weights to apply the adapter to.
    model, tok = load_model(cfg.model, device=device_for(dist, cfg.device), dtype=cfg.dtype, seed=0)
    enc, dropped = _encode_set(cfg, tok, data + safe, "data")
    unsafe_enc, unsafe_dropped = _encode_set(cfg, tok, unsafe, "unsafe")
    dropped += unsafe_dropped
    if dropped and dist.is_main:
        write_parquet(out / "dropped.parquet", pa.Table.from_pylist(dropped))
    if not enc or (unsafe and not unsafe_enc):
        what = "training sample" if not enc else "unsafe response"
        raise SealError(f"no {what} fits max_length={cfg.max_length} "
                        f"({len(dropped)} dropped; see {out / 'dropped.parquet'})")

    result = train_lora(cfg, model, tok, enc, out, resume=resume, on_progress=on_progress, dist=dist,
                        unsafe=unsafe_enc)
    if not dist.is_main:
        return out
    if not result.completed:
        print(f"stopped after {result.steps} steps (max_steps); checkpoint saved, continue with --resume",
              file=sys.stderr)
    save_adapter(result.model, out / "adapter")
    if cfg.merge:
        save_merged(result.model, tok, out / "merged")
    counts = {"n_data": len(data), "n_mix_safe": len(safe), "n_unsafe": len(unsafe), "n_unsafe_trained": len(unsafe_enc)}
    _write_summary(cfg, out, result, enc, dropped, counts, time.time() - t0)
    return out


def _write_summary(cfg: FinetuneConfig, out: Path, result: TrainResult, enc: list, dropped: list[dict],
                   counts: dict, seconds: float) -> None:
    from .io import write_json
    from .models import model_id

    summary = {
        "model": cfg.model,
        "model_id": model_id(cfg.model),
        "inputs": {"data": {"path": cfg.data, "fingerprint": _input_fingerprint(cfg.data), "n": counts["n_data"]}},
        "objective": cfg.objective,
        "n_data": counts["n_data"],
        "n_mix_safe": counts["n_mix_safe"],
        "n_samples": counts["n_data"] + counts["n_mix_safe"],
        "n_trained": len(enc),
        "n_dropped": sum(d["set"] == "data" for d in dropped),
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
        "wall_seconds": round(seconds, 2),
    }
    if cfg.mix_safe:
        summary["inputs"]["mix_safe"] = {"path": cfg.mix_safe, "fingerprint": _input_fingerprint(cfg.mix_safe),
                                         "n": counts["n_mix_safe"]}
    if cfg.unsafe:
        summary["inputs"]["unsafe"] = {"path": cfg.unsafe, "fingerprint": _input_fingerprint(cfg.unsafe),
                                       "n": counts["n_unsafe"]}
        summary.update(unsafe_weight=cfg.unsafe_weight, unsafe_batch_size=cfg.unsafe_batch_size,
                       n_unsafe=counts["n_unsafe"], n_unsafe_trained=counts["n_unsafe_trained"])
    write_json(out / "summary.json", summary)


__all__ = ["FinetuneConfig", "TrainResult", "StepStats", "finetune", "train_lora", "train_step",
           "sft_step", "save_adapter", "save_merged"]
