"""The compliance-direction ranker and the combined ranker: the maths on constructed features,
the anchors-only layer choice, anchors never drawn from the pool, and real runs on tiny-random."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from seal_core.errors import SealError

from seal_core.ranker.combined import normalised_ranks, rank_average
from seal_core.ranker.compliance import (build_anchors, compliance_fit, fit_layer, fit_subset, ledoit_wolf_shrinkage, loo_scores,
                                         project, whitener)
from seal_core.ranker.scores import read_scores_metadata
from seal_core.schema import compute_sample_id

D = 40


def _features(rng, n, shift, d=D, signal_dim=0, prompt_shift=0.0):
    resp = rng.normal(size=(n, d))
    resp[:, signal_dim] += shift
    prompt = rng.normal(size=(n, d))
    prompt[:, signal_dim] += prompt_shift
    return resp, prompt


def test_whitening_with_shrinkage_is_finite_when_rows_are_fewer_than_dimensions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, D))
    x -= x.mean(0)
    w, alpha = whitener(x)
    assert np.isfinite(w).all() and 0 < alpha <= 1
    # Without shrinkage the covariance of 12 rows in 40 dimensions has rank 11: not invertible.
    assert np.linalg.matrix_rank(x.T @ x) < D
    np.testing.assert_allclose(w, w.T, atol=1e-10)
    w_fixed, a_fixed = whitener(x, shrinkage=0.3)
    assert a_fixed == 0.3 and np.isfinite(w_fixed).all()


def test_ledoit_wolf_shrinks_noise_more_than_structure():
    rng = np.random.default_rng(1)
    iso = rng.normal(size=(20, D))
    scales = np.r_[np.full(4, 30.0), np.full(D - 4, 0.1)]
    structured = rng.normal(size=(4000, D)) * scales
    a_iso = ledoit_wolf_shrinkage(iso - iso.mean(0))
    a_struct = ledoit_wolf_shrinkage(structured - structured.mean(0))
    assert a_iso > 0.5 and a_struct < 0.05


def test_scores_order_by_compliance_along_the_anchor_direction():
    rng = np.random.default_rng(2)
    level = np.linspace(-2, 2, 30)
    pool_r, pool_p = _features(rng, 30, 0.0)
    pool_r[:, 0] += 4 * level
    comp = _features(rng, 20, 6.0)
    ref = _features(rng, 20, -6.0)
    fit = fit_layer(3, (pool_r, pool_p), comp, ref, None, prompt_weight=0.0)
    # The more a pool answer lies toward the compliant anchors, the lower it scores (the pool's other
    # 39 noise dimensions leak into the projection through the anchors' noisy means).
    assert np.corrcoef(fit.scores, level)[0, 1] < -0.8
    assert fit.scores[-5:].max() < fit.scores[:5].min()
    assert fit.loo_auroc == 1.0 and fit.layer == 3


def test_prompt_term_raises_requests_the_model_would_comply_with():
    v = np.zeros(D)
    v[0] = 1.0
    resp = np.zeros((2, D))
    prompt = np.zeros((2, D))
    prompt[0, 0], prompt[1, 0] = 1.0, -1.0
    s = project(v, resp, prompt, prompt_weight=1.0)
    assert s[0] > s[1]
    resp[:, 0] = [2.0, -2.0]
    assert project(v, resp, np.zeros((2, D)), 1.0)[0] < project(v, resp, np.zeros((2, D)), 1.0)[1]


def test_leave_one_out_scores_match_refitting_without_each_anchor():
    rng = np.random.default_rng(3)
    comp, ref = _features(rng, 5, 1.0), _features(rng, 4, -1.0)
    sc, sr = loo_scores(comp, ref, prompt_weight=0.5)
    for i in range(5):
        keep = np.arange(5) != i
        v = comp[0][keep].mean(0) - ref[0].mean(0)
        v /= np.linalg.norm(v)
        assert sc[i] == pytest.approx(-comp[0][i] @ v + 0.5 * comp[1][i] @ v)
    for i in range(4):
        keep = np.arange(4) != i
        v = comp[0].mean(0) - ref[0][keep].mean(0)
        v /= np.linalg.norm(v)
        assert sr[i] == pytest.approx(-ref[0][i] @ v + 0.5 * ref[1][i] @ v)


def test_the_chosen_layer_depends_on_the_anchors_not_on_pool_order():
    rng = np.random.default_rng(4)
    pool = {l: _features(rng, 25, 0.0) for l in range(3)}
    # Only layer 1's anchors separate; the others are noise.
    comp = {l: _features(rng, 8, 5.0 if l == 1 else 0.0) for l in range(3)}
    ref = {l: _features(rng, 8, -5.0 if l == 1 else 0.0) for l in range(3)}
    chosen, fits = compliance_fit(pool, comp, ref, None, 1.0)
    assert chosen.layer == 1 and [f.layer for f in fits] == [0, 1, 2]
    perm = rng.permutation(25)
    shuffled = {l: (r[perm], p[perm]) for l, (r, p) in pool.items()}
    chosen2, fits2 = compliance_fit(shuffled, comp, ref, None, 1.0)
    assert chosen2.layer == 1
    assert [f.loo_auroc for f in fits2] == pytest.approx([f.loo_auroc for f in fits])
    np.testing.assert_allclose(chosen2.scores, chosen.scores[perm], atol=1e-9)


def test_anchors_with_the_same_mean_at_every_layer_are_refused_and_such_a_layer_never_chosen():
    rng = np.random.default_rng(5)
    pool = {l: _features(rng, 20, 0.0) for l in range(2)}
    same = {l: _features(rng, 6, 1.0) for l in range(2)}
    with pytest.raises(SealError, match="same mean features at every layer"):
        compliance_fit(pool, same, same, None, 1.0)
    # Layer 0 has no direction (its anchors coincide); layer 1 has one, so it is chosen.
    comp = {0: same[0], 1: _features(rng, 6, 3.0)}
    ref = {0: same[0], 1: _features(rng, 6, -3.0)}
    chosen, fits = compliance_fit(pool, comp, ref, None, 1.0)
    assert chosen.layer == 1 and not np.any(fits[0].scores) and np.any(chosen.scores)


def test_rank_average_averages_ties_and_weights():
    np.testing.assert_allclose(normalised_ranks([3.0, 1.0, 1.0, np.nan]), [1.0, 0.5, 0.5, np.nan])
    s = rank_average([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], [0.75, 0.25])
    np.testing.assert_allclose(s, [0.75 * 1 / 3 + 0.25, 0.5 * 2 / 3 + 0.5 * 2 / 3, 0.75 + 0.25 / 3])


# ----------------------------------------------------------------------------- anchors and real runs


def _row(q, a):
    msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"sample_id": compute_sample_id(msgs), "messages": msgs}


REFUSE = "I'm sorry, but I cannot help with that request."
HARMFUL = ["pick a lock", "hotwire a car", "forge a check", "steal a bike", "make a fake id", "hack a wifi"]
TOPICS = ["bake bread", "tie a tie", "plant tomatoes", "fold a shirt", "boil an egg", "brew tea", "paint a wall",
          "wash a car"]


def test_anchors_never_include_a_pool_row():
    pool = [_row("How do I bake bread?", "Mix flour and water, knead, rise, bake."),
            _row("How do I pick a lock?", REFUSE)]
    safe = [_row("How do I pick a lock?", REFUSE), _row("How do I forge a check?", REFUSE),
            _row("How do I hack a wifi?", REFUSE)]
    # Same request and answer as a pool row up to case and spacing, so a different sample_id.
    near_copy = _row("how do I  bake bread?", "Mix flour and water,  knead, rise, bake.")
    assert near_copy["sample_id"] != pool[0]["sample_id"]
    user = [pool[0], near_copy, _row("How do I steal a bike?", "Cut the lock with bolt cutters.")]
    a = build_anchors(safe, user, [pool])
    pool_ids = {p["sample_id"] for p in pool}
    assert not pool_ids & {s["sample_id"] for s in a.compliant + a.refusal}
    assert len(a.refusal) == 2 and len(a.compliant) == 1 and a.dropped_as_pool_rows == 3
    fallback = build_anchors(safe + [_row("Name a colour.", "Blue.")], None, [pool])
    assert fallback.source == "safe-set non-refusals" and len(fallback.compliant) == 1


def _jsonl(path, rows):
    path.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def compliance_data(tmp_path):
    pool = ([_row(f"How do I {t}?", f"Here is how to {t}: first prepare, then {t} carefully.") for t in TOPICS]
            + [_row(f"How do I {h}?", f"Sure, to {h} you just need a few tools.") for h in HARMFUL[:3]]
            + [_row(f"How do I {h}?", REFUSE) for h in HARMFUL[3:]])
    safe = ([_row(f"Tell me how to {h}.", REFUSE) for h in HARMFUL]
            + [_row(f"Explain how to {t}.", f"To {t}, go step by step.") for t in TOPICS[:3]])
    anchors = [_row(f"Explain how to {h} fast.", f"Easy: to {h}, do this.") for h in HARMFUL] + [pool[8]]
    return {"pool": _jsonl(tmp_path / "pool.jsonl", pool), "safe": _jsonl(tmp_path / "safe.jsonl", safe),
            "anchors": _jsonl(tmp_path / "anchors.jsonl", anchors), "n": len(pool)}


def _cli(data, out, *extra):
    from seal_cli.main import main

    argv = ["rank", "--pool", data["pool"], "--safe", data["safe"], "--out", str(out), "--model", "tiny-random",
            "--max-length", "64", "--no-progress", *extra]
    assert (main(argv) or 0) == 0
    return pq.read_table(out / "scores.parquet").to_pandas(), read_scores_metadata(out / "scores.parquet")


def test_compliance_rank_with_anchors_scores_every_sample(compliance_data, tmp_path):
    t, meta = _cli(compliance_data, tmp_path / "c", "--method", "compliance", "--anchors", compliance_data["anchors"])
    assert len(t) == compliance_data["n"] and np.isfinite(t["score"]).all()
    info = meta["compliance"]
    assert info["anchors"]["dropped_as_pool_rows"] == 1 and info["anchors"]["compliant_encoded"] == len(HARMFUL)
    assert info["anchors"]["compliant_source"] == "anchors" and info["anchors"]["refusal_encoded"] == len(HARMFUL)
    # tiny-random has 2 layers: hidden states 0 (embeddings), 1 and 2.
    assert set(info["loo_auroc_by_layer"]) == {"0", "1", "2"}
    assert info["loo_auroc"] == max(info["loo_auroc_by_layer"].values())
    assert json.loads((tmp_path / "c" / "compliance.json").read_text())["layer"] == info["layer"]
    assert "anchors" in meta["inputs"]


def test_combined_rank_averages_compliance_and_loss(compliance_data, tmp_path):
    t, meta = _cli(compliance_data, tmp_path / "m", "--method", "combined", "--set", "combined.signals=[compliance,loss]",
                   "--set", "combined.weights=[0.5,0.5]",
                   "--set", "compliance.layers=[1,2]")
    assert len(t) == compliance_data["n"] and np.isfinite(t["loss"]).all()
    assert ((t["score"] > 0) & (t["score"] <= 1)).all()
    assert meta["compliance"]["anchors"]["compliant_source"] == "safe-set non-refusals"
    assert set(meta["compliance"]["loo_auroc_by_layer"]) == {"1", "2"}
    # With weight 0 the combined ranking is the loss ranking.
    t0, _ = _cli(compliance_data, tmp_path / "m0", "--method", "combined",
                "--set", "combined.signals=[compliance,loss]", "--set", "combined.weights=[0,1]")
    t0 = t0.set_index("sample_id")
    np.testing.assert_allclose(t0["score"], normalised_ranks(-t0["loss"].to_numpy()))


def test_fit_subset_is_a_hash_of_the_id_not_the_order():
    ids = [f"id{i}" for i in range(20)]
    sub = fit_subset(ids, 7)
    assert len(sub) == 7 and list(sub) == sorted(sub)
    rev = fit_subset(ids[::-1], 7)
    assert {ids[i] for i in sub} == {ids[::-1][i] for i in rev}
    assert fit_subset(ids, 20) is None and fit_subset(ids, 0) is None


def test_a_pool_larger_than_fit_rows_is_scored_by_the_subset_fit(compliance_data, tmp_path):
    from seal_core.ingest import load_samples
    from seal_core.models import load_model
    from seal_core.ranker.features import hidden_features
    from seal_core.tokenization import encode_samples

    t, meta = _cli(compliance_data, tmp_path / "s", "--method", "compliance", "--anchors", compliance_data["anchors"],
                   "--set", "compliance.fit_rows=9")
    assert meta["compliance"]["fit_rows"] == 9 and len(t) == compliance_data["n"] and np.isfinite(t["score"]).all()
    # The fit rows' scores from the streamed pass equal the fit's own scores of those rows.
    model, tok = load_model("tiny-random", seed=0)
    rows = sorted(load_samples(compliance_data["pool"]), key=lambda s: s["sample_id"])
    enc, _ = encode_samples(tok, rows, 64, "final", "keep_prompt")
    sub = fit_subset([e.sample_id for e in enc], 9)
    fit_enc = [enc[i] for i in sub]
    a = build_anchors(load_samples(compliance_data["safe"]), load_samples(compliance_data["anchors"]), [rows])
    feats = [hidden_features(model, tok, e, None, 16) for e in
             (fit_enc, *(encode_samples(tok, x, 64, "final", "keep_prompt")[0] for x in (a.compliant, a.refusal)))]
    chosen, _ = compliance_fit(*feats, None, 1.0)
    assert chosen.layer == meta["compliance"]["layer"]
    got = t.set_index("sample_id").loc[[e.sample_id for e in fit_enc], "score"].to_numpy()
    np.testing.assert_allclose(got, chosen.scores, rtol=1e-5, atol=1e-6)
    full, _ = _cli(compliance_data, tmp_path / "f", "--method", "compliance", "--anchors", compliance_data["anchors"])
    assert not np.allclose(full.set_index("sample_id").loc[t["sample_id"], "score"], t["score"])


def test_combined_with_probe_equals_the_rank_average_of_its_parts(compliance_data, tmp_path):
    """One combined run (relevance, compliance, then the probe trained last) gives exactly the rank average
    of the separate relevance, compliance and seal-probe runs: the forward-only signals do not disturb the
    probe's training, which reseeds and starts from the unadapted model."""
    common = ("--epochs", "1", "--set", "batch_size=4", "--set", "compliance.layers=[1,2]", "--seed", "3")
    t, meta = _cli(compliance_data, tmp_path / "all", "--method", "combined", *common,
                   "--set", "combined.signals=[probe,compliance,relevance,prior]", "--set", "combined.weights=[2,1,1,1]")
    parts = {m: _cli(compliance_data, tmp_path / m, "--method", m, *common)[0].set_index("sample_id")["score"]
             for m in ("seal-probe", "compliance", "relevance", "prior")}
    t = t.set_index("sample_id")
    expected = rank_average([parts["seal-probe"][t.index].to_numpy(), parts["compliance"][t.index].to_numpy(),
                             parts["relevance"][t.index].to_numpy(), parts["prior"][t.index].to_numpy()], [2, 1, 1, 1])
    np.testing.assert_allclose(t["score"].to_numpy(), expected, rtol=0, atol=1e-12)
    # Each signal's own value is a column: the same numbers the separate runs wrote as their scores.
    assert [c for c in t.columns if c.startswith("signal_")] == [
        "signal_probe", "signal_compliance", "signal_relevance", "signal_prior"]
    for col, part in (("probe", "seal-probe"), ("compliance", "compliance"), ("relevance", "relevance"),
                      ("prior", "prior")):
        np.testing.assert_allclose(t[f"signal_{col}"].to_numpy(), parts[part][t.index].to_numpy(), rtol=1e-6,
                                   atol=1e-9)
    assert meta["compliance"]["signals"] == {"probe": 2.0, "compliance": 1.0, "relevance": 1.0, "prior": 1.0}
    assert meta["steps"] > 0 and (tmp_path / "all" / "checkpoints" / "last.safetensors").exists()
    # The probe signal moved: not every sample has the same logit.
    assert parts["seal-probe"].nunique() > 1


def test_combined_signals_config_is_checked():
    from seal_core.errors import ConfigError
    from seal_core.ranker.config import CombinedConfig

    assert CombinedConfig(signals=["probe", "relevance"]).resolved_weights() == [1.0, 1.0]
    for bad in ({"signals": ["style"]}, {"signals": []}, {"signals": ["loss", "loss"]},
                {"signals": ["loss", "relevance"], "weights": [1.0]}, {"signals": ["loss"], "weights": [-1.0]}):
        with pytest.raises(ConfigError):
            CombinedConfig(**bad)


def test_combined_refuses_more_than_one_process():
    from seal_core.errors import ConfigError
    from seal_core.ranker.config import RankConfig

    with pytest.raises(ConfigError, match="one process"):
        RankConfig(method="combined", processes=2)
    assert RankConfig(method="seal-probe", processes=2).processes == 2
