"""Fuzzed ingestion (hypothesis).

Valid rows of every record format are generated, some are mutated (a required key
deleted, a wrong type, random bytes, a truncated line, a huge field, an empty
string, a broken conversation, extra keys, a duplicate), and the rows are written
as JSONL, a JSON array, CSV/TSV or Parquet. Properties: ingestion never raises
anything but a one-line InputError naming the file (and only for a file that
cannot be read at all); every row left valid is in samples.parquet with its
turns, every row made invalid is in rejects.parquet with a reason and its line;
kept + rejected + duplicates is the number of rows; no partial output remains.

Examples are derandomised (the same inputs on every run); a failure prints the
generated case, which can be pinned with ``@example``.
"""

from __future__ import annotations

import copy
import csv
import gzip
import io
import json
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from seal_cli.main import main
from seal_core.errors import InputError
from seal_core.ingest import FORMATS, REASONS, IngestConfig, ingest
from seal_core.ingest.formats import RESPONSE_KEYS
from seal_core.schema import compute_sample_id
from test_ingest import _msgs, _rejects

MAX_CHARS = 1000
# Over max_chars, three times over, and over the csv module's default 128 KiB field limit.
HUGE_SIZES = (MAX_CHARS + 1, 3 * MAX_CHARS, 140_000)
OUTPUTS = ["config.json", "rejects.parquet", "samples.parquet", "summary.json"]
BOM = b"\xef\xbb\xbf"
# Bytes that occur in no valid UTF-8 text, whatever surrounds them.
NEVER_UTF8 = [0xC0, 0xC1] + list(range(0xF5, 0x100))
CSV_KINDS = ("csv", "tsv")


