"""Top-k selection: keep the best-scored pool samples, exactly and in bounded memory.

Semantics (documented in ``seal select --help`` too):

- Candidates are the pool samples that have a score. Scored samples missing
  from the pool, and pool samples missing from the scores, are counted and
  reported (with a warning); they are never selected. Duplicate pool rows
  (same ``sample_id``) are kept once.
- Order is the scores file's ranking: score descending, then ``sample_id``
  ascending (the same rule as :func:`seal_core.ranker.scores.rank_order`); a
  NaN score ranks as ``-inf``. The ``rank`` column of the scores file is not
  trusted: the order is recomputed from ``score`` and ``sample_id``.
- ``top_k``: the first ``min(k, N)`` candidates. ``top_p``: the first
  ``k = floor(p * N + 0.5)`` (nearest integer, halves up), at least 1, where
  N is the number of candidates. ``min_score``: every candidate with
  ``score >= min_score`` (inclusive).

How it streams (10M rows fit in well under a gigabyte besides the rows being
copied): pass 1 reads only ``sample_id`` and ``score`` from the scores file,
as fixed-width byte strings and float64 sorted by id; pass 2 reads only the
pool's ``sample_id`` column and maps every pool row to its score position by
binary search; the threshold is found with ``np.partition`` and ties at the
threshold are resolved by id among the tied rows only; pass 3 streams the pool
rows, keeps the selected ones and distributes them into rank-range buckets
(temporary Arrow files when the selection is larger than the memory budget),
which are then sorted one at a time and appended to ``selected.parquet``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import ConfigError, InputError
from .io import atomic_path, fingerprint_file, save_resolved_config, write_json
from .schema import CANONICAL_SCHEMA

EXPORTS = ("messages", "alpaca", "none")
_RANK_COL = "__seal_rank"
# Rows converted to Python objects at a time when writing the JSONL export.
_EXPORT_CHUNK = 4096
# Streamed reads: without pre-buffering, Arrow would keep every column chunk it has read
# cached until the file is closed (the whole id column of a 10M pool: ~250 MB).
_READ_BUFFER = 1 << 20
_ID_BATCH = 1 << 20


@dataclass
class SelectConfig:
    top_k: Optional[int] = field(default=None, metadata={"help": "Keep the k best-scored samples."})
    top_p: Optional[float] = field(
        default=None,
        metadata={"help": "Keep this fraction of the scored pool: k = floor(p*N + 0.5), at least 1."},
    )
    min_score: Optional[float] = field(default=None, metadata={"help": "Keep every sample with score >= this."})
    export: Literal["messages", "alpaca", "none"] = field(
        default="messages",
        metadata={"help": "Also write selected.jsonl in this form for other trainers ('none': skip)."},
    )
    alpaca_multiturn: Literal["reject", "history"] = field(
        default="reject",
        metadata={
            "help": "Alpaca export of multi-turn conversations: 'reject' lists them in export_rejects.jsonl "
            "(they stay in selected.parquet); 'history' puts earlier turns in a LLaMA-Factory style "
            "'history' field of [user, assistant] pairs."
        },
    )
    batch_size: int = field(default=65536, metadata={"help": "Rows per streamed record batch."})
    memory_mb: int = field(
        default=512,
        metadata={"help": "Approximate memory for reordering the selected rows; larger selections spill to disk."},
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars on stderr (only on a terminal)."})

    def __post_init__(self) -> None:
        given = [n for n in ("top_k", "top_p", "min_score") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError(
                "select: give exactly one of top_k, top_p, min_score"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise ConfigError(f"select.top_k must be a positive integer, got {self.top_k!r}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise ConfigError(f"select.top_p must be in (0, 1], got {self.top_p!r}")
        if self.min_score is not None and math.isnan(self.min_score):
            raise ConfigError("select.min_score must be a number, got NaN")
        if self.export not in EXPORTS:
            raise ConfigError(f"select.export must be one of {', '.join(EXPORTS)}, got {self.export!r}")
        if self.alpaca_multiturn not in ("reject", "history"):
            raise ConfigError(f"select.alpaca_multiturn must be 'reject' or 'history', got {self.alpaca_multiturn!r}")
        if self.batch_size < 1:
            raise ConfigError(f"select.batch_size must be >= 1, got {self.batch_size}")
        if self.memory_mb < 1:
            raise ConfigError(f"select.memory_mb must be >= 1, got {self.memory_mb}")

    @property
    def mode(self) -> str:
        return next(n for n in ("top_k", "top_p", "min_score") if getattr(self, n) is not None)


@dataclass
class SelectionResult:
    out_dir: Path
    selected: Path
    export: Optional[Path]
    export_rejects: Optional[Path]
    summary: dict[str, Any]
    warnings: list[str]


def k_for_fraction(p: float, n: int) -> int:
    """Samples kept by a keep fraction ``p`` of ``n``: nearest integer (halves up), at least 1 when n > 0."""
    if n <= 0:
        return 0
    # The epsilon absorbs binary rounding (0.29 * 100 = 28.999999999999996).
    return int(min(n, max(1, math.floor(p * n + 0.5 + 1e-9))))


# --------------------------------------------------------------------------- ids as fixed-width bytes


def _string_buffers(arr: pa.Array, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data bytes) of a string/binary array, without Python objects."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    if pa.types.is_string(t) or pa.types.is_binary(t):
        off_dtype = np.int32
    elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        off_dtype = np.int64
    elif pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        arr = arr.cast(pa.large_binary())
        off_dtype = np.int64
    else:
        raise InputError(f"{what}: column sample_id must be text, got {t}")
    if arr.null_count:
        raise InputError(f"{what}: column sample_id has {arr.null_count} empty (null) values")
    bufs = arr.buffers()
    n = len(arr)
    offsets = np.frombuffer(bufs[1], dtype=off_dtype)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64, copy=False), data


def _max_len(arr: pa.Array, what: str) -> int:
    offsets, _ = _string_buffers(arr, what)
    return int(np.diff(offsets).max()) if len(offsets) > 1 else 0


def fixed_width_ids(arr: pa.Array, width: int, what: str = "ids") -> tuple[np.ndarray, np.ndarray]:
    """Ids as a numpy ``S{width}`` array, plus a mask of the ids that fit in ``width`` bytes.

    Byte order of UTF-8 equals code-point order, so sorting these arrays sorts
    ids exactly as Python sorts the strings. Ids longer than ``width`` are left
    as ``b""`` and flagged False (they cannot equal any id of that width).
    """
    offsets, data = _string_buffers(arr, what)
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    start = offsets[0] if n else 0
    if n and np.all(lengths == width):
        return data[start : offsets[-1]].copy().view(f"S{width}"), np.ones(n, bool)
    fits = lengths <= width
    used = np.where(fits, lengths, 0)
    out = np.zeros((n, width), np.uint8)
    total = int(used.sum())
    if total:
        rows = np.repeat(np.arange(n), used)
        ends = np.cumsum(used)
        within = np.arange(total) - np.repeat(ends - used, used)
        out[rows, within] = data[np.repeat(offsets[:-1], used) + within]
    return out.view(f"S{width}").reshape(n), fits


# --------------------------------------------------------------------------- scores index


@dataclass
class ScoreIndex:
    """A scores file's ids (sorted, fixed-width bytes) and scores (NaN as -inf), aligned."""

    path: Path
    ids: np.ndarray
    key: np.ndarray
    width: int

    def __len__(self) -> int:
        return len(self.ids)


