"""Putting the selected rows in rank order within a memory budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

_RANK_COL = "__seal_rank"


def bucket_rows(budget_bytes: int, row_bytes: float) -> int:
    """Rows per rank-range bucket that fit the memory budget."""
    # Half the budget: sorting a bucket holds it twice for a moment (read chunks + combined copy).
    return max(1024, int(budget_bytes // 2 // max(row_bytes, 1.0)))


class RankBuckets:
    """Selected rows grouped by rank range; spilled to Arrow IPC files when more than one range."""

    def __init__(self, n_buckets: int, bucket_rows: int, budget_bytes: int, tmp_dir: Path, schema: pa.Schema):
        self.n = n_buckets
        self.rows = bucket_rows
        self.budget = budget_bytes
        self.tmp = tmp_dir
        self.schema = schema.append(pa.field(_RANK_COL, pa.int64()))
        self.buf: list[list[pa.Table]] = [[] for _ in range(n_buckets)]
        self.buffered = 0
        self.writers: dict[int, tuple[Any, Any]] = {}

    def add(self, table: pa.Table, ranks: np.ndarray) -> None:
        table = table.append_column(_RANK_COL, pa.array(ranks, pa.int64()))
        if self.n == 1:
            self.buf[0].append(table)
            return
        b = (ranks - 1) // self.rows
        for j in np.unique(b):
            part = table.filter(pa.array(b == j))
            self.buf[j].append(part)
            self.buffered += part.nbytes
        if self.buffered > self.budget // 2:
            self.flush()

    def _bucket_file(self, j: int) -> Path:
        return self.tmp / f"bucket-{j:05d}.arrow"

    def flush(self) -> None:
        for j, parts in enumerate(self.buf):
            if not parts:
                continue
            if j not in self.writers:
                # Arrow IPC, uncompressed: spilled rows are written and read back at memory speed.
                sink = pa.OSFile(str(self._bucket_file(j)), "wb")
                self.writers[j] = (sink, pa.ipc.new_file(sink, self.schema))
            self.writers[j][1].write_table(pa.concat_tables(parts))
            self.buf[j] = []
        self.buffered = 0

    def sorted_tables(self, chunk_rows: int) -> Iterator[pa.Table]:
        """Selected rows in rank order, ``chunk_rows`` at a time (one bucket in memory at once)."""
        if self.n > 1:
            self.flush()
            for sink, w in self.writers.values():
                w.close()
                sink.close()
        for j in range(self.n):
            if self.n == 1:
                t = pa.concat_tables(self.buf[0]) if self.buf[0] else None
                self.buf[0] = []
            else:
                f = self._bucket_file(j)
                t = pa.ipc.open_file(pa.memory_map(str(f))).read_all() if f.exists() else None
            if t is None or t.num_rows == 0:
                continue
            t = t.combine_chunks()
            order = np.argsort(t.column(_RANK_COL).to_numpy(), kind="stable")
            t = t.drop_columns([_RANK_COL])
            # Taking a slice of the order at a time avoids a second full copy of the bucket.
            for off in range(0, len(order), chunk_rows):
                yield t.take(pa.array(order[off : off + chunk_rows]))
            del t
