"""Batched response generation for evaluation.

Prompts file: JSONL, one object per line, with ``prompt`` (or Alpaca-style
``instruction`` plus optional ``input``, joined by a blank line as ingest does)
and an optional ``id``. Without an ``id`` the row gets a content hash of its
prompt text (the canonical sample-id hash of a single user turn), so the same
prompt has the same id in every file and every run; a repeated prompt gets
``<hash>-2``, ``<hash>-3`` ... in file order. Explicit ids must be unique.

Every prompt goes through the tokenizer's chat template as one user turn. The
batch is left-padded so all prompts end where generation starts. Prompts are
sorted by length for batching (less padding), and written in input order.

Decoding: ``greedy`` (default) is deterministic and, in float32, independent of
the batch size. ``paper`` is the paper's sampling setting (top-p 0.9,
temperature 1.0, repetition penalty 1.2, and transformers' default top-k 50),
seeded by ``seed``: the same config gives the same outputs, but the samples
depend on batch composition, so a resumed run differs from an uninterrupted one.

Output rows: ``id``, ``prompt``, ``response``, ``model``, ``adapter``,
``finish_reason`` (``stop``: the model ended its turn; ``length``: cut at
``max_new_tokens``), then every other field of the prompt row (a prompt-row
field whose name clashes with one of these is kept as ``orig_<name>``).
Rows are appended to ``<out>.partial`` as batches finish; the final file is
written atomically at the end. ``resume=True`` skips the ids already in a
partial file made with the same settings. ``keep_compliant`` leaves out of the
final file the empty responses and those the refusal detector flags (the
partial file keeps every row, so the filter never changes what is resumed).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from .errors import ConfigError, InputError, SealError
from .faults import fault_point
from .progress import ProgressFn


RESERVED = ("id", "prompt", "response", "model", "adapter", "finish_reason")
# Fields consumed to build the prompt text; not repeated in the output row.
_PROMPT_KEYS = ("id", "prompt", "instruction", "input")
# End-of-turn tokens of common chat templates; generation stops at any that the tokenizer knows.
_EOT_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")

PRESETS = {
    "greedy": {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0},
    "paper": {"do_sample": True, "temperature": 1.0, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.2},
}


@dataclass
class GenerateConfig:
    prompts: str = field(default="", metadata={"help": "Prompts JSONL: `prompt` (or `instruction` + `input`), optional `id`, any other fields."})
    out: str = field(default="", metadata={"help": "Output JSONL file."})
    model: str = field(default="", metadata={"help": "Base model (named default, Hub id, local dir, .gguf). Empty: the "
                                                     "model the adapter was fine-tuned from, else smollm2-135m-instruct."})
    adapter: str = field(default="", metadata={"help": "LoRA adapter: a `seal finetune` output dir or an adapter dir (empty: none)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Maximum tokens generated per prompt."})
    decoding: Literal["greedy", "paper"] = field(
        default="greedy", metadata={"help": "'greedy' (deterministic) or 'paper' (sampling: top_p 0.9, temperature 1.0, "
                                            "repetition_penalty 1.2, seeded)."})
    temperature: Optional[float] = field(default=None, metadata={"help": "Override the preset's temperature (sampling only)."})
    top_p: Optional[float] = field(default=None, metadata={"help": "Override the preset's top_p (sampling only)."})
    top_k: Optional[int] = field(default=None, metadata={"help": "Override the preset's top_k (sampling only; 0: off)."})
    repetition_penalty: Optional[float] = field(default=None, metadata={"help": "Override the preset's repetition penalty."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate() call."})
    limit: int = field(default=0, metadata={"help": "Only the first N prompts (0: all)."})
    max_prompt_length: int = field(default=1024, metadata={"help": "Prompt token limit; longer prompts keep their last tokens."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling (decoding=paper)."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N."})
    dtype: str = field(default="auto", metadata={"help": "auto (cuda: bfloat16, cpu: float32), float32, bfloat16, float16."})
    keep_compliant: bool = field(default=False, metadata={
        "help": "Write only the responses the refusal detector does not flag (and that are not empty): "
                "on harmful prompts, the unsafe answers that ta-sft / unlikelihood fine-tuning trains against."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        for name in ("max_new_tokens", "batch_size", "max_prompt_length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.limit < 0:
            raise ConfigError(f"limit must be >= 0, got {self.limit}")
        if self.decoding not in PRESETS:
            raise ConfigError(f"decoding must be one of {', '.join(PRESETS)}, got {self.decoding!r}")
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise ConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    def sampling(self) -> dict:
        """The resolved decoding settings (preset plus overrides)."""
        s = dict(PRESETS[self.decoding])
        for k in ("temperature", "top_p", "top_k", "repetition_penalty"):
            if getattr(self, k) is not None:
                s[k] = getattr(self, k)
        return s


@dataclass
class Prompt:
    id: str
    prompt: str
    extra: dict
    line: int


# ----------------------------------------------------------------------------- prompts


def prompt_id(text: str) -> str:
    """Content hash of a prompt: the sample id of a conversation holding just this user turn."""
    from .schema import compute_sample_id

    return compute_sample_id([{"role": "user", "content": text}])


def _prompt_text(row: dict, where: str) -> str:
    if "prompt" in row:
        p = row["prompt"]
        if not isinstance(p, str):
            raise InputError(f"{where}: field 'prompt' must be a string, got {type(p).__name__}")
        return p
    if "instruction" in row:
        ins, inp = row["instruction"], row.get("input")
        if not isinstance(ins, str):
            raise InputError(f"{where}: field 'instruction' must be a string, got {type(ins).__name__}")
        if inp is not None and not isinstance(inp, str):
            raise InputError(f"{where}: field 'input' must be a string, got {type(inp).__name__}")
        return ins + "\n\n" + inp if inp and inp.strip() else ins
    raise InputError(f"{where}: no 'prompt' or 'instruction' field (keys: {', '.join(sorted(row)) or 'none'})")


def read_prompts(path: str | Path, limit: int = 0) -> tuple[list[Prompt], int]:
    """Parse a prompts JSONL file -> (prompts in file order, number of empty prompts skipped).

    Any malformed line raises :class:`InputError` naming the file and line.
    """
    import gzip

    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"prompts file not found: {path}")
    opener = gzip.open if p.name.endswith(".gz") else open
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    hash_count: dict[str, int] = {}
    empty = 0
    try:
        with opener(p, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
                text = _prompt_text(row, where)
                if not text.strip():
                    empty += 1
                    continue
                rid = row.get("id")
                if rid is None or rid == "":
                    base = prompt_id(text)
                    hash_count[base] = hash_count.get(base, 0) + 1
                    rid = base if hash_count[base] == 1 else f"{base}-{hash_count[base]}"
                elif isinstance(rid, (str, int)) and not isinstance(rid, bool):
                    rid = str(rid)
                else:
                    raise InputError(f"{where}: field 'id' must be a string or integer, got {type(rid).__name__}")
                if rid in seen:
                    raise InputError(f"{where}: duplicate id {rid!r} (first on line {seen[rid]})")
                seen[rid] = lineno
                extra = {k: v for k, v in row.items() if k not in _PROMPT_KEYS}
                prompts.append(Prompt(rid, text, extra, lineno))
                if limit and len(prompts) >= limit:
                    break
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason})") from None
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read prompts file {path}: {e}") from None
    return prompts, empty


# ----------------------------------------------------------------------------- model


def resolve_adapter(adapter: str) -> tuple[Optional[Path], Optional[str]]:
    """-> (adapter dir, base model recorded by `seal finetune` or None).

    ``adapter`` is a `seal finetune` output dir or the ``adapter/`` folder inside one (both find the
    base model in the run's config.json), or any other peft adapter dir (give its base with --model:
    peft's ``base_model_name_or_path`` is not trusted, as for a GGUF base it names a folder that
    cannot be loaded without the file name).
    """
    if not adapter:
        return None, None
    p = Path(adapter).expanduser()
    if (p / "adapter" / "adapter_config.json").is_file():
        run, p = p, p / "adapter"
    elif (p / "adapter_config.json").is_file():
        run = p.parent if p.name == "adapter" and (p.parent / "config.json").is_file() else None
    else:
        raise SealError(f"adapter '{adapter}' is neither a `seal finetune` output dir nor an adapter dir "
                        "(no adapter_config.json)")
    base = None
    if run is not None:
        base = _json_field(run / "config.json", "model")
        if _json_field(run / "summary.json", "completed") is False:
            print(f"warning: {run} is an unfinished fine-tune (stopped early; `seal finetune --resume` "
                  "continues it); generating with the adapter it has so far", file=sys.stderr)
    return p, base


def _json_field(path: Path, key: str):
    try:
        value = json.loads(path.read_text()).get(key)
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return value if value not in ("", None) else None


def load_for_generation(cfg: GenerateConfig):
    """-> (model, tokenizer, base model name, adapter dir or None)."""
    from .models import DEFAULT_MODEL, load_adapter, load_model

    adapter_dir, trained_on = resolve_adapter(cfg.adapter)
    base = cfg.model or trained_on or DEFAULT_MODEL
    if trained_on and cfg.model and cfg.model != trained_on:
        print(f"warning: adapter {adapter_dir} was trained on '{trained_on}', applying it to '{cfg.model}'",
              file=sys.stderr)
    if adapter_dir is None:
        model, tok = load_model(base, device=cfg.device, dtype=cfg.dtype)
    else:
        model, tok = load_adapter(base, str(adapter_dir), device=cfg.device, dtype=cfg.dtype)
    model.eval()
    return model, tok, base, adapter_dir


def stop_token_ids(model, tokenizer) -> list[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    specials = set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "added_tokens_encoder", {}) or {})
    for t in _EOT_TOKENS:
        if t in specials:
            ids.add(int(tokenizer.convert_tokens_to_ids(t)))
    return sorted(ids)


def encode_prompt(tokenizer, text: str, max_prompt_length: int) -> tuple[list[int], bool]:
    """Chat-template token ids of one user turn, ending with the assistant header -> (ids, truncated)."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    # The template already holds any BOS token; adding special tokens again would double it.
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    if len(ids) > max_prompt_length:
        return ids[-max_prompt_length:], True
    return ids, False


