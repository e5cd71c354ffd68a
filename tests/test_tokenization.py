import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import torch.nn.functional as F

from seal_core import models
from seal_core.errors import ConfigError
from seal_core.tokenization import (
    IGNORE_INDEX,
    Encoded,
    collate,
    encode_messages,
    encode_samples,
    length_grouped_batches,
    per_sample_loss,
    score_losses,
    token_budget_batches,
)

CONV = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And in German, with an emoji? 😀"},
    {"role": "assistant", "content": "Vier. Schön 👍"},
]


@pytest.fixture(scope="module")
def tok():
    return models.tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny():
    return models.tiny_model(seed=0)


def target_spans(tokenizer, enc: Encoded) -> list[str]:
    """Decode each contiguous run of target tokens."""
    spans, cur = [], []
    for t, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE_INDEX:
            assert lab == t
            cur.append(t)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    return [tokenizer.decode(s) for s in spans]


def full_ids(tokenizer, messages):
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_masking(tokenizer, eot="<|im_end|>"):
    """Shared by the tiny test and the slow SmolLM2 test."""
    enc = encode_messages(tokenizer, CONV, max_length=4096, train_on="final")
    assert enc.input_ids == full_ids(tokenizer, CONV)
    assert target_spans(tokenizer, enc) == ["Vier. Schön 👍" + eot]
    enc_all = encode_messages(tokenizer, CONV, max_length=4096, train_on="all")
    assert enc_all.input_ids == enc.input_ids
    assert target_spans(tokenizer, enc_all) == ["It is 4." + eot, "Vier. Schön 👍" + eot]
    return enc, enc_all


def test_mask_covers_exactly_assistant_tokens(tok):
    enc, enc_all = check_masking(tok)
    answer_ids = tok("Vier. Schön 👍", add_special_tokens=False)["input_ids"]
    assert enc.n_target_tokens == len(answer_ids) + 1  # + <|im_end|>
    assert enc.n_tokens == len(enc.input_ids) == len(enc.labels)
    assert enc_all.n_target_tokens == enc.n_target_tokens + len(tok("It is 4.", add_special_tokens=False)["input_ids"]) + 1
    assert not enc.truncated
    # the end-of-turn token is a target, the role header never is
    assert tok.eos_token_id in [lab for lab in enc.labels if lab != IGNORE_INDEX]


def test_end_of_turn_flagged_special_only_among_added_tokens_is_trained():
    # As in some Llama-3 configs: <|eot_id|> ends each turn, but the special-token map's eos is another token.
    from tokenizers import AddedToken

    t = models.tiny_tokenizer()
    t.add_tokens([AddedToken("<|eot|>", special=True)])
    t.chat_template = t.chat_template.replace("'<|im_end|>'", "'<|eot|>'")
    eot = t.convert_tokens_to_ids("<|eot|>")
    assert eot not in t.all_special_ids
    enc = encode_messages(t, CONV, max_length=4096, train_on="final")
    assert target_spans(t, enc) == ["Vier. Schön 👍<|eot|>"]
    assert [lab for lab in enc.labels if lab != IGNORE_INDEX][-1] == eot


def test_mask_without_system_and_with_odd_content(tok):
    conv = [
        {"role": "user", "content": "  spaces around  "},
        {"role": "assistant", "content": " trailing space and\nnewline \n"},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": ""},
    ]
    enc = encode_messages(tok, conv, max_length=512, train_on="all")
    assert enc.input_ids == full_ids(tok, conv)
    assert target_spans(tok, enc) == [" trailing space and\nnewline \n<|im_end|>", "<|im_end|>"]


def test_assistant_first_message(tok):
    conv = [{"role": "assistant", "content": "Hello, how can I help?"}, {"role": "user", "content": "hi"}]
    enc = encode_messages(tok, conv, max_length=512)
    assert target_spans(tok, enc) == ["Hello, how can I help?<|im_end|>"]


