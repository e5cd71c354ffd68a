"""Top-k selection: exact ids and order, pool rows unchanged, exports, CLI errors."""

from __future__ import annotations

import json
import math
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seal_cli.main import main
from seal_core import selection
from seal_core.errors import ConfigError, InputError
from seal_core.ranker.scores import write_scores
from seal_core.schema import CANONICAL_SCHEMA, compute_sample_id
from seal_core.selection import SelectConfig, k_for_fraction, open_pool, ranked_selection, select


def make_samples(n: int, multi_turn_every: int = 0, system_every: int = 0) -> list[dict]:
    out = []
    for i in range(n):
        msgs = []
        if system_every and i % system_every == 0:
            msgs.append({"role": "system", "content": f"be brief {i}"})
        if multi_turn_every and i % multi_turn_every == 0:
            msgs += [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]
        msgs += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
        out.append({"sample_id": compute_sample_id(msgs), "messages": msgs, "source": "toy.jsonl",
                    "metadata": json.dumps({"id": f"r{i}"})})
    return out


def write_pool(path, samples) -> str:
    pq.write_table(pa.Table.from_pylist(samples, schema=CANONICAL_SCHEMA), path, row_group_size=37)
    return str(path)


def expected(ids, scores, k):
    return [i for _, i in sorted(zip(scores, ids), key=lambda t: (-t[0], t[1]))][:k]


@pytest.fixture
def toy(tmp_path):
    samples = make_samples(12)
    ids = [s["sample_id"] for s in samples]
    # Heavy ties at 2.0 and 1.0 so that the cut falls inside a tie group.
    scores = [3.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.5, -1.0, -1.0, 5.0]
    pool = write_pool(tmp_path / "pool.parquet", samples)
    sc = write_scores(tmp_path / "scores.parquet", ids, scores)
    return samples, ids, scores, pool, str(sc)


def read_selected(out) -> list[dict]:
    return pq.read_table(out / "selected.parquet").to_pylist()


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6, 8, 12, 50])
def test_top_k_exact_with_ties(toy, tmp_path, k):
    samples, ids, scores, pool, sc = toy
    out = tmp_path / f"sel{k}"
    res = select(sc, pool, out, SelectConfig(top_k=k, progress=False))
    got = [r["sample_id"] for r in read_selected(out)]
    assert got == expected(ids, scores, k)
    assert res.summary["k"] == min(k, 12)
    assert ranked_selection(sc, top_k=k) == expected(ids, scores, k)


def test_top_p_rounding_rule():
    assert k_for_fraction(0.25, 10) == 3  # 2.5 rounds half up
    assert k_for_fraction(0.24, 10) == 2
    assert k_for_fraction(0.29, 100) == 29  # 0.29*100 = 28.999999999999996 in floating point
    assert k_for_fraction(0.01, 10) == 1  # never empty
    assert k_for_fraction(1.0, 7) == 7
    assert k_for_fraction(0.5, 0) == 0


def test_top_p_and_min_score(toy, tmp_path):
    samples, ids, scores, pool, sc = toy
    res = select(sc, pool, tmp_path / "p", SelectConfig(top_p=0.25, progress=False))
    assert [r["sample_id"] for r in read_selected(tmp_path / "p")] == expected(ids, scores, 3)
    assert res.summary["fraction"] == pytest.approx(3 / 12)
    # min_score is inclusive: every sample scoring exactly 1.0 is kept.
    res = select(sc, pool, tmp_path / "m", SelectConfig(min_score=1.0, progress=False))
    got = [r["sample_id"] for r in read_selected(tmp_path / "m")]
    assert got == expected(ids, scores, 9)
    assert res.summary["threshold_score"] == 1.0
    assert res.summary["threshold_sample_id"] == got[-1]
    res = select(sc, pool, tmp_path / "none", SelectConfig(min_score=99.0, progress=False))
    assert res.summary["k"] == 0 and read_selected(tmp_path / "none") == []
    assert any("empty" in w for w in res.warnings)


def test_rows_unchanged_and_outputs(toy, tmp_path):
    samples, ids, scores, pool, sc = toy
    out = tmp_path / "out"
    res = select(sc, pool, out, SelectConfig(top_k=5, progress=False))
    by_id = {s["sample_id"]: s for s in samples}
    rows = read_selected(out)
    assert rows == [by_id[i] for i in expected(ids, scores, 5)]
    assert pq.read_schema(out / "selected.parquet").remove_metadata().equals(CANONICAL_SCHEMA)
    summary = json.loads((out / "selection.json").read_text())
    assert summary["k"] == 5 and summary["n_candidates"] == 12 and summary["threshold_score"] == 2.0
    assert set(summary["inputs"]) == {"scores", "pool"} and all(v["fingerprint"] for v in summary["inputs"].values())
    assert json.loads((out / "config.json").read_text())["top_k"] == 5
    lines = [json.loads(x) for x in (out / "selected.jsonl").read_text().splitlines()]
    assert [x["sample_id"] for x in lines] == [r["sample_id"] for r in rows]
    assert lines[0]["messages"] == rows[0]["messages"]
    assert res.export == out / "selected.jsonl" and not (out / "export_rejects.jsonl").exists()


