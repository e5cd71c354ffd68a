"""Streaming ingestion: read every input, normalise, deduplicate, write Parquet.

Memory stays bounded: records are read one at a time (JSON arrays excepted,
which are parsed whole), samples are buffered as flat column lists and written
one row group at a time, and duplicate detection keeps only a 12-byte digest
per kept sample.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Any, Sequence

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..io import atomic_path, save_resolved_config, write_json
from ..schema import CANONICAL_SCHEMA, MESSAGE_TYPE
from .config import IngestConfig
from .formats import NORMALISERS, TURN_LIST_FORMATS, RowReject, detect_format
from .readers import Reader, Source, csv_raw_text, resolve, sample_records

log = logging.getLogger("seal_core.ingest")

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

RAW_MAX_CHARS = 2000
_DETECT_RECORDS = 100
# A row group is also cut when its text passes this size, so a batch of very long
# samples can neither exhaust memory nor overflow Arrow's 2 GiB string offsets.
_MAX_BATCH_CHARS = 128 << 20
_MESSAGES_TYPE = pa.list_(MESSAGE_TYPE)


def _len_prefixed(s: str) -> bytes:
    b = s.encode("utf-8")
    return len(b).to_bytes(8, "little") + b


# Same byte layout as schema.compute_sample_id, prebuilt for the three roles.
_ROLE_BYTES = {r: _len_prefixed(r) for r in ("system", "user", "assistant")}


@dataclass
class FileStats:
    source: str
    type: str
    format: str
    format_note: str = ""
    rows_read: int = 0
    kept: int = 0
    duplicates: int = 0
    rejected_by_reason: Counter = field(default_factory=Counter)
    rejected_fields: Counter = field(default_factory=Counter)  # (reason, field), for the log only

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "type": self.type,
            "format": self.format,
            "format_note": self.format_note,
            "rows_read": self.rows_read,
            "kept": self.kept,
            "rejected": self.rejected,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "duplicates": self.duplicates,
        }


@dataclass
class IngestResult:
    """What :func:`ingest` wrote and counted."""

    out_dir: Path
    samples_path: Path
    rejects_path: Path
    summary_path: Path
    config_path: Path
    rows_read: int
    kept: int
    rejected: int
    duplicates: int
    rejected_by_reason: dict[str, int]
    files: list[dict[str, Any]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "kept": self.kept,
            "rejected": self.rejected,
            "rejected_by_reason": self.rejected_by_reason,
            "duplicates": self.duplicates,
            "files": self.files,
            "seconds": round(self.seconds, 3),
            "outputs": {
                "samples": str(self.samples_path),
                "rejects": str(self.rejects_path),
                "summary": str(self.summary_path),
                "config": str(self.config_path),
            },
        }


class _SampleWriter:
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


class _RejectWriter:
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


def _clean(s: str) -> str:
    """Text safe to store: lone surrogates (undecodable input bytes) become U+FFFD."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _json_default(o: Any) -> Any:
    if isinstance(o, (bytes, bytearray)):
        return bytes(o).decode("utf-8", "replace")
    return str(o)


