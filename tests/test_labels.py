"""Labels files: the one reader (seal_core.labels) and the config keys that name its fields."""

from __future__ import annotations

import json

import pytest

from seal_core.errors import ConfigError, InputError
from seal_core.labels import read_labels
from seal_core.pipeline import load_config

POOL = {"pool": "data/demo/pool.jsonl"}


def _write(path, *lines):
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return path


def test_reads_the_named_fields_as_text(tmp_path):
    f = _write(tmp_path / "l.jsonl", {"sample_id": "a", "label": "good"}, "", {"sample_id": "b", "label": "bad"},
               {"sample_id": "a", "label": "good"})
    assert read_labels(f) == {"a": "good", "b": "bad"}
    g = _write(tmp_path / "g.jsonl", {"id": 7, "grade": 1, "label": "ignored"})
    assert read_labels(g, id_field="id", label_field="grade") == {"7": "1"}
    assert read_labels(_write(tmp_path / "empty.jsonl", "")) == {}


@pytest.mark.parametrize("line,message", [
    ("{oops", "line 2: not valid JSON"),
    ("[1]", "line 2: expected a JSON object, got list"),
    ({"sample_id": "b"}, "line 2: no field 'label' (use label_field)"),
    ({"id": "b", "label": "x"}, "line 2: no field 'sample_id' (fields: id, label)"),
    ({"sample_id": "a", "label": "bad"}, "line 2: sample_id 'a' labelled both 'good' and 'bad'"),
])
def test_errors_name_the_line(tmp_path, line, message):
    f = _write(tmp_path / "l.jsonl", {"sample_id": "a", "label": "good"}, line)
    with pytest.raises(InputError, match="^" + str(f) + " " + message.replace("(", r"\(").replace(")", r"\)")):
        read_labels(f, hints={"label": " (use label_field)"})


def test_unreadable_file(tmp_path):
    with pytest.raises(InputError, match="cannot read labels file"):
        read_labels(tmp_path / "missing.jsonl")


def test_label_field_and_its_deprecated_name_label_key():
    assert load_config({"data": POOL}).data.label_field == "label"
    assert load_config({"data": {**POOL, "label_field": "grade"}}).data.label_field == "grade"
    assert load_config({"data": {**POOL, "label_key": "grade"}}).data.label_field == "grade"
    # An override in the old name replaces the config file's value in the new one, and the reverse.
    assert load_config({"data": {**POOL, "label_field": "a"}}, ["data.label_key=b"]).data.label_field == "b"
    assert load_config({"data": {**POOL, "label_key": "a"}}, ["data.label_field=b"]).data.label_field == "b"
    with pytest.raises(ConfigError, match="'data.label_key' and 'data.label_field' are one setting"):
        load_config({"data": {**POOL, "label_key": "a", "label_field": "b"}})


def test_invalid_utf8_is_one_error_naming_the_line(tmp_path):
    import pytest

    from seal_core.errors import InputError
    from seal_core.labels import read_labels

    p = tmp_path / "labels.jsonl"
    p.write_bytes(b'{"sample_id": "a", "label": "good"}\n{"sample_id": "b", "label": "\xff\xfe"}\n')
    with pytest.raises(InputError, match=r"line 2: not valid UTF-8"):
        read_labels(p)
