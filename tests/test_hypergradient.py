"""selector.update=hypergradient: the one-step hypergradient against finite differences of the
unrolled objective, the first-k-token losses, the refusal split, and real runs on the tiny model
(scores for every sample, frozen base weights, exact resume, two processes = one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from seal_core.config import from_dict
from seal_core.errors import ConfigError
from seal_core.ranker.config import RankConfig, SelectorConfig
from seal_core.ranker.hypergrad import (HypergradientSignal, first_target_labels, hypergradient, reference_gradient,
                                        split_by_refusal)
from seal_core.ranker.run import rank
from seal_core.tokenization import IGNORE_INDEX, pad_token_id

ROOT = Path(__file__).resolve().parents[1]
THINGS = ["sky", "sea", "lake", "river", "ice", "ink", "jeans", "whale", "berry", "flag", "mug", "car", "door",
          "kite", "hat", "shoe"]
REFUSAL = "I'm sorry, but I cannot help with that request."


class _LowRank(torch.nn.Module):
    """``y = tanh((W + B A) x)`` with ``W`` frozen: a LoRA-shaped toy in float64."""

    def __init__(self, d: int = 5, r: int = 2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = torch.nn.Parameter(torch.randn(d, d, generator=g, dtype=torch.float64), requires_grad=False)
        self.A = torch.nn.Parameter(0.5 * torch.randn(r, d, generator=g, dtype=torch.float64))
        self.B = torch.nn.Parameter(0.5 * torch.randn(d, r, generator=g, dtype=torch.float64))

    def loss(self, x, y, params=None):
        A, B = params if params is not None else (self.A, self.B)
        return ((torch.tanh(x @ (self.W + B @ A).T) - y) ** 2).mean()


def test_hypergradient_matches_finite_differences_of_the_unrolled_step():
    toy = _LowRank()
    g = torch.Generator().manual_seed(1)
    pool = [(torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64))
            for _ in range(4)]
    safe = (torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64))
    params = [toy.A, toy.B]
    lr, batch = 1e-5, len(pool)
    w = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    grads = [torch.autograd.grad(toy.loss(x, y), params) for x, y in pool]

    def unrolled(w):
        # L_safe(theta - lr * sum_i w_i grad l_i(theta) / B)
        moved = [p.detach() - lr * sum(w[i] * grads[i][k] for i in range(batch)) / batch for k, p in enumerate(params)]
        return toy.loss(*safe, params=moved).item()

    def central_difference():
        eps = 1e-4
        return np.array([(unrolled(w + eps * e) - unrolled(w - eps * e)) / (2 * eps)
                         for e in torch.eye(batch, dtype=torch.float64)])

    # Two micro-batches of the safe set: the reference gradient accumulates over closures.
    direction = reference_gradient(params, [lambda: toy.loss(safe[0][:4], safe[1][:4]) * 4 / 6,
                                            lambda: toy.loss(safe[0][4:], safe[1][4:]) * 2 / 6])
    closures = [lambda x=x, y=y: toy.loss(x, y) for x, y in pool]
    hg = hypergradient(params, direction, closures, lr, batch)
    fd = central_difference()
    assert hg.dtype == torch.float64 and (np.abs(fd) > 1e-8).all()
    np.testing.assert_allclose(hg.numpy(), fd, rtol=1e-3)
    assert toy.A.grad is None and toy.B.grad is None
    # The first-order form is off by O(lr^2): with a large step it no longer matches.
    lr = 3.0
    assert not np.allclose(hypergradient(params, direction, closures, lr, batch).numpy(), central_difference(),
                           rtol=1e-3)


def test_first_target_labels_keeps_the_first_k_of_each_answer():
    x = IGNORE_INDEX
    labels = torch.tensor([[x, x, 5, 6, 7, 8, x, 9, 10, 11], [x, 1, 2, x, x, x, x, x, x, x]])
    out = first_target_labels(labels, 2)
    assert out.tolist() == [[x, x, 5, 6, x, x, x, 9, 10, x], [x, 1, 2, x, x, x, x, x, x, x]]
    assert first_target_labels(labels, 0) is labels


class _Batches:
    """The part of the ranker's ``_Data`` the signal uses, for one process."""

    def __init__(self, pool, pad_id):
        from seal_core.training import Dist

        self.pool, self.pad_id, self.dist = pool, pad_id, Dist()

    def tensors(self, enc, idx):
        from seal_core.tokenization import collate

        return collate([enc[i] for i in idx], self.pad_id)