def fuzz(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------- valid rows

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
# Characters that matter to CSV, JSON and stripping, and any other (but lone surrogates, which no file holds).
_CHARS = st.one_of(st.sampled_from(list(',"\'\\\t\r\n\x00\ufeff\u2028 éß日🙂')),
                   st.characters(exclude_categories=("Cs",)))
TEXT = st.text(_CHARS, min_size=1, max_size=24).map(str.strip).filter(bool)
HH_TEXT = TEXT.filter(lambda s: not _HH_TURN.search(s))
PAD = st.sampled_from([("", ""), (" ", ""), ("", "\n"), ("\t", " \r\n")])
SHAREGPT_NAMES = {"system": ["system"], "user": ["human", "user"],
                  "assistant": ["gpt", "assistant", "chatgpt", "bing", "bard"]}
LIST_KEYS = {"messages": "messages", "sharegpt": "conversations"}


@dataclass(frozen=True)
class Spec:
    """One generated input: its record format, container and the settings it is read with."""

    fmt: str
    container: str  # jsonl | csv | tsv | json | parquet
    hh_field: str = "chosen"
    response_key: str = "response"  # prompt-response in CSV: one column for every row
    auto: bool = False  # --format auto; the first row then stays valid so that detection has a vote

    @property
    def list_key(self) -> str | None:
        return LIST_KEYS.get(self.fmt)

    def config(self) -> IngestConfig:
        return IngestConfig(progress=False, max_chars=MAX_CHARS, hh_field=self.hh_field,
                            format="auto" if self.auto else self.fmt)

    def cli_args(self) -> list[str]:
        return ["--max-chars", str(MAX_CHARS), "--hh-field", self.hh_field] + ([] if self.auto else ["--format", self.fmt])


@dataclass
class Row:
    record: Any  # a dict, or any JSON value for a not-an-object row
    turns: Any  # the canonical turns it must be kept as, or None: it must be rejected
    reasons: frozenset = frozenset()  # reject reasons that fit its mutation
    kind: str = "valid"
    target: tuple = ()  # the path the mutation changed
    blob: bytes = b""  # random bytes spliced into the serialised row
    where: float = 0.0  # where the blob goes or the line is cut, as a fraction of its length


def _padded(draw, s: str) -> str:
    before, after = draw(PAD)
    return before + s + after


def _spelled(draw, name: str) -> str:
    return draw(st.sampled_from([name, name.upper(), name.title(), f" {name} "]))


@st.composite
def conversations(draw, text=TEXT, system=True):
    turns = [("system", draw(text))] if system and draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        turns += [("user", draw(text)), ("assistant", draw(text))]
    return turns


def _transcript(turns, pad=lambda s: s) -> str:
    return "".join(f"\n\n{'Human' if r == 'user' else 'Assistant'}: {pad(c)}" for r, c in turns)


def _turn_item(draw, spec: Spec, role: str, content: str) -> dict:
    if spec.fmt == "messages":
        return {"role": _spelled(draw, role), "content": content}
    rk, ck = draw(st.sampled_from([("from", "value"), ("role", "content")]))
    return {rk: _spelled(draw, draw(st.sampled_from(SHAREGPT_NAMES[role]))), ck: content}


@st.composite
def valid_rows(draw, spec: Spec, index: int):
    fmt, rec = spec.fmt, {}
    if spec.list_key:
        turns = draw(conversations())
        # An empty system prompt is dropped, not rejected.
        items = [_turn_item(draw, spec, "system", draw(st.sampled_from(["", " "])))] if draw(st.booleans()) else []
        items += [_turn_item(draw, spec, r, _padded(draw, c)) for r, c in turns]
        rec[spec.list_key] = items
    elif fmt == "hh":
        turns = draw(conversations(HH_TEXT, system=False))
        other = "rejected" if spec.hh_field == "chosen" else "chosen"
        text = _transcript(turns, lambda c: _padded(draw, c))
        rec[spec.hh_field] = draw(st.sampled_from([text, text.lstrip("\n"), text + "\n"]))
        rec[other] = _transcript(draw(conversations(HH_TEXT, system=False)))
    elif fmt == "alpaca":
        instruction, inp, output = draw(TEXT), draw(st.one_of(st.none(), st.sampled_from(["", "  "]), TEXT)), draw(TEXT)
        rec["instruction"] = _padded(draw, instruction)
        if inp is not None:
            rec["input"] = _padded(draw, inp)
        rec["output"] = _padded(draw, output)
        turns = [("user", instruction + "\n\n" + inp.strip() if inp and inp.strip() else instruction), ("assistant", output)]
    else:
        key = spec.response_key if spec.container in CSV_KINDS else draw(st.sampled_from(RESPONSE_KEYS))
        prompt, response = draw(TEXT), draw(TEXT)
        rec["prompt"], rec[key] = _padded(draw, prompt), _padded(draw, response)
        turns = [("user", prompt), ("assistant", response)]
    rec["id"] = f"r{index}"
    return Row(rec, turns)


# ---------------------------------------------------------------- mutations


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _set(rec, path, value) -> None:
    _get(rec, path[:-1])[path[-1]] = value


def _turn_keys(item: dict) -> tuple[str, str]:
    return ("from", "value") if "from" in item else ("role", "content")


def _text_paths(spec: Spec, rec: dict) -> list[tuple]:
    """Paths of the strings a sample is made of: roles and contents, or the text fields."""
    if spec.list_key:
        return [(spec.list_key, i, k) for i, m in enumerate(rec[spec.list_key]) for k in _turn_keys(m)]
    if spec.fmt == "hh":
        return [(spec.hh_field,)]
    if spec.fmt == "alpaca":
        return [("instruction",), ("output",)]
    return [("prompt",), (next(k for k in RESPONSE_KEYS if k in rec),)]


def _content_paths(spec: Spec, rec: dict) -> list[tuple]:
    if spec.list_key:
        return [(spec.list_key, i, _turn_keys(m)[1]) for i, m in enumerate(rec[spec.list_key])]
    return _text_paths(spec, rec) + ([("input",)] if "input" in rec else [])


def _list_path(spec: Spec) -> list[tuple]:
    return [(spec.list_key,)] if spec.list_key else []


def _rejected(row: Row, kind: str, *reasons: str, target: tuple = ()) -> Row:
    return replace(row, turns=None, reasons=frozenset(reasons), kind=kind, target=target)


def _is_system(item: dict) -> bool:
    role = item.get(_turn_keys(item)[0])
    return type(role) is str and role.strip().lower() == "system"


def _delete(draw, spec, row, index):
    path = draw(st.sampled_from(_text_paths(spec, row.record) + _list_path(spec)))
    del _get(row.record, path[:-1])[path[-1]]
    # A CSV row cannot lack a column: a deleted top-level key is a missing cell.
    reason = "ragged_csv_row" if spec.container in CSV_KINDS and len(path) == 1 else "missing_field"
    return _rejected(row, "delete", reason, target=path)


WRONG = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(),
    st.dictionaries(st.sampled_from(["a", "role", "content"]), st.integers(0, 9), min_size=1, max_size=2),
    st.lists(st.integers(0, 9), min_size=1, max_size=3),
)
NOT_A_LIST = st.one_of(WRONG, TEXT.filter(lambda s: not s.startswith("[")))