def _raw_text(raw: Any, rec: Any, src: Source) -> str:
    if type(raw) is bytes:
        s = raw[: RAW_MAX_CHARS * 4].decode("utf-8", "replace").rstrip("\r\n")
    elif type(raw) is list:
        s = csv_raw_text(raw, "\t" if src.kind == "tsv" else ",")
    elif rec is not None and not isinstance(rec, RowReject):
        try:
            s = orjson.dumps(rec, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:
            s = json.dumps(rec, default=_json_default, ensure_ascii=False)
    else:
        s = ""
    return _clean(s[:RAW_MAX_CHARS])


def _dump_meta(meta: dict) -> str:
    try:
        # decode() also drops the 4 KiB buffer orjson allocates for every output
        return orjson.dumps(meta, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError as e:
        if "surrogates" in str(e):
            raise RowReject("invalid_utf8", "", "record holds bytes that are not valid UTF-8") from None
        # e.g. integers beyond 64 bits, which orjson refuses and json writes exactly
        text = json.dumps(meta, default=_json_default, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RowReject("invalid_utf8", "", "record holds text that is not valid UTF-8") from None
        return text


def _canonical_meta(meta: dict) -> str:
    """Metadata of a re-ingested canonical row: its original metadata, not the row's columns."""
    m = meta.get("metadata")
    if type(m) is str:
        try:
            if type(orjson.loads(m)) is dict:
                return m
        except orjson.JSONDecodeError:
            pass
    return _dump_meta(meta)


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
            shown = f"hh ({cfg.hh_field})" if src.format == "hh" else src.format
            log.info("%s: %s, format %s (%s)", src.name, src.describe(), shown, src.format_note)
            sources.append(src)
    return sources


def _progress_bar(src: Source, reader: Reader, cfg: IngestConfig):
    from tqdm.auto import tqdm

    name = src.name if len(src.name) <= 40 else "…" + src.name[-39:]
    return tqdm(
        total=reader.total or None,
        unit=reader.unit,
        unit_scale=True,
        desc=name,
        file=sys.stderr,
        leave=False,
        disable=None if cfg.progress else True,  # None: shown only on a terminal
    )


def _ingest_source(src: Source, cfg: IngestConfig, seen: set, sw: _SampleWriter, rw: _RejectWriter) -> FileStats:
    stats = FileStats(src.name, src.describe(), f"hh ({cfg.hh_field})" if src.format == "hh" else src.format,
                      src.format_note)
    reader = Reader(src)
    norm = NORMALISERS[src.format]
    max_chars = cfg.max_chars
    role_bytes = _ROLE_BYTES
    rejected = stats.rejected_by_reason
    name = src.name
    row_group_size = sw.row_group_size
    ids, all_turns, metas = sw.ids, sw.turns, sw.metas
    n_read = kept = dups = 0
    batch_chars = 0
    bar = _progress_bar(src, reader, cfg)
    last_pos = 0

    def reject(line: int, r: RowReject, raw: Any, rec: Any) -> None:
        rejected[r.reason] += 1
        stats.rejected_fields[(r.reason, r.field)] += 1
        rw.add(name, line, _clean(r.field), r.reason, _clean(r.detail), _raw_text(raw, rec, src))

    # The field named by conversation-level rejects (alpaca and prompt-response always
    # make a user + assistant pair, so they never hit those checks).
    conv_field = {"messages": "messages", "sharegpt": "conversations", "hh": cfg.hh_field}.get(src.format, "")
    fast = TURN_LIST_FORMATS.get(src.format)
    canonical = bool(src.extra.get("canonical")) and src.format == "messages"
    list_key, role_key, content_key, role_map = fast if fast else ("", "", "", {})
    try:
        for line, rec, raw in reader:
            n_read += 1
            if not n_read & 0x1FFF:
                pos = reader.position()
                bar.update(pos - last_pos)
                last_pos = pos
            if type(rec) is not dict:
                if isinstance(rec, RowReject):
                    reject(line, rec, raw, None)
                else:
                    reject(line, RowReject("not_an_object", "", f"expected a JSON object, got {type(rec).__name__}"), raw, rec)
                continue
            try:
                turns = None
                if fast:
                    # Inlined common case (known roles, non-empty string contents, alternating
                    # speakers): one pass that also builds the sample_id bytes. Anything else
                    # takes the normaliser below, which merges, drops and names bad fields.
                    items = rec.get(list_key)
                    if type(items) is list:
                        turns, parts, nchars, prev, has_user = [], [], 0, None, False
                        try:
                            for m in items:
                                role = role_map[m[role_key]]
                                content = m[content_key].strip()
                                if not content or role == prev:
                                    turns = None
                                    break
                                if role == "user":
                                    has_user = True
                                nchars += len(content)
                                b = content.encode("utf-8")
                                parts += (role_bytes[role], len(b).to_bytes(8, "little"), b)
                                turns.append((role, content))
                                prev = role
                        except (KeyError, TypeError, AttributeError):
                            turns = None
                    if turns:
                        meta = rec.copy()
                        del meta[list_key]
                    else:
                        turns = None
                if turns is None:
                    turns, meta = norm(rec, cfg)
                    # Byte layout of schema.compute_sample_id, built in one buffer and hashed once.
                    parts, nchars, has_user = [], 0, False
                    for role, content in turns:
                        if role == "user":
                            has_user = True
                        nchars += len(content)
                        b = content.encode("utf-8")
                        parts += (role_bytes[role], len(b).to_bytes(8, "little"), b)
                if not turns:
                    raise RowReject("no_final_assistant_turn", conv_field, "conversation has no turn with content")
                if turns[-1][0] != "assistant":
                    raise RowReject("no_final_assistant_turn", conv_field,
                                    f"conversation ends with a {turns[-1][0]} turn, not an assistant turn")
                if not has_user:
                    raise RowReject("no_user_turn", conv_field, "conversation has no user turn")
                if nchars > max_chars:
                    raise RowReject("too_long", "", f"{nchars} characters, over the limit of {max_chars} (max_chars)")
                if canonical:
                    meta_s = _canonical_meta(meta)
                else:
                    meta_s = _dump_meta(meta) if meta else "{}"
            except RowReject as r:
                reject(line, r, raw, rec)
                continue
            except UnicodeEncodeError:
                reject(line, RowReject("invalid_utf8", "", "record holds bytes that are not valid UTF-8"), raw, rec)
                continue
            digest = blake2b(b"".join(parts), digest_size=12).digest()
            if digest in seen:
                dups += 1
                continue
            seen.add(digest)
            kept += 1
            ids.append(digest.hex())
            all_turns.append(turns)
            metas.append(meta_s)
            batch_chars += nchars
            if len(ids) >= row_group_size or batch_chars >= _MAX_BATCH_CHARS:
                sw.flush(name)
                ids, all_turns, metas = sw.ids, sw.turns, sw.metas
                batch_chars = 0
        sw.flush(name)
        if reader.total:
            bar.update(max(0, reader.total - last_pos))
    finally:
        bar.close()
    stats.rows_read, stats.kept, stats.duplicates = n_read, kept, dups
    if n_read == 0:
        log.warning("%s: no records", name)
    elif kept == 0:
        top = ", ".join(f"{r} {v}" + (f" ({f!r})" if f else "") for (r, f), v in stats.rejected_fields.most_common(3))
        log.warning("%s: no sample kept out of %d rows (%s)", name, n_read, top or f"{dups} duplicates")
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
            sw = _SampleWriter(tmp_samples, cfg.row_group_size)
            rw = _RejectWriter(tmp_rejects)
            try:
                for src in sources:
                    files.append(_ingest_source(src, cfg, seen, sw, rw))
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


def format_summary(result: IngestResult) -> str:
    """The human-readable summary printed by ``seal ingest``."""
    rows = [(f["source"], f["type"], f["format"], f["rows_read"], f["kept"], f["rejected"], f["duplicates"])
            for f in result.files]
    w = max([len("source")] + [len(r[0]) for r in rows])
    wt = max([len("type")] + [len(r[1]) for r in rows])
    wf = max([len("format")] + [len(r[2]) for r in rows])
    head = f"{'source':<{w}}  {'type':<{wt}}  {'format':<{wf}}  {'read':>9}  {'kept':>9}  {'rejected':>9}  {'duplicates':>10}"
    lines = [head, "-" * len(head)]
    for f, r in zip(result.files, rows):
        lines.append(f"{r[0]:<{w}}  {r[1]:<{wt}}  {r[2]:<{wf}}  {r[3]:>9,}  {r[4]:>9,}  {r[5]:>9,}  {r[6]:>10,}")
        lines.append(f"    format {f['format']}: {f['format_note']}")
        if f["rejected_by_reason"]:
            lines.append(" " * 4 + "rejected: " + ", ".join(f"{k} {v:,}" for k, v in f["rejected_by_reason"].items()))
    lines.append("-" * len(head))
    lines.append(
        f"{'total':<{w}}  {'':<{wt}}  {'':<{wf}}  {result.rows_read:>9,}  {result.kept:>9,}  {result.rejected:>9,}  {result.duplicates:>10,}"
    )
    if result.rejected_by_reason:
        lines.append("rejected by reason: " + ", ".join(f"{k} {v:,}" for k, v in result.rejected_by_reason.items()))
    lines.append(f"samples: {result.samples_path} ({result.kept:,} rows)")
    lines.append(f"rejects: {result.rejects_path} ({result.rejected:,} rows)")
    lines.append(f"summary: {result.summary_path}")
    lines.append(f"config:  {result.config_path}")
    lines.append(f"time:    {result.seconds:.1f}s")
    return "\n".join(lines)