def test_no_assistant_is_rejected(tok):
    assert encode_messages(tok, [{"role": "user", "content": "hi"}], max_length=64) is None
    encoded, rejects = encode_samples(
        tok,
        [{"sample_id": "a", "messages": CONV}, {"sample_id": "b", "messages": [{"role": "user", "content": "hi"}]}],
        max_length=512,
    )
    assert [e.sample_id for e in encoded] == ["a"]
    assert rejects == [{"sample_id": "b", "reason": "no assistant turn"}]


def test_truncation_policies(tok):
    full = encode_messages(tok, CONV, max_length=4096)
    n = full.n_tokens
    limit = n - 10

    left = encode_messages(tok, CONV, max_length=limit, truncation="left")
    assert left.truncated and left.n_tokens == limit
    assert left.input_ids == full.input_ids[-limit:]
    assert target_spans(tok, left) == ["Vier. Schön 👍<|im_end|>"]  # answer kept whole
    assert left.n_target_tokens == full.n_target_tokens

    right = encode_messages(tok, CONV, max_length=n - 4, truncation="right")
    assert right.truncated and right.n_tokens == n - 4
    assert right.input_ids == full.input_ids[: n - 4]
    assert 0 < right.n_target_tokens < full.n_target_tokens  # the end of the answer is cut

    assert encode_messages(tok, CONV, max_length=limit, truncation="drop") is None
    assert encode_messages(tok, CONV, max_length=n, truncation="drop").input_ids == full.input_ids
    # right-cutting away the whole answer leaves nothing to train on
    first_target = next(i for i, lab in enumerate(full.labels) if lab != IGNORE_INDEX)
    assert encode_messages(tok, CONV, max_length=first_target, truncation="right") is None
    assert encode_messages(tok, CONV, max_length=first_target + 1, truncation="right").n_target_tokens == 1

    _, rejects = encode_samples(tok, [{"sample_id": "x", "messages": CONV}], max_length=limit, truncation="drop")
    assert rejects == [{"sample_id": "x", "reason": f"too long: {n} tokens > max_length {limit}"}]


def test_bad_options(tok):
    with pytest.raises(ConfigError):
        encode_messages(tok, CONV, max_length=64, train_on="first")
    with pytest.raises(ConfigError):
        encode_messages(tok, CONV, max_length=64, truncation="middle")
    with pytest.raises(ConfigError):
        encode_messages(tok, CONV, max_length=0)