def _wrong_type(draw, spec, row, index):
    rec = row.record
    csv_like = spec.container in CSV_KINDS
    optional = [("input",)] if "input" in rec and not csv_like else []
    path = draw(st.sampled_from(_text_paths(spec, rec) + _list_path(spec) + optional))
    if path == (spec.list_key,):
        value = draw(NOT_A_LIST)
    elif csv_like and len(path) == 1:
        value = None  # a CSV cell is text; only an empty one is of the wrong kind
    elif spec.container == "parquet" and len(path) == 3:
        value = None  # a column has one type: one turn cannot differ (see _binary)
    else:
        value = draw(WRONG)
    if path == ("input",) and value is None:
        value = 0  # a null input is an absent one, which is fine
    _set(rec, path, value)
    if value is not None:
        return _rejected(row, "wrong_type", "wrong_type", target=path)
    if path == (spec.list_key,) and csv_like:
        return _rejected(row, "wrong_type", "wrong_type", target=path)
    if csv_like and len(path) == 1:
        return _rejected(row, "wrong_type", "malformed_transcript" if spec.fmt == "hh" else "empty_field", target=path)
    return _rejected(row, "wrong_type", "missing_field", target=path)


def _binary(draw, spec, row, index):
    """Parquet: a text column stored as binary; in a list of turns, that key of every turn."""
    rec = row.record
    path = draw(st.sampled_from(_text_paths(spec, rec) + ([("input",)] if "input" in rec else [])))
    if len(path) == 1:
        rec[path[0]] = rec[path[0]].encode()
    else:
        for item in rec[spec.list_key]:
            if type(item.get(path[2])) is str:
                item[path[2]] = item[path[2]].encode()
    return _rejected(row, "binary", "wrong_type", target=path)


def _random_bytes(draw, spec, row, index):
    blob = draw(st.binary(max_size=8))
    at = draw(st.integers(0, len(blob)))
    breaker = draw(st.sampled_from(NEVER_UTF8 + ([0x00] if spec.container == "jsonl" else [])))
    blob = blob[:at] + bytes([breaker]) + blob[at:]
    if spec.container == "jsonl":
        blob = blob.replace(b"\n", b"")  # keep it one line
        reasons = ()  # decided on the line as written
    elif spec.container == "json":
        # Inside a JSON string: no quote, backslash or control byte, or the whole file is invalid JSON.
        blob = bytes(b for b in blob if b >= 0x20 and b not in b'"\\')
        reasons = ("invalid_utf8",)
    else:
        blob = bytes(b for b in blob if b not in b'\r\n",\t')
        reasons = ("invalid_utf8",)
    paths = [p for p in _text_paths(spec, row.record) + [("id",)] if type(_get(row.record, p)) is str]
    target = draw(st.sampled_from(paths))
    return replace(_rejected(row, "bytes", *reasons, target=target), blob=blob,
                   where=draw(st.floats(0, 1, exclude_max=True)))


def _truncate(draw, spec, row, index):
    # JSONL: the line is cut inside; CSV: the row loses its last cells.
    reasons = ("ragged_csv_row",) if spec.container in CSV_KINDS else ()
    return replace(_rejected(row, "truncate", *reasons), where=draw(st.floats(0, 1, exclude_max=True)))


def _long_text(seed: str, size: int) -> str:
    # "·" is not whitespace, so the text stays over `size` characters once stripped.
    return ((seed + "·") * (size // (len(seed) + 1) + 1))[:size]


def _huge(draw, spec, row, index):
    big = _long_text(draw(HH_TEXT), draw(st.sampled_from(HUGE_SIZES)))
    rec = row.record
    if draw(st.booleans()):
        rec[f"x{index}_huge"] = big  # a huge metadata value is kept as it is
        return replace(row, kind="huge_metadata")
    if spec.fmt == "hh":
        j = draw(st.integers(0, len(row.turns) - 1))
        rec[spec.hh_field] = _transcript([(r, big if i == j else c) for i, (r, c) in enumerate(row.turns)])
        return _rejected(row, "huge", "too_long", target=(spec.hh_field,))
    path = draw(st.sampled_from(_content_paths(spec, rec)))
    _set(rec, path, big)
    return _rejected(row, "huge", "too_long", target=path)


def _empty(draw, spec, row, index):
    rec = row.record
    path = draw(st.sampled_from(_text_paths(spec, rec) + _list_path(spec)))
    if path == (spec.list_key,):
        rec[path[0]] = []
        return _rejected(row, "empty", "empty_field", target=path)
    _set(rec, path, draw(st.sampled_from(["", " ", "\t\n"])))
    if len(path) == 1:
        return _rejected(row, "empty", "malformed_transcript" if spec.fmt == "hh" else "empty_field", target=path)
    item = rec[spec.list_key][path[1]]
    if path[2] == _turn_keys(item)[0]:
        return _rejected(row, "empty", "unknown_role", target=path)
    if not _is_system(item):
        return _rejected(row, "empty", "empty_field", target=path)
    has_system = any(_is_system(m) and m[_turn_keys(m)[1]].strip() for m in rec[spec.list_key])
    turns = row.turns if has_system else [t for t in row.turns if t[0] != "system"]
    return replace(row, turns=turns, kind="empty_system", target=path)


def _broken_conversation(draw, spec, row, index):
    rec = row.record
    if spec.fmt == "hh":
        how = draw(st.sampled_from(["preamble", "no_turns", "ends_with_human"]))
        text = rec[spec.hh_field]
        rec[spec.hh_field] = {"preamble": "Preamble." + text, "no_turns": "Just text." + _HH_TURN.sub(" ", text),
                              "ends_with_human": text + "\n\nHuman: and?"}[how]
        return _rejected(row, how, "no_final_assistant_turn" if how == "ends_with_human" else "malformed_transcript")
    items = rec[spec.list_key]
    how = draw(st.sampled_from(["ends_with_user", "no_user", "unknown_role"]))
    if how == "ends_with_user":
        items.pop()
        return _rejected(row, how, "no_final_assistant_turn")
    if how == "no_user":
        rec[spec.list_key] = [m for m in items if m[_turn_keys(m)[0]].strip().lower() not in ("user", "human")]
        return _rejected(row, how, "no_user_turn")
    item = draw(st.sampled_from(items))
    item[_turn_keys(item)[0]] = draw(st.sampled_from(["tool", "function", "bot", ""]))
    return _rejected(row, how, "unknown_role")


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), TEXT)
EXTRA_VALUES = {
    "json": st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3), max_leaves=6),
    "csv": st.one_of(TEXT, st.integers()),
    # One type per column and no empty struct: what a Parquet column can hold.
    "parquet": st.one_of(SCALARS, st.lists(st.integers(0, 9), max_size=3),
                         st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 9), min_size=1)),
}


