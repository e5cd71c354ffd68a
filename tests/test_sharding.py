"""seal_core.sharding: shards cover the pool exactly, shard losses match one unsharded pass."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seal_core.errors import ConfigError, InputError
from seal_core.schema import CANONICAL_SCHEMA, compute_sample_id
from seal_core.sharding import LossPassConfig, losses_to_scores, merge_losses, shard_losses, split_shards


def _pool(path, n: int = 20):
    rows = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"question number {i}?"},
                {"role": "assistant", "content": "answer " + "word " * (i % 7 + 1)}]
        rows.append({"sample_id": compute_sample_id(msgs), "messages": msgs, "source": "t", "metadata": "{}"})
    pq.write_table(pa.Table.from_pylist(rows, schema=CANONICAL_SCHEMA), path)
    return rows


def test_split_shards_covers_the_pool_in_order(tmp_path):
    rows = _pool(tmp_path / "pool.parquet", 23)
    shards = split_shards(tmp_path / "pool.parquet", 4, tmp_path / "shards")
    assert [p.name for p in shards] == [f"shard-{i:05d}.parquet" for i in range(4)]
    got = [r for p in shards for r in pq.read_table(p).column("sample_id").to_pylist()]
    assert got == [r["sample_id"] for r in rows]
    sizes = [pq.read_metadata(p).num_rows for p in shards]
    assert max(sizes) - min(sizes) <= 1
    mtimes = [p.stat().st_mtime_ns for p in shards]
    assert split_shards(tmp_path / "pool.parquet", 4, tmp_path / "shards") == shards
    assert [p.stat().st_mtime_ns for p in shards] == mtimes  # reused, not rewritten
    assert len(split_shards(tmp_path / "pool.parquet", 50, tmp_path / "many")) == 23
    with pytest.raises(ConfigError):
        split_shards(tmp_path / "pool.parquet", 0, tmp_path / "x")
    (tmp_path / "raw.jsonl").write_text("{}\n")
    with pytest.raises(InputError, match="ingest"):
        split_shards(tmp_path / "raw.jsonl", 2, tmp_path / "y")


def test_shard_losses_match_one_unsharded_pass(tmp_path):
    from seal_core.models import load_model
    from seal_core.tokenization import encode_samples, score_losses

    rows = _pool(tmp_path / "pool.parquet", 20)
    cfg = LossPassConfig(model="tiny-random", max_length=64, batch_size=4, device="cpu")
    shards = split_shards(tmp_path / "pool.parquet", 3, tmp_path / "shards")
    parts = [shard_losses(s, tmp_path / f"loss-{i}.parquet", cfg) for i, s in enumerate(shards)]
    merged = pq.read_table(merge_losses(parts, tmp_path / "losses.parquet"))
    assert merged.column("sample_id").to_pylist() == sorted(r["sample_id"] for r in rows)

    model, tok = load_model("tiny-random", device="cpu")
    enc, _ = encode_samples(tok, rows, 64, "final", "left")
    ref = dict(zip([e.sample_id for e in enc], score_losses(model, tok, enc, 4, progress=False)))
    got = dict(zip(merged.column("sample_id").to_pylist(), merged.column("loss").to_pylist()))
    assert set(got) == set(ref)
    np.testing.assert_allclose([got[k] for k in sorted(ref)], [ref[k] for k in sorted(ref)], rtol=1e-5)

    scores = pq.read_table(losses_to_scores(tmp_path / "losses.parquet", tmp_path / "scores.parquet"))
    best = min(got, key=got.get)  # lowest loss ranks first in the loss baseline
    assert scores.column("sample_id")[0].as_py() == best
    assert scores.column("rank").to_pylist() == list(range(1, 21))
    assert math.isclose(sum(scores.column("weight").to_pylist()), 20.0, rel_tol=1e-9)


def test_merge_rejects_repeated_ids(tmp_path):
    t = pa.table({"sample_id": ["a", "b"], "loss": [1.0, 2.0], "n_tokens": [3, 4]})
    pq.write_table(t, tmp_path / "a.parquet")
    pq.write_table(t, tmp_path / "b.parquet")
    with pytest.raises(InputError, match="more than once"):
        merge_losses([tmp_path / "a.parquet", tmp_path / "b.parquet"], tmp_path / "m.parquet")
