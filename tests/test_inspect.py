"""`seal inspect` output, AUROC and label mix on hand-made cases, and the scores file in other tools."""

from __future__ import annotations

import json
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seal_cli.main import main
from seal_core.inspect import auroc, inspect_scores, label_mix
from seal_core.metrics import average_ranks, label_aurocs
from seal_core.ranker.scores import write_scores
from seal_core.schema import CANONICAL_SCHEMA, compute_sample_id


def test_auroc_exact():
    assert auroc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert auroc([1, 2, 3, 4], [True, True, False, False]) == 0.0
    assert auroc([5, 5, 5, 5], [True, False, True, False]) == 0.5  # all tied
    # positives {2, 3} vs negatives {1, 2}: 1 + 0.5 + 1 + 1 over 4 pairs.
    assert auroc([1, 2, 2, 3], [False, True, False, True]) == 0.875
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([math.nan, 0.0], [False, True]) == 1.0  # NaN counts as lowest
    assert math.isnan(auroc([1, 2], [True, True]))
    assert average_ranks([3, 1, 3, 2]).tolist() == [3.5, 1.0, 3.5, 2.0]
    au = label_aurocs([4, 3, 2, 1], ["good", "good", "bad", "bad"])
    assert au == {"bad": 1.0, "good": 0.0}


def test_label_mix_exact():
    scores = [0.9, 0.8, 0.8, 0.1, 0.5, 0.3, 0.2, 0.7, 0.6, 0.4]
    labels = ["good", "bad", "good", "bad", "good", "bad", "bad", "good", "good", "bad"]
    ids = [f"s{i}" for i in range(10)]
    mix = label_mix(scores, labels, (0.1, 0.3, 0.5), sample_ids=ids)
    assert [m["k"] for m in mix] == [1, 3, 5]
    assert mix[0]["counts"] == {"bad": 0, "good": 1}
    assert mix[1]["counts"] == {"bad": 1, "good": 2}  # s1 (bad) wins the 0.8 tie against s2 by id
    assert mix[2]["shares"] == {"bad": 0.2, "good": 0.8}


@pytest.fixture
def scored(tmp_path):
    rows, scores, labels = [], [], []
    kinds = [("good", "Explain gravity", "Gravity pulls masses together.", 2.0),
             ("harmful", "How to steal a car", "Break the window and hotwire it.", -2.0),
             ("weak", "Name a fruit", "idk", 0.0)]
    for i in range(30):
        lab, q, a, base = kinds[i % 3]
        msgs = [{"role": "user", "content": f"{q} #{i}"}, {"role": "assistant", "content": f"{a} ({i})"}]
        sid = compute_sample_id(msgs)
        rows.append({"sample_id": sid, "messages": msgs, "source": "t.jsonl", "metadata": json.dumps({"id": f"rec{i}"})})
        scores.append(base + i / 100)
        labels.append(lab)
    pq.write_table(pa.Table.from_pylist(rows, schema=CANONICAL_SCHEMA), tmp_path / "pool.parquet")
    sc = write_scores(tmp_path / "scores.parquet", [r["sample_id"] for r in rows], scores,
                      metadata={"method": "toy"})
    with open(tmp_path / "by_id.jsonl", "w") as f:
        for r, lab in zip(rows, labels):
            f.write(json.dumps({"sample_id": r["sample_id"], "label": lab}) + "\n")
    with open(tmp_path / "by_meta.jsonl", "w") as f:
        for i, lab in enumerate(labels):
            f.write(json.dumps({"id": f"rec{i}", "label": lab, "origin": "toy"}) + "\n")
    return tmp_path, str(sc), rows, scores, labels


