"""Reading canonical samples back: the entry point of every later stage."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..schema import CANONICAL_SCHEMA
from .config import IngestConfig
from .pipeline import ingest

log = logging.getLogger("seal_core.ingest")

CANONICAL_COLUMNS = tuple(CANONICAL_SCHEMA.names)


def _canonical_schema_problem(schema: pa.Schema) -> str | None:
    for f in CANONICAL_SCHEMA:
        idx = schema.get_field_index(f.name)
        if idx < 0:
            return f"no column '{f.name}'"
        got = schema.field(idx).type
        if got != f.type and not (f.name == "messages" and pa.types.is_list(got) and got.value_type == f.type.value_type):
            return f"column '{f.name}' has type {got}, expected {f.type}"
    return None


def _canonical_file(path: Path) -> bool:
    """True for a Parquet file in the canonical schema (extra columns allowed)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"PAR1":
                return False
        schema = pq.read_schema(path)
    except (OSError, ValueError):
        return False
    return _canonical_schema_problem(schema) is None


def canonical_paths(path: str | Path) -> list[Path] | None:
    """The canonical Parquet file(s) behind ``path``, or None if it is raw input.

    An ingest output directory yields its ``samples.parquet``, a ``seal select``
    output directory its ``selected.parquet``; a canonical Parquet file yields itself.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("samples.parquet", "selected.parquet"):
            s = p / name
            if s.is_file() and _canonical_file(s):
                return [s]
        return None
    if p.is_file() and _canonical_file(p):
        return [p]
    return None


def iter_canonical_batches(path: str | Path | Sequence[str | Path], batch_size: int = 10_000) -> Iterator[pa.RecordBatch]:
    """Stream canonical samples as record batches (the four canonical columns only).

    ``path``: an ingest output directory, a canonical Parquet file, or a list of them.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    files: list[Path] = []
    for p in paths:
        found = canonical_paths(p)
        if found is None:
            pp = Path(p)
            if not pp.exists():
                raise InputError(f"{p}: no such file or directory")
            if pp.is_dir():
                raise InputError(f"{p}: not an ingest output directory (no canonical samples.parquet)")
            why = "not a Parquet file"
            try:
                why = _canonical_schema_problem(pq.read_schema(pp)) or why
            except (OSError, ValueError):
                pass
            raise InputError(f"{p}: not a canonical samples file ({why}); run `seal ingest` on it first")
        files.extend(found)
    for f in files:
        try:
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(batch_size=batch_size, columns=list(CANONICAL_COLUMNS)):
                yield batch.cast(CANONICAL_SCHEMA) if batch.schema != CANONICAL_SCHEMA else batch
        except (OSError, ValueError) as e:
            raise InputError(f"{f}: cannot read ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def load_samples(path: str | Path, config: IngestConfig | None = None) -> list[dict]:
    """All samples behind ``path`` as dicts (sample_id, messages, source, metadata).

    ``path`` may be an ingest output directory, a canonical Parquet file, or any
    raw input ``seal ingest`` reads (ingested on the fly into a temporary
    directory, format detected unless ``config`` says otherwise).
    """
    if canonical_paths(path) is not None:
        rows: list[dict] = []
        for batch in iter_canonical_batches(path):
            rows.extend(batch.to_pylist())
        return rows
    cfg = config or IngestConfig(progress=False)
    with tempfile.TemporaryDirectory(prefix="seal-ingest-") as tmp:
        result = ingest([str(path)], tmp, cfg)
        if result.kept == 0:
            reasons = ", ".join(f"{k} {v}" for k, v in result.rejected_by_reason.items())
            raise InputError(
                f"{path}: no valid samples ({result.rows_read} rows read"
                + (f"; rejected: {reasons}" if reasons else "")
                + (f"; {result.duplicates} duplicates" if result.duplicates else "")
                + ")"
            )
        if result.rejected:
            log.warning("%s: %d of %d rows rejected (%s)", path, result.rejected, result.rows_read,
                        ", ".join(f"{k} {v}" for k, v in result.rejected_by_reason.items()))
        return pq.read_table(result.samples_path).to_pylist()


def load_required_samples(path: str, what: str) -> list[dict]:
    """``load_samples`` for a stage input that must exist and hold samples; errors name ``what``."""
    if not path:
        raise InputError(f"no {what} given")
    if not Path(path).expanduser().exists() and "://" not in path:
        raise InputError(f"{what} not found: {path}")
    samples = load_samples(path)
    if not samples:
        raise InputError(f"{what} {path} holds no valid samples")
    return samples