def _extra_keys(draw, spec, row, index):
    family = "csv" if spec.container in CSV_KINDS else "parquet" if spec.container == "parquet" else "json"
    for j in range(draw(st.integers(1, 3))):
        row.record[f"x{index}_{j}"] = draw(EXTRA_VALUES[family])
    if spec.list_key and draw(st.booleans()):
        draw(st.sampled_from(row.record[spec.list_key]))["x_name"] = draw(TEXT)  # turn keys other than role/content are dropped
    return replace(row, kind="extra_keys")


def _not_an_object(draw, spec, row, index):
    # A one-line JSONL file holding a list is a JSON array; keep the first line from being one.
    lists = st.lists(st.integers(0, 9), max_size=3) if index or spec.container != "jsonl" else st.nothing()
    value = draw(st.one_of(TEXT, st.integers(), st.none(), st.booleans(), lists))
    return Row(value, None, frozenset({"not_an_object"}), "not_an_object")


MUTATIONS = {
    "delete": _delete, "wrong_type": _wrong_type, "bytes": _random_bytes, "truncate": _truncate, "huge": _huge,
    "empty": _empty, "broken": _broken_conversation, "extra_keys": _extra_keys, "not_an_object": _not_an_object,
    "binary": _binary,
}
COMMON = ["delete", "wrong_type", "huge", "empty", "broken", "extra_keys", "duplicate"]
KINDS = {
    "jsonl": ["valid", *COMMON, "bytes", "truncate", "not_an_object"],
    "csv": ["valid", *COMMON, "bytes", "truncate"],
    "json": ["valid", *COMMON, "bytes", "not_an_object"],
    "parquet": ["valid", *COMMON, "binary"],
}


@st.composite
def row_lists(draw, container: str):
    fmt = draw(st.sampled_from(FORMATS))
    spec = Spec(fmt, container, hh_field=draw(st.sampled_from(["chosen", "rejected"])),
                response_key=draw(st.sampled_from(RESPONSE_KEYS)), auto=draw(st.booleans()))
    kinds = KINDS["csv" if container in CSV_KINDS else container]
    kinds = [k for k in kinds if k != "broken" or spec.fmt in ("hh", "messages", "sharegpt")]
    rows: list[Row] = []
    for i in range(draw(st.integers(1, 8))):
        kind = "valid" if i == 0 and spec.auto else draw(st.sampled_from(kinds))
        if kind == "duplicate" and rows:
            rows.append(copy.deepcopy(draw(st.sampled_from(rows))))
            continue
        row = draw(valid_rows(spec, i))
        rows.append(MUTATIONS[kind](draw, spec, row, i) if kind in MUTATIONS else row)
    return spec, rows


# ---------------------------------------------------------------- containers

UNKNOWN = "unknown"  # a CSV row cut by the truncation of its file: kept, rejected, a duplicate or gone


@dataclass
class Expect:
    source: str  # file name
    line: int
    turns: Any  # canonical turns, None (rejected), or UNKNOWN
    reasons: frozenset = frozenset()
    kind: str = "valid"
    meta: Any = None  # the expected metadata of a kept row, where the container keeps values exactly