def test_cli_histogram_top_bottom(scored, capsys):
    d, sc, rows, scores, labels = scored
    assert main(["inspect", sc, "--pool", str(d / "pool.parquet"), "--top", "2", "--plot", str(d / "h.png")]) == 0
    out = capsys.readouterr().out
    assert "30 rows" in out and "score double" in out and "method=toy" in out
    assert "█" in out and "p50" in out and "min -1.99" in out
    top = out[out.index("top 2"):out.index("bottom 2")]
    assert "#1" in top and rows[27]["sample_id"] in top and "Explain gravity #27" in top
    assert "assistant: Gravity pulls masses together. (27)" in top
    bottom = out[out.index("bottom 2"):]
    assert "#30" in bottom and "How to steal a car #1" in bottom
    assert (d / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_labels_by_sample_id_and_metadata(scored, capsys):
    d, sc, rows, scores, labels = scored
    rep = inspect_scores(sc, labels=d / "by_id.jsonl", top=0)
    lab = rep.stats["labels"]
    assert lab["matched"] == 30
    assert lab["auroc_pushdown"] == {"good": 0.0, "harmful": 1.0, "weak": 0.5}
    assert lab["auroc_good_vs_rest"] == 1.0
    assert lab["label_mix"][0]["counts"] == {"good": 3, "harmful": 0, "weak": 0}  # top 10%
    assert "AUROC" in rep.text and "harmful" in rep.text
    assert main(["inspect", sc, "--pool", str(d / "pool.parquet"), "--labels", str(d / "by_meta.jsonl"),
                 "--id-field", "id", "--top", "1", "--json", str(d / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "keyed by id): 30 of 30" in out
    assert "good vs rest AUROC (good ranked above the rest): 1" in out
    assert "70%" in out and "[good]" in out
    stats = json.loads((d / "s.json").read_text())
    assert stats["labels"]["auroc_pushdown"]["harmful"] == 1.0
    # --label-key, the deprecated name of --id-field, still works.
    assert main(["inspect", sc, "--pool", str(d / "pool.parquet"), "--labels", str(d / "by_meta.jsonl"),
                 "--label-key", "id", "--top", "1"]) == 0
    assert capsys.readouterr().out == out


def test_label_errors(scored, capsys):
    d, sc, rows, scores, labels = scored
    # The metadata-keyed labels file has no sample_id field: a one-line error naming the line.
    assert main(["inspect", sc, "--labels", str(d / "by_meta.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 1" in err[0] and "--id-field" in err[0]
    assert main(["inspect", sc, "--labels", str(d / "by_meta.jsonl"), "--id-field", "id"]) == 2
    assert "give --pool" in capsys.readouterr().err
    (d / "empty.jsonl").write_text("\n")
    assert main(["inspect", sc, "--labels", str(d / "empty.jsonl")]) == 2
    assert "has no labels" in capsys.readouterr().err
    assert main(["inspect", str(d / "pool.parquet")]) == 2
    assert "not a scores file" in capsys.readouterr().err


def test_scores_file_opens_in_other_tools(scored):
    d, sc, rows, scores, labels = scored
    duckdb = pytest.importorskip("duckdb")
    got = duckdb.sql(f"select sample_id, score from '{sc}' order by rank limit 3").fetchall()
    best = sorted(zip(scores, [r["sample_id"] for r in rows]), reverse=True)[:3]
    assert got == [(i, s) for s, i in best]
    df = pd.read_parquet(sc)
    assert list(df.columns[:3]) == ["sample_id", "score", "rank"] and df["rank"].tolist() == list(range(1, 31))
    pl = pytest.importorskip("polars")
    assert pl.read_parquet(sc).height == 30


def test_combined_signal_columns_show_which_signal_dropped_a_sample(tmp_path):
    """A combined ranking's signal_<name> columns: readable in pandas, and `seal inspect` prints each
    bottom sample's rank under every signal (here s0 is last by `prior`, top by `probe`)."""
    from seal_core.ranker.combined import rank_average

    ids = [f"s{i}" for i in range(6)]
    probe = [5.0, 1.0, 2.0, 3.0, 4.0, 0.0]
    prior = [-9.0, -1.0, -2.0, -3.0, -4.0, -5.0]
    score = rank_average([probe, prior], [1.0, 1.0])
    path = write_scores(tmp_path / "scores.parquet", ids, score, None, None, {"method": "combined"},
                        {"probe": probe, "prior": prior})
    t = pd.read_parquet(path).set_index("sample_id")
    assert list(t.columns) == ["score", "rank", "weight", "loss", "signal_probe", "signal_prior"]
    assert t.loc["s0", "signal_prior"] == -9.0 and t.loc["s5", "signal_probe"] == 0.0
    report = inspect_scores(path, top=2)
    bottom = {r["sample_id"]: r["signal_ranks"] for r in report.stats["bottom"]}
    assert bottom["s0"] == pytest.approx({"probe": 1.0, "prior": 1 / 6})
    assert "signal ranks (0 = lowest, 1 = highest): probe 1.00  prior 0.17" in report.text
    with pytest.raises(ValueError, match="2 values for 6 samples"):
        write_scores(tmp_path / "bad.parquet", ids, score, signals={"probe": [1.0, 2.0]})
