"""Input resolution and streaming record readers.

A reader yields ``(line, record, raw)`` triples: ``line`` is 1-based (the
physical line for JSONL; the line a CSV record starts on, the header being
line 1; the record number for JSON arrays, Parquet and Hugging Face datasets),
``record`` is the parsed record (normally a dict; a :class:`RowReject` when the
row could not even be parsed) and ``raw`` is the row as read (bytes for JSONL,
the list of cells for CSV, ``None`` where the record itself is the raw form).

Problems with a whole file (missing, empty, corrupt gzip, unknown type) raise
:class:`~seal_core.errors.InputError` with the file name and the cause.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson

from ..errors import InputError
from .formats import RECORD_FORMATS, RowReject

JSONL_EXTS = (".jsonl", ".ndjson")
JSON_EXTS = JSONL_EXTS + (".json",)
CSV_EXTS = (".csv", ".tsv")
PARQUET_EXTS = (".parquet", ".pq")
SUPPORTED = ".jsonl, .ndjson, .json, .csv, .tsv, .parquet (text formats optionally .gz)"

# Field names that mark the first CSV row as a header.
KNOWN_FIELDS = frozenset(name for fmt in RECORD_FORMATS.values() for name in fmt.header_fields)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_SURROGATE = re.compile("[\udc80-\udcff]")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_HEAD_BYTES = 1 << 16
# Largest file parsed whole just to tell a JSON document from JSON lines.
_SNIFF_WHOLE_BYTES = 256 << 20
_BOM = b"\xef\xbb\xbf"
_PARQUET_BATCH = 8192

csv.field_size_limit(2**31 - 1)  # long answers exceed the default 128 KiB per cell


@dataclass
class Source:
    """One input to read: a file, a saved Hugging Face dataset or a Hub dataset."""

    name: str  # as given by the user (files found in a given directory: dir/file)
    kind: str  # jsonl | json | csv | tsv | parquet | hf_disk | hub
    path: Path | None = None
    compressed: bool = False
    size: int = 0
    dataset: Any = None  # datasets.Dataset for hf_disk / hub
    csv_fieldnames: list[str] | None = None
    csv_has_header: bool = True
    json_single_object: bool = False
    format: str = ""
    format_note: str = ""
    extra: dict = field(default_factory=dict)

    def describe(self) -> str:
        return self.kind + (".gz" if self.compressed else "")


# ---------------------------------------------------------------- resolution


def _read_head(path: Path, compressed: bool, name: str) -> bytes:
    try:
        if compressed:
            with gzip.open(path, "rb") as fh:
                return fh.read(_HEAD_BYTES)
        with open(path, "rb") as fh:
            return fh.read(_HEAD_BYTES)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InputError(f"{name}: corrupt or truncated gzip file ({e})") from None
    except OSError as e:
        raise InputError(f"{name}: cannot read ({e.strerror or e})") from None


def _strip_ext(name: str) -> tuple[str, bool]:
    low = name.lower()
    if low.endswith(".gz"):
        return low[:-3], True
    return low, False


def _hf_saved_dir(p: Path) -> bool:
    return (p / "dataset_dict.json").is_file() or ((p / "state.json").is_file() and (p / "dataset_info.json").is_file())


def _is_supported_file(p: Path) -> bool:
    base, _ = _strip_ext(p.name)
    return p.is_file() and not p.name.startswith(".") and base.endswith(JSON_EXTS + CSV_EXTS + PARQUET_EXTS)


def _import_datasets(name: str, why: str):
    try:
        import datasets  # noqa: PLC0415 - optional extra, imported only when needed
    except ImportError:
        raise InputError(
            f"{name}: {why} needs the optional 'datasets' package (pip install 'seal-curate[hub]')"
        ) from None
    return datasets


def _pick_split(ds: Any, name: str, split: str) -> Any:
    if type(ds).__name__ in ("DatasetDict", "IterableDatasetDict"):
        splits = list(ds.keys())
        if split in ds:
            return ds[split]
        if len(splits) == 1:
            return ds[splits[0]]
        raise InputError(f"{name}: no split '{split}' (splits: {', '.join(splits)}); pass --split")
    return ds


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def resolve(given: str, split: str = "train", csv_header: str = "auto") -> list[Source]:
    """Turn one user-given input into the sources to read (a directory may hold several)."""
    p = Path(given)
    if p.is_dir():
        if _hf_saved_dir(p):
            datasets = _import_datasets(given, "reading a saved Hugging Face dataset")
            try:
                ds = datasets.load_from_disk(str(p))
            except Exception as e:  # noqa: BLE001 - any failure here means the directory is unreadable
                raise InputError(f"{given}: cannot load the saved dataset ({_first_line(str(e)) or type(e).__name__})") from None
            ds = _pick_split(ds, given, split)
            return [Source(given, "hf_disk", p, dataset=ds, size=len(ds))]
        if (p / "samples.parquet").is_file() and (p / "summary.json").is_file():
            # An earlier ingest output: read its samples, not its rejects.
            return [_file_source(str(p / "samples.parquet"), p / "samples.parquet", csv_header)]
        files = sorted(f for f in p.iterdir() if _is_supported_file(f))
        if not files:
            raise InputError(f"{given}: directory has no readable files ({SUPPORTED}) and is not a saved dataset")
        return [_file_source(os.path.join(given, f.name), f, csv_header) for f in files]
    if p.is_file():
        return [_file_source(given, p, csv_header)]
    if p.exists():
        raise InputError(f"{given}: not a regular file or directory")
    base, _ = _strip_ext(p.name)
    if _HUB_ID.fullmatch(given) and not base.endswith(JSON_EXTS + CSV_EXTS + PARQUET_EXTS):
        return [_hub_source(given, split)]
    raise InputError(f"{given}: no such file or directory")


def _hub_source(given: str, split: str) -> Source:
    datasets = _import_datasets(given, "no such file or directory; reading it as a Hugging Face Hub dataset")
    try:
        ds = datasets.load_dataset(given, split=split)
    except Exception as e:  # noqa: BLE001 - offline, unknown id, missing split: all one-line user errors
        msg = _first_line(str(e)) or type(e).__name__
        raise InputError(
            f"{given}: no such file or directory, and loading it as a Hugging Face Hub dataset failed "
            f"({type(e).__name__}: {msg[:300]})"
        ) from None
    return Source(given, "hub", None, dataset=ds, size=len(ds))


def _file_source(name: str, p: Path, csv_header: str) -> Source:
    size = p.stat().st_size
    if size == 0:
        raise InputError(f"{name}: file is empty")
    with open(p, "rb") as fh:
        magic = fh.read(4)
    base, by_name_gz = _strip_ext(p.name)
    compressed = magic[:2] == b"\x1f\x8b"
    if magic == b"PAR1":
        src = Source(name, "parquet", p, size=size)
        try:
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(p)
            src.extra["num_rows"] = pf.metadata.num_rows
            names = set(pf.schema_arrow.names)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a corrupt file
            raise InputError(f"{name}: not a readable Parquet file ({_first_line(str(e))})") from None
        # A canonical samples file (an earlier ingest): its metadata column is restored, not nested.
        src.extra["canonical"] = names == {"sample_id", "messages", "source", "metadata"}
        return src
    if base.endswith(PARQUET_EXTS):
        raise InputError(f"{name}: not a Parquet file (no PAR1 header){'; compressed Parquet is not supported' if compressed else ''}")
    if by_name_gz and not compressed:
        raise InputError(f"{name}: named .gz but is not gzip data")
    head = _read_head(p, compressed, name)
    if not head.removeprefix(_BOM).strip():
        raise InputError(f"{name}: file is empty{' after decompression' if compressed else ''}")
    if base.endswith(CSV_EXTS):
        src = Source(name, "tsv" if base.endswith(".tsv") else "csv", p, compressed=compressed, size=size)
        _csv_header(src, csv_header)
        return src
    text_head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    first = text_head[:1]
    if first == b"[":
        src = Source(name, "json", p, compressed=compressed, size=size)
        if base.endswith(JSONL_EXTS) and size < _SNIFF_WHOLE_BYTES and type(_whole_document(src)) is not list:
            src.kind = "jsonl"  # JSON lines whose first line is not an object (nor the start of an array)
        return src
    if first == b"{":
        src = Source(name, "jsonl", p, compressed=compressed, size=size)
        nl = text_head.find(b"\n")
        line = text_head if nl < 0 else text_head[:nl]
        try:
            ok = type(orjson.loads(line)) is dict
        except orjson.JSONDecodeError:
            ok = False
        if not ok and size < _SNIFF_WHOLE_BYTES and type(_whole_document(src)) is dict:
            # Not one object per line but one pretty-printed object (a one-record JSON file).
            src.kind, src.json_single_object = "json", True
        return src
    if base.endswith(JSON_EXTS):
        # A JSON/JSONL file whose first value is not an object: read as JSONL so
        # every bad line is reported with its number.
        return Source(name, "jsonl", p, compressed=compressed, size=size)
    raise InputError(f"{name}: unknown file type (supported: {SUPPORTED}, a saved Hugging Face dataset directory)")


def _open_text(src: Source):
    raw = open(src.path, "rb")  # noqa: SIM115 - closed by the caller
    fh = gzip.GzipFile(fileobj=raw, mode="rb") if src.compressed else raw
    text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="surrogateescape", newline="")
    return raw, text


def _csv_header(src: Source, mode: str) -> None:
    raw, text = _open_text(src)
    try:
        row = next(csv.reader(text, delimiter="\t" if src.kind == "tsv" else ","), None)
    except (EOFError, zlib.error, OSError) as e:
        raise InputError(f"{src.name}: cannot read ({e})") from None
    except csv.Error as e:
        raise InputError(f"{src.name}: not a readable CSV file ({e})") from None
    finally:
        text.close()
        raw.close()
    if not row:
        raise InputError(f"{src.name}: first line is empty; expected a CSV header or a data row")
    cells = [c.strip() for c in row]
    if mode == "yes":
        has_header = True
    elif mode == "no":
        has_header = False
    else:
        has_header = any(c in KNOWN_FIELDS for c in cells) or (
            len(cells) >= 2 and len(set(cells)) == len(cells) and all(_IDENT.fullmatch(c) for c in cells)
        )
    src.csv_has_header = has_header
    if has_header:
        if len(set(cells)) != len(cells):
            dup = next(c for c in cells if cells.count(c) > 1)
            raise InputError(f"{src.name}: CSV header names column '{dup}' twice")
        src.csv_fieldnames = cells
    else:
        # Headerless: positional prompt[, response] columns (e.g. AdvBench, one prompt per line).
        names = ["prompt", "response"] + [f"column_{i}" for i in range(3, len(row) + 1)]
        src.csv_fieldnames = names[: len(row)]


def _parse_json_document(data: bytes) -> tuple[Any, bool]:
    """The JSON value ``data`` holds, and whether undecodable bytes in it became lone surrogates.

    Raises ``ValueError`` (a ``JSONDecodeError``) if ``data`` is not one JSON value.
    """
    data = data.removeprefix(_BOM)
    try:
        return orjson.loads(data), False
    except orjson.JSONDecodeError:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            # Keep the parseable records: undecodable bytes become surrogates,
            # and only the records holding them are rejected.
            return json.loads(data.decode("utf-8", "surrogateescape")), True
        raise


def _whole_document(src: Source) -> Any:
    """The file's JSON value, or None if it holds no single one."""
    try:
        return _parse_json_document(_read_all(src))[0]
    except (ValueError, RecursionError, InputError):
        return None


