"""The relevance signal: l(answer | empty request) - l(answer | request), over the same answer tokens."""

from __future__ import annotations

import numpy as np
import pytest

from seal_core.encoded import EncodedPool
from seal_core.ranker.relevance import answer_losses, empty_request_prefix, paired_encodings, relevance_signal
from seal_core.tokenization import encode_samples, score_losses


def _row(sid, turns):
    roles = ["user", "assistant"] * len(turns)
    return {"sample_id": sid, "messages": [{"role": r, "content": c} for r, c in zip(roles, [x for t in turns for x in t])]}


@pytest.fixture(scope="module")
def tiny():
    from seal_core.models import load_model

    return load_model("tiny-random", seed=0)


ROWS = [_row("a", [("How do I bake bread?", "Mix flour and water, knead, let it rise, then bake it.")]),
        _row("b", [("Name a colour.", "Blue.")]),
        _row("c", [("hi", "hello there"), ("and a fruit?", "An apple, a pear or a plum.")]),
        _row("d", [("Describe the sea at length, please, with every detail you can think of. " * 3,
                    "The sea is wide and deep and grey and green. " * 6)])]


@pytest.mark.parametrize("train_on", ["final", "all"])
def test_both_losses_cover_the_final_answer_only_and_the_same_tokens(tiny, train_on):
    model, tok = tiny
    enc, _ = encode_samples(tok, ROWS, 48, train_on, "keep_prompt")
    pool = EncodedPool.from_encoded(enc)
    prefix = empty_request_prefix(tok).tolist()
    cond, uncond = paired_encodings(pool, np.asarray(prefix, dtype=np.int32))
    for i, row in enumerate(ROWS):
        c_targets = [t for t in cond[i].labels if t >= 0]
        u = uncond[i]
        assert [t for t in u.labels if t >= 0] == c_targets
        assert u.input_ids == prefix + c_targets  # the empty request, then the answer's kept tokens
        final = row["messages"][-1]["content"]
        assert tok.decode(c_targets).startswith(final[:10])
    # The earlier answer of the two-turn row is context in both, even under train_on=all.
    assert "hello there" not in tok.decode([t for t in cond[2].labels if t >= 0])
    # Truncation cut row d's answer: both losses stop where the kept answer stops.
    assert enc[3].truncated and cond[3].n_target_tokens < len(tok(ROWS[3]["messages"][-1]["content"])["input_ids"])


def _token_nll(model, enc):
    """Each row's per-target-token NLL from full logits, the plain way."""
    import torch
    from seal_core.tokenization import collate

    out = []
    with torch.no_grad():
        for e in enc:
            b = collate([e], 0)
            lp = torch.log_softmax(model(input_ids=b["input_ids"]).logits[0, :-1].float(), -1)
            lab = b["labels"][0, 1:]
            m = lab >= 0
            out.append((-lp[m].gather(-1, lab[m][:, None]).squeeze(-1)).numpy().astype(np.float64))
    return out


def test_answer_losses_with_and_without_the_request(tiny):
    model, tok = tiny
    enc, _ = encode_samples(tok, ROWS, 48, "final", "keep_prompt")
    al = answer_losses(model, tok, enc, 4, progress=False)
    cond, uncond = paired_encodings(EncodedPool.from_encoded(enc), empty_request_prefix(tok))
    np.testing.assert_allclose(al.cond, score_losses(model, tok, enc, 4, progress=False), rtol=1e-6)
    np.testing.assert_allclose(al.uncond, score_losses(model, tok, uncond, 4, progress=False), rtol=1e-6)
    assert np.isfinite(al.uncond).all() and np.ptp(al.uncond - al.cond) > 0
    # The gap's mean and standard error, token by token, against the full-logits computation.
    for i, (c, u) in enumerate(zip(_token_nll(model, cond), _token_nll(model, uncond))):
        gap = u - c
        assert al.pmi_mean[i] == pytest.approx(gap.mean(), abs=1e-5)
        assert al.pmi_mean[i] == pytest.approx(al.uncond[i] - al.cond[i], abs=1e-5)
        assert al.pmi_se[i] == pytest.approx(gap.std(ddof=1) / np.sqrt(len(gap)), rel=1e-4, abs=1e-6)
    # Token losses handed in from an earlier pass (combined's features pass) give the same gap.
    _, c_tok = score_losses(model, tok, EncodedPool.from_encoded(enc), 2, progress=False, token_nll=True)
    again = answer_losses(model, tok, enc, 4, progress=False, cond_tokens=c_tok)
    np.testing.assert_allclose(again.pmi_mean, al.pmi_mean, atol=1e-6)
    np.testing.assert_allclose(again.pmi_se, al.pmi_se, atol=1e-6)
    only_u = answer_losses(model, tok, enc, 4, progress=False, with_request=False)
    assert np.isnan(only_u.cond).all() and np.isnan(only_u.pmi_mean).all()
    np.testing.assert_allclose(only_u.uncond, al.uncond, rtol=1e-6)


def test_relevance_counts_only_answers_the_request_makes_less_likely_beyond_the_margin():
    mean = np.array([0.5, -1.0, 0.0, -0.5, -0.2, -0.3])
    se = np.array([0.1, 0.2, 0.1, 0.6, 0.1, np.inf])
    np.testing.assert_allclose(relevance_signal(mean, se, 0.0), [0.0, -1.0, 0.0, -0.5, -0.2, -0.3])
    np.testing.assert_allclose(relevance_signal(mean, se, 1.0), [0.0, -0.8, 0.0, 0.0, -0.1, 0.0])
    np.testing.assert_allclose(relevance_signal(mean, se, 2.0), [0.0, -0.6, 0.0, 0.0, 0.0, 0.0])


def test_relevance_margin_is_checked():
    from seal_core.errors import ConfigError
    from seal_core.ranker.config import RelevanceConfig

    assert RelevanceConfig().margin == 1.0
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="relevance.margin"):
            RelevanceConfig(margin=bad)


def test_relevance_and_prior_methods(tmp_path):
    from seal_cli.main import main
    import json
    import pyarrow.parquet as pq

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in ROWS))
    out = {}
    for m, extra in (("relevance", ["--set", "relevance.margin=0"]), ("prior", []), ("relevance-m1", [])):
        method = m.split("-")[0]
        assert (main(["rank", "--pool", str(pool), "--out", str(tmp_path / m), "--model", "tiny-random", "--method",
                      method, "--max-length", "48", "--no-progress", *extra]) or 0) == 0
        out[m] = pq.read_table(tmp_path / m / "scores.parquet").to_pandas().set_index("sample_id")
    rel, prior = out["relevance"], out["prior"].loc[out["relevance"].index]
    # At margin 0, relevance = min(0, l(no request) - l(request)); its loss column is l(request), prior's
    # is l(no request).
    np.testing.assert_allclose(rel["score"], np.minimum(0, prior["loss"] - rel["loss"]), atol=1e-6)
    np.testing.assert_allclose(prior["score"], -prior["loss"])
    assert (rel["score"] <= 0).all() and len(rel) == len(ROWS) and (rel["score"] < 0).any()
    # The default margin (1 standard error) only raises scores towards 0, never lowers one.
    m1 = out["relevance-m1"].loc[rel.index]
    assert (m1["score"] >= rel["score"] - 1e-9).all() and (m1["score"] <= 0).all()
    assert (m1["score"] > rel["score"] + 1e-6).any()
    resolved = json.loads((tmp_path / "relevance-m1" / "config.json").read_text())
    assert resolved["relevance"] == {"margin": 1.0}
