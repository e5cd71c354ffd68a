"""Ingestion: every format and container gives the same sample_ids, bad rows land
in rejects with reason and line, unreadable files fail with one clear line."""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import sys
import typing

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seal_cli.main import main
from seal_core.config import from_dict
from seal_core.errors import ConfigError, InputError
from seal_core.ingest import (
    FORMATS,
    IngestConfig,
    ingest,
    iter_canonical_batches,
    load_samples,
    parse_hh,
)
from seal_core.ingest.checks import conversation_checks
from seal_core.ingest.formats import RECORD_FORMATS, RecordFormat, record_format
from seal_core.ingest.readers import KNOWN_FIELDS
from seal_core.schema import CANONICAL_SCHEMA, compute_sample_id

# Canonical conversations: (messages, extra record fields). Contents are stripped
# and roles alternate, so every format can represent its share of them exactly.
SINGLE = [
    [("user", "What is the capital of France?"), ("assistant", "Paris.")],
    [("user", "Translate 'cat' to German."), ("assistant", "Katze.")],
    [("user", "Name a prime number.\n\nIt must be above 10."), ("assistant", "11 is one.")],
    [("user", "Ünïcödé — 日本語?"), ("assistant", "Yes: 日本語 works, and so do \"quotes\", commas, and\nnewlines.")],
]
MULTI = [
    [("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a joke."), ("assistant", "Why did...")],
    [("user", "Count to two."), ("assistant", "One."), ("user", "And?"), ("assistant", "Two.")],
]
WITH_SYSTEM = [
    [("system", "You are terse."), ("user", "Sum 2 and 2."), ("assistant", "4")],
]


def _ids(convs):
    return {compute_sample_id(c) for c in convs}


def _msgs(conv):
    return [{"role": r, "content": c} for r, c in conv]


def _records(fmt: str) -> tuple[list[dict], list]:
    """Records of ``fmt`` and the conversations they encode."""
    if fmt == "messages":
        convs = SINGLE + MULTI + WITH_SYSTEM
        return [{"id": f"m{i}", "messages": _msgs(c)} for i, c in enumerate(convs)], convs
    if fmt == "sharegpt":
        convs = SINGLE + MULTI + WITH_SYSTEM
        names = {"user": "human", "assistant": "gpt", "system": "system"}
        return [{"id": f"s{i}", "conversations": [{"from": names[r], "value": c} for r, c in conv]}
                for i, conv in enumerate(convs)], convs
    if fmt == "alpaca":
        recs = []
        for i, conv in enumerate(SINGLE):
            instruction, _, inp = conv[0][1].partition("\n\n")
            recs.append({"instruction": instruction, "input": inp, "output": conv[1][1], "id": f"a{i}"})
        return recs, SINGLE
    if fmt == "hh":
        convs = SINGLE + MULTI
        recs = []
        for i, conv in enumerate(convs):
            text = "".join(f"\n\n{'Human' if r == 'user' else 'Assistant'}: {c}" for r, c in conv)
            recs.append({"chosen": text, "rejected": text + " (worse)", "id": f"h{i}"})
        return recs, convs
    if fmt == "prompt-response":
        return [{"prompt": c[0][1], "response": c[1][1], "id": f"p{i}"} for i, c in enumerate(SINGLE)], SINGLE
    raise AssertionError(fmt)


def _write(path, recs: list[dict], container: str) -> str:
    """Write records as jsonl/json/csv/parquet (optionally gzip-compressed)."""
    if container.startswith("jsonl"):
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode()
    elif container.startswith("json"):
        data = json.dumps(recs, ensure_ascii=False, indent=2).encode()
    elif container.startswith("csv"):
        cols = list(dict.fromkeys(k for r in recs for k in r))
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        for r in recs:
            w.writerow([json.dumps(r[k], ensure_ascii=False) if isinstance(r[k], list) else r[k] for k in cols])
        data = buf.getvalue().encode()
    elif container == "parquet":
        pq.write_table(pa.Table.from_pylist(recs), path)
        return str(path)
    else:
        raise AssertionError(container)
    if container.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return str(path)


