"""Generation: prompt parsing and ids, greedy determinism and batch-size invariance,
adapters from `seal finetune`, seeded paper decoding, resume from a partial file, CLI.

A random tiny model only ever greedily emits one token, which would make every
comparison vacuous, so the module first trains the tiny model outright (a few
seconds) to answer "What colour is the X?" and saves it as a local model dir.
"""

from __future__ import annotations

import json

import pytest
import torch

from seal_core.config import from_dict
from seal_core.errors import InputError, SealError
from seal_core.generate import GenerateConfig, generate, prompt_id, read_prompts

COLOURS = ["sky", "sea", "lake", "river", "ice", "ink", "jeans", "whale"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tiny model is far too small to gain from intra-op threads; on a shared machine they only contend.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _read(path):
    return [json.loads(ln) for ln in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, _one_thread):
    from seal_core.models import tiny_model
    from seal_core.tokenization import collate, encode_samples, per_sample_loss

    model, tok = tiny_model(seed=0)
    samples = [{"sample_id": c, "messages": [{"role": "user", "content": f"What colour is the {c}?"},
                                            {"role": "assistant", "content": f"The {c} is blue."}]}
               for c in COLOURS]
    enc, _ = encode_samples(tok, samples, 64, "final", "left")
    batch = collate(enc, tok.pad_token_id)
    torch.manual_seed(0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        per_sample_loss(model, batch).mean().backward()
        opt.step()
    model.eval()
    d = tmp_path_factory.mktemp("tiny-trained")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    d = tmp_path_factory.mktemp("prompts")
    rows = [{"id": f"p{i}", "prompt": f"What colour is the {c}?", "category": "colour", "reference": f"{c} blue"}
            for i, c in enumerate(COLOURS)]
    rows += [
        {"prompt": "Hi"},  # no id: content hash
        {"instruction": "Please explain the following code", "input": "print(add(1, 2))", "origin": "alpaca"},
        {"id": 7, "prompt": "Translate this sentence into German: the weather is nice.", "response": "ref"},
        {"id": "empty", "prompt": "   "},
    ]
    return _write_jsonl(d / "prompts.jsonl", rows)


def _cfg(prompts, out, **kw):
    base = dict(prompts=prompts, out=str(out), max_new_tokens=12, batch_size=4, progress=False, device="cpu")
    base.update(kw)
    return from_dict(GenerateConfig, base)


# ----------------------------------------------------------------------------- prompts


def test_read_prompts_ids_and_fields(prompts):
    ps, empty = read_prompts(prompts)
    assert empty == 1
    assert [p.id for p in ps[:8]] == [f"p{i}" for i in range(8)]
    assert ps[8].id == prompt_id("Hi") and len(ps[8].id) == 24
    assert ps[9].prompt == "Please explain the following code\n\nprint(add(1, 2))"
    assert ps[9].extra == {"origin": "alpaca"}
    assert ps[10].id == "7" and ps[10].extra == {"response": "ref"}
    assert ps[0].extra == {"category": "colour", "reference": "sky blue"}
    assert len(read_prompts(prompts, limit=3)[0]) == 3


def test_hash_ids_are_stable_and_repeats_get_suffixes(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", [{"prompt": "x"}, {"prompt": "y"}, {"prompt": "x"}])
    b = _write_jsonl(tmp_path / "b.jsonl", [{"prompt": "y", "other": 1}])
    ids = [p.id for p in read_prompts(a)[0]]
    assert ids == [prompt_id("x"), prompt_id("y"), prompt_id("x") + "-2"]
    assert read_prompts(b)[0][0].id == ids[1]


@pytest.mark.parametrize("line, message", [
    ("{not json", r"bad\.jsonl:2: not valid JSON"),
    ('["a list"]', r"bad\.jsonl:2: expected a JSON object, got list"),
    ('{"text": "hi"}', r"bad\.jsonl:2: no 'prompt' or 'instruction' field \(keys: text\)"),
    ('{"prompt": 3}', r"bad\.jsonl:2: field 'prompt' must be a string, got int"),
    ('{"id": "a", "prompt": "again"}', r"bad\.jsonl:2: duplicate id 'a' \(first on line 1\)"),
])
def test_malformed_prompt_lines_name_file_and_line(tmp_path, line, message):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "a", "prompt": "ok"}\n' + line + "\n")
    with pytest.raises(InputError, match=message):
        read_prompts(p)


# ----------------------------------------------------------------------------- generation


def test_greedy_is_deterministic_and_batch_size_invariant(model_dir, prompts, tmp_path):
    a = _read(generate(_cfg(prompts, tmp_path / "a.jsonl", model=model_dir, batch_size=4)))
    b = _read(generate(_cfg(prompts, tmp_path / "b.jsonl", model=model_dir, batch_size=4)))
    c = _read(generate(_cfg(prompts, tmp_path / "c.jsonl", model=model_dir, batch_size=1)))
    assert a == b == c
    assert len(a) == 11  # the empty prompt is skipped
    ps, _ = read_prompts(prompts)
    assert [r["id"] for r in a] == [p.id for p in ps]  # input order, not length order
    # The trained model answers its training questions and stops at the end of its turn.
    assert a[0]["response"].startswith("The") and a[0]["response"].endswith("is blue.")
    assert a[0]["finish_reason"] == "stop"
    assert len({r["response"] for r in a}) > 3
    assert a[0]["category"] == "colour" and a[0]["reference"] == "sky blue"
    assert a[9]["origin"] == "alpaca" and "instruction" not in a[9]
    assert a[10]["orig_response"] == "ref" and a[10]["id"] == "7"
    assert a[0]["adapter"] is None and a[0]["model"].endswith("tiny-trained0")
    assert not (tmp_path / "a.jsonl.partial").exists()


def test_adapter_from_finetune_is_applied(model_dir, prompts, tmp_path):
    from seal_core.finetune import FinetuneConfig, finetune

    rows = [{"messages": [{"role": "user", "content": f"What colour is the {c}?"},
                          {"role": "assistant", "content": f"The {c} is red."}]} for c in COLOURS]
    data = _write_jsonl(tmp_path / "red.jsonl", rows)
    ft = finetune(from_dict(FinetuneConfig, dict(
        data=data, out=str(tmp_path / "ft"), model=model_dir, epochs=15, lr=1e-2, batch_size=8,
        max_length=64, progress=False, device="cpu", lora={"r": 8, "alpha": 16})))
    base = _read(generate(_cfg(prompts, tmp_path / "base.jsonl", model=model_dir, limit=8)))
    # No --model: the base model is read from the fine-tuning run's config.json.
    tuned = _read(generate(_cfg(prompts, tmp_path / "tuned.jsonl", adapter=str(ft), limit=8)))
    assert len(tuned) == 8
    assert tuned[0]["adapter"] == str(ft / "adapter") and tuned[0]["model"] == base[0]["model"]
    # (A tiny model learns "red" through a rank-8 adapter only slowly; that the adapter is applied
    # and was trained towards the new data is what matters here.)
    s = json.loads((ft / "summary.json").read_text())
    assert s["epoch_losses"][-1] < s["epoch_losses"][0] - 0.5
    assert sum(t["response"] != b["response"] for t, b in zip(tuned, base)) >= 6
    # The adapter/ folder given directly, without --model, finds its base in the run's config.json too.
    direct = _read(generate(_cfg(prompts, tmp_path / "direct.jsonl", adapter=str(ft / "adapter"), limit=8)))
    assert [r["response"] for r in direct] == [r["response"] for r in tuned]
    assert direct[0]["model"] == base[0]["model"]


def test_unfinished_finetune_adapter_is_used_with_a_warning(model_dir, tmp_path, capsys):
    from seal_core.finetune import FinetuneConfig, finetune
    from seal_core.generate import resolve_adapter

    rows = [{"messages": [{"role": "user", "content": f"What colour is the {c}?"},
                          {"role": "assistant", "content": f"The {c} is red."}]} for c in COLOURS]
    ft = finetune(from_dict(FinetuneConfig, dict(
        data=_write_jsonl(tmp_path / "red.jsonl", rows), out=str(tmp_path / "ft"), model=model_dir,
        max_steps=1, batch_size=4, max_length=64, progress=False, device="cpu")))
    capsys.readouterr()
    assert resolve_adapter(str(ft)) == (ft / "adapter", model_dir)
    assert "unfinished fine-tune" in capsys.readouterr().err
    finetune(from_dict(FinetuneConfig, dict(
        data=str(tmp_path / "red.jsonl"), out=str(ft), model=model_dir, batch_size=4, max_length=64,
        progress=False, device="cpu")), resume=True)
    capsys.readouterr()
    assert resolve_adapter(str(ft / "adapter")) == (ft / "adapter", model_dir)
    assert "unfinished" not in capsys.readouterr().err


def test_paper_decoding_is_seeded(model_dir, prompts, tmp_path):
    cfg = _cfg(prompts, tmp_path / "s0.jsonl", model=model_dir, decoding="paper")
    assert cfg.sampling() == {"do_sample": True, "temperature": 1.0, "top_p": 0.9, "top_k": 50,
                              "repetition_penalty": 1.2}
    s0 = _read(generate(cfg))
    s0b = _read(generate(_cfg(prompts, tmp_path / "s0b.jsonl", model=model_dir, decoding="paper")))
    s1 = _read(generate(_cfg(prompts, tmp_path / "s1.jsonl", model=model_dir, decoding="paper", seed=1)))
    assert s0 == s0b
    assert [r["response"] for r in s0] != [r["response"] for r in s1]


def test_interrupted_run_resumes_from_partial(model_dir, prompts, tmp_path):
    full = _read(generate(_cfg(prompts, tmp_path / "full.jsonl", model=model_dir)))
    out = tmp_path / "out.jsonl"

    def stop_after_first_batch(info):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(_cfg(prompts, out, model=model_dir), on_progress=stop_after_first_batch)
    partial = tmp_path / "out.jsonl.partial"
    assert not out.exists() and len(partial.read_text().splitlines()) == 1 + 4  # header + one batch
    with pytest.raises(SealError, match="different settings .*max_new_tokens"):
        generate(_cfg(prompts, out, model=model_dir, max_new_tokens=5), resume=True)
    # A hand-edited partial file is named with its line, not a traceback.
    text = partial.read_text()
    partial.write_text(text + '["not a row"]\n')
    with pytest.raises(InputError, match=r"out\.jsonl\.partial:6: not a generation row"):
        generate(_cfg(prompts, out, model=model_dir), resume=True)
    partial.write_text(text)
    seen = []
    generate(_cfg(prompts, out, model=model_dir), resume=True, on_progress=seen.append)
    assert seen[0]["done"] == 8  # the first batch was not generated again
    assert _read(out) == full and not partial.exists()


def test_cli(model_dir, prompts, tmp_path, capsys):
    from seal_cli.main import main

    out = tmp_path / "cli.jsonl"
    rc = main(["generate", "--model", model_dir, "--prompts", prompts, "--out", str(out), "--max-new-tokens", "8",
               "--batch-size", "2", "--limit", "3", "--no-progress", "--set", "device=cpu"])
    assert rc == 0
    rows = _read(out)
    assert [r["id"] for r in rows] == ["p0", "p1", "p2"]
    assert str(out) in capsys.readouterr().out

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": "unterminated\n')
    rc = main(["generate", "--model", model_dir, "--prompts", str(bad), "--out", str(tmp_path / "x.jsonl")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and f"{bad}:2: not valid JSON" in err and "\n" not in err
    rc = main(["generate", "--model", model_dir, "--prompts", str(tmp_path / "none.jsonl"),
               "--out", str(tmp_path / "x.jsonl")])
    assert rc == 2 and "prompts file not found" in capsys.readouterr().err