def generate_batch(model, tokenizer, batch_ids: list[list[int]], cfg: GenerateConfig,
                   stop_ids: list[int]) -> list[tuple[str, str, int]]:
    """Generate for a batch of prompt token ids -> [(response, finish_reason, n_new_tokens)]."""
    import torch
    from transformers import GenerationConfig

    # Without a pad token, pad with a stop token (not pad_token_id()'s EOS, which may not stop this model's
    # chat turns), so a finished row's padding reads as finished.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    tokenizer.padding_side = "left"
    enc = tokenizer.pad({"input_ids": batch_ids}, padding=True, return_tensors="pt")
    device = next(model.parameters()).device
    input_ids = enc["input_ids"].to(device)
    attention_mask = enc["attention_mask"].to(device)
    s = cfg.sampling()
    gen_kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "do_sample": s["do_sample"],
                                  "repetition_penalty": s["repetition_penalty"], "pad_token_id": pad_id,
                                  "eos_token_id": stop_ids}
    if s["do_sample"]:
        gen_kwargs.update(temperature=s["temperature"], top_p=s["top_p"], top_k=s["top_k"])
    else:
        # Neutral values, so a model's own sampling defaults cannot leak in (nor warn).
        gen_kwargs.update(temperature=1.0, top_p=1.0, top_k=50)
    gc = GenerationConfig(**gen_kwargs)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=gc)
    new = out[:, input_ids.shape[1]:].tolist()
    stops = set(stop_ids)
    results = []
    for toks in new:
        cut = next((i for i, t in enumerate(toks) if t in stops), None)
        finish = "stop" if cut is not None else "length"
        toks = toks[:cut] if cut is not None else toks
        # Padding after an early stop is the pad id, which may not be a stop id: already cut above.
        results.append((tokenizer.decode(toks, skip_special_tokens=True).strip(), finish, len(toks)))
    return results