def test_missing_ids_both_ways_and_duplicates(tmp_path):
    samples = make_samples(10)
    ids = [s["sample_id"] for s in samples]
    # Scores for samples 0..7 plus two ghosts (best scores) absent from the pool.
    sc_ids = ids[:8] + ["0" * 24, "f" * 24]
    sc_vals = [float(i) for i in range(8)] + [100.0, 99.0]
    sc = write_scores(tmp_path / "s.parquet", sc_ids, sc_vals)
    pool = write_pool(tmp_path / "pool.parquet", samples + [samples[7], samples[3]])  # two repeats
    seen = []
    res = select(sc, pool, tmp_path / "o", SelectConfig(top_k=3, progress=False), warn=seen.append)
    got = [r["sample_id"] for r in read_selected(tmp_path / "o")]
    assert got == [ids[7], ids[6], ids[5]]  # ghosts skipped, k honoured, sample 7 once
    s = res.summary
    assert (s["scores_missing_from_pool"], s["pool_missing_from_scores"], s["pool_duplicate_rows"]) == (2, 2, 2)
    assert s["n_candidates"] == 8 and s["n_pool_rows"] == 12
    assert len(seen) == 3 and any("not in the pool" in w for w in seen)
    # Without a pool, the ghosts are the best two.
    assert ranked_selection(sc, top_k=2) == ["0" * 24, "f" * 24]


def test_no_overlap_is_an_error(tmp_path):
    sc = write_scores(tmp_path / "s.parquet", ["a", "b"], [1.0, 2.0])
    pool = write_pool(tmp_path / "pool.parquet", make_samples(3))
    with pytest.raises(InputError, match="has a score"):
        select(sc, pool, tmp_path / "o", SelectConfig(top_k=1, progress=False))


def test_matches_bruteforce_with_spill(tmp_path, monkeypatch):
    rng = random.Random(0)
    samples = make_samples(3000)
    rng.shuffle(samples)
    ids = [s["sample_id"] for s in samples]
    scores = [round(rng.random(), 1) for _ in ids]  # ~300 ties per value
    scores[5] = math.nan  # NaN ranks last
    pool = write_pool(tmp_path / "pool.parquet", samples)
    sc = write_scores(tmp_path / "s.parquet", ids, scores)
    monkeypatch.setattr(selection.stage, "bucket_rows", lambda budget, row_bytes: 250)  # force 12 spilled buckets
    key = [-math.inf if math.isnan(x) else x for x in scores]
    for k in (1, 777, 3000):
        out = tmp_path / f"o{k}"
        res = select(sc, pool, out, SelectConfig(top_k=k, batch_size=101, progress=False))
        got = [r["sample_id"] for r in read_selected(out)]
        assert got == expected(ids, key, k)
        assert res.summary["k"] == k
    assert got[-1] == ids[5]


def test_variable_width_unicode_ids(tmp_path):
    ids = ["b", "ab", "é", "a", "zz", "a\u00e9x", "abc"]
    scores = [1.0] * len(ids)
    sc = write_scores(tmp_path / "s.parquet", ids, scores)
    assert ranked_selection(sc, top_k=7) == sorted(ids)
    assert ranked_selection(sc, top_k=3) == sorted(ids)[:3]
    arr = pa.array(["abcd", "x", "toolongid"])
    fixed, fits = selection.fixed_width_ids(arr, 4)
    assert fixed.tolist() == [b"abcd", b"x", b""] and fits.tolist() == [True, True, False]


