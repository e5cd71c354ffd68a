"""The relevance signal: l(answer | empty request) - l(answer | request), over the same answer tokens."""

from __future__ import annotations

import numpy as np
import pytest

from seal_core.encoded import EncodedPool
from seal_core.ranker.relevance import answer_losses, empty_request_prefix, paired_encodings, relevance_from_losses
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


def test_answer_losses_with_and_without_the_request(tiny):
    model, tok = tiny
    enc, _ = encode_samples(tok, ROWS, 48, "final", "keep_prompt")
    lc, lu = answer_losses(model, tok, enc, 4, progress=False)
    cond, uncond = paired_encodings(EncodedPool.from_encoded(enc), empty_request_prefix(tok))
    np.testing.assert_allclose(lc, score_losses(model, tok, enc, 4, progress=False), rtol=1e-6)
    np.testing.assert_allclose(lu, score_losses(model, tok, uncond, 4, progress=False), rtol=1e-6)
    assert np.isfinite(lu).all() and np.ptp(lu - lc) > 0
    only_u = answer_losses(model, tok, enc, 4, progress=False, with_request=False)
    assert np.isnan(only_u[0]).all()
    np.testing.assert_allclose(only_u[1], lu, rtol=1e-6)


def test_relevance_counts_only_answers_the_request_makes_less_likely():
    cond = np.array([2.0, 3.0, 1.0, 4.0])
    uncond = np.array([2.5, 2.0, 1.0, 3.5])
    np.testing.assert_allclose(relevance_from_losses(cond, uncond), [0.0, -1.0, 0.0, -0.5])


def test_relevance_and_prior_methods(tmp_path):
    from seal_cli.main import main
    import json
    import pyarrow.parquet as pq

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in ROWS))
    out = {}
    for m in ("relevance", "prior"):
        assert (main(["rank", "--pool", str(pool), "--out", str(tmp_path / m), "--model", "tiny-random", "--method", m,
                      "--max-length", "48", "--no-progress"]) or 0) == 0
        out[m] = pq.read_table(tmp_path / m / "scores.parquet").to_pandas().set_index("sample_id")
    rel, prior = out["relevance"], out["prior"].loc[out["relevance"].index]
    # relevance = min(0, l(no request) - l(request)); its loss column is l(request), prior's is l(no request).
    np.testing.assert_allclose(rel["score"], np.minimum(0, prior["loss"] - rel["loss"]), atol=1e-6)
    np.testing.assert_allclose(prior["score"], -prior["loss"])
    assert (rel["score"] <= 0).all() and len(rel) == len(ROWS)
