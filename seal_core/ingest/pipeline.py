"""Streaming ingestion: read every input, normalise, check, deduplicate, write Parquet.

Memory stays bounded: records are read one at a time (JSON arrays excepted,
which are parsed whole), samples are buffered as flat column lists and written
one row group at a time, and duplicate detection keeps only a 12-byte digest
per kept sample.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError
from ..faults import fault_point
from ..io import atomic_path, save_resolved_config, write_json
from ..schema import sample_digest
from .checks import conversation_checks
from .config import IngestConfig
from .formats import RECORD_FORMATS, RowReject, detect_format
from .readers import Reader, Source, resolve, sample_records
from .serialise import canonical_metadata, clean_text, dump_metadata, raw_text
from .stats import FileStats, IngestResult
from .writers import RejectWriter, SampleWriter

log = logging.getLogger("seal_core.ingest")

_DETECT_RECORDS = 100
# Records between progress bar updates (a power of two minus one: a mask).
_PROGRESS_EVERY = 0x1FFF


def _prepare(inputs: Sequence[str], cfg: IngestConfig) -> list[Source]:
    """Resolve every input and settle its format before anything is written."""
    sources: list[Source] = []
    for given in inputs:
        for src in resolve(str(given), split=cfg.split, csv_header=cfg.csv_header):
            if src.kind in ("csv", "tsv") and not src.csv_has_header:
                if cfg.format not in ("auto", "prompt-response"):
                    raise InputError(
                        f"{src.name}: has no header row, so its columns are read as prompt[,response], "
                        f"which does not fit --format {cfg.format} (use --csv-header yes if the first row is a header)"
                    )
                src.format = "prompt-response"
                src.format_note = "CSV without a header: column 1 = prompt, column 2 = response"
            elif cfg.format != "auto":
                src.format, src.format_note = cfg.format, "given"
            else:
                src.format, note = detect_format(sample_records(src, _DETECT_RECORDS), src.name)
                src.format_note = f"detected from {note}"
            shown = RECORD_FORMATS[src.format].label(cfg)
            log.info("%s: %s, format %s (%s)", src.name, src.describe(), shown, src.format_note)
            sources.append(src)
    return sources


class _FileProgress:
    """A progress bar of one source, in bytes or rows read (shown only on a terminal)."""

    def __init__(self, src: Source, reader: Reader, cfg: IngestConfig):
        from tqdm.auto import tqdm

        name = src.name if len(src.name) <= 40 else "…" + src.name[-39:]
        self.reader = reader
        self.shown = 0
        self.bar = tqdm(total=reader.total or None, unit=reader.unit, unit_scale=True, desc=name, file=sys.stderr,
                        leave=False, disable=None if cfg.progress else True)

    def update(self) -> None:
        pos = self.reader.position()
        self.bar.update(pos - self.shown)
        self.shown = pos

    def finish(self) -> None:
        if self.reader.total:
            self.bar.update(max(0, self.reader.total - self.shown))

    def close(self) -> None:
        self.bar.close()


def _log_outcome(stats: FileStats) -> None:
    if stats.rows_read == 0:
        log.warning("%s: no records", stats.source)
    elif stats.kept == 0:
        top = ", ".join(f"{r} {v}" + (f" ({f!r})" if f else "") for (r, f), v in stats.rejected_fields.most_common(3))
        log.warning("%s: no sample kept out of %d rows (%s)", stats.source, stats.rows_read,
                    top or f"{stats.duplicates} duplicates")


def _ingest_source(src: Source, cfg: IngestConfig, seen: set, sw: SampleWriter, rw: RejectWriter) -> FileStats:
    """Every record of one source: parsed by its format, checked, deduplicated against ``seen``, written."""
    fmt = RECORD_FORMATS[src.format]
    stats = FileStats(src.name, src.describe(), fmt.label(cfg), src.format_note)
    checks = conversation_checks(fmt.conversation_field(cfg), cfg.max_chars)
    canonical = bool(src.extra.get("canonical")) and src.format == "messages"
    name = src.name
    rejected = stats.rejected_by_reason
    n_read = kept = dups = 0

    def reject(line: int, r: RowReject, raw: Any, rec: Any) -> None:
        rejected[r.reason] += 1
        stats.rejected_fields[(r.reason, r.field)] += 1
        rw.add(name, line, clean_text(r.field), r.reason, clean_text(r.detail), raw_text(raw, rec, src))

    parse = fmt.parse
    reader = Reader(src)
    progress = _FileProgress(src, reader, cfg)
    try:
        for line, rec, raw in reader:
            n_read += 1
            if not n_read & _PROGRESS_EVERY:
                progress.update()
            if type(rec) is not dict:
                if isinstance(rec, RowReject):
                    reject(line, rec, raw, None)
                else:
                    reject(line, RowReject("not_an_object", "", f"expected a JSON object, got {type(rec).__name__}"),
                           raw, rec)
                continue
            try:
                turns, other_fields = parse(rec, cfg)
                digest = sample_digest(turns)
                n_chars = sum([len(content) for _, content in turns])
                for check in checks:
                    ok, failure = check(turns, n_chars)
                    if not ok:
                        raise failure
                metadata = canonical_metadata(other_fields) if canonical else dump_metadata(other_fields)
            except RowReject as r:
                reject(line, r, raw, rec)
                continue
            except UnicodeEncodeError:
                reject(line, RowReject("invalid_utf8", "", "record holds bytes that are not valid UTF-8"), raw, rec)
                continue
            if digest in seen:
                dups += 1
                continue
            seen.add(digest)
            kept += 1
            sw.add(digest.hex(), turns, metadata, n_chars, name)
        sw.flush(name)
        progress.finish()
    finally:
        progress.close()
    stats.rows_read, stats.kept, stats.duplicates = n_read, kept, dups
    _log_outcome(stats)
    return stats


def ingest(inputs: Sequence[str] | str, out_dir: str | Path, config: IngestConfig | None = None) -> IngestResult:
    """Read ``inputs`` into ``out_dir``/samples.parquet (+ rejects, summary, config).

    Every input is resolved and its format settled first, so an unreadable input
    fails the run (``InputError``) before any output is written. ``summary.json``
    is written last: its presence marks a finished run.
    """
    cfg = config or IngestConfig()
    if isinstance(inputs, (str, Path)):
        inputs = [str(inputs)]
    inputs = [str(i) for i in inputs]
    if not inputs:
        raise InputError("no input given")
    t0 = time.perf_counter()
    sources = _prepare(inputs, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary_path.unlink(missing_ok=True)
    samples_path, rejects_path = out / "samples.parquet", out / "rejects.parquet"
    seen: set[bytes] = set()
    files: list[FileStats] = []
    # Parsed records are acyclic, so reference counting frees them; the cyclic GC would
    # only rescan the buffered batches over and over (about 20% of the run time).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with atomic_path(samples_path) as tmp_samples, atomic_path(rejects_path) as tmp_rejects:
            sw = SampleWriter(tmp_samples, cfg.row_group_size)
            rw = RejectWriter(tmp_rejects)
            try:
                for src in sources:
                    files.append(_ingest_source(src, cfg, seen, sw, rw))
                    fault_point("ingest:source")
            finally:
                sw.close()
                rw.close()
    finally:
        if gc_was_enabled:
            gc.enable()
    config_path = save_resolved_config(out, cfg)
    by_reason: Counter = Counter()
    for f in files:
        by_reason.update(f.rejected_by_reason)
    result = IngestResult(
        out_dir=out,
        samples_path=samples_path,
        rejects_path=rejects_path,
        summary_path=summary_path,
        config_path=config_path,
        rows_read=sum(f.rows_read for f in files),
        kept=sum(f.kept for f in files),
        rejected=sum(by_reason.values()),
        duplicates=sum(f.duplicates for f in files),
        rejected_by_reason=dict(sorted(by_reason.items())),
        files=[f.to_dict() for f in files],
        seconds=time.perf_counter() - t0,
    )
    write_json(summary_path, result.to_dict())
    return result