def test_collate(tok):
    a = encode_messages(tok, CONV, max_length=512)
    b = encode_messages(tok, CONV[:3], max_length=512)
    batch = collate([a, b], pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape == (2, a.n_tokens)
    assert batch["attention_mask"][1].sum().item() == b.n_tokens
    assert (batch["input_ids"][1, b.n_tokens:] == tok.pad_token_id).all()
    assert (batch["labels"][1, b.n_tokens:] == IGNORE_INDEX).all()
    assert batch["labels"][0].tolist() == a.labels


# ----------------------------------------------------------------------------- batching


def padding_waste(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_length_grouped_batches():
    rng = random.Random(1)
    lengths = [rng.choice([rng.randint(5, 20), rng.randint(200, 1000)]) for _ in range(1037)]
    batches = length_grouped_batches(lengths, batch_size=8, seed=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 8 for b in batches)
    assert batches == length_grouped_batches(lengths, batch_size=8, seed=3)
    assert batches != length_grouped_batches(lengths, batch_size=8, seed=4)

    perm = list(range(len(lengths)))
    random.Random(3).shuffle(perm)
    random_batches = [perm[i: i + 8] for i in range(0, len(perm), 8)]
    assert padding_waste(batches, lengths) < 0.2 * padding_waste(random_batches, lengths)

    ordered = length_grouped_batches(lengths, batch_size=8, seed=0, shuffle=False)
    flat = [i for b in ordered for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert length_grouped_batches([], batch_size=4, seed=0) == []
    with pytest.raises(ConfigError):
        length_grouped_batches([1, 2], batch_size=0, seed=0)


def test_token_budget_batches():
    rng = random.Random(2)
    lengths = [rng.randint(3, 300) for _ in range(517)]
    batches = token_budget_batches(lengths, max_tokens=1200)
    flat = [i for b in batches for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True) and sorted(flat) == list(range(517))
    assert all(len(b) * max(lengths[i] for i in b) <= 1200 for b in batches)
    # greedy: the next sample would not have fitted
    assert all(len(b) * lengths[b[0]] + lengths[b[0]] > 1200 for b in batches[:-1])
    assert token_budget_batches([5, 9, 5], max_tokens=4) == [[1], [0], [2]]
    assert token_budget_batches([], max_tokens=10) == []


# ----------------------------------------------------------------------------- per-sample loss


def naive_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    labels = batch["labels"][:, 1:]
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    mask = (labels != IGNORE_INDEX).float()
    return (nll * mask).sum(1) / mask.sum(1)


def make_batch(tok):
    convs = [
        CONV,
        CONV[:3],
        [{"role": "user", "content": "Write a function that adds two numbers."},
         {"role": "assistant", "content": "def add(a, b):\n    return a + b"}],
    ]
    items = [encode_messages(tok, c, max_length=512, train_on=t) for c, t in zip(convs, ["all", "final", "final"])]
    return items, collate(items, pad_id=tok.pad_token_id)


def test_per_sample_loss_matches_naive(tiny):
    model, tok = tiny
    items, batch = make_batch(tok)
    with torch.no_grad():
        ours = per_sample_loss(model, batch)
        ref = naive_loss(model, batch)
    assert ours.shape == (3,) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # padding does not change a sample's loss
    with torch.no_grad():
        alone = per_sample_loss(model, collate([items[1]], tok.pad_token_id))
    torch.testing.assert_close(alone[0], ours[1], atol=1e-5, rtol=0)


def test_per_sample_loss_lora_matches_naive_and_has_grads():
    model, tok = models.tiny_model(seed=1)
    peft_model = models.add_lora(model, models.LoraSettings(r=4, alpha=8))
    # LoRA B starts at zero; make the adapter matter so the check is not vacuous.
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(n)))
    _, batch = make_batch(tok)
    with torch.no_grad():
        base_loss = per_sample_loss(models.tiny_model(seed=1)[0], batch)
    ours = per_sample_loss(peft_model, batch)
    with torch.no_grad():
        ref = naive_loss(peft_model, batch)
    torch.testing.assert_close(ours.detach(), ref, atol=1e-5, rtol=0)
    assert not torch.allclose(ours.detach(), base_loss, atol=1e-4)

    ours.mean().backward()
    lora = [(n, p) for n, p in peft_model.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in lora)
    assert all(p.grad is None for n, p in peft_model.named_parameters() if "lora_" not in n)


def test_per_sample_loss_no_target_is_nan(tiny):
    model, tok = tiny
    _, batch = make_batch(tok)
    batch["labels"][2] = IGNORE_INDEX
    with torch.no_grad():
        out = per_sample_loss(model, batch)
    assert torch.isnan(out[2]) and torch.isfinite(out[:2]).all()


@pytest.mark.slow
def test_smollm2_template_masking_and_loss():
    model, tok = models.load_model(models.DEFAULT_MODEL, device="cpu")
    assert tok.pad_token is not None and tok.padding_side == "right"
    enc, enc_all = check_masking(tok)
    # without a system message SmolLM2 adds its default system prompt: context, never target
    no_system = CONV[1:]
    enc = encode_messages(tok, no_system, max_length=4096, train_on="all")
    assert enc.input_ids == full_ids(tok, no_system)
    assert "SmolLM" in tok.decode(enc.input_ids)
    assert target_spans(tok, enc) == ["It is 4.<|im_end|>", "Vier. Schön 👍<|im_end|>"]
    items, batch = make_batch(tok)
    batch = collate(items[:2], tok.pad_token_id)
    with torch.no_grad():
        ours = per_sample_loss(model, batch)
        ref = naive_loss(model, batch)
    assert torch.isfinite(ours).all() and (ours > 0).all()
    # SmolLM2's logits reach ~40, so fp32 matmuls of different shapes (gathered rows vs all rows)
    # round differently at ~1e-4; the exact 1e-5 equivalence is checked on the tiny model.
    torch.testing.assert_close(ours, ref, atol=5e-4, rtol=0)


def test_keep_prompt_truncation_keeps_request_and_answer_start():
    from seal_core.models import tiny_model
    from seal_core.tokenization import encode_messages

    _, tok = tiny_model()
    answer = "Paris is the capital of France and a lovely city to visit in spring. " * 4
    msgs = [
        {"role": "user", "content": "old question here " * 3},
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": answer},
    ]
    full = encode_messages(tok, msgs, 10_000)
    for max_length in (60, 120):
        e = encode_messages(tok, msgs, max_length, truncation="keep_prompt")
        assert e.truncated and e.n_tokens == max_length < full.n_tokens
        text = tok.decode(e.input_ids)
        target = tok.decode([t for t in e.labels if t != -100])
        assert "What is the capital of France?" in text
        assert answer.startswith(target) and len(target) > 0
        # The answer gets at least half the budget, and the oldest turn goes first.
        assert e.n_target_tokens >= max_length // 2 - 1
    assert "old question" not in tok.decode(encode_messages(tok, msgs, 60, truncation="keep_prompt").input_ids)


def _loss_and_grads(model, batch, budget, params):
    ls = per_sample_loss(model, batch, logits_budget=budget)
    # Unequal weights, so each sample's gradient is checked, not only their sum.
    (ls * torch.tensor([0.3, 1.7, -0.9])).sum().backward()
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return ls.detach(), grads


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("train_head", [False, True])
def test_chunked_head_loss_equals_unchunked_with_grads(softcap, train_head):
    model, tok = models.tiny_model(seed=2)
    peft_model = models.add_lora(model, models.LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(n)))
    model.config.final_logit_softcapping = softcap
    head = model.get_output_embeddings()
    # A trainable head takes the checkpointed path; LoRA's frozen one the precomputed-Jacobian path.
    head.weight.requires_grad_(train_head)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    _, batch = make_batch(tok)
    n_targets = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    vocab = head.weight.shape[0]
    ref, ref_grads = _loss_and_grads(peft_model, batch, n_targets * vocab, params)

    saved = []

    def pack(t):
        saved.append(t.numel() if t.dim() and t.shape[-1] == vocab else 0)
        return t

    budget = 3 * vocab + 5  # 3 rows per chunk, the last one short
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ours, grads = _loss_and_grads(peft_model, batch, budget, params)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
    assert max(saved) <= budget  # no full-vocab logits kept for the backward
    with torch.no_grad():
        torch.testing.assert_close(per_sample_loss(peft_model, batch, logits_budget=budget), ref, atol=1e-6, rtol=0)


def test_score_losses_equal_single_sample_losses(tiny):
    model, tok = tiny
    items = [encode_messages(tok, c, max_length=512) for c in (CONV, CONV[:3], CONV[:3] * 2, CONV[1:3])]
    got = score_losses(model, tok, items, batch_size=2, progress=False)
    with torch.no_grad():
        want = [per_sample_loss(model, collate([e], tok.pad_token_id))[0].item() for e in items]
    assert got == pytest.approx(want, abs=1e-5)


def test_logits_budget_is_a_checked_config_field():
    from seal_core.config import from_dict
    from seal_core.finetune import FinetuneConfig
    from seal_core.ranker.config import RankConfig

    for cls in (RankConfig, FinetuneConfig):
        assert from_dict(cls, {"logits_budget": 4096}).logits_budget == 4096
        with pytest.raises(ConfigError, match="logits_budget"):
            from_dict(cls, {"logits_budget": 0})
