"""SEAL ranker on the tiny random model: LoRA-only updates, id-keyed scores,
exact resume, and a planted toy pool whose contradicting samples must rank last."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from seal_core.config import from_dict
from seal_core.ranker.config import RankConfig
from seal_core.ranker.run import rank
from seal_core.schema import compute_sample_id
from seal_core.training import CHECKPOINT_NAME, load_checkpoint

COLOURS = ["sky", "sea", "lake", "river", "ice", "ink", "jeans", "sapphire", "whale", "berry", "flag", "mug",
           "car", "door", "kite", "hat", "shoe", "cup", "bowl", "pen", "boat", "shirt", "lamp", "bag"]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _conv(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


@pytest.fixture()
def toy(tmp_path):
    """Safe set: 'the X is blue'. Pool: 24 agreeing answers and 8 planted contradicting ones."""
    safe = [{"instruction": f"What colour is the {c}?", "input": "", "output": f"The {c} is blue, always blue."}
            for c in COLOURS]
    good = [_conv(f"Tell me the colour of the {c}.", f"The {c} is blue, always blue.") for c in COLOURS]
    planted = [_conv(f"Describe the {c} colour.", f"Purple zebra tractor {c} seven hammer minus quartz.")
               for c in COLOURS[:8]]
    pool = good + planted
    random.Random(0).shuffle(pool)
    planted_ids = {compute_sample_id(p["messages"]) for p in planted}
    return {
        "pool": _write_jsonl(tmp_path / "pool.jsonl", pool),
        "safe": _write_jsonl(tmp_path / "safe.jsonl", safe),
        "pool_rows": pool,
        "planted": planted_ids,
        "dir": tmp_path,
    }


def _cfg(toy, out, **kw):
    base = dict(pool=toy["pool"], safe=toy["safe"], out=str(out), model="tiny-random", method="seal",
                epochs=3, max_length=128, batch_size=8, safe_batch_size=8, micro_batch_size=4,
                model_lr=3e-2, gamma0=1.0, gamma_decay=0.03, checkpoint_every=2, progress=False,
                lora={"r": 8, "alpha": 16})
    base.update(kw)
    return from_dict(RankConfig, base)


def _scores(path):
    t = pq.read_table(path).to_pandas()
    return t.set_index("sample_id")


def test_planted_contradicting_samples_rank_lowest(toy, tmp_path):
    path = rank(_cfg(toy, tmp_path / "out"))
    s = _scores(path)
    assert len(s) == 32
    bottom = set(s.sort_values("rank").index[-8:])
    assert bottom == toy["planted"]
    assert sorted(s["rank"]) == list(range(1, 33))
    # Scores file is self-describing: resolved config and input fingerprints in the metadata.
    meta = json.loads(pq.read_schema(path).metadata[b"seal"])
    assert meta["config"]["method"] == "seal" and meta["inputs"]["pool"]["n"] == 32
    assert json.loads((tmp_path / "out" / "config.json").read_text())["selector"]["update"] == "centered"


def test_lora_moves_and_base_is_frozen(toy, tmp_path):
    from seal_core.models import load_model
    from seal_core.ranker.seal import train_seal
    from seal_core.ingest import load_samples
    from seal_core.tokenization import encode_samples

    cfg = _cfg(toy, tmp_path / "o", epochs=1)
    model, tok = load_model("tiny-random", seed=0)
    base_before = {k: v.detach().clone() for k, v in model.named_parameters()}
    pool = sorted(load_samples(toy["pool"]), key=lambda s: s["sample_id"])
    enc, _ = encode_samples(tok, pool, 128, "final", "left")
    safe_enc, _ = encode_samples(tok, load_samples(toy["safe"]), 128, "final", "left")
    state = train_seal(cfg, model, tok, enc, safe_enc, tmp_path / "o")
    moved = 0
    for name, p in state.model.named_parameters():
        if "lora_" in name:
            moved += int(not torch.equal(p, torch.zeros_like(p)) and "lora_B" in name)
        else:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p.detach(), base_before[key]), f"base weight {name} changed"
    assert moved > 0, "no LoRA B matrix moved away from its zero init"
    assert not torch.allclose(state.z, torch.zeros_like(state.z))


def test_scores_follow_sample_ids_not_positions(toy, tmp_path):
    a = _scores(rank(_cfg(toy, tmp_path / "a", epochs=1)))
    rows = list(toy["pool_rows"])
    random.Random(1).shuffle(rows)
    # One extra over-long sample, dropped by truncation=drop, sits at the front of the shuffled file.
    long = _conv("Tell me everything about the " + " ".join(COLOURS * 4), "No.")
    shuffled = _write_jsonl(tmp_path / "shuffled.jsonl", [long] + rows)
    b = _scores(rank(_cfg(toy, tmp_path / "b", epochs=1, pool=shuffled, truncation="drop")))
    long_id = compute_sample_id(long["messages"])
    assert np.isnan(b.loc[long_id, "score"]) and b.loc[long_id, "rank"] == 33
    b = b.drop(index=long_id)
    assert set(a.index) == set(b.index)
    np.testing.assert_allclose(a.loc[b.index, "score"], b["score"], atol=1e-6)
    np.testing.assert_allclose(a.loc[b.index, "loss"], b["loss"], atol=1e-6)
    assert (tmp_path / "b" / "dropped.parquet").exists()


def test_killed_run_resumes_to_identical_scores(toy, tmp_path):
    full = _scores(rank(_cfg(toy, tmp_path / "full", epochs=2, checkpoint_every=3)))
    out = tmp_path / "killed"
    # max_steps stands in for a kill between checkpoints: steps 4-5 of 8 are redone after resume.
    rank(_cfg(toy, out, epochs=2, checkpoint_every=3, max_steps=5))
    ck = load_checkpoint(out / "checkpoints" / CHECKPOINT_NAME)
    assert ck["step"] == 5
    resumed = _scores(rank(_cfg(toy, out, epochs=2, checkpoint_every=3), resume=True))
    np.testing.assert_allclose(resumed.loc[full.index, "score"], full["score"], atol=1e-6)
    np.testing.assert_allclose(resumed.loc[full.index, "loss"], full["loss"], atol=1e-6)
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))


@pytest.mark.gpu
def test_resume_on_cuda(toy, tmp_path):
    # The checkpoint's RNG state must come back as a CPU ByteTensor: mapped to CUDA, set_rng_state fails.
    kw = dict(epochs=2, checkpoint_every=3, device="cuda", dtype="float32")
    full = _scores(rank(_cfg(toy, tmp_path / "full", **kw)))
    out = tmp_path / "killed"
    rank(_cfg(toy, out, max_steps=5, **kw))
    resumed = _scores(rank(_cfg(toy, out, **kw), resume=True))
    # cuBLAS reductions are not bit-reproducible across processes: a looser tolerance than on CPU.
    np.testing.assert_allclose(resumed.loc[full.index, "score"], full["score"], atol=1e-4)


def test_resume_rejects_changed_config(toy, tmp_path):
    from seal_core.errors import SealError

    out = tmp_path / "o"
    rank(_cfg(toy, out, epochs=1, max_steps=1))
    with pytest.raises(SealError, match="model_lr"):
        rank(_cfg(toy, out, epochs=1, model_lr=1e-3), resume=True)


def test_penalty_variant_and_reference_update_run(toy, tmp_path):
    pen = _scores(rank(_cfg(toy, tmp_path / "p", method="seal-penalty")))
    assert set(pen.sort_values("rank").index[-8:]) == toy["planted"]
    ref = _scores(rank(_cfg(toy, tmp_path / "r", epochs=1, selector={"update": "reference", "optimizer": "adam"})))
    cen = _scores(rank(_cfg(toy, tmp_path / "c", epochs=1)))
    assert ref["score"].notna().all() and ref["score"].nunique() > 1
    # Another rule moves the logits differently: the two rankings are not the same.
    assert not np.allclose(ref.loc[cen.index, "score"], cen["score"])
    assert json.loads((tmp_path / "r" / "config.json").read_text())["selector"]["update"] == "reference"


def test_selector_objective_reference_gradient():
    from seal_core.ranker.seal import selector_objective

    z = torch.randn(10, requires_grad=True)
    idx = torch.tensor([2, 5, 6])
    d = torch.rand(3)
    selector_objective(z, idx, d, "reference", "softmax").backward()
    # d/dz_j mean_B(N*p_i*d_i) = (N/B)*(p_j*d_j*[j in B] - p_j*sum_B p_i*d_i): non-zero outside the batch too.
    p = torch.softmax(z.detach(), 0)
    expected = -(10 / 3) * p * (p[idx] * d).sum()
    expected[idx] += (10 / 3) * p[idx] * d
    assert torch.allclose(z.grad, expected, atol=1e-6)


def test_selector_update_rules_are_registered_by_name():
    import typing

    from seal_core.ranker.config import SelectorConfig
    from seal_core.ranker.selector import UPDATES

    # Every rule the config accepts has an implementation, and every implementation is selectable.
    choices = set(typing.get_args(typing.get_type_hints(SelectorConfig)["update"]))
    assert choices == set(UPDATES)


def test_selector_objective_centered_gradient_is_unbiased():
    from seal_core.ranker.seal import selector_objective

    z = torch.randn(10, requires_grad=True)
    d_all = torch.rand(10)
    idx = torch.tensor([1, 4, 7])
    c = 0.3
    selector_objective(z, idx, d_all[idx], "centered", "softmax", c=c).backward()
    g = z.grad.clone()
    # Outside the batch the gradient is exactly zero; inside it is (N/B)*p_j*(d_j - c).
    outside = torch.ones(10, dtype=torch.bool)
    outside[idx] = False
    assert torch.equal(g[outside], torch.zeros(7))
    p = torch.softmax(z.detach(), 0)
    assert torch.allclose(g[idx], (10 / 3) * p[idx] * (d_all[idx] - c), atol=1e-6)
    # Averaged over every batch of a partition, it is the full gradient p_j*(d_j - c) up to N/B.
    z.grad = None
    full = torch.zeros(10)
    for b in (torch.tensor([0, 1, 2, 3, 4]), torch.tensor([5, 6, 7, 8, 9])):
        z.grad = None
        selector_objective(z, b, d_all[b], "centered", "softmax", c=c).backward()
        full += z.grad / 2
    assert torch.allclose(full, p * (d_all - c), atol=1e-6)


def test_loss_and_random_baselines_write_scores(toy, tmp_path):
    loss = _scores(rank(_cfg(toy, tmp_path / "l", method="loss")))
    np.testing.assert_allclose(loss["score"], -loss["loss"])
    r1 = _scores(rank(_cfg(toy, tmp_path / "r1", method="random", seed=3)))
    r2 = _scores(rank(_cfg(toy, tmp_path / "r2", method="random", seed=3)))
    assert (r1["rank"] == r2.loc[r1.index, "rank"]).all()
