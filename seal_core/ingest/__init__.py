"""Ingestion: raw conversation data in many formats -> canonical samples Parquet.

Public API:

- :func:`ingest` - read inputs into ``OUT/samples.parquet``, ``OUT/rejects.parquet``,
  ``OUT/summary.json`` and ``OUT/config.json``;
- :func:`load_samples` - all samples of an ingest output, a canonical Parquet file
  or a raw input, as dicts;
- :func:`iter_canonical_batches` - stream canonical Parquet as record batches.
"""

from .config import FORMATS, REASONS, IngestConfig
from .formats import RowReject, detect_format, parse_hh
from .load import canonical_paths, iter_canonical_batches, load_required_samples, load_samples
from .pipeline import ingest
from .stats import IngestResult, format_summary
from .writers import REJECTS_SCHEMA

__all__ = [
    "FORMATS",
    "REASONS",
    "REJECTS_SCHEMA",
    "IngestConfig",
    "IngestResult",
    "RowReject",
    "canonical_paths",
    "detect_format",
    "format_summary",
    "ingest",
    "iter_canonical_batches",
    "load_required_samples",
    "load_samples",
    "parse_hh",
]