def resolve_scores_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        if (p / "scores.parquet").is_file():
            return p / "scores.parquet"
        raise InputError(f"scores: {p} is a directory without scores.parquet")
    if not p.exists():
        raise InputError(f"scores file not found: {p}")
    return p


def read_score_index(path: str | os.PathLike, batch_size: int = 65536, progress: bool = False) -> ScoreIndex:
    """Read only ``sample_id`` and ``score`` of a scores file, sorted by id; reject duplicates."""
    p = resolve_scores_path(path)
    try:
        pf = pq.ParquetFile(p, pre_buffer=False, buffer_size=_READ_BUFFER)
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read scores file {p}: {e}") from None
    names = pf.schema_arrow.names
    for col in ("sample_id", "score"):
        if col not in names:
            raise InputError(f"{p}: not a scores file (missing column {col!r}; has {', '.join(names) or 'none'})")
    stype = pf.schema_arrow.field("score").type
    if not (pa.types.is_floating(stype) or pa.types.is_integer(stype) or pa.types.is_decimal(stype)):
        raise InputError(f"{p}: column score must be numeric, got {stype}")
    n = pf.metadata.num_rows
    if n == 0:
        raise InputError(f"{p}: the scores file has no rows")
    ids: np.ndarray | None = None
    key = np.empty(n, np.float64)
    width = 0
    i = 0
    with _bar(progress, n, "select: read scores") as bar:
        try:
            for batch in pf.iter_batches(batch_size=batch_size, columns=["sample_id", "score"]):
                col = batch.column(0)
                m = len(col)
                w = max(_max_len(col, str(p)), 1)
                if ids is None or w > width:
                    width = max(w, width)
                    ids = np.zeros(n, f"S{width}") if ids is None else ids.astype(f"S{width}")
                ids[i : i + m] = fixed_width_ids(col, width, str(p))[0]
                s = pc.fill_null(batch.column(1).cast(pa.float64()), math.nan).to_numpy(zero_copy_only=False)
                key[i : i + m] = s
                i += m
                bar.update(m)
        except (OSError, pa.ArrowInvalid) as e:
            raise InputError(f"cannot read scores file {p}: {e}") from None
    assert ids is not None
    key[np.isnan(key)] = -np.inf
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    key = key[order]
    del order
    dup = np.flatnonzero(ids[1:] == ids[:-1])
    if dup.size:
        first = ids[dup[0]].decode("utf-8", "replace")
        raise InputError(f"{p}: sample_id {first!r} appears more than once ({dup.size} duplicate rows); "
                         "a scores file has one row per sample")
    return ScoreIndex(p, ids, key, width)