CONTAINERS = ["jsonl", "jsonl.gz", "json", "json.gz", "csv", "csv.gz", "parquet"]


def _sample_ids(out_dir) -> list[str]:
    return pq.read_table(out_dir / "samples.parquet", columns=["sample_id"]).column(0).to_pylist()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_and_container_gives_the_same_ids(tmp_path, fmt):
    recs, convs = _records(fmt)
    expected = _ids(convs)
    for container in CONTAINERS:
        src = _write(tmp_path / f"in_{container.replace('.', '_')}.{container}", recs, container)
        out = tmp_path / f"out_{container}"
        res = ingest([src], out, IngestConfig(progress=False))
        assert res.files[0]["format"] == ("hh (chosen)" if fmt == "hh" else fmt), container
        assert res.rejected == 0, (container, res.rejected_by_reason)
        assert set(_sample_ids(out)) == expected, container
        assert res.kept == len(convs)


def test_ids_are_stable_across_runs_and_padding(tmp_path):
    recs, convs = _records("messages")
    src = _write(tmp_path / "a.jsonl", recs, "jsonl")
    ingest([src], tmp_path / "o1", IngestConfig(progress=False))
    ingest([src], tmp_path / "o2", IngestConfig(progress=False))
    assert _sample_ids(tmp_path / "o1") == _sample_ids(tmp_path / "o2")
    # Surrounding whitespace is not part of a turn: padded copies are duplicates.
    padded = [{"messages": [{"role": m["role"], "content": f"  {m['content']}\n"} for m in r["messages"]]} for r in recs]
    src2 = _write(tmp_path / "b.jsonl", recs + padded, "jsonl")
    res = ingest([src2], tmp_path / "o3", IngestConfig(progress=False))
    assert res.kept == len(recs) and res.duplicates == len(recs)
    assert set(_sample_ids(tmp_path / "o3")) == _ids(convs)