@dataclass
class Case:
    spec: Spec
    files: dict[str, Any] = field(default_factory=dict)  # name -> bytes or pa.Table, read in this order
    expects: list[Expect] = field(default_factory=list)
    fails: bool | None = False  # True: a corrupt file, ingestion must stop with one InputError; None: it may

    def write(self, d: Path) -> list[str]:
        paths = []
        for name, data in self.files.items():
            p = d / name
            if isinstance(data, pa.Table):
                pq.write_table(data, p)
            else:
                p.write_bytes(data)
            paths.append(str(p))
        return paths


def _conversation_keys(spec: Spec, rec: dict) -> set[str]:
    if spec.list_key:
        return {spec.list_key}
    if spec.fmt == "hh":
        return {spec.hh_field}
    if spec.fmt == "alpaca":
        return {"instruction", "input", "output"}
    return {"prompt", next((k for k in RESPONSE_KEYS if k in rec), "response")}


def _expect(spec: Spec, name: str, line: int, row: Row, exact_meta: bool, reasons=None) -> Expect:
    meta = None
    if exact_meta and row.turns is not None:
        meta = {k: v for k, v in row.record.items() if k not in _conversation_keys(spec, row.record)}
    return Expect(name, line, row.turns, frozenset(reasons) if reasons is not None else row.reasons, row.kind, meta)


def _jsonl_reason(line: bytes) -> str | None:
    """How the reader must reject a line that is not JSON: None for a blank one (skipped)."""
    if not line.removeprefix(BOM).strip():
        return None
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    return "malformed_json"


def _jsonl_line(row: Row, ensure_ascii: bool) -> bytes:
    line = json.dumps(row.record, ensure_ascii=ensure_ascii).encode()
    if row.kind == "bytes":
        at = int(row.where * (len(line) - 1))  # never after the closing brace
        return line[:at] + row.blob + line[at:]
    if row.kind == "truncate":
        return line[: 1 + int(row.where * (len(line) - 1))]
    return line


def _truncation(draw, data: bytes, lo: int) -> int:
    return draw(st.integers(lo, len(data))) if draw(st.integers(0, 3)) == 0 else len(data)


@st.composite
def jsonl_cases(draw):
    spec, rows = draw(row_lists("jsonl"))
    eol, ensure_ascii, bom = draw(st.sampled_from([b"\n", b"\r\n"])), draw(st.booleans()), draw(st.booleans())
    out, spans, n = bytearray(BOM if bom else b""), [], 0
    for row in rows:
        for _ in range(draw(st.integers(0, 1))):
            out += draw(st.sampled_from([b"", b"  ", b"\t"])) + eol
            n += 1
        line = _jsonl_line(row, ensure_ascii)
        n += 1
        spans.append((row, n, 0 if n == 1 else len(out), len(out) + len(line)))
        out += line + eol
    gz = draw(st.booleans())
    cut = len(out) if gz else _truncation(draw, bytes(out), spans[0][3])
    data = bytes(out[:cut])
    name = "data.jsonl.gz" if gz else "data.jsonl"
    case = Case(spec, {name: gzip.compress(data) if gz else data})
    for row, n, start, end in spans:
        if cut >= end:
            reasons = {_jsonl_reason(data[start:end])} if row.kind in ("bytes", "truncate") else None
            case.expects.append(_expect(spec, name, n, row, True, reasons))
        elif cut > start and _jsonl_reason(data[start:cut]):
            # A line cut short: invalid JSON, or (a number cut shorter) still not an object.
            case.expects.append(_expect(spec, name, n, _rejected(row, "cut"), True,
                                        {"malformed_json", "invalid_utf8", "not_an_object"}))
    return case


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if type(value) is str else json.dumps(value, ensure_ascii=False)


def _csv_cells(spec: Spec, row: Row, columns: list[str]) -> list[str]:
    cells = [_cell(row.record.get(c)) for c in columns if not (row.kind == "delete" and row.target == (c,))]
    if row.kind == "bytes":
        i = columns.index(row.target[0])
        at = int(row.where * (len(cells[i]) + 1))
        cells[i] = cells[i][:at] + row.blob.decode("utf-8", "surrogateescape") + cells[i][at:]
    elif row.kind == "truncate":
        cells = cells[: 1 + int(row.where * (len(cells) - 1))]
    return cells


def _csv_columns(spec: Spec, rows: list[Row]) -> list[str]:
    required = {"messages": ["messages"], "sharegpt": ["conversations"], "hh": ["chosen", "rejected"],
                "alpaca": ["instruction", "output"], "prompt-response": ["prompt", spec.response_key]}[spec.fmt]
    return list(dict.fromkeys([*required, *(k for r in rows for k in r.record)]))


def _n_lines(text: str) -> int:
    return len(io.StringIO(text, newline="").readlines())  # the universal newlines the reader counts