def lookup(index: ScoreIndex, ids: pa.Array, what: str = "pool") -> np.ndarray:
    """Position of each id in ``index`` (-1 where absent)."""
    fixed, fits = fixed_width_ids(ids, index.width, what)
    if len(fixed) == 0:
        return np.zeros(0, np.int64)
    # Sorted queries make the binary searches walk memory in order (about 2x faster).
    qo = np.argsort(fixed, kind="stable")
    pos = np.empty(len(fixed), np.int64)
    pos[qo] = np.searchsorted(index.ids, fixed[qo])
    np.minimum(pos, len(index) - 1, out=pos)
    found = fits & (index.ids[pos] == fixed)
    return np.where(found, pos, -1)


def choose(index: ScoreIndex, eligible: np.ndarray | None, config: SelectConfig) -> np.ndarray:
    """Positions in ``index`` of the selected samples, best first."""
    eidx = np.flatnonzero(eligible) if eligible is not None else np.arange(len(index))
    ek = index.key[eidx]
    n = len(eidx)
    if config.top_k is not None:
        k = min(config.top_k, n)
    elif config.top_p is not None:
        k = k_for_fraction(config.top_p, n)
    else:
        k = int(np.count_nonzero(ek >= config.min_score))
    if k == 0:
        return np.zeros(0, np.int64)
    if config.min_score is not None:
        chosen = ek >= config.min_score
    else:
        t = np.partition(ek, n - k)[n - k]
        chosen = ek > t
        need = k - int(np.count_nonzero(chosen))
        # eidx is in id order, so the first tied positions are the smallest ids.
        tied = np.flatnonzero(ek == t)
        chosen[tied[:need]] = True
    sel = eidx[chosen]
    order = np.argsort(-ek[chosen], kind="stable")
    return sel[order]


def ranked_selection(
    scores_path: str | os.PathLike,
    top_k: int | None = None,
    top_p: float | None = None,
    min_score: float | None = None,
) -> list[str]:
    """The selected ``sample_id``s of a scores file alone (no pool), best first."""
    cfg = SelectConfig(top_k=top_k, top_p=top_p, min_score=min_score, export="none")
    index = read_score_index(scores_path)
    return [b.decode("utf-8") for b in index.ids[choose(index, None, cfg)]]


# --------------------------------------------------------------------------- pool access


@dataclass
class _Pool:
    path: Path
    num_rows: int
    row_bytes: float
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