def test_canonical_columns_and_metadata_keep_other_fields(tmp_path):
    recs = [
        {"dataset": "x", "instruction": "Say hi", "output": "Hi", "generator": "gpt", "score": 1.5, "tags": ["a"]},
        {"instruction": "Add", "input": "1+1", "output": "2", "nested": {"k": [1, None]}},
    ]
    src = _write(tmp_path / "a.json", recs, "json")
    res = ingest([src], tmp_path / "out", IngestConfig(progress=False))
    table = pq.read_table(tmp_path / "out" / "samples.parquet")
    assert table.schema.equals(CANONICAL_SCHEMA)
    rows = table.to_pylist()
    assert [json.loads(r["metadata"]) for r in rows] == [
        {"dataset": "x", "generator": "gpt", "score": 1.5, "tags": ["a"]},
        {"nested": {"k": [1, None]}},
    ]
    assert rows[1]["messages"] == [{"role": "user", "content": "Add\n\n1+1"}, {"role": "assistant", "content": "2"}]
    assert all(r["source"] == src for r in rows)
    assert rows[0]["sample_id"] == compute_sample_id(rows[0]["messages"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["kept"] == 2 and summary["files"][0]["format"] == "alpaca"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["max_chars"] == 200_000
    assert res.samples_path.exists() and res.rejects_path.exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_turn_merging_and_empty_system_prompt(tmp_path):
    recs = [
        {"messages": [{"role": "system", "content": " "}, {"role": "user", "content": "a"},
                      {"role": "User", "content": "b"}, {"role": "assistant", "content": "c"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x"},
                           {"from": "chatgpt", "value": "y"}]},
    ]
    p1 = _write(tmp_path / "m.jsonl", recs[:1], "jsonl")
    p2 = _write(tmp_path / "s.jsonl", recs[1:], "jsonl")
    rows = {r["source"]: r for r in load_samples_from(tmp_path, [p1, p2])}
    assert rows[p1]["messages"] == [{"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "c"}]
    assert rows[p2]["messages"] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x\n\ny"}]
    assert all(r["sample_id"] == compute_sample_id(r["messages"]) for r in rows.values())


def load_samples_from(tmp_path, inputs):
    ingest(inputs, tmp_path / "merged", IngestConfig(progress=False))
    return load_samples(tmp_path / "merged")


def test_parse_hh_merges_same_speaker_and_rejects_preamble_and_empty_answer():
    from seal_core.ingest import RowReject

    t = "\n\nHuman: hi\n\nHuman: again\n\nAssistant: yes \n\nAssistant: and more"
    assert parse_hh(t, "chosen") == [("user", "hi\n\nagain"), ("assistant", "yes\n\nand more")]
    assert parse_hh("Human: a\n\nAssistant: b", "chosen") == [("user", "a"), ("assistant", "b")]
    with pytest.raises(RowReject) as e:
        parse_hh("\n\nHuman: hi\n\nAssistant: ", "chosen")
    assert e.value.reason == "empty_field"
    with pytest.raises(RowReject) as e:
        parse_hh("Intro text\n\nHuman: hi\n\nAssistant: b", "rejected")
    assert (e.value.reason, e.value.field) == ("malformed_transcript", "rejected")
    with pytest.raises(RowReject) as e:
        parse_hh("no turns here", "chosen")
    assert e.value.reason == "malformed_transcript"


def _rejects(out_dir) -> list[dict]:
    return pq.read_table(out_dir / "rejects.parquet").to_pylist()


def test_each_bad_jsonl_row_is_rejected_with_reason_and_line(tmp_path):
    good = [{"messages": _msgs(c), "n": i} for i, c in enumerate(SINGLE + MULTI)]
    lines = [json.dumps(good[0]).encode()]
    expect = {}  # line -> (reason, field)

    def bad(obj_or_bytes, reason, field=""):
        lines.append(obj_or_bytes if isinstance(obj_or_bytes, bytes) else json.dumps(obj_or_bytes).encode())
        expect[len(lines)] = (reason, field)

    bad(b'{"messages": [', "malformed_json")
    bad([1, 2], "not_an_object")
    bad({"other": 1}, "missing_field", "messages")
    bad({"messages": []}, "empty_field", "messages")
    bad({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
        "empty_field", "messages[1].content")
    bad({"messages": "hello"}, "wrong_type", "messages")
    bad({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]},
        "wrong_type", "messages[0].content")
    bad({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}, "missing_field", "messages[0].content")
    bad('{"messages": [{"role": "user", "content": "caf\xe9"}]}'.encode("latin-1"), "invalid_utf8")
    bad({"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "a"}]},
        "unknown_role", "messages[0].role")
    bad({"messages": [{"role": "user", "content": "q"}]}, "no_final_assistant_turn", "messages")
    bad({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
        "no_user_turn", "messages")
    bad({"messages": [{"role": "user", "content": "q" * 600}, {"role": "assistant", "content": "a"}]}, "too_long")
    lines.append(b"   ")  # blank lines are skipped, not rejected
    for g in good[1:]:
        lines.append(json.dumps(g).encode())
    lines.append(json.dumps(good[2]).encode())  # exact duplicate
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    res = ingest([str(src)], tmp_path / "out", IngestConfig(progress=False, max_chars=500))
    assert res.kept == len(good) and res.duplicates == 1
    assert set(_sample_ids(tmp_path / "out")) == _ids(SINGLE + MULTI)
    got = {r["line"]: (r["reason"], r["field"]) for r in _rejects(tmp_path / "out")}
    assert got == expect
    rej = {r["line"]: r for r in _rejects(tmp_path / "out")}
    assert rej[2]["raw"] == '{"messages": [' and rej[2]["source"] == str(src)
    assert "tool" in rej[11]["detail"]
    assert res.rows_read == len(good) + len(expect) + 1
    assert sum(res.rejected_by_reason.values()) == len(expect)


def test_conversation_checks_keep_or_give_the_reject():
    checks = conversation_checks("conversations", max_chars=10)

    def first_failure(turns):
        n_chars = sum(len(c) for _, c in turns)
        for check in checks:
            ok, reject = check(turns, n_chars)
            assert (reject is None) == ok
            if not ok:
                return reject.reason, reject.field, reject.detail
        return None

    assert first_failure([("user", "q"), ("assistant", "a")]) is None
    assert first_failure([]) == ("no_final_assistant_turn", "conversations", "conversation has no turn with content")
    assert first_failure([("assistant", "a"), ("user", "q")]) == (
        "no_final_assistant_turn", "conversations", "conversation ends with a user turn, not an assistant turn")
    assert first_failure([("system", "s"), ("assistant", "a")]) == (
        "no_user_turn", "conversations", "conversation has no user turn")
    assert first_failure([("user", "q" * 10), ("assistant", "a")]) == (
        "too_long", "", "11 characters, over the limit of 10 (max_chars)")


def test_one_registry_lists_the_formats():
    assert FORMATS == ("messages", "alpaca", "sharegpt", "hh", "prompt-response")
    assert typing.get_args(typing.get_type_hints(IngestConfig)["format"]) == ("auto",) + FORMATS
    assert set(RECORD_FORMATS) == set(FORMATS)
    assert KNOWN_FIELDS == {f for fmt in RECORD_FORMATS.values() for f in fmt.header_fields} >= {"prompt", "answer"}


@pytest.mark.parametrize("rec", [
    {"messages": [{"role": "user", "content": " q "}, {"role": "assistant", "content": "a"}], "id": 1},
    {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "q"},
                  {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a"}]},
    {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "x": [1]},
    {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
])
def test_fast_path_parses_as_the_normaliser_does(rec):
    fmt = RECORD_FORMATS[record_format(rec)]
    assert fmt.parse(rec) == fmt.normalise(rec)


def test_a_format_added_to_the_registry_is_detected_and_ingested(tmp_path, monkeypatch):
    class QAFormat(RecordFormat):
        name = "qa"
        header_fields = ("q", "a")
        fields_hint = "q+a"

        def looks_like(self, rec):
            return "q" in rec and "a" in rec

        def normalise(self, rec, cfg=None):
            turns = [("user", rec["q"].strip()), ("assistant", rec["a"].strip())]
            return [t for t in turns if t[1]], {"n": rec.get("n")}

        def conversation_field(self, cfg=None):
            return "a"

    monkeypatch.setitem(RECORD_FORMATS, "qa", QAFormat())
    src = tmp_path / "qa.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ({"q": "Why?", "a": "Because.", "n": 1}, {"q": "x", "a": " "})))
    res = ingest([str(src)], tmp_path / "out", IngestConfig(progress=False))
    assert res.files[0]["format"] == "qa" and res.kept == 1
    assert _sample_ids(tmp_path / "out") == [compute_sample_id([("user", "Why?"), ("assistant", "Because.")])]
    assert [(r["reason"], r["field"]) for r in _rejects(tmp_path / "out")] == [("no_final_assistant_turn", "a")]


def test_bad_csv_rows_ragged_utf8_and_line_numbers(tmp_path):
    body = (
        b"id,prompt,response\n"
        b'1,"multi\nline prompt",answer one\n'  # record on lines 2-3
        b"2,too,many,fields\n"  # line 4
        b"3,,empty prompt\n"  # line 5
        b"4,caf\xe9,latin-1 byte\n"  # line 6
        b"\n"
        b"5,fine,answer five\n"  # line 8
        b"6,short\n"  # line 9
    )
    src = tmp_path / "rows.csv"
    src.write_bytes(body)
    res = ingest([str(src)], tmp_path / "out", IngestConfig(progress=False))
    assert res.kept == 2
    got = {r["line"]: (r["reason"], r["field"]) for r in _rejects(tmp_path / "out")}
    assert got == {4: ("ragged_csv_row", ""), 5: ("empty_field", "prompt"), 6: ("invalid_utf8", "prompt"),
                   9: ("ragged_csv_row", "")}
    rows = load_samples(tmp_path / "out")
    assert rows[0]["messages"][0]["content"] == "multi\nline prompt"
    assert [json.loads(r["metadata"]) for r in rows] == [{"id": "1"}, {"id": "5"}]
    raw = {r["line"]: r["raw"] for r in _rejects(tmp_path / "out")}
    assert raw[4] == "2,too,many,fields" and "\ufffd" in raw[6]


def test_headerless_csv_is_prompts_and_rows_without_response_are_rejected(tmp_path):
    src = tmp_path / "prompts.csv"
    src.write_text("Write a poem about the sea\nExplain how tides work briefly\n")
    res = ingest([str(src)], tmp_path / "out", IngestConfig(progress=False))
    assert (res.kept, res.rejected_by_reason) == (0, {"missing_field": 2})
    assert {r["line"]: r["field"] for r in _rejects(tmp_path / "out")} == {1: "response", 2: "response"}
    two = tmp_path / "pairs.csv"
    two.write_text("Say hi,Hi there\nSay bye,Bye now\n")
    res = ingest([str(two)], tmp_path / "out2", IngestConfig(progress=False))
    assert res.kept == 2 and res.files[0]["format"] == "prompt-response"
    with pytest.raises(InputError, match="no header row"):
        ingest([str(two)], tmp_path / "out3", IngestConfig(progress=False, format="alpaca"))
    # --csv-header yes: the first row names the columns even if it does not look like it.
    res = ingest([str(two)], tmp_path / "out4", IngestConfig(progress=False, csv_header="yes", format="prompt-response"))
    assert res.rejected_by_reason == {"missing_field": 1}


def test_bad_records_in_a_json_array_use_record_numbers(tmp_path):
    recs = [{"prompt": "a", "response": "b"}, "text", {"prompt": "c", "response": 7}, {"prompt": "d", "answer": "e"}]
    data = json.dumps(recs).encode().replace(b'"d"', b'"d\xff"')
    src = tmp_path / "arr.json"
    src.write_bytes(data)
    res = ingest([str(src)], tmp_path / "out", IngestConfig(progress=False))
    got = {r["line"]: (r["reason"], r["field"]) for r in _rejects(tmp_path / "out")}
    assert got == {2: ("not_an_object", ""), 3: ("wrong_type", "response"), 4: ("invalid_utf8", "")}
    assert res.kept == 1


def test_hh_field_choice_merging_and_empty_final_answer(tmp_path):
    recs = [
        {"chosen": "\n\nHuman: q1\n\nAssistant: good", "rejected": "\n\nHuman: q1\n\nAssistant: bad"},
        {"chosen": "\n\nHuman: q2\n\nHuman: more\n\nAssistant: a2", "rejected": "\n\nHuman: q2\n\nAssistant: r2"},
        {"chosen": "\n\nHuman: q3\n\nAssistant: ", "rejected": "\n\nHuman: q3\n\nAssistant: r3"},
        {"chosen": "Preamble.\n\nHuman: q4\n\nAssistant: a4", "rejected": "\n\nHuman: q4\n\nAssistant: r4"},
        {"chosen": "\n\nHuman: q5\n\nAssistant: a5\n\nHuman: thanks", "rejected": 5},
    ]
    src = _write(tmp_path / "hh.jsonl.gz", recs, "jsonl.gz")
    chosen = ingest([src], tmp_path / "c", IngestConfig(progress=False))
    rejected = ingest([src], tmp_path / "r", IngestConfig(progress=False, hh_field="rejected"))
    assert {r["line"]: (r["reason"], r["field"]) for r in _rejects(tmp_path / "c")} == {
        3: ("empty_field", "chosen"), 4: ("malformed_transcript", "chosen"), 5: ("no_final_assistant_turn", "chosen")}
    assert chosen.kept == 2
    assert {r["line"]: (r["reason"], r["field"]) for r in _rejects(tmp_path / "r")} == {5: ("wrong_type", "rejected")}
    assert rejected.kept == 4
    rows = load_samples(tmp_path / "c")
    assert rows[1]["messages"][0] == {"role": "user", "content": "q2\n\nmore"}
    assert json.loads(rows[0]["metadata"]) == {"rejected": recs[0]["rejected"]}


def _gz_truncated(tmp_path):
    rng = random.Random(0)
    rows = [{"prompt": "%032x" % rng.getrandbits(128) * 8, "response": "%032x" % rng.getrandbits(128) * 8}
            for _ in range(2000)]
    full = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    p = tmp_path / "cut.jsonl.gz"
    p.write_bytes(full[: int(len(full) * 0.8)])
    return p


def _file(name, data):
    def make(d):
        p = d / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return p

    return make


def _empty_dir(d):
    (d / "sub").mkdir()
    (d / "sub" / "readme.md").write_text("x")
    return d / "sub"


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda d: d / "missing.jsonl", "no such file"),
        (_file("empty.jsonl", b""), "empty"),
        (_file("ws.json", b"  \n\n"), "empty"),
        (_file("e.jsonl.gz", gzip.compress(b"")), "empty"),
        (_file("head.jsonl.gz", gzip.compress(b'{"prompt": "a"}\n' * 50)[:25]), "gzip"),
        (_gz_truncated, "gzip"),
        (_file("fake.jsonl.gz", b'{"a": 1}\n'), "not gzip"),
        (_file("labels.jsonl", '{"id": 1, "label": "good"}\n'), "cannot detect the format"),
        (_file("arr.json", '[{"prompt": "a", "response": "b"}, {oops}]'), "not valid JSON"),
        (_file("x.parquet", b"PAR1 not really"), "Parquet"),
        (_file("notes.txt", "just some text\n"), "unknown file type"),
        (_empty_dir, "no readable files"),
    ],
)
def test_unreadable_inputs_raise_one_line_input_error(tmp_path, make, needle):
    path = make(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        ingest([str(path)], out, IngestConfig(progress=False))
    msg = str(e.value)
    assert "\n" not in msg and needle in msg and path.name in msg
    assert not (out / "samples.parquet").exists() and not (out / "summary.json").exists()
    assert not out.exists() or not [p.name for p in out.iterdir()]


def test_directory_input_and_rerun_replaces_outputs(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    _write(d / "a.jsonl", _records("messages")[0], "jsonl")
    _write(d / "b.csv", _records("prompt-response")[0], "csv")
    (d / "notes.md").write_text("ignored")
    res = ingest([str(d)], tmp_path / "out", IngestConfig(progress=False))
    assert [f["format"] for f in res.files] == ["messages", "prompt-response"]
    # prompt-response repeats the first single-turn conversations: duplicates across files.
    assert res.duplicates == len(SINGLE) and res.kept == len(SINGLE + MULTI + WITH_SYSTEM)
    # An ingest output directory as input reads its samples only.
    before = pq.read_table(tmp_path / "out" / "samples.parquet").to_pylist()
    again = ingest([str(tmp_path / "out")], tmp_path / "out", IngestConfig(progress=False))
    assert again.kept == res.kept and again.files[0]["format"] == "messages"
    after = pq.read_table(tmp_path / "out" / "samples.parquet").to_pylist()
    assert [(r["sample_id"], r["messages"], r["metadata"]) for r in after] == \
        [(r["sample_id"], r["messages"], r["metadata"]) for r in before]


def test_load_samples_and_batches(tmp_path):
    recs, convs = _records("sharegpt")
    raw = _write(tmp_path / "s.json", recs, "json")
    rows = load_samples(raw)
    assert {r["sample_id"] for r in rows} == _ids(convs)
    assert set(rows[0]) == {"sample_id", "messages", "source", "metadata"}
    ingest([raw], tmp_path / "out", IngestConfig(progress=False))
    assert load_samples(tmp_path / "out") == rows
    assert load_samples(tmp_path / "out" / "samples.parquet") == rows
    batches = list(iter_canonical_batches(tmp_path / "out", batch_size=3))
    assert sum(b.num_rows for b in batches) == len(rows) and batches[0].schema.equals(CANONICAL_SCHEMA)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "only a prompt"}\n')
    with pytest.raises(InputError, match="no valid samples"):
        load_samples(bad)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1]}), other)
    with pytest.raises(InputError, match="not a canonical samples file"):
        list(iter_canonical_batches(other))


def test_saved_hf_dataset_and_offline_hub_id(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    recs, convs = _records("alpaca")
    datasets.Dataset.from_list(recs).save_to_disk(str(tmp_path / "ds"))
    res = ingest([str(tmp_path / "ds")], tmp_path / "out", IngestConfig(progress=False))
    assert res.files[0]["type"] == "hf_disk" and set(_sample_ids(tmp_path / "out")) == _ids(convs)
    datasets.DatasetDict({"test": datasets.Dataset.from_list(recs[:2]), "train": datasets.Dataset.from_list(recs)}
                         ).save_to_disk(str(tmp_path / "dd"))
    assert ingest([str(tmp_path / "dd")], tmp_path / "o2", IngestConfig(progress=False, split="test")).kept == 2
    with pytest.raises(InputError, match="no split 'valid'"):
        ingest([str(tmp_path / "dd")], tmp_path / "o3", IngestConfig(progress=False, split="valid"))
    with pytest.raises(InputError) as e:
        ingest(["seal-test-nobody/no-such-dataset"], tmp_path / "o4", IngestConfig(progress=False))
    assert "\n" not in str(e.value) and "Hugging Face Hub" in str(e.value)


def test_hub_id_without_datasets_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(InputError, match=r"seal-curate\[hub\]"):
        ingest(["someone/some-dataset"], tmp_path / "o", IngestConfig(progress=False))


def test_config_validation():
    assert from_dict(IngestConfig, {"format": "hh", "hh_field": "rejected"}).hh_field == "rejected"
    with pytest.raises(ConfigError, match="format"):
        from_dict(IngestConfig, {"format": "xml"})
    with pytest.raises(ConfigError, match="max_chars"):
        IngestConfig(max_chars=0)
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(IngestConfig, {"fromat": "auto"})


def test_cli_prints_summary_and_exits_2_on_unreadable(tmp_path, capsys):
    recs, _ = _records("messages")
    src = _write(tmp_path / "a.jsonl", recs + [{"messages": "bad"}], "jsonl")
    assert main(["ingest", src, "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "format messages" in err  # detection is logged as it happens
    assert "read" in out and "kept" in out and "wrong_type 1" in out and "samples.parquet" in out
    assert (tmp_path / "out" / "summary.json").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["ingest", str(empty), "--out", str(tmp_path / "o2")]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and "empty.jsonl" in err and err.count("\n") == 1
    assert main(["ingest", src, "--out", str(tmp_path / "o3"), "--set", "max_chars=-1"]) == 2
    assert "max_chars" in capsys.readouterr().err
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text("max_chars: 12\nformat: messages\n")
    assert main(["ingest", src, "--out", str(tmp_path / "o4"), "--config", str(cfg), "-q"]) == 0
    out, err = capsys.readouterr()
    assert "too_long" in out and "format messages: given" in out and "format messages" not in err
    assert json.loads((tmp_path / "o4" / "config.json").read_text())["max_chars"] == 12