@st.composite
def csv_cases(draw):
    spec, rows = draw(row_lists(draw(st.sampled_from(CSV_KINDS))))
    delimiter = "\t" if spec.container == "tsv" else ","
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    columns = _csv_columns(spec, rows)

    def line(cells):
        # The writer quotes only the line terminator's characters: with "\n" alone, a cell's "\r" would end the row.
        buf = io.StringIO()
        csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerow(cells)
        return buf.getvalue()[:-2] + eol

    text = "\ufeff" * draw(st.booleans()) + line(columns)
    spans = []
    for row in rows:
        for _ in range(draw(st.integers(0, 1))):
            text += draw(st.sampled_from(["", "  "])) + eol
        cells = _csv_cells(spec, row, columns)
        start = len(text.encode("utf-8", "surrogateescape"))
        row_text = line(cells)
        blank = len(cells) == 1 and not cells[0].strip()  # one blank cell reads as a blank line
        spans.append((row, _n_lines(text) + 1, start, start + len(row_text[: -len(eol)].encode("utf-8", "surrogateescape")), blank))
        text += row_text
    data = text.encode("utf-8", "surrogateescape")
    gz = draw(st.booleans())
    cut = len(data) if gz else _truncation(draw, data, spans[0][3])
    name = f"data.{spec.container}" + (".gz" if gz else "")
    case = Case(spec, {name: gzip.compress(data) if gz else data[:cut]})
    for row, n, start, end, blank in spans:
        if cut >= end and not blank:
            case.expects.append(_expect(spec, name, n, row, False))
        elif start < cut < end:
            case.expects.append(Expect(name, n, UNKNOWN, kind="cut"))
    return case


MARK = "~~blob{}~~"


@st.composite
def json_array_cases(draw):
    spec, rows = draw(row_lists("json"))
    records = []
    for i, row in enumerate(rows):
        rec = row.record
        if row.kind == "bytes":
            rec = copy.deepcopy(rec)
            _set(rec, row.target, _get(rec, row.target) + MARK.format(i))
        records.append(rec)
    data = json.dumps(records, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1]))).encode()
    for i, row in enumerate(rows):
        if row.kind == "bytes":
            data = data.replace(MARK.format(i).encode(), row.blob)
    data = BOM * draw(st.booleans()) + data
    gz = draw(st.booleans())
    name = "data.json.gz" if gz else "data.json"
    return Case(spec, {name: gzip.compress(data) if gz else data},
                [_expect(spec, name, i, row, True) for i, row in enumerate(rows, 1)])


def _parquet_buckets(rows: list[Row]) -> list[list[Row]]:
    """Rows grouped into files whose columns each hold one type (first fit, order kept)."""
    buckets: list[list[Row]] = []
    for row in rows:
        for bucket in buckets:
            if _table([r.record for r in bucket + [row]]) is not None:
                bucket.append(row)
                break
        else:
            buckets.append([row])
    return buckets


def _table(records: list[dict]) -> pa.Table | None:
    """The records as one table, or None if a column cannot hold them all as they are."""
    columns = list(dict.fromkeys(k for r in records for k in r))  # from_pylist would keep the first row's keys only
    try:
        table = pa.Table.from_pydict({c: [r.get(c) for r in records] for c in columns})
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    # pyarrow also converts silently (text to binary, int to float): such a fit would change the rows.
    return table if all(map(_read_back, records, table.to_pylist())) else None


def _read_back(value: Any, read: Any) -> bool:
    """Whether Parquet gives ``value`` back unchanged; the union of struct fields may add nulls only."""
    if type(value) is dict:
        return type(read) is dict and all(_read_back(v, read.get(k)) for k, v in value.items()) and all(
            read[k] is None for k in read.keys() - value.keys())
    if type(value) is list:
        return type(read) is list and len(read) == len(value) and all(map(_read_back, value, read))
    return type(value) is type(read) and value == read


@st.composite
def parquet_cases(draw):
    spec, rows = draw(row_lists("parquet"))
    case = Case(spec)
    for k, bucket in enumerate(_parquet_buckets(rows)):
        name = f"part{k}.parquet"
        case.files[name] = _table([r.record for r in bucket])
        case.expects += [_expect(spec, name, i, row, False) for i, row in enumerate(bucket, 1)]
    return case


# ---------------------------------------------------------------- checks


def _fresh_dir(tmp_path: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=tmp_path))