def _open_pool(path: str | os.PathLike) -> _Pool:
    p = Path(path)
    if not p.exists():
        raise InputError(f"pool not found: {p}")
    f = p / "samples.parquet" if p.is_dir() and (p / "samples.parquet").is_file() else p
    if f.is_file() and f.suffix == ".parquet":
        try:
            pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=_READ_BUFFER)
        except (OSError, pa.ArrowInvalid) as e:
            raise InputError(f"cannot read pool {f}: {e}") from None
        if all(n in pf.schema_arrow.names for n in CANONICAL_SCHEMA.names):
            n = pf.metadata.num_rows
            # In-memory (Arrow) size per row, measured on the first rows: Parquet's own sizes
            # undercount dictionary-encoded columns.
            row_bytes = 256.0
            if n:
                try:
                    first = next(pf.iter_batches(batch_size=4096, columns=list(CANONICAL_SCHEMA.names)))
                except (OSError, pa.ArrowInvalid) as e:
                    raise InputError(f"cannot read pool {f}: {e}") from None
                row_bytes = first.nbytes / max(first.num_rows, 1)
            return _Pool(f, n, row_bytes, _pf=pf)
    # Raw files (and non-canonical Parquet) go through ingestion, in memory.
    from .ingest import load_samples

    samples = load_samples(str(p))
    table = pa.Table.from_pylist(
        [{k: s.get(k) for k in CANONICAL_SCHEMA.names} for s in samples], schema=CANONICAL_SCHEMA
    )
    return _Pool(p, table.num_rows, table.nbytes / max(table.num_rows, 1), _table=table)


# --------------------------------------------------------------------------- exports


def alpaca_record(messages: list[dict], multiturn: str = "reject") -> tuple[dict | None, str | None]:
    """Alpaca form of a conversation, or (None, reason) when it has none."""
    roles = [m["role"] for m in messages]
    system = None
    turns = messages
    if roles and roles[0] == "system":
        system = messages[0]["content"]
        turns = messages[1:]
    troles = [m["role"] for m in turns]
    if len(troles) < 2 or len(troles) % 2 or any(
        r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(troles)
    ):
        return None, "not_alternating_user_assistant"
    if len(troles) > 2 and multiturn != "history":
        return None, "multi_turn"
    rec: dict[str, Any] = {"instruction": turns[-2]["content"], "input": "", "output": turns[-1]["content"]}
    if system is not None:
        rec["system"] = system
    if len(troles) > 2:
        rec["history"] = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)]
    return rec, None


class _Exporter:
    def __init__(self, mode: str, multiturn: str, out_dir: Path):
        import orjson

        self._dumps = orjson.dumps
        self.mode = mode
        self.multiturn = multiturn
        self.out_dir = out_dir
        self.n_written = 0
        self.rejects: dict[str, int] = {}
        self._fh = self._rfh = None
        self._ctx = self._rctx = None

    def __enter__(self) -> "_Exporter":
        if self.mode != "none":
            self._ctx = atomic_path(self.out_dir / "selected.jsonl")
            self._fh = open(self._ctx.__enter__(), "wb")
        if self.mode == "alpaca":
            self._rctx = atomic_path(self.out_dir / "export_rejects.jsonl")
            self._rfh = open(self._rctx.__enter__(), "wb")
        return self

    def __exit__(self, *exc) -> None:
        for fh, ctx in ((self._fh, self._ctx), (self._rfh, self._rctx)):
            if fh is not None:
                fh.close()
                ctx.__exit__(*exc)

    def write(self, table: pa.Table) -> None:
        if self.mode == "none":
            return
        dumps = self._dumps
        for off in range(0, table.num_rows, _EXPORT_CHUNK):
            part = table.slice(off, _EXPORT_CHUNK)
            ids = part.column("sample_id").to_pylist()
            msgs = part.column("messages").to_pylist()
            lines = []
            for sid, m in zip(ids, msgs):
                if self.mode == "messages":
                    lines.append(dumps({"sample_id": sid, "messages": m}))
                    continue
                rec, reason = alpaca_record(m, self.multiturn)
                if rec is None:
                    self.rejects[reason] = self.rejects.get(reason, 0) + 1
                    self._rfh.write(dumps({"sample_id": sid, "reason": reason}) + b"\n")
                    continue
                lines.append(dumps({"sample_id": sid, **rec}))
            if lines:
                self._fh.write(b"\n".join(lines) + b"\n")
                self.n_written += len(lines)


# --------------------------------------------------------------------------- buckets


class _Buckets:
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

    def flush(self) -> None:
        for j, parts in enumerate(self.buf):
            if not parts:
                continue
            if j not in self.writers:
                # Arrow IPC, uncompressed: spilled rows are written and read back at memory speed.
                sink = pa.OSFile(str(self.tmp / f"bucket-{j:05d}.arrow"), "wb")
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
                f = self.tmp / f"bucket-{j:05d}.arrow"
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