def _read_all(src: Source) -> bytes:
    try:
        if src.compressed:
            with gzip.open(src.path, "rb") as fh:
                return fh.read()
        return src.path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InputError(f"{src.name}: corrupt or truncated gzip file ({e})") from None
    except OSError as e:
        raise InputError(f"{src.name}: cannot read ({e.strerror or e})") from None


# ---------------------------------------------------------------- readers


class Reader:
    """Iterates one source's records; ``position()`` drives the progress bar."""

    def __init__(self, src: Source, batch_size: int = _PARQUET_BATCH):
        self.src = src
        self.batch_size = batch_size
        self._pos = 0
        self._raw = None
        if src.kind in ("parquet", "hf_disk", "hub"):
            self.total = src.extra.get("num_rows", src.size) if src.kind == "parquet" else src.size
            self.unit = "rows"
        else:
            self.total = src.size
            self.unit = "B"

    def position(self) -> int:
        if self._raw is not None:
            try:
                return self._raw.tell()
            except (OSError, ValueError):
                return self._pos
        return self._pos

    def __iter__(self) -> Iterator[tuple[int, Any, Any]]:
        kind = self.src.kind
        if kind == "jsonl":
            return self._jsonl()
        if kind == "json":
            return self._json()
        if kind in ("csv", "tsv"):
            return self._csv()
        if kind == "parquet":
            return self._parquet()
        return self._hf()

    def _gz_error(self, e: Exception) -> InputError:
        what = "corrupt or truncated gzip file" if self.src.compressed else "read error"
        return InputError(f"{self.src.name}: {what} ({e})")

    def _jsonl(self) -> Iterator[tuple[int, Any, Any]]:
        src = self.src
        loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
        with open(src.path, "rb") as raw:
            self._raw = raw
            fh = gzip.GzipFile(fileobj=raw, mode="rb") if src.compressed else raw
            n = 0
            try:
                for line in fh:
                    n += 1
                    try:
                        yield n, loads(line), line
                    except JSONDecodeError as e:
                        bom = n == 1 and line.startswith(_BOM)
                        body = line[3:] if bom else line
                        if bom:
                            try:
                                yield n, loads(body), line
                                continue
                            except JSONDecodeError:
                                pass
                        if not body.strip():
                            continue  # blank lines separate nothing; not a record
                        try:
                            line.decode("utf-8")
                        except UnicodeDecodeError as ue:
                            yield n, RowReject("invalid_utf8", "", f"line is not valid UTF-8 (byte offset {ue.start})"), line
                            continue
                        yield n, RowReject("malformed_json", "", f"invalid JSON: {e}"), line
            except (EOFError, zlib.error, OSError) as e:
                raise self._gz_error(e) from None

    def _json(self) -> Iterator[tuple[int, Any, Any]]:
        src = self.src
        try:
            obj, surrogates = _parse_json_document(_read_all(src))
        except (ValueError, RecursionError) as e:
            raise InputError(f"{src.name}: not valid JSON ({_first_line(str(e)) or type(e).__name__})") from None
        if type(obj) is dict:
            obj = [obj]
        elif type(obj) is not list:
            raise InputError(f"{src.name}: top-level JSON value must be an array of objects, got {type(obj).__name__}")
        if not obj:
            raise InputError(f"{src.name}: JSON array is empty")
        self._pos = src.size  # the whole file is read at once
        for i, rec in enumerate(obj, 1):
            if surrogates and _has_surrogates(rec):
                yield i, RowReject("invalid_utf8", "", "record holds bytes that are not valid UTF-8"), None
                continue
            yield i, rec, None

    def _csv(self) -> Iterator[tuple[int, Any, Any]]:
        src = self.src
        raw, text = _open_text(src)
        self._raw = raw
        names = src.csv_fieldnames or []
        width = len(names)
        try:
            reader = csv.reader(text, delimiter="\t" if src.kind == "tsv" else ",")
            if src.csv_has_header:
                next(reader, None)
            prev_error_line = -1
            while True:
                start = reader.line_num + 1
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    if reader.line_num == prev_error_line:
                        break
                    prev_error_line = reader.line_num
                    yield start, RowReject("malformed_csv", "", f"CSV parse error: {e}"), None
                    continue
                if not row or (len(row) == 1 and not row[0].strip() and width > 1):
                    continue  # blank line
                if len(row) != width:
                    yield start, RowReject("ragged_csv_row", "", f"row has {len(row)} fields, expected {width}"), row
                    continue
                if _SURROGATE.search("\x00".join(row)):
                    bad = next(names[i] for i, c in enumerate(row) if _SURROGATE.search(c))
                    yield start, RowReject("invalid_utf8", bad, f"column '{bad}' is not valid UTF-8"), row
                    continue
                yield start, dict(zip(names, row)), row
        except (EOFError, zlib.error, OSError) as e:
            raise self._gz_error(e) from None
        finally:
            text.close()
            raw.close()

    def _parquet(self) -> Iterator[tuple[int, Any, Any]]:
        import pyarrow.parquet as pq

        src = self.src
        i = 0
        try:
            pf = pq.ParquetFile(src.path)
            for batch in pf.iter_batches(batch_size=self.batch_size):
                for rec in batch.to_pylist():
                    i += 1
                    yield i, rec, None
                self._pos = i
        except (OSError, ValueError) as e:  # ArrowInvalid/ArrowIOError subclass these
            raise InputError(f"{src.name}: cannot read Parquet data after record {i} ({_first_line(str(e))})") from None

    def _hf(self) -> Iterator[tuple[int, Any, Any]]:
        ds = self.src.dataset
        i = 0
        for table in ds.with_format("arrow").iter(batch_size=self.batch_size):
            for rec in table.to_pylist():
                i += 1
                yield i, rec, None
            self._pos = i


def _has_surrogates(obj: Any) -> bool:
    if type(obj) is str:
        return _SURROGATE.search(obj) is not None
    if type(obj) is dict:
        return any(_has_surrogates(k) or _has_surrogates(v) for k, v in obj.items())
    if type(obj) is list:
        return any(_has_surrogates(v) for v in obj)
    return False


def sample_records(src: Source, n: int = 100) -> list[Any]:
    """The first ``n`` parsed records of a source (for format detection)."""
    out = []
    it = iter(Reader(src))
    try:
        for _line, rec, _raw in it:
            out.append(rec)
            if len(out) >= n:
                break
    finally:
        it.close()
    return out


def csv_raw_text(row: list[str], delimiter: str = ",") -> str:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="").writerow(row)
    return buf.getvalue()