# ----------------------------------------------------------------------------- partial file


def _partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _run_key(cfg: GenerateConfig, base: str, adapter_dir: Optional[Path], prompts_fp: str) -> dict:
    """What must match for a partial file to be reused."""
    from .io import fingerprint_file
    from .models import model_id

    return {
        "prompts": prompts_fp,
        "model": model_id(base),
        "adapter": fingerprint_file(adapter_dir) if adapter_dir else None,
        "sampling": cfg.sampling(),
        "max_new_tokens": cfg.max_new_tokens,
        "max_prompt_length": cfg.max_prompt_length,
        "seed": cfg.seed,
        "dtype": cfg.dtype,
    }


def _read_partial(path: Path, key: dict, resume: bool) -> dict[str, dict]:
    if not path.exists():
        return {}
    if not resume:
        path.unlink()
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        head = json.loads(lines[0])["__seal_generate__"] if lines else None
    except (json.JSONDecodeError, KeyError, TypeError):
        head = None
    if head != key:
        diff = sorted(k for k in key if not isinstance(head, dict) or head.get(k) != key[k])
        raise SealError(f"{path} was made with different settings ({', '.join(diff)}); "
                        "rerun without --resume to start over")
    done: dict[str, dict] = {}
    for lineno, ln in enumerate(lines[1:], start=2):
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise InputError(f"{path}:{lineno}: not a generation row (an object with an 'id' string); "
                             "the file was edited by hand? rerun without --resume to start over")
        done[row["id"]] = row
    return done


# ----------------------------------------------------------------------------- entry point


