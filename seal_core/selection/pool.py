"""Reading a pool: canonical Parquet streamed from disk, anything else ingested into memory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..schema import CANONICAL_SCHEMA
from .score_index import READ_BUFFER

# Rows read to measure the in-memory size of a row.
_SIZE_PROBE_ROWS = 4096


@dataclass
class Pool:
    """The samples of a pool, read a batch of chosen columns at a time."""

    path: Path
    num_rows: int
    row_bytes: float  # in-memory (Arrow) size of a row, for the memory budget
    _pf: Optional[pq.ParquetFile] = None
    _table: Optional[pa.Table] = None

    def batches(self, columns: list[str] | None, batch_size: int) -> Iterator[pa.RecordBatch]:
        cols = columns or list(CANONICAL_SCHEMA.names)
        if self._pf is not None:
            try:
                yield from self._pf.iter_batches(batch_size=batch_size, columns=cols)
            except (OSError, pa.ArrowInvalid) as e:
                raise InputError(f"cannot read pool {self.path}: {e}") from None
        else:
            assert self._table is not None
            yield from self._table.select(cols).to_batches(max_chunksize=batch_size)


def _canonical_parquet_pool(f: Path) -> Pool | None:
    """The pool of a Parquet file holding the canonical columns, or None if it lacks some."""
    try:
        pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=READ_BUFFER)
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read pool {f}: {e}") from None
    if not all(n in pf.schema_arrow.names for n in CANONICAL_SCHEMA.names):
        return None
    n = pf.metadata.num_rows
    # Measured on the first rows: Parquet's own sizes undercount dictionary-encoded columns.
    row_bytes = 256.0
    if n:
        try:
            first = next(pf.iter_batches(batch_size=_SIZE_PROBE_ROWS, columns=list(CANONICAL_SCHEMA.names)))
        except (OSError, pa.ArrowInvalid) as e:
            raise InputError(f"cannot read pool {f}: {e}") from None
        row_bytes = first.nbytes / max(first.num_rows, 1)
    return Pool(f, n, row_bytes, _pf=pf)


def open_pool(path: str | os.PathLike) -> Pool:
    """The pool at ``path``: an ingest output directory, a canonical Parquet file, or any raw input ingest reads."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"pool not found: {p}")
    f = p / "samples.parquet" if p.is_dir() and (p / "samples.parquet").is_file() else p
    if f.is_file() and f.suffix == ".parquet":
        pool = _canonical_parquet_pool(f)
        if pool is not None:
            return pool
    # Raw files (and non-canonical Parquet) go through ingestion, in memory.
    from ..ingest import load_samples

    samples = load_samples(str(p))
    table = pa.Table.from_pylist(
        [{k: s.get(k) for k in CANONICAL_SCHEMA.names} for s in samples], schema=CANONICAL_SCHEMA
    )
    return Pool(p, table.num_rows, table.nbytes / max(table.num_rows, 1), _table=table)
