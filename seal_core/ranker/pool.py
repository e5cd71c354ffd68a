"""The ranker's pool: its sorted sample ids read up front, its conversations streamed shard by shard.

A canonical pool (an ingest output, a canonical Parquet file) is never loaded whole: only the
``sample_id`` column is read to order and check the pool, and tokenisation reads the rows one
Arrow batch at a time. A raw input is ingested first, into memory, as every stage does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..encoded import EncodedPool, encode_pool
from ..errors import InputError, SealError
from ..ingest import canonical_paths, iter_canonical_batches, load_required_samples

# Rows tokenised per shard: large enough that per-shard overhead vanishes, small enough that one
# shard's Python lists of token ids stay a few MB.
SHARD_ROWS = 10_000


class RankPool:
    """The pool behind ``path``; ``sample_ids`` is sorted and unique."""

    def __init__(self, path: str, ids: pa.Array, files: Optional[list[Path]], rows: Optional[list[dict]]):
        self.path = path
        self._ids = ids
        self.sample_ids: list[str] = ids.to_pylist()
        self._files = files
        self._rows = rows

    def __len__(self) -> int:
        return len(self.sample_ids)

    def samples(self) -> list[dict]:
        """Every sample as a dict, sorted by ``sample_id`` (for methods that need the raw text)."""
        if self._rows is not None:
            return self._rows
        rows = load_required_samples(self.path, "pool")
        rows.sort(key=lambda s: s["sample_id"])
        return rows

    def shards(self) -> Iterator[list[dict]]:
        """The samples as dicts (``sample_id`` and ``messages`` at least), ``SHARD_ROWS`` at a time."""
        if self._rows is not None:
            for i in range(0, len(self._rows), SHARD_ROWS):
                yield self._rows[i: i + SHARD_ROWS]
            return
        for batch in iter_canonical_batches(self._files, batch_size=SHARD_ROWS):
            # The metadata column can be large and tokenisation never reads it.
            yield pa.Table.from_batches([batch]).select(["sample_id", "messages"]).to_pylist()

    def encode(self, tokenizer, max_length: int, train_on: str, truncation: str) -> tuple[EncodedPool, list[dict]]:
        """The tokenised pool sorted by ``sample_id``, and the rejects (``{"sample_id", "reason"}``)."""
        return encode_pool(tokenizer, self.shards(), max_length, train_on, truncation)

    def positions(self, encoded: EncodedPool) -> np.ndarray:
        """Index into ``sample_ids`` of each encoded sample."""
        return pc.index_in(encoded.sample_ids, value_set=self._ids).to_numpy(zero_copy_only=False).astype(np.int64)


def _read_ids(files: list[Path]) -> pa.Array:
    chunks = []
    for f in files:
        try:
            # ParquetFile, not read_table: read_table loads pyarrow.dataset, ~50 MB of RSS for one column.
            chunks.extend(pq.ParquetFile(f).read(columns=["sample_id"]).column(0).chunks)
        except (OSError, ValueError) as e:
            raise InputError(f"{f}: cannot read ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())


def open_pool(path: str, what: str = "pool") -> RankPool:
    """Open the pool at ``path``: errors as :func:`~seal_core.ingest.load_required_samples` raises them."""
    if not path:
        raise InputError(f"no {what} given")
    if not Path(path).expanduser().exists() and "://" not in path:
        raise InputError(f"{what} not found: {path}")
    files = canonical_paths(path)
    rows = None
    if files is None:
        rows = load_required_samples(path, what)
        # Sorting by id makes every result independent of the pool's file order.
        rows.sort(key=lambda s: s["sample_id"])
        ids = pa.array([s["sample_id"] for s in rows], pa.string())
    else:
        ids = _read_ids(files)
        if not len(ids):
            raise InputError(f"{what} {path} holds no valid samples")
        if ids.null_count:
            raise InputError(f"{what} {path} has rows without a sample_id; ingest it first")
        ids = ids.take(pc.sort_indices(ids))
    if len(ids) > 1 and pc.any(pc.equal(ids[1:], ids[:-1])).as_py():
        raise SealError(f"{what} {path} has duplicate sample_ids; ingest it first to drop duplicates")
    return RankPool(path, ids, files, rows)


__all__ = ["RankPool", "SHARD_ROWS", "open_pool"]