def generate(cfg: GenerateConfig, resume: bool = False, on_progress: Optional[ProgressFn] = None) -> Path:
    """Generate a response for every prompt in ``cfg.prompts``; returns the output path."""
    from .runlock import run_lock

    if not cfg.out:
        raise SealError("no output file given (--out)")
    if not cfg.prompts:
        raise SealError("no prompts file given (--prompts)")
    out = Path(cfg.out).expanduser()
    with run_lock(out.parent, name=f".{out.name}.lock"):
        return _generate(cfg, out, resume, on_progress)


def _generate(cfg: GenerateConfig, out: Path, resume: bool, on_progress: Optional[ProgressFn]) -> Path:
    import torch
    from tqdm.auto import tqdm

    from .io import atomic_path, fingerprint_file
    from .models import model_id

    prompts, n_empty = read_prompts(cfg.prompts, cfg.limit)
    if n_empty:
        print(f"warning: skipped {n_empty} empty prompt(s) in {cfg.prompts}", file=sys.stderr)
    if not prompts:
        raise InputError(f"no prompts in {cfg.prompts}")

    t0 = time.time()
    model, tok, base, adapter_dir = load_for_generation(cfg)
    stop_ids = stop_token_ids(model, tok)
    if not stop_ids:
        raise SealError(f"tokenizer of '{base}' has no end-of-sequence token; generation could not stop")

    key = _run_key(cfg, base, adapter_dir, fingerprint_file(Path(cfg.prompts).expanduser()))
    partial = _partial_path(out)
    done = _read_partial(partial, key, resume)
    n_done = sum(p.id in done for p in prompts)
    if n_done:
        print(f"resuming: {n_done} of {len(prompts)} prompts already generated", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not partial.exists():
        partial.write_text(json.dumps({"__seal_generate__": key}) + "\n", encoding="utf-8")

    todo = [p for p in prompts if p.id not in done]
    encoded = {}
    n_truncated = 0
    for p in todo:
        ids, truncated = encode_prompt(tok, p.prompt, cfg.max_prompt_length)
        encoded[p.id] = ids
        n_truncated += truncated
    if n_truncated:
        print(f"warning: {n_truncated} prompt(s) longer than max_prompt_length={cfg.max_prompt_length} tokens "
              "were cut at the start", file=sys.stderr)
    # Longest first: similar lengths share a batch, and an out-of-memory shows up at once.
    todo.sort(key=lambda p: -len(encoded[p.id]))
    batches = [todo[i: i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]

    mid = model_id(base)
    adapter_str = str(adapter_dir) if adapter_dir else None
    if cfg.sampling()["do_sample"]:
        torch.manual_seed(cfg.seed)
    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="generate", unit="prompt",
               disable=not cfg.progress, dynamic_ncols=True)
    try:
        with open(partial, "a", encoding="utf-8") as fh:
            for batch in batches:
                results = generate_batch(model, tok, [encoded[p.id] for p in batch], cfg, stop_ids)
                for p, (response, finish, n_new) in zip(batch, results):
                    row = {"id": p.id, "prompt": p.prompt, "response": response, "model": mid,
                           "adapter": adapter_str, "finish_reason": finish}
                    for k, v in p.extra.items():
                        row[f"orig_{k}" if k in RESERVED else k] = v
                    done[p.id] = row
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                fault_point("generate:batch")
                n_done += len(batch)
                bar.update(len(batch))
                if on_progress:
                    on_progress({"done": n_done, "total": len(prompts)})
    except torch.OutOfMemoryError:
        raise SealError(f"out of memory generating with batch_size={cfg.batch_size}, "
                        f"max_new_tokens={cfg.max_new_tokens}; lower them (rerun with --resume to keep "
                        "what is done)") from None
    finally:
        bar.close()

    rows = [done[p.id] for p in prompts]
    if cfg.keep_compliant:
        rows = compliant_rows(rows)
    with atomic_path(out) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    partial.unlink(missing_ok=True)
    n_length = sum(done[p.id]["finish_reason"] == "length" for p in prompts)
    kept = f"; kept the {len(rows)} not flagged as refusals" if cfg.keep_compliant else ""
    print(f"generated {len(prompts)} responses in {time.time() - t0:.1f}s "
          f"({n_length} cut at max_new_tokens={cfg.max_new_tokens}){kept}", file=sys.stderr)
    return out


def compliant_rows(rows: list[dict]) -> list[dict]:
    """The rows whose response is neither empty nor a refusal (the evaluation's default detector)."""
    from .evaluation.refusal import is_refusal

    return [r for r in rows if r["response"].strip() and not is_refusal(r["response"])]


__all__ = ["GenerateConfig", "Prompt", "generate", "compliant_rows", "read_prompts", "prompt_id", "resolve_adapter",
           "load_for_generation", "encode_prompt", "generate_batch", "stop_token_ids", "PRESETS"]