def check_outputs(out: Path, case: Case, res: dict) -> None:
    """Every expected row is where it must be, nothing else is, and the counts add up."""
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS  # no temporary file left
    samples = pq.read_table(out / "samples.parquet").to_pylist()
    rejects = _rejects(out)
    for r in rejects:
        assert r["reason"] in REASONS and r["detail"] and len(r["raw"]) <= 2000, r
    by_line = {(Path(r["source"]).name, r["line"]): r for r in rejects}
    assert len(by_line) == len(rejects), "two rejects for one row"
    kept = {s["sample_id"]: s for s in samples}
    assert len(kept) == len(samples) and all(sid == compute_sample_id(s["messages"]) for sid, s in kept.items())

    first: dict[str, Expect] = {}
    duplicates = 0
    unknown = [e for e in case.expects if e.turns is UNKNOWN]
    for e in case.expects:
        if e.turns is UNKNOWN:
            by_line.pop((e.source, e.line), None)
        elif e.turns is None:
            r = by_line.pop((e.source, e.line), None)
            assert r is not None, f"{e.kind} row {e.source}:{e.line} is not in rejects"
            assert not e.reasons or r["reason"] in e.reasons, (e, r)
        elif compute_sample_id(e.turns) in first:
            duplicates += 1
        else:
            first[compute_sample_id(e.turns)] = e
    assert not by_line, f"rejects of rows that are valid: {list(by_line.values())}"
    assert first.keys() <= kept.keys(), [first[k] for k in first.keys() - kept.keys()]
    assert len(kept.keys() - first.keys()) <= len(unknown)
    for sid, e in first.items():
        s = kept[sid]
        assert (Path(s["source"]).name, s["messages"]) == (e.source, _msgs(e.turns)), e
        if e.meta is not None:
            assert json.loads(s["metadata"]) == e.meta
    known = len(case.expects) - len(unknown)
    assert res["rows_read"] == res["kept"] + res["rejected"] + res["duplicates"]
    assert known <= res["rows_read"] <= known + len(unknown)
    assert (res["kept"], res["rejected"]) == (len(samples), len(rejects))
    if not unknown:
        assert (res["kept"], res["duplicates"]) == (len(first), duplicates)
    for f in res["files"]:
        assert f["rows_read"] == f["kept"] + f["rejected"] + f["duplicates"]


def check_read(out: Path, case: Case, res: dict) -> None:
    """After a run that succeeded."""
    assert case.fails is not True, "a corrupt file was read without an error"
    if case.fails is False:
        check_outputs(out, case, res)
        return
    # Overwritten Parquet bytes may still decode (Parquet has no checksums): then the counts must add up.
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    assert res["rows_read"] == res["kept"] + res["rejected"] + res["duplicates"]
    assert all(r["reason"] in REASONS and r["detail"] for r in _rejects(out))


def check_failed(out: Path, message: str, case: Case) -> None:
    """After a run that stopped: one line naming the file, and nothing written."""
    assert case.fails is not False, f"an error on a readable input: {message}"
    assert "\n" not in message and any(name in message for name in case.files), message
    assert not out.exists() or not list(out.iterdir())  # no temporary file left either


def run_library(tmp_path: Path, case: Case) -> None:
    d = _fresh_dir(tmp_path)
    paths, out = case.write(d), d / "out"
    try:
        res = ingest(paths, out, case.spec.config())
    except InputError as e:
        check_failed(out, str(e), case)
        return
    check_read(out, case, res.to_dict())


# ---------------------------------------------------------------- row properties


QA = [("user", "q"), ("assistant", "a")]


@fuzz(150)
@given(case=jsonl_cases())
# A byte order mark on a blank first line made that line a malformed_json reject.
@example(case=Case(Spec("alpaca", "jsonl"), {"data.jsonl": BOM + b'\n{"instruction": "q", "output": "a"}\n'},
                   [Expect("data.jsonl", 2, QA, meta={})]))
# A .jsonl file whose first line is a list was read as one JSON array: a file-level error, every row lost.
@example(case=Case(Spec("prompt-response", "jsonl", auto=True),
                   {"data.jsonl": b'[1, 2]\n{"prompt": "q", "response": "a"}\n'},
                   [Expect("data.jsonl", 1, None, frozenset({"not_an_object"})), Expect("data.jsonl", 2, QA, meta={})]))
def test_fuzzed_jsonl_rows_are_kept_or_rejected_on_their_line(tmp_path, case):
    run_library(tmp_path, case)


@fuzz(150)
@given(case=csv_cases())
def test_fuzzed_csv_rows_are_kept_or_rejected_on_their_line(tmp_path, case):
    run_library(tmp_path, case)


@fuzz(100)
@given(case=json_array_cases())
# A JSON array after a byte order mark was "not valid JSON".
@example(case=Case(Spec("alpaca", "json"), {"data.json": BOM + b'[{"instruction": "q", "output": "a"}]'},
                   [Expect("data.json", 1, QA, meta={})]))
def test_fuzzed_json_array_records_are_kept_or_rejected(tmp_path, case):
    run_library(tmp_path, case)


@fuzz(120)
@given(case=parquet_cases())
# ShareGPT turns with from/value and role/content keys in one file: the unused pair is null, the turn was rejected.
@example(case=Case(Spec("sharegpt", "parquet"),
                   {"part0.parquet": pa.table({"conversations": [[{"from": "human", "value": "q"},
                                                                  {"role": "assistant", "content": "a"}]]})},
                   [Expect("part0.parquet", 1, QA)]))
