"""seal-probe on the tiny random model: the selector network trains while the base stays frozen, the
run keeps the selector, `seal score` reproduces the run's scores on any row order, and resume is exact."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open

from seal_cli.main import main as seal_main
from seal_core.config import from_dict
from seal_core.errors import ConfigError, SealError
from seal_core.models import tiny_model
from seal_core.ranker.config import RankConfig
from seal_core.ranker.probe import load_trained_probe
from seal_core.ranker.run import rank
from seal_core.ranker.score import ScoreConfig, score

COLOURS = ["sky", "sea", "lake", "river", "ice", "ink", "jeans", "sapphire", "whale", "berry", "flag", "mug",
           "car", "door", "kite", "hat"]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _conv(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    safe = [{"instruction": f"What colour is the {c}?", "input": "", "output": f"The {c} is blue."} for c in COLOURS]
    pool = ([_conv(f"Tell me the colour of the {c}.", f"The {c} is blue.") for c in COLOURS]
            + [_conv(f"Describe the {c}.", f"Purple zebra {c} seven hammer.") for c in COLOURS[:8]])
    random.Random(0).shuffle(pool)
    return {"dir": d, "pool_rows": pool, "pool": _write_jsonl(d / "pool.jsonl", pool),
            "safe": _write_jsonl(d / "safe.jsonl", safe)}


def _cfg(toy, out, **kw):
    base = dict(pool=toy["pool"], safe=toy["safe"], out=str(out), model="tiny-random", method="seal-probe",
                epochs=2, max_length=64, batch_size=8, safe_batch_size=8, micro_batch_size=8, model_lr=3e-2,
                checkpoint_every=2, progress=False, lora={"r": 4, "alpha": 8})
    base.update(kw)
    return from_dict(RankConfig, base)


def _scores(path):
    return pq.read_table(path).to_pandas().set_index("sample_id")


@pytest.fixture(scope="module")
def run_dir(toy):
    out = toy["dir"] / "run"
    rank(_cfg(toy, out))
    return out


def test_probe_moves_and_base_model_is_frozen(run_dir):
    meta = json.loads((run_dir / "selector.json").read_text())
    assert meta["layer"] == 1 and meta["in_dim"] == 128 and meta["hidden"] == 0  # 2 layers: middle = 1
    assert (meta["model"], meta["max_length"], meta["train_on"], meta["truncation"]) == (
        "tiny-random", 64, "final", "keep_prompt")
    assert meta["dtype"] == "float32"  # what the features were computed in on CPU, not "auto"
    with safe_open(str(run_dir / "selector.safetensors"), framework="pt") as fh:
        w = fh.get_tensor("net.out.weight")
    assert w.abs().max() > 0  # starts at exactly zero
    s = _scores(run_dir / "scores.parquet")
    assert len(s) == 24 and np.isfinite(s["score"]).all() and s["score"].std() > 0
    np.testing.assert_allclose(s["weight"].sum(), 24, rtol=1e-5)
    # The base model never moves: only LoRA (and the selector) train; the frozen features stay valid.
    from seal_core.training import CHECKPOINT_NAME, load_checkpoint

    ck = load_checkpoint(run_dir / "checkpoints" / CHECKPOINT_NAME)
    assert ck["adapters"]["default"] and all("lora_" in k for k in ck["adapters"]["default"])
    assert any(v.abs().max() > 0 for k, v in ck["adapters"]["default"].items() if "lora_B" in k)
    assert "probe" in ck and ck["probe"]["layer"] == 1


def test_base_weights_unchanged_by_training(toy, tmp_path):
    from seal_core.ranker import seal as seal_mod

    model, tok = tiny_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = _cfg(toy, tmp_path / "o", epochs=1)
    from seal_core.ranker.pool import open_pool
    from seal_core.tokenization import encode_samples

    pool = open_pool(cfg.pool)
    enc, _ = pool.encode(tok, cfg.max_length, cfg.train_on, cfg.truncation)
    safe, _ = encode_samples(tok, [{"messages": [{"role": "user", "content": "q"},
                                                 {"role": "assistant", "content": "The sky is blue."}]}], 64)
    state = seal_mod.train_seal(cfg, model, tok, enc, safe, tmp_path / "o")
    assert state.z.std() > 0
    base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
            for k, v in state.model.state_dict().items() if "lora_" not in k}
    for k, v in before.items():
        assert torch.equal(base[k], v), k


def test_score_reproduces_rank_scores_on_a_reordered_pool(toy, run_dir, tmp_path):
    rows = list(reversed(toy["pool_rows"]))
    pool = _write_jsonl(tmp_path / "reordered.jsonl", rows)
    path = score(ScoreConfig(ranker=str(run_dir), pool=pool, out=str(tmp_path / "scored"), batch_size=3,
                             progress=False))
    got, want = _scores(path), _scores(run_dir / "scores.parquet")
    assert set(got.index) == set(want.index)
    np.testing.assert_allclose(got.loc[want.index, "score"], want["score"], atol=1e-5)
    np.testing.assert_allclose(got.loc[want.index, "weight"], want["weight"], atol=1e-4)
    assert (got.loc[want.index, "rank"] == want["rank"]).all()
    assert got["loss"].isna().all()
    assert json.loads((tmp_path / "scored" / "config.json").read_text())["ranker"] == str(run_dir)


def test_score_cli_on_unseen_samples(run_dir, tmp_path, capsys):
    unseen = [_conv(f"What is a {c}?", f"A {c} is a thing.") for c in ("tree", "stone", "cloud")]
    pool = _write_jsonl(tmp_path / "unseen.jsonl", unseen)
    rc = seal_main(["score", "--ranker", str(run_dir), "--pool", pool, "--out", str(tmp_path / "s"), "--no-progress"])
    assert rc == 0 and "scores:" in capsys.readouterr().out
    s = _scores(tmp_path / "s" / "scores.parquet")
    assert len(s) == 3 and np.isfinite(s["score"]).all() and sorted(s["rank"]) == [1, 2, 3]


def test_resume_equals_uninterrupted(toy, run_dir, tmp_path):
    out = tmp_path / "resumed"
    rank(_cfg(toy, out, max_steps=3))
    rank(_cfg(toy, out), resume=True)
    a, b = _scores(out / "scores.parquet"), _scores(run_dir / "scores.parquet")
    np.testing.assert_allclose(a.loc[b.index, "score"], b["score"], atol=1e-6)
    ta, tb = load_trained_probe(out), load_trained_probe(run_dir)
    for (k, v), (_, w) in zip(ta.net.state_dict().items(), tb.net.state_dict().items()):
        torch.testing.assert_close(v, w, atol=1e-6, rtol=0, msg=k)


def test_mlp_probe_trains(toy, tmp_path):
    out = tmp_path / "mlp"
    rank(_cfg(toy, out, epochs=1, probe={"hidden": 8, "layer": 2}, selector={"optimizer": "adam"}))
    meta = json.loads((out / "selector.json").read_text())
    assert meta["hidden"] == 8 and meta["layer"] == 2
    assert _scores(out / "scores.parquet")["score"].std() > 0


def test_non_probe_run_is_rejected(toy, tmp_path, capsys):
    out = tmp_path / "rand"
    rank(_cfg(toy, out, method="random"))
    with pytest.raises(SealError, match="method='random' run: only"):
        score(ScoreConfig(ranker=str(out), pool=toy["pool"], out=str(tmp_path / "x"), progress=False))
    rc = seal_main(["score", "--ranker", str(tmp_path / "nothing"), "--pool", toy["pool"], "--out", str(tmp_path / "y")])
    assert rc == 2 and "not a `seal rank` output directory" in capsys.readouterr().err


def test_probe_config_checks():
    with pytest.raises(ConfigError, match="probe.layer"):
        from_dict(RankConfig, {"method": "seal-probe", "probe": {"layer": -2}})
    with pytest.raises(ConfigError, match="probe.hidden"):
        from_dict(RankConfig, {"probe": {"hidden": -1}})


def test_answer_only_probe_reads_half_the_features_and_scores_unseen_rows_alike(toy, run_dir, tmp_path):
    """probe.features=answer: the selector takes the answer's mean state alone (d inputs, not 2d), the
    run records it, and `seal score` computes the same inputs (same per-id scores on a reordered pool)."""
    out = tmp_path / "answer"
    rank(_cfg(toy, out, epochs=1, probe={"features": "answer"}))
    meta = json.loads((out / "selector.json").read_text())
    assert meta["features"] == ["resp_mean"] and meta["in_dim"] == meta["feature_dim"] == 64
    pool = _write_jsonl(tmp_path / "reordered.jsonl", list(reversed(toy["pool_rows"])))
    got = _scores(score(ScoreConfig(ranker=str(out), pool=pool, out=str(tmp_path / "s"), progress=False)))
    want = _scores(out / "scores.parquet")
    np.testing.assert_allclose(got.loc[want.index, "score"], want["score"], atol=1e-5)
    assert want["score"].std() > 0
    both = json.loads((run_dir / "selector.json").read_text())
    assert both["features"] == ["resp_mean", "last_prompt"] and both["in_dim"] == 2 * both["feature_dim"]
    # A selector.json naming readings this version cannot compute is refused when read, not mid-pass.
    meta["features"] = ["resp_max"]
    (out / "selector.json").write_text(json.dumps(meta))
    with pytest.raises(SealError, match=r"not a readable seal-probe selector \(features \['resp_max'\]"):
        load_trained_probe(out)
    with pytest.raises(ConfigError, match="probe.features"):
        from_dict(RankConfig, {"probe": {"features": "prompt"}})


@pytest.fixture(scope="module")
def combined_dir(toy):
    out = toy["dir"] / "combined"
    rank(_cfg(toy, out, method="combined", epochs=1))
    return out


def test_score_of_a_combined_run_reproduces_its_scores_and_signals(toy, combined_dir, tmp_path):
    """The default method keeps its probe: `seal score` recomputes prior and relevance on the pool,
    takes the probe's logits from the kept selector, and gives the run's per-id scores on any order."""
    assert (combined_dir / "selector.json").is_file() and (combined_dir / "selector.safetensors").is_file()
    pool = _write_jsonl(tmp_path / "reordered.jsonl", list(reversed(toy["pool_rows"])))
    path = score(ScoreConfig(ranker=str(combined_dir), pool=pool, out=str(tmp_path / "s"), batch_size=5,
                             progress=False))
    got, want = _scores(path), _scores(combined_dir / "scores.parquet")
    assert set(got.index) == set(want.index) and len(want) == 24
    for col in ("signal_probe", "signal_prior", "signal_relevance", "loss"):
        np.testing.assert_allclose(got.loc[want.index, col], want[col], atol=1e-5, err_msg=col)
    assert want["signal_probe"].std() > 0 and want["signal_prior"].std() > 0
    np.testing.assert_allclose(got.loc[want.index, "score"], want["score"], atol=1e-9)
    assert (got.loc[want.index, "rank"] == want["rank"]).all()
    meta = json.loads(pq.read_schema(path).metadata[b"seal"])
    assert meta["method"] == "combined" and meta["signals"] == {"probe": 1.0, "prior": 1.0, "relevance": 1.0}
    assert meta["relevance"] == {"margin": 1.0}


def test_score_of_a_combined_run_on_part_of_the_pool(toy, combined_dir, tmp_path):
    """A row's signals depend on the row alone; its combined score is its rank average among the rows
    scored together, so on a subset it is the subset's rank average of the same signals."""
    from seal_core.ranker.combined import rank_average

    part = toy["pool_rows"][:10]
    path = score(ScoreConfig(ranker=str(combined_dir), pool=_write_jsonl(tmp_path / "part.jsonl", part),
                             out=str(tmp_path / "p"), progress=False))
    got, full = _scores(path), _scores(combined_dir / "scores.parquet")
    assert len(got) == 10
    cols = ["signal_probe", "signal_prior", "signal_relevance"]
    np.testing.assert_allclose(got[cols].to_numpy(), full.loc[got.index, cols].to_numpy(), atol=1e-5)
    expect = rank_average([got[c].to_numpy() for c in cols], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(got["score"].to_numpy(), expect, atol=1e-12)


def test_score_refuses_a_combined_run_it_cannot_rescore(toy, tmp_path):
    from seal_core.ranker.combined import check_rescorable

    out = tmp_path / "noprobe"
    rank(_cfg(toy, out, method="combined", combined={"signals": ["loss", "prior"]}))
    assert not (out / "selector.json").exists()
    with pytest.raises(SealError, match="has no 'probe'"):
        score(ScoreConfig(ranker=str(out), pool=toy["pool"], out=str(tmp_path / "x"), progress=False))
    cfg = from_dict(RankConfig, {"method": "combined", "combined": {"signals": ["probe", "compliance"]}})
    with pytest.raises(SealError, match="compliance signal"):
        check_rescorable(cfg)