# --------------------------------------------------------------------------- the stage


class _bar:
    """tqdm on stderr when asked (and on a terminal), else a no-op."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self._t = None
        if enabled:
            from tqdm.auto import tqdm

            self._t = tqdm(total=total, desc=desc, unit="row", unit_scale=True, file=sys.stderr,
                           disable=None, leave=False)

    def __enter__(self) -> "_bar":
        return self

    def __exit__(self, *exc) -> None:
        if self._t is not None:
            self._t.close()

    def update(self, n: int) -> None:
        if self._t is not None:
            self._t.update(n)


def _bucket_rows(budget_bytes: int, row_bytes: float) -> int:
    # Half the budget: sorting a bucket holds it twice for a moment (read chunks + combined copy).
    return max(1024, int(budget_bytes // 2 // max(row_bytes, 1.0)))


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _sample(ids: np.ndarray, limit: int = 3) -> str:
    return ", ".join(b.decode("utf-8", "replace") for b in ids[:limit])


def select(
    scores: str | os.PathLike,
    pool: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: SelectConfig,
    warn: Callable[[str], None] | None = None,
) -> SelectionResult:
    """Write ``selected.parquet`` (+ JSONL export), ``selection.json`` and ``config.json`` to ``out_dir``.

    ``warn`` is called with each warning as it happens (the result lists them too).
    """
    cfg = config
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    warnings: list[str] = []

    def _warn(msg: str) -> None:
        warnings.append(msg)
        if warn is not None:
            warn(msg)

    index = read_score_index(scores, cfg.batch_size, cfg.progress)
    scores_path = index.path
    n_scores = len(index)
    src = _open_pool(pool)

    # Pass over pool ids: where is each pool row in the scores, and which scores are present.
    pos_dtype = np.int32 if n_scores < 2**31 - 1 else np.int64
    pool_pos = np.empty(src.num_rows, pos_dtype)
    present = np.zeros(n_scores, bool)
    n_missing_scores = n_dup = 0
    missing_examples: list[str] = []
    row = 0
    with _bar(cfg.progress, src.num_rows, "select: index pool") as bar:
        # Big batches: binary searches of a sorted batch of ids walk the index more locally.
        for batch in src.batches(["sample_id"], max(cfg.batch_size, _ID_BATCH)):
            pos = lookup(index, batch.column(0), str(src.path))
            found = pos >= 0
            n_missing_scores += int(np.count_nonzero(~found))
            if len(missing_examples) < 3 and not found.all():
                missing_examples += batch.column(0).take(pa.array(np.flatnonzero(~found)[:3])).to_pylist()
            fpos = pos[found]
            first = np.zeros(len(fpos), bool)
            first[np.unique(fpos, return_index=True)[1]] = True
            dup = present[fpos] | ~first
            n_dup += int(np.count_nonzero(dup))
            present[fpos] = True
            pos[np.flatnonzero(found)[dup]] = -1
            pool_pos[row : row + len(pos)] = pos
            row += len(pos)
            bar.update(len(pos))
    if row != src.num_rows:  # a file changed under us
        raise InputError(f"pool {src.path}: read {row} rows, metadata says {src.num_rows}")
    n_eligible = int(np.count_nonzero(present))
    if n_eligible == 0:
        raise InputError(f"no sample of the pool {pool} has a score in {scores_path} "
                         "(were they computed from a different pool?)")
    n_not_in_pool = n_scores - n_eligible
    if n_not_in_pool:
        _warn(f"{n_not_in_pool} of {n_scores} scored samples are not in the pool {pool} and cannot be selected "
              f"(e.g. {_sample(index.ids[np.flatnonzero(~present)[:3]])})")
    if n_missing_scores:
        _warn(f"{n_missing_scores} of {src.num_rows} pool samples have no score in {scores_path} and are never "
              f"selected (e.g. {', '.join(missing_examples[:3])})")
    if n_dup:
        _warn(f"{n_dup} pool rows repeat an earlier sample_id; each sample is selected at most once")

    selected = choose(index, present, cfg)
    k = len(selected)
    if k == 0:
        _warn(f"no sample has score >= {cfg.min_score}; the selection is empty")
    rank_of = np.zeros(n_scores, pos_dtype)
    rank_of[selected] = np.arange(1, k + 1, dtype=pos_dtype)

    budget = cfg.memory_mb << 20
    bucket_rows = _bucket_rows(budget, src.row_bytes)
    n_buckets = max(1, math.ceil(k / bucket_rows))
    out.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".select.", dir=out))
    try:
        buckets = _Buckets(n_buckets, bucket_rows, budget, tmp_dir, CANONICAL_SCHEMA)
        row = 0
        with _bar(cfg.progress, src.num_rows, "select: copy rows") as bar:
            for batch in src.batches(None, cfg.batch_size):
                m = batch.num_rows
                pos = pool_pos[row : row + m]
                row += m
                bar.update(m)
                ranks = np.zeros(m, np.int64)
                ok = pos >= 0
                ranks[ok] = rank_of[pos[ok]]
                keep = np.flatnonzero(ranks > 0)
                if keep.size == 0:
                    continue
                t = pa.Table.from_batches([batch]).take(pa.array(keep))
                try:
                    t = t.select(CANONICAL_SCHEMA.names).cast(CANONICAL_SCHEMA)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise InputError(f"pool {src.path} does not match the canonical sample schema: {e}") from None
                buckets.add(t, ranks[keep])

        summary: dict[str, Any] = {
            "mode": cfg.mode,
            "requested": {cfg.mode: getattr(cfg, cfg.mode)},
            "k": k,
            "fraction": k / n_eligible,
            "n_scores": n_scores,
            "n_pool_rows": src.num_rows,
            "n_candidates": n_eligible,
            "scores_missing_from_pool": n_not_in_pool,
            "pool_missing_from_scores": n_missing_scores,
            "pool_duplicate_rows": n_dup,
            "threshold_score": _finite(index.key[selected[-1]]) if k else None,
            "threshold_sample_id": index.ids[selected[-1]].decode("utf-8") if k else None,
            "best_score": _finite(index.key[selected[0]]) if k else None,
            "mean_selected_score": _finite(float(np.mean(index.key[selected]))) if k else None,
            "tie_break": "score desc, sample_id asc",
            "inputs": {
                "scores": {"path": str(scores_path), "fingerprint": fingerprint_file(scores_path)},
                "pool": {"path": str(src.path), "fingerprint": fingerprint_file(src.path)},
            },
        }
        try:
            from .ranker.scores import read_scores_metadata

            smeta = read_scores_metadata(scores_path)
            if "method" in smeta:
                summary["scores_method"] = smeta["method"]
        except InputError:
            pass
        kv = {"seal": json.dumps({"stage": "select", **{k_: summary[k_] for k_ in
                                  ("mode", "requested", "k", "threshold_score", "inputs")}}, default=str)}
        schema = CANONICAL_SCHEMA.with_metadata(kv)
        n_rows = 0
        with atomic_path(out / "selected.parquet") as tmp, _Exporter(cfg.export, cfg.alpaca_multiturn, out) as ex:
            with pq.ParquetWriter(tmp, schema) as writer:
                for t in buckets.sorted_tables(cfg.batch_size):
                    writer.write_table(t.replace_schema_metadata(kv))
                    ex.write(t)
                    n_rows += t.num_rows
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    assert n_rows == k, (n_rows, k)

    export_path = out / "selected.jsonl" if cfg.export != "none" else None
    rejects_path = out / "export_rejects.jsonl" if cfg.export == "alpaca" else None
    # Files of an earlier run with another export mode would no longer match selected.parquet.
    for stale, keep_it in ((out / "selected.jsonl", export_path), (out / "export_rejects.jsonl", rejects_path)):
        if keep_it is None and stale.exists():
            stale.unlink()
    summary["export"] = {"format": cfg.export, "rows": ex.n_written, "rejected": dict(ex.rejects)}
    if ex.rejects:
        _warn(f"{sum(ex.rejects.values())} selected samples have no {cfg.export} form "
              f"({', '.join(f'{r}: {n}' for r, n in sorted(ex.rejects.items()))}); listed in {rejects_path}, "
              "kept in selected.parquet")
    summary["warnings"] = warnings
    save_resolved_config(out, cfg)
    write_json(out / "selection.json", summary)
    return SelectionResult(out, out / "selected.parquet", export_path, rejects_path, summary, warnings)
