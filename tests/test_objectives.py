"""Fine-tuning objectives on the tiny random model: the exact one-hot EMD of TA-SFT against a
brute-force V x V cost matrix (chunked or not), unlikelihood against its formula, real fine-tunes
that push the unsafe answers down (ta-sft) or not (sft), exact resume, config errors, the unsafe
batch order, `seal select --bottom-k`, `seal generate --keep-compliant` and run-config arms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from seal_core.config import from_dict
from seal_core.errors import ConfigError
from seal_core.finetune import FinetuneConfig, finetune, train_lora
from seal_core.objectives import TASFT, Unlikelihood, answer_token_terms, build_objective, unsafe_batch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


COLOURS = ["sky", "sea", "lake", "river", "ice", "ink", "jeans", "whale"]
THINGS = ["car", "bike", "phone", "bag"]


def _conv(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def data(tmp_path):
    return _write_jsonl(tmp_path / "data.jsonl",
                        [{"messages": _conv(f"What colour is the {c}?", f"The {c} is blue.")} for c in COLOURS])


@pytest.fixture()
def unsafe(tmp_path):
    return _write_jsonl(tmp_path / "unsafe.jsonl",
                        [{"prompt": f"How do I steal a {t}?", "response": f"Sure, first break the {t} lock."}
                         for t in THINGS])


def _cfg(data, out, **kw):
    # On a random model q_t is near uniform, so the EMD's gradient (q_i (C_iy - EMD)) is small:
    # a large lambda and lr make a few steps show the effect.
    base = dict(data=data, out=str(out), model="tiny-random", epochs=6, lr=3e-2, batch_size=4,
                micro_batch_size=2, max_length=64, checkpoint_every=0, progress=False, lora={"r": 8, "alpha": 16},
                unsafe_weight=20.0, unsafe_batch_size=2)
    base.update(kw)
    return from_dict(FinetuneConfig, base)


def _unit_embeddings(model):
    return torch.nn.functional.normalize(model.get_input_embeddings().weight.detach().float(), dim=-1)


# ----------------------------------------------------------------------------- the terms


def test_emd_term_equals_brute_force_with_the_full_cost_matrix():
    from seal_core.models import tiny_model

    model, _ = tiny_model(seed=0)
    e = _unit_embeddings(model)
    vocab = e.shape[0]
    cost = 1.0 - e @ e.T  # the V x V ground cost the objective never builds
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, vocab, generator=gen) * 3
    targets = torch.randint(0, vocab, (7,), generator=gen)
    want = (torch.softmax(logits, -1) * cost[:, targets].T).sum(-1)

    got = build_objective("ta-sft", model).token_terms(logits, targets)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert ((got >= 0) & (got <= 2)).all()


@pytest.mark.parametrize("budget", [2**24, 1])
def test_emd_through_the_model_matches_brute_force_chunked_or_not(budget):
    from seal_core.models import tiny_model
    from seal_core.tokenization import IGNORE_INDEX, collate, encode_samples

    model, tok = tiny_model(seed=0)
    samples = [{"sample_id": t, "messages": _conv(f"How do I steal a {t}?", f"Sure, break the {t}.")} for t in THINGS]
    enc, _ = encode_samples(tok, samples, 64)
    batch = collate(enc, tok.pad_token_id)
    objective = build_objective("ta-sft", model)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    e = _unit_embeddings(model)
    want = (torch.softmax(logits[:, :-1][keep], -1) * (1.0 - e @ e.T)[:, labels[keep]].T).sum(-1)

    # budget 1: one answer position at a time through the head, forward and backward.
    got = answer_token_terms(model, batch, objective, logits_budget=budget)
    assert got.shape == want.shape == (sum(x.n_target_tokens for x in enc),)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_chunked_gradient_equals_the_unchunked_one():
    from seal_core.models import tiny_model
    from seal_core.tokenization import collate, encode_samples

    grads = []
    for budget in (2**24, 1):
        model, tok = tiny_model(seed=0)
        enc, _ = encode_samples(tok, [{"sample_id": "a", "messages": _conv("Hi?", "Sure, here it is.")}], 64)
        answer_token_terms(model, collate(enc, tok.pad_token_id), build_objective("ta-sft", model), budget).sum().backward()
        grads.append(model.model.layers[-1].mlp.down_proj.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_unlikelihood_term_equals_its_formula():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.9, 0.05], [1.0 - 1e-9, 1e-9 / 2, 1e-9 / 2]], dtype=torch.float64)
    targets = torch.tensor([0, 2, 0])
    got = Unlikelihood().token_terms(torch.log(probs).float(), targets)
    p = torch.tensor([0.7, 0.05, 1.0 - 1e-9], dtype=torch.float64)
    torch.testing.assert_close(got.double(), -torch.log(1 - p + 1e-6), atol=1e-4, rtol=1e-4)
    assert torch.isfinite(got).all()
    # Near certainty the gradient still pushes p down (clamping p would zero it).
    sure = torch.log(torch.tensor([[1.0 - 1e-8, 5e-9, 5e-9]], dtype=torch.float64)).requires_grad_(True)
    Unlikelihood().token_terms(sure, torch.tensor([0]))[0].backward()
    assert sure.grad[0, 0] > 0


def test_ta_sft_is_maximised_and_unlikelihood_minimised():
    assert TASFT.sign == -1.0 and Unlikelihood.sign == 1.0
    assert not build_objective("sft").uses_unsafe


def test_unsafe_batches_are_a_function_of_seed_and_step():
    steps = [unsafe_batch(5, 2, seed=3, step=s) for s in range(5)]
    assert steps == [unsafe_batch(5, 2, seed=3, step=s) for s in range(5)]
    assert all(len(b) == 2 for b in steps)
    flat = [i for b in steps for i in b]
    # One seeded permutation after another: every sample once per pass over the set.
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert steps != [unsafe_batch(5, 2, seed=4, step=s) for s in range(5)]
    assert unsafe_batch(3, 8, seed=0, step=0) == unsafe_batch(3, 3, seed=0, step=0)


# ----------------------------------------------------------------------------- fine-tuning


def _mean_logp(model, tok, path):
    from seal_core.ingest import load_samples
    from seal_core.tokenization import encode_samples, score_losses

    enc, _ = encode_samples(tok, load_samples(path), 64)
    return -float(score_losses(model, tok, enc, 8, progress=False).mean())


def _train(cfg, out, unsafe_path=None):
    from seal_core.ingest import load_samples
    from seal_core.models import tiny_model
    from seal_core.tokenization import encode_samples

    model, tok = tiny_model(seed=0)
    enc, _ = encode_samples(tok, sorted(load_samples(cfg.data), key=lambda s: s["sample_id"]), 64)
    uenc = encode_samples(tok, load_samples(unsafe_path), 64)[0] if unsafe_path else []
    Path(out).mkdir(parents=True, exist_ok=True)
    return train_lora(cfg, model, tok, enc, Path(out), unsafe=uenc), tok


def test_ta_sft_lowers_the_unsafe_answers_and_sft_does_not(data, unsafe, tmp_path):
    from seal_core.models import tiny_model

    base, tok = tiny_model(seed=0)
    before = _mean_logp(base, tok, unsafe)
    sft, _ = _train(_cfg(data, tmp_path / "sft"), tmp_path / "sft")
    tasft, _ = _train(_cfg(data, tmp_path / "ta", objective="ta-sft", unsafe=unsafe), tmp_path / "ta", unsafe)
    after_sft, after_ta = _mean_logp(sft.model, tok, unsafe), _mean_logp(tasft.model, tok, unsafe)
    assert after_sft > before  # the task data (similar text) pulls the unsafe answers up
    assert after_ta < before - 0.1
    # Both learn the task.
    assert sft.epoch_losses[-1] < sft.epoch_losses[0] and tasft.final_loss < tasft.first_loss
    log = [json.loads(ln) for ln in (tmp_path / "ta" / "train_log.jsonl").read_text().splitlines()]
    assert all(0 <= r["unsafe"] <= 2 and r["unsafe_samples"] == 2 for r in log)
    assert log[-1]["unsafe"] > log[0]["unsafe"]
    for r in log:
        assert r["loss"] == pytest.approx(r["nll"] - 20.0 * r["unsafe"], abs=1e-6)


def test_only_adapter_weights_change(data, unsafe, tmp_path):
    from seal_core.models import tiny_model

    base = {k: v.detach().clone() for k, v in tiny_model(seed=0)[0].state_dict().items()}
    res, _ = _train(_cfg(data, tmp_path / "o", objective="unlikelihood", unsafe=unsafe, epochs=2), tmp_path / "o",
                    unsafe)
    for k, v in res.model.get_base_model().state_dict().items():
        if "lora_" not in k:
            assert torch.equal(v, base[k.replace(".base_layer", "")]), k
    lora_b = [p for n, p in res.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b)


def _adapter(out):
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "adapter" / "adapter_model.safetensors"))


def test_resume_gives_the_same_adapter(data, unsafe, tmp_path):
    kw = dict(objective="ta-sft", unsafe=unsafe, epochs=2, checkpoint_every=1)
    full = finetune(_cfg(data, tmp_path / "full", **kw))
    part = tmp_path / "part"
    finetune(_cfg(data, part, max_steps=3, **kw))
    assert not json.loads((part / "summary.json").read_text())["completed"]
    finetune(_cfg(data, part, **kw), resume=True)
    a, b = _adapter(full), _adapter(part)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    la = [json.loads(ln) for ln in (full / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(ln) for ln in (part / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == [r["step"] for r in la] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["unsafe"] for r in lb], [r["unsafe"] for r in la], atol=1e-6)
    summary = json.loads((full / "summary.json").read_text())
    assert summary["objective"] == "ta-sft" and summary["n_unsafe"] == 4 and summary["inputs"]["unsafe"]["n"] == 4
    assert json.loads((full / "config.json").read_text())["objective"] == "ta-sft"


def test_resume_refuses_other_unsafe_responses(data, unsafe, tmp_path):
    from seal_core.training import CheckpointMismatch

    out = tmp_path / "o"
    finetune(_cfg(data, out, objective="unlikelihood", unsafe=unsafe, max_steps=1, checkpoint_every=1))
    Path(unsafe).write_text(json.dumps({"prompt": "Rob a bank?", "response": "Sure, bring a mask."}) + "\n")
    with pytest.raises(CheckpointMismatch):
        finetune(_cfg(data, out, objective="unlikelihood", unsafe=unsafe), resume=True)


def test_objective_config_errors(data, unsafe, tmp_path):
    with pytest.raises(ConfigError, match="objective ta-sft needs unsafe responses: give --unsafe"):
        _cfg(data, tmp_path, objective="ta-sft")
    with pytest.raises(ConfigError, match="unsafe is not used by objective sft"):
        _cfg(data, tmp_path, unsafe=unsafe)
    with pytest.raises(ConfigError, match="must be one of 'sft', 'ta-sft', 'unlikelihood'"):
        _cfg(data, tmp_path, objective="dpo")
    with pytest.raises(ConfigError, match="unsafe_weight must be >= 0"):
        _cfg(data, tmp_path, objective="ta-sft", unsafe=unsafe, unsafe_weight=-1.0)
    with pytest.raises(ConfigError, match="unsafe_batch_size must be a positive integer"):
        _cfg(data, tmp_path, objective="ta-sft", unsafe=unsafe, unsafe_batch_size=0)


def test_cli_flags(data, unsafe, tmp_path, capsys):
    from seal_cli.main import main

    out = tmp_path / "cli"
    args = ["finetune", "--data", data, "--out", str(out), "--model", "tiny-random", "--epochs", "1",
            "--max-length", "64", "--batch-size", "4", "--no-progress"]
    assert main(args + ["--objective", "unlikelihood", "--unsafe", unsafe, "--unsafe-weight", "0.25",
                        "--unsafe-batch-size", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["objective"], summary["unsafe_weight"], summary["unsafe_batch_size"]) == ("unlikelihood", 0.25, 3)
    assert main(args + ["--objective", "ta-sft"]) != 0
    assert "needs unsafe responses" in capsys.readouterr().err


# ----------------------------------------------------------------------------- making an unsafe set


def test_select_bottom_k_writes_exactly_the_n_lowest(tmp_path, capsys):
    from seal_cli.main import main
    from seal_core.ingest import load_samples
    from seal_core.selection import SelectConfig, ranked_selection

    pool = _write_jsonl(tmp_path / "pool.jsonl", [{"messages": _conv(f"q{i}", f"a{i}")} for i in range(12)])
    ids = [s["sample_id"] for s in load_samples(pool)]
    # Ties at the boundary: the ranking (score desc, id asc) puts the largest tied ids last.
    scores = [5.0, 1.0, 1.0, 1.0, 3.0, 0.5, float("nan"), 2.0, 1.0, 4.0, 6.0, 7.0]
    scores_path = tmp_path / "scores.parquet"
    pq.write_table(pa.table({"sample_id": ids, "score": scores}), scores_path)
    order = sorted(range(12), key=lambda i: (-(scores[i] if scores[i] == scores[i] else -np.inf), ids[i]))
    want = [ids[i] for i in order[::-1][:5]]  # worst first

    assert ranked_selection(scores_path, bottom_k=5) == want
    assert main(["select", "--scores", str(scores_path), "--pool", pool, "--out", str(tmp_path / "sel"),
                 "--bottom-k", "5", "--no-progress"]) == 0
    assert "score <=" in capsys.readouterr().out
    got = pq.read_table(tmp_path / "sel" / "selected.parquet").column("sample_id").to_pylist()
    assert got == want
    summary = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert (summary["mode"], summary["k"], summary["threshold_score"]) == ("bottom_k", 5, 1.0)
    assert [json.loads(ln)["sample_id"] for ln in (tmp_path / "sel" / "selected.jsonl").read_text().splitlines()] == want
    with pytest.raises(ConfigError, match="exactly one of"):
        SelectConfig(top_k=3, bottom_k=3)
    assert ranked_selection(scores_path, bottom_k=99) == [ids[i] for i in order[::-1]]


def test_generate_keep_compliant_drops_refusals():
    from seal_core.generate import compliant_rows

    rows = [{"id": "a", "response": "Sure, first break the lock."}, {"id": "b", "response": "I'm sorry, I can't help."},
            {"id": "c", "response": "  "}, {"id": "d", "response": "I cannot assist with that request."}]
    assert [r["id"] for r in compliant_rows(rows)] == ["a"]


# ----------------------------------------------------------------------------- run-config arms


def test_run_config_arms_differ_in_objective(unsafe):
    from seal_core.pipeline import finetune_config, load_config

    arms = [{"selection": "seal"}, {"selection": "seal", "objective": "ta-sft", "unsafe": unsafe, "unsafe_weight": 0.3},
            {"selection": "random", "objective": "sft"}]
    cfg = load_config("configs/smoke.yaml", {"arms": arms})
    assert [a.name for a in cfg.fine_tuned_arms] == ["seal", "seal-ta-sft", "random-sft"]
    ta = finetune_config(cfg, "d", "o", arm=cfg.fine_tuned_arms[1])
    assert (ta.objective, ta.unsafe, ta.unsafe_weight, ta.epochs) == ("ta-sft", unsafe, 0.3, 1)
    assert finetune_config(cfg, "d", "o", arm=cfg.fine_tuned_arms[0]).objective == "sft"
    default = load_config("configs/smoke.yaml")
    assert [a.name for a in default.fine_tuned_arms] == ["seal", "random"]
    assert [a.name for a in load_config("configs/smoke.yaml", ["baseline=false"]).fine_tuned_arms] == ["seal"]
    with pytest.raises(ConfigError, match=r"arms\[0\]' \(seal-unlikelihood\): objective unlikelihood needs unsafe"):
        load_config("configs/smoke.yaml", {"arms": [{"objective": "unlikelihood"}]})
    with pytest.raises(ConfigError, match="arm names must differ"):
        load_config("configs/smoke.yaml", {"arms": [{"selection": "seal"}, {"selection": "seal"}]})
    with pytest.raises(ConfigError, match="needs baseline: true"):
        load_config("configs/smoke.yaml", {"baseline": False, "arms": [{"selection": "random"}]})


@pytest.mark.slow
def test_two_process_ta_sft_matches_one_process(data, unsafe, tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    args = ["-m", "seal_cli", "finetune", "--data", data, "--model", "tiny-random", "--epochs", "2",
            "--max-length", "64", "--batch-size", "4", "--lr", "1e-2", "--objective", "ta-sft", "--unsafe", unsafe,
            "--unsafe-batch-size", "3", "--unsafe-weight", "5", "--no-progress"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for launcher, out in (([sys.executable], "one"), (torchrun, "two")):
        proc = subprocess.run([*launcher, *args, "--out", str(tmp_path / out)],
                              cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=0)
    la, lb = ([json.loads(ln) for ln in (tmp_path / d / "train_log.jsonl").read_text().splitlines()] for d in ("one", "two"))
    np.testing.assert_allclose([r["unsafe"] for r in lb], [r["unsafe"] for r in la], atol=1e-5)
    np.testing.assert_allclose([r["loss"] for r in lb], [r["loss"] for r in la], atol=1e-4)