def _lora_model():
    from seal_core.models import adapter_parameters, load_model
    from seal_core.ranker.config import LoraConfig
    from seal_core.training import attach_lora

    model, tok = load_model("tiny-random", seed=0)
    model = attach_lora(model, LoraConfig(r=4, alpha=8))
    with torch.no_grad():  # B = 0 would leave A's gradient zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    return model, tok, adapter_parameters(model, "default")


def _encode(tok, rows):
    from seal_core.tokenization import encode_messages

    return [encode_messages(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], 128)
            for q, a in rows]


def test_first_tokens_gradient_equals_a_manual_loss_over_the_first_k_tokens():
    import torch.nn.functional as F

    model, tok, params = _lora_model()
    enc = _encode(tok, [("Which colour is the sky?", "The sky is blue, always blue, every single day of the year.")])
    k = 4
    cfg = SelectorConfig(update="hypergradient", first_tokens=k)
    rc = RankConfig(method="seal", selector=cfg, model="tiny-random")
    sig = HypergradientSignal(rc, tok, enc, [])
    data = _Batches(enc, pad_token_id(tok))
    got = torch.autograd.grad(sig._loss(model, data, enc, [0])[0], params)

    ids = torch.tensor([enc[0].input_ids])
    targets = [t for t, lab in enumerate(enc[0].labels) if lab != IGNORE_INDEX]
    assert len(targets) > k and targets == list(range(targets[0], targets[0] + len(targets)))
    logits = model(input_ids=ids).logits[0]
    first = torch.tensor(targets[:k])
    manual = F.cross_entropy(logits[first - 1].float(), ids[0, first])
    want = torch.autograd.grad(manual, params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    whole = torch.autograd.grad(HypergradientSignal(RankConfig(method="seal", selector=SelectorConfig(update="hypergradient"),
                                                               model="tiny-random"), tok, enc, [])
                                ._loss(model, data, enc, [0])[0], params)
    assert not all(torch.allclose(a, b) for a, b in zip(got, whole))


def test_batched_alignments_equal_one_backward_per_sample_and_fall_back_when_they_cannot():
    from seal_core.ranker.hypergrad import alignments, row_alignments
    from seal_core.tokenization import per_sample_loss

    model, tok, params = _lora_model()
    # Lengths differ, so the batch is padded: a padded row must give its own sample's dot.
    enc = _encode(tok, [("Which colour is the sky?", "Blue."),
                        ("Tell me about the sea.", "The sea is wide and deep and salty, and it covers most of the earth."),
                        ("Name a fruit.", "A berry, small and red, sweet in summer."),
                        ("What is ink?", "Ink is a coloured liquid for writing.")])
    data = _Batches(enc, pad_token_id(tok))
    g = torch.Generator().manual_seed(3)
    direction = [torch.randn(p.shape, generator=g) for p in params]
    loss = lambda: per_sample_loss(model, data.tensors(enc, [0, 1, 2, 3]))  # noqa: E731
    got = row_alignments(model, params, direction, loss)
    want = alignments(params, direction, [lambda i=i: per_sample_loss(model, data.tensors(enc, [i]))[0]
                                          for i in range(4)])
    assert got is not None and got.shape == (4,) and all(p.grad is None for p in params)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert want.abs().min() > 0  # a zero dot would match anything
    # A trainable parameter that is not a bias-free linear weight: no batched shortcut, the caller falls back.
    extra = torch.nn.Parameter(torch.zeros(3))
    assert row_alignments(model, [*params, extra], [*direction, torch.zeros(3)], loss) is None
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert row_alignments(model, params, direction, loss) is None


def test_refusal_split_uses_the_detector_on_the_decoded_answers():
    answers = ["The sea is blue.", REFUSAL, "As an AI language model, I cannot provide instructions for that.",
               "I'm sorry to hear that; here is how to fix it: restart the router.", "Sure: mix flour and water."]
    assert split_by_refusal(answers) == ([1, 2], [0, 3, 4])
    _, tok, _ = _lora_model()
    enc = _encode(tok, [(f"Question {i}?", a) for i, a in enumerate(answers)])
    sig = HypergradientSignal(RankConfig(method="seal", model="tiny-random", selector=SelectorConfig(
        update="hypergradient", safe_gradient="refusal_vs_helpful")), tok, enc, [])
    assert [(p.name, p.indices, p.sign) for p in sig.parts] == [("refusals", (1, 2), 1.0),
                                                                 ("helpful", (0, 3, 4), -1.0)]


def test_hypergradient_rule_raises_aligned_samples_and_ignores_the_scale():
    from seal_core.ranker.selector import FreeLogitSelector

    zs = []
    for scale in (1.0, 1e-7):
        sel = FreeLogitSelector(4, SelectorConfig(update="hypergradient"), "cpu")
        for idx, d in (([0, 1], [-2.0, 1.0]), ([2, 3], [0.5, -0.5])):
            sel.step(idx, sel.weights()[idx], scale * torch.tensor(d))
        zs.append(sel.z.detach().clone())
    # Negative hypergradient = the step lowers the safe loss: that sample's weight goes up.
    assert zs[0][0] > zs[0][3] > zs[0][2] > zs[0][1]
    torch.testing.assert_close(zs[0], zs[1], rtol=1e-4, atol=1e-6)
    assert set(sel.rule.state_dict()) == {"center", "mean_square"}


def test_hypergradient_settings_are_checked():
    with pytest.raises(ConfigError, match="only apply"):
        SelectorConfig(safe_gradient="refusal_vs_helpful")
    with pytest.raises(ConfigError, match="first_tokens"):
        SelectorConfig(update="hypergradient", first_tokens=-1)
    with pytest.raises(ConfigError, match="method=seal"):
        from_dict(RankConfig, {"method": "seal-penalty", "selector": {"update": "hypergradient"}})
    with pytest.raises(ConfigError, match="anchors"):
        from_dict(RankConfig, {"method": "seal", "selector": {"update": "hypergradient", "safe_gradient": "anchors"}})


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def toy(tmp_path):
    """Pool of 16 short answers; safe set of 6 refusals and 6 helpful answers."""
    pool = [{"messages": [{"role": "user", "content": f"Tell me about the {c}."},
                          {"role": "assistant", "content": f"The {c} is blue." if i % 2 else REFUSAL}]}
            for i, c in enumerate(THINGS)]
    safe = [{"instruction": f"How do I break the {c}?", "input": "", "output": REFUSAL} for c in THINGS[:6]]
    safe += [{"instruction": f"What colour is the {c}?", "input": "", "output": f"The {c} is blue, always."}
             for c in THINGS[6:12]]
    return {"pool": _write_jsonl(tmp_path / "pool.jsonl", pool), "safe": _write_jsonl(tmp_path / "safe.jsonl", safe)}


def _cfg(toy, out, **kw):
    base = dict(pool=toy["pool"], safe=toy["safe"], out=str(out), model="tiny-random", method="seal", epochs=2,
                max_length=64, batch_size=4, safe_batch_size=4, micro_batch_size=2, model_lr=3e-2,
                checkpoint_every=3, progress=False, lora={"r": 4, "alpha": 8},
                selector={"update": "hypergradient"})
    base.update(kw)
    return from_dict(RankConfig, base)


def _scores(out):
    path = Path(out)
    return pq.read_table(path if path.suffix == ".parquet" else path / "scores.parquet").to_pandas().set_index(
        "sample_id")


def test_seal_rank_cli_hypergradient_scores_every_sample(toy, tmp_path):
    from seal_cli.main import main

    out = tmp_path / "cli"
    assert main(["rank", "--method", "seal", "--pool", toy["pool"], "--safe", toy["safe"], "--model", "tiny-random", "--out", str(out),
                 "--max-length", "64", "--epochs", "1", "--batch-size", "4", "--no-progress",
                 "--set", "model_lr=3e-2", "--set", "selector.update=hypergradient"]) in (0, None)
    s = _scores(out)
    assert len(s) == 16 and s["score"].notna().all() and s["score"].nunique() == 16
    assert json.loads((out / "config.json").read_text())["selector"]["update"] == "hypergradient"
    log = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(r["d_mean"] != 0 for r in log)


def test_hypergradient_training_leaves_base_weights_frozen(toy, tmp_path):
    from seal_core.ingest import load_samples
    from seal_core.models import load_model
    from seal_core.ranker.seal import train_seal
    from seal_core.tokenization import encode_samples

    # The anchors variant: away from compliant answers to unsafe requests.
    anchors = _write_jsonl(tmp_path / "anchors.jsonl", [
        {"instruction": f"How do I break the {c}?", "input": "", "output": f"Hit the {c} with a hammer."}
        for c in THINGS[:3]])
    cfg = _cfg(toy, tmp_path / "o", epochs=1, anchors=anchors,
               selector={"update": "hypergradient", "safe_gradient": "anchors", "first_tokens": 3})
    model, tok = load_model("tiny-random", seed=0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    enc, _ = encode_samples(tok, sorted(load_samples(toy["pool"]), key=lambda s: s["sample_id"]), 64)
    safe_enc, _ = encode_samples(tok, load_samples(toy["safe"]), 64)
    state = train_seal(cfg, model, tok, enc, safe_enc, tmp_path / "o")
    moved = 0
    for name, p in state.model.named_parameters():
        if "lora_" in name:
            moved += int("lora_B" in name and bool(p.abs().max() > 0))
        else:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p.detach(), before[key]), f"base weight {name} changed"
    assert moved > 0 and state.z.abs().max() > 0
    log = [json.loads(ln) for ln in (tmp_path / "o" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(np.isfinite(r["d_mean"]) and r["d_mean"] != 0 for r in log)


def test_hypergradient_run_resumes_to_identical_scores(toy, tmp_path):
    from seal_core.training import CHECKPOINT_NAME, load_checkpoint

    # The split variant also checkpoints its own batch cursors over the refusals and the helpful part.
    sel = {"update": "hypergradient", "safe_gradient": "refusal_vs_helpful", "first_tokens": 4}
    kw = dict(selector=sel, epochs=1, checkpoint_every=2)
    full = _scores(rank(_cfg(toy, tmp_path / "full", **kw)))
    out = tmp_path / "killed"
    # max_steps stands in for a kill between checkpoints: step 3 of 4 is redone after resume.
    rank(_cfg(toy, out, max_steps=3, **kw))
    ck = load_checkpoint(out / "checkpoints" / CHECKPOINT_NAME)
    assert ck["step"] == 3 and set(ck["ref_cursors"]) == {"refusals", "helpful"} and ck["mean_square"] > 0
    resumed = _scores(rank(_cfg(toy, out, **kw), resume=True))
    np.testing.assert_allclose(resumed.loc[full.index, "score"], full["score"], atol=1e-6)
    np.testing.assert_allclose(resumed.loc[full.index, "loss"], full["loss"], atol=1e-6)


def _seal(args, nproc):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    proc = subprocess.run([*launcher, "-m", "seal_cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_two_process_hypergradient_matches_one_process(toy, tmp_path):
    def args(out):
        return ["rank", "--method", "seal", "--pool", toy["pool"], "--safe", toy["safe"], "--model", "tiny-random", "--out", str(out),
                "--max-length", "64", "--epochs", "1", "--batch-size", "4", "--no-progress", "--set",
                "model_lr=3e-2", "--set", "selector.update=hypergradient", "--set",
                "selector.safe_gradient=refusal_vs_helpful"]

    _seal(args(tmp_path / "one"), 1)
    _seal(args(tmp_path / "two"), 2)
    one, two = _scores(tmp_path / "one"), _scores(tmp_path / "two")
    np.testing.assert_allclose(two.loc[one.index, "score"], one["score"], atol=1e-4)
