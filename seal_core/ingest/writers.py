"""Writing ingestion's two Parquet outputs: the kept samples and the rejected rows."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..faults import fault_point
from ..schema import CANONICAL_SCHEMA, MESSAGE_TYPE

REJECTS_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("line", pa.int64()),
        ("field", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.string()),
    ]
)

_MESSAGES_TYPE = pa.list_(MESSAGE_TYPE)
# A row group is also cut when its text passes this size, so a batch of very long
# samples can neither exhaust memory nor overflow Arrow's 2 GiB string offsets.
_MAX_BATCH_CHARS = 128 << 20


class SampleWriter:
    """Buffers samples column-wise and writes them one row group at a time.

    Parquet encoding and compression run in a background thread (pyarrow releases
    the GIL there) while the main thread parses the next batch; at most one batch
    is in flight, so memory stays bounded.
    """

    def __init__(self, path: Path, row_group_size: int):
        # Dictionary-encode only the low-cardinality columns; trying it on texts and ids wastes time.
        self.writer = pq.ParquetWriter(str(path), CANONICAL_SCHEMA,
                                       use_dictionary=["source", "messages.list.element.role"])
        self.row_group_size = row_group_size
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seal-ingest-writer")
        self._pending: Future | None = None
        self._reset()

    def _reset(self) -> None:
        self.ids: list[str] = []
        self.turns: list[list[tuple[str, str]]] = []
        self.metas: list[str] = []
        self.chars = 0

    def add(self, sample_id: str, turns: list[tuple[str, str]], metadata: str, n_chars: int, source: str) -> None:
        """Buffer one sample of ``source``; a full batch is handed to the writer thread."""
        self.ids.append(sample_id)
        self.turns.append(turns)
        self.metas.append(metadata)
        self.chars += n_chars
        if len(self.ids) >= self.row_group_size or self.chars >= _MAX_BATCH_CHARS:
            self.flush(source)

    def flush(self, source: str) -> None:
        n = len(self.ids)
        if not n:
            return
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(self.ids, pa.string()),
                pa.array(self.turns, _MESSAGES_TYPE),
                pa.repeat(pa.scalar(source, pa.string()), n),
                pa.array(self.metas, pa.string()),
            ],
            schema=CANONICAL_SCHEMA,
        )
        self._reset()
        self._wait()
        self._pending = self._pool.submit(self.writer.write_batch, batch)
        fault_point("ingest:batch")

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self._wait()
        finally:
            self._pool.shutdown(wait=True)
            self.writer.close()


class RejectWriter:
    """Rows of ``rejects.parquet``, written ``batch_rows`` at a time."""

    def __init__(self, path: Path, batch_rows: int = 10_000):
        self.writer = pq.ParquetWriter(str(path), REJECTS_SCHEMA)
        self.batch_rows = batch_rows
        self.rows: list[tuple] = []

    def add(self, source: str, line: int, fld: str, reason: str, detail: str, raw: str) -> None:
        self.rows.append((source, line, fld, reason, detail, raw))
        if len(self.rows) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        cols = list(zip(*self.rows))
        self.writer.write_batch(
            pa.RecordBatch.from_arrays(
                [pa.array(c, t.type) for c, t in zip(cols, REJECTS_SCHEMA)], schema=REJECTS_SCHEMA
            )
        )
        self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()