# A binary content column crashed the fast path (bytes.strip, then bytes in the sample id).
@example(case=Case(Spec("messages", "parquet"),
                   {"part0.parquet": pa.table({"messages": pa.array([[{"role": "user", "content": b"q"},
                                                                      {"role": "assistant", "content": b"a"}]])})},
                   [Expect("part0.parquet", 1, None, frozenset({"wrong_type"}))]))
# Rows answering under different names: a null 'response' column hid the 'completion'.
@example(case=Case(Spec("prompt-response", "parquet"),
                   {"part0.parquet": pa.table({"prompt": ["q", "q2"], "response": ["a", None], "completion": [None, "a2"]})},
                   [Expect("part0.parquet", 1, QA), Expect("part0.parquet", 2, [("user", "q2"), ("assistant", "a2")])]))
def test_fuzzed_parquet_values_and_types_are_kept_or_rejected(tmp_path, case):
    run_library(tmp_path, case)


# ---------------------------------------------------------------- file-level corruption


def _parquet_bytes(draw) -> tuple[Case, str, bytes]:
    case = draw(parquet_cases())
    name, table = next(iter(case.files.items()))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=draw(st.sampled_from(["snappy", "none"])))
    return case, name, buf.getvalue()


@st.composite
def truncated_cases(draw):
    """A gzip file (of JSONL, CSV or a JSON array), a JSON array or a Parquet file cut short: it must fail."""
    how = draw(st.sampled_from(["jsonl", "csv", "json", "parquet"]))
    if how == "parquet":
        case, name, data = _parquet_bytes(draw)
    else:
        case = draw({"jsonl": jsonl_cases, "csv": csv_cases, "json": json_array_cases}[how]())
        name, data = next(iter(case.files.items()))
        gz = how != "json" or draw(st.booleans())  # cut plain JSONL or CSV is a row-level case
        if name.endswith(".gz") and not gz:
            name, data = name[:-3], gzip.decompress(data)
        elif not name.endswith(".gz") and gz:
            name, data = name + ".gz", gzip.compress(data)
    # Not inside a byte order mark (the rest is no JSON at all); an empty file is tested in test_ingest.
    # Half the cuts in the second half: drawn integers lean to the low end of their range.
    lo = len(BOM) if data.startswith(BOM) else 1
    cut = draw(st.integers(lo, len(data) - 1) | st.integers(max(lo, len(data) // 2), len(data) - 1))
    return Case(case.spec, {name: data[:cut]}, fails=True)


@st.composite
def overwritten_parquet_cases(draw):
    """A Parquet file with a few bytes overwritten: it may fail or, Parquet having no checksums, decode."""
    case, name, data = _parquet_bytes(draw)
    corrupt = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        # Inside the file: a wrong "PAR1" magic at either end is found at once.
        corrupt[draw(st.integers(4, len(data) - 5))] = draw(st.integers(0, 255))
    return Case(case.spec, {name: bytes(corrupt)}, fails=None)


@fuzz(80)
@given(case=truncated_cases())
# A file of a byte order mark alone was read as one malformed line, not as an empty file.
@example(case=Case(Spec("alpaca", "json"), {"data.json": BOM}, fails=True))
def test_truncated_files_fail_with_one_line_and_write_nothing(tmp_path, case):
    run_library(tmp_path, case)


@fuzz(40)
@given(case=overwritten_parquet_cases())
def test_overwritten_parquet_bytes_fail_with_one_line_or_read_consistently(tmp_path, case):
    run_library(tmp_path, case)


# ---------------------------------------------------------------- the command line


@fuzz(30)
@given(case=st.one_of(jsonl_cases(), csv_cases(), json_array_cases(), parquet_cases(), truncated_cases(),
                      overwritten_parquet_cases()))
def test_cli_exits_0_with_a_summary_or_2_with_one_error_line(tmp_path, capsys, case):
    d = _fresh_dir(tmp_path)
    paths, out = case.write(d), d / "out"
    capsys.readouterr()
    rc = main(["ingest", *paths, "--out", str(out), "--no-progress", "-q", *case.spec.cli_args()])
    stdout, stderr = capsys.readouterr()
    assert "Traceback" not in stderr
    if rc == 2:
        assert stderr.startswith("error: ") and stderr.count("\n") == 1 and not stdout, stderr
        check_failed(out, stderr.strip(), case)
        return
    assert rc == 0, stderr
    assert all(line.startswith("ingest: ") for line in stderr.splitlines())  # -q leaves warnings only
    assert f"samples: {out / 'samples.parquet'}" in stdout
    check_read(out, case, json.loads((out / "summary.json").read_text()))