def test_alpaca_export(tmp_path):
    samples = make_samples(6, multi_turn_every=3, system_every=2)
    ids = [s["sample_id"] for s in samples]
    pool = write_pool(tmp_path / "pool.parquet", samples)
    sc = write_scores(tmp_path / "s.parquet", ids, [float(-i) for i in range(6)])
    res = select(sc, pool, tmp_path / "a", SelectConfig(top_k=6, export="alpaca", progress=False))
    recs = [json.loads(x) for x in (tmp_path / "a" / "selected.jsonl").read_text().splitlines()]
    rejects = [json.loads(x) for x in (tmp_path / "a" / "export_rejects.jsonl").read_text().splitlines()]
    # Samples 0 and 3 are multi-turn: rejected from the export, still in selected.parquet.
    assert [r["sample_id"] for r in rejects] == [ids[0], ids[3]]
    assert {r["reason"] for r in rejects} == {"multi_turn"}
    assert [r["sample_id"] for r in recs] == [ids[1], ids[2], ids[4], ids[5]]
    assert recs[0] == {"sample_id": ids[1], "instruction": "question 1", "input": "", "output": "answer 1"}
    assert recs[1]["system"] == "be brief 2"
    assert len(read_selected(tmp_path / "a")) == 6
    assert res.summary["export"]["rejected"] == {"multi_turn": 2}
    # history mode folds earlier turns into LLaMA-Factory's `history`.
    select(sc, pool, tmp_path / "a", SelectConfig(top_k=6, export="alpaca", alpaca_multiturn="history", progress=False))
    recs = [json.loads(x) for x in (tmp_path / "a" / "selected.jsonl").read_text().splitlines()]
    assert recs[0]["history"] == [["hi 0", "hello 0"]] and recs[0]["system"] == "be brief 0"
    assert (tmp_path / "a" / "export_rejects.jsonl").read_text() == ""
    # export none removes the stale JSONL of the earlier run.
    select(sc, pool, tmp_path / "a", SelectConfig(top_k=2, export="none", progress=False))
    assert not (tmp_path / "a" / "selected.jsonl").exists()
    assert not (tmp_path / "a" / "export_rejects.jsonl").exists()


def test_config_validation():
    with pytest.raises(ConfigError, match="exactly one"):
        SelectConfig()
    with pytest.raises(ConfigError, match="exactly one"):
        SelectConfig(top_k=3, top_p=0.5)
    with pytest.raises(ConfigError, match="top_p"):
        SelectConfig(top_p=1.5)
    with pytest.raises(ConfigError, match="top_k"):
        SelectConfig(top_k=0)


def test_cli(toy, tmp_path, capsys):
    samples, ids, scores, pool, sc = toy
    out = tmp_path / "cli"
    assert main(["select", "--scores", sc, "--pool", pool, "--top-k", "4", "--out", str(out),
                 "--export", "alpaca", "--no-progress"]) == 0
    assert [r["sample_id"] for r in read_selected(out)] == expected(ids, scores, 4)
    assert (out / "selected.jsonl").exists() and (out / "selection.json").exists()
    assert "selected 4 of 12" in capsys.readouterr().out
    # The rank output dir is accepted for --scores.
    assert main(["select", "--scores", str(tmp_path), "--pool", str(tmp_path / "pool.parquet"), "--top-p", "0.5",
                 "--out", str(out), "--no-progress"]) == 0
    assert [r["sample_id"] for r in read_selected(out)] == expected(ids, scores, 6)
    assert "selected 6 of 12" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"not parquet at all", None])
def test_cli_bad_scores_file(toy, tmp_path, capsys, content):
    samples, ids, scores, pool, sc = toy
    bad = tmp_path / "bad.parquet"
    if content is None:
        pq.write_table(pa.table({"sample_id": ids, "value": scores}), bad)
    else:
        bad.write_bytes(content)
    rc = main(["select", "--scores", str(bad), "--pool", pool, "--top-k", "2", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error:") and "bad.parquet" in err[0]


def test_cli_missing_mode(toy, tmp_path, capsys):
    samples, ids, scores, pool, sc = toy
    rc = main(["select", "--scores", sc, "--pool", pool, "--out", str(tmp_path / "x")])
    assert rc == 2 and "exactly one of top_k" in capsys.readouterr().err


def test_duplicate_scores_rejected(tmp_path):
    pq.write_table(pa.table({"sample_id": ["a", "b", "a"], "score": [1.0, 2.0, 3.0]}), tmp_path / "d.parquet")
    with pytest.raises(InputError, match="'a' appears more than once"):
        ranked_selection(tmp_path / "d.parquet", top_k=1)


def test_raw_pool_file(tmp_path):
    # A raw JSONL pool is ingested in memory: same ids, and its other fields become metadata.
    samples = make_samples(5)
    raw = tmp_path / "pool.jsonl"
    raw.write_text("".join(json.dumps({"messages": s["messages"], "id": f"r{i}"}) + "\n"
                           for i, s in enumerate(samples)))
    ids = [s["sample_id"] for s in samples]
    pool = open_pool(raw)
    assert pool.path == raw and pool.num_rows == 5
    assert [b.column(0).to_pylist() for b in pool.batches(["sample_id"], 3)] == [ids[:3], ids[3:]]
    sc = write_scores(tmp_path / "s.parquet", ids, [1.0, 5.0, 3.0, 4.0, 2.0])
    res = select(sc, str(raw), tmp_path / "o", SelectConfig(top_k=2, progress=False))
    rows = read_selected(tmp_path / "o")
    assert [r["sample_id"] for r in rows] == [ids[1], ids[3]]
    assert [json.loads(r["metadata"]) for r in rows] == [{"id": "r1"}, {"id": "r3"}]
    assert res.summary["inputs"]["pool"]["path"] == str(raw)
