"""Per-sample loss passes split over Parquet shards, so they can run on many workers.

The pool (canonical Parquet) is cut into contiguous row ranges, one shard file
each (:func:`split_shards`); :func:`shard_losses` scores one shard under a model
(plus an optional LoRA adapter) and writes ``sample_id, loss, n_tokens``;
:func:`merge_losses` concatenates the shard results in id order. Each shard is
batched by length on its own, so its losses do not depend on where, or next to
which other shards, it runs: the merged result is the same on one process or on
a cluster. Pure Python; the stages are declared in ``seal_core.stages`` and
mapped with ``task.map`` in ``flows.stages``.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ConfigError, InputError, SealError
from .io import fingerprint_file, write_parquet

# Shards mapped onto threads would import transformers' lazy modules concurrently, which races;
# loading one model at a time per process avoids that (the loss passes still overlap).
_LOAD_LOCK = threading.Lock()

LOSSES_SCHEMA = pa.schema([("sample_id", pa.string()), ("loss", pa.float64()), ("n_tokens", pa.int64())])


@dataclass
class LossPassConfig:
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Base model."})
    adapter: str = field(default="", metadata={"help": "LoRA adapter dir or `seal finetune` output dir (empty: the base model)."})
    max_length: int = field(default=512, metadata={"help": "Token limit per sample."})
    truncation: str = field(default="left", metadata={"help": "Over-long samples: the ranker's truncation policies."})
    train_on: str = field(default="final", metadata={"help": "Which assistant turns carry loss."})
    batch_size: int = field(default=16, metadata={"help": "Samples per forward pass."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16, float16."})
    seed: int = field(default=0, metadata={"help": "Seed of the base model (only 'tiny-random' depends on it)."})
    progress: bool = field(default=False, metadata={"help": "Show a progress bar per shard."})

    def __post_init__(self):
        from .tokenization import check_encode_options

        # The same options as the tokenizer takes (and so as the ranker's config), checked in one place.
        check_encode_options(self.max_length, self.train_on, self.truncation)
        if self.batch_size <= 0:
            raise ConfigError("batch_size must be positive")


def _pool_file(pool: str | os.PathLike) -> Path:
    from .ingest import canonical_paths

    paths = canonical_paths(pool)
    if not paths:
        raise InputError(f"{pool}: not an ingested pool (canonical Parquet); run ingest first")
    return paths[0]


def split_shards(pool: str | os.PathLike, n_shards: int, out_dir: str | os.PathLike) -> list[Path]:
    """Cut the pool into ``n_shards`` contiguous row ranges of near-equal size; returns the shard files.

    Shards are written only when missing or older than the pool, so a rerun reuses them.
    """
    if n_shards < 1:
        raise ConfigError(f"shards must be >= 1, got {n_shards}")
    src = _pool_file(pool)
    pf = pq.ParquetFile(src)
    n = pf.metadata.num_rows
    if n == 0:
        raise InputError(f"{src}: the pool is empty")
    n_shards = min(n_shards, n)
    bounds = np.linspace(0, n, n_shards + 1).round().astype(int)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp = fingerprint_file(src)
    manifest = out / "manifest.json"
    paths = [out / f"shard-{i:05d}.parquet" for i in range(n_shards)]
    if manifest.exists():
        try:
            m = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            m = {}
        if m.get("fingerprint") == fp and m.get("n_shards") == n_shards and all(p.exists() for p in paths):
            return paths
    table = pq.read_table(src)
    for i, p in enumerate(paths):
        write_parquet(p, table.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i])))
    for stale in out.glob("shard-*.parquet"):
        if stale not in paths:
            stale.unlink()
    manifest.write_text(json.dumps({"pool": str(src), "fingerprint": fp, "n_shards": n_shards,
                                    "rows": [int(b) for b in bounds]}, indent=2))
    return paths


def shard_losses(shard: str | os.PathLike, out: str | os.PathLike, cfg: LossPassConfig) -> Path:
    """Per-sample loss of every sample of one shard; NaN for samples tokenisation drops."""
    import torch

    from .ingest import load_samples
    from .models import load_adapter, load_model
    from .tokenization import encode_samples, score_losses

    samples = load_samples(str(shard))
    with _LOAD_LOCK:
        if cfg.adapter:
            from .generate import resolve_adapter

            adapter_dir, _ = resolve_adapter(cfg.adapter)
            model, tok = load_adapter(cfg.model, str(adapter_dir), device=cfg.device, dtype=cfg.dtype)
        else:
            model, tok = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, seed=cfg.seed)
    enc, _dropped = encode_samples(tok, samples, cfg.max_length, cfg.train_on, cfg.truncation)
    losses = score_losses(model, tok, enc, cfg.batch_size, progress=cfg.progress, desc=f"loss {Path(shard).stem}")
    by_id = {e.sample_id: (float(l), e.n_tokens) for e, l in zip(enc, losses)}
    ids = [s["sample_id"] for s in samples]
    table = pa.table({
        "sample_id": ids,
        "loss": [by_id.get(i, (math.nan, 0))[0] for i in ids],
        "n_tokens": [by_id.get(i, (math.nan, 0))[1] for i in ids],
    }, schema=LOSSES_SCHEMA)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return write_parquet(out, table)


def merge_losses(parts: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Concatenate shard results, sorted by ``sample_id``; a repeated id is an error."""
    if not parts:
        raise SealError("no shard results to merge")
    table = pa.concat_tables([pq.read_table(p, schema=LOSSES_SCHEMA) for p in parts])
    table = table.sort_by("sample_id")
    ids = table.column("sample_id").to_numpy(zero_copy_only=False)
    if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
        raise InputError("the pool has a sample_id more than once; ingest it to drop duplicates")
    return write_parquet(out, table)


def losses_to_scores(losses: str | os.PathLike, out: str | os.PathLike, metadata: dict | None = None) -> Path:
    """A scores file from per-sample losses (the ``loss`` baseline: lower loss ranks higher)."""
    from .ranker.scores import write_scores

    t = pq.read_table(losses)
    loss = np.asarray(t.column("loss").to_numpy(zero_copy_only=False), dtype=np.float64)
    scores = -loss
    # The same weight scale as `seal rank --method loss`: N * softmax(score), 0 for unscored samples.
    s = np.where(np.isnan(scores), -np.inf, scores)
    if np.isfinite(s).any():
        e = np.exp(s - np.max(s[np.isfinite(s)]))
        weights = len(s) * e / e.sum()
    else:
        weights = np.full(len(s), np.nan)
    return write_scores(out, t.column("sample_id").to_pylist(), scores, weights, loss,
                        {"method": "loss", "sharded": True, **(metadata or {})})
