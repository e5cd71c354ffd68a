"""Checks on the bundled demo data (data/demo): structure, counts, ids, overlap, length."""

from __future__ import annotations

import collections
import importlib.util
import json
import re
from pathlib import Path

import pytest

from seal_core.schema import ROLES, compute_sample_id

DATA = Path(__file__).resolve().parent.parent / "data"
DEMO = DATA / "demo"

# ~120 SmolLM2 tokens; the demo's CPU time budget depends on it.
MAX_CONVERSATION_CHARS = 500

LABELS = {"good", "harmful", "wrong", "off_topic", "truncated"}

KEYS = {
    "pool.jsonl": {"id", "messages"},
    "pool.labels.jsonl": {"sample_id", "id", "label"},
    "safe.jsonl": {"instruction", "input", "output"},
    "eval_helpful.jsonl": {"id", "prompt", "reference"},
    "eval_harmful.jsonl": {"id", "prompt", "category"},
}


def _read(name: str) -> list[dict]:
    rows = []
    with open(DEMO / name, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            text = raw.decode("utf-8")  # raises on invalid UTF-8
            assert text.endswith("\n"), f"{name}:{lineno}: missing newline"
            row = json.loads(text)
            assert isinstance(row, dict), f"{name}:{lineno}: not an object"
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def files() -> dict[str, list[dict]]:
    return {name: _read(name) for name in KEYS}


@pytest.fixture(scope="module")
def builder():
    spec = importlib.util.spec_from_file_location("build_demo_data", DATA / "build_demo_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _readme_counts() -> dict[tuple[str, str], int]:
    """(file name, label) -> rows, from the Counts table of data/README.md."""
    counts = {}
    row = re.compile(r"^\|\s*`demo/([\w.]+)`\s*\|\s*[`*]?(\w+)[`*]?\s*\|\s*(\d+)\s*\|\s*$")
    for line in (DATA / "README.md").read_text(encoding="utf-8").splitlines():
        m = row.match(line)
        if m:
            counts[(m.group(1), m.group(2))] = int(m.group(3))
    return counts


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def test_every_row_has_exactly_the_documented_fields(files):
    for name, rows in files.items():
        assert rows, f"{name} is empty"
        for i, row in enumerate(rows, start=1):
            assert set(row) == KEYS[name], f"{name}:{i}: fields {sorted(row)}"
            for key, value in row.items():
                if key != "messages":
                    assert isinstance(value, str), f"{name}:{i}: {key} is not a string"
                    if key != "input":
                        assert value.strip(), f"{name}:{i}: {key} is empty"


def test_counts_match_readme(files, builder):
    documented = _readme_counts()
    actual = collections.Counter(r["label"] for r in files["pool.labels.jsonl"])
    assert set(actual) == LABELS
    for label in LABELS:
        assert documented[("pool.jsonl", label)] == actual[label], label
    for name, rows in files.items():
        if name != "pool.labels.jsonl":
            assert documented[(name, "total")] == len(rows), name
    # The safe file carries no label column; the builder's lists are its labels.
    safe = {json.dumps(r, sort_keys=True) for r in files["safe.jsonl"]}
    refusals = [json.dumps({"instruction": q, "input": "", "output": a}, sort_keys=True)
                for q, a in builder.SAFE_REFUSALS]
    assert all(r in safe for r in refusals)
    assert documented[("safe.jsonl", "refusal")] == len(refusals)
    assert documented[("safe.jsonl", "helpful")] == len(safe) - len(refusals)


def test_labels_cover_the_pool_exactly(files):
    pool, labels = files["pool.jsonl"], files["pool.labels.jsonl"]
    assert [r["id"] for r in labels] == [r["id"] for r in pool]
    assert len({r["id"] for r in pool}) == len(pool)
    for row, lab in zip(pool, labels):
        assert lab["sample_id"] == compute_sample_id(row["messages"]), row["id"]
        assert lab["label"] in LABELS, row["id"]
    # Distinct sample ids == no duplicate conversations.
    assert len({r["sample_id"] for r in labels}) == len(pool)


def test_pool_conversations_are_well_formed(files):
    for row in files["pool.jsonl"]:
        msgs = row["messages"]
        roles = [m["role"] for m in msgs]
        assert set(roles) <= set(ROLES), row["id"]
        assert all(set(m) == {"role", "content"} and m["content"].strip() for m in msgs), row["id"]
        turns = roles[1:] if roles[0] == "system" else roles
        assert "system" not in turns, row["id"]
        assert turns == ["user", "assistant"] * (len(turns) // 2), row["id"]
        assert turns[-1] == "assistant", row["id"]
    n_multi = sum(len(r["messages"]) > 3 for r in files["pool.jsonl"])
    assert n_multi >= 3


def test_lengths_fit_the_cpu_demo(files):
    for row in files["pool.jsonl"]:
        assert sum(len(m["content"]) for m in row["messages"]) <= MAX_CONVERSATION_CHARS, row["id"]
    for i, row in enumerate(files["safe.jsonl"], start=1):
        assert len(row["instruction"]) + len(row["input"]) + len(row["output"]) <= MAX_CONVERSATION_CHARS, i
    for row in files["eval_helpful.jsonl"]:
        assert len(row["prompt"]) + len(row["reference"]) <= MAX_CONVERSATION_CHARS, row["id"]
    for row in files["eval_harmful.jsonl"]:
        assert len(row["prompt"]) <= 200, row["id"]


def test_no_prompt_is_shared_between_pool_safe_and_eval(files):
    sets = {
        "pool": [_norm(m["content"]) for r in files["pool.jsonl"] for m in r["messages"] if m["role"] == "user"],
        "safe": [_norm(r["instruction"] + " " + r["input"]) for r in files["safe.jsonl"]],
        "eval_helpful": [_norm(r["prompt"]) for r in files["eval_helpful.jsonl"]],
        "eval_harmful": [_norm(r["prompt"]) for r in files["eval_harmful.jsonl"]],
    }
    for name, prompts in sets.items():
        if name != "pool":  # the pool may legitimately reuse a short follow-up turn
            assert len(set(prompts)) == len(prompts), f"duplicate prompt in {name}"
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = set(sets[a]) & set(sets[b])
            assert not shared, f"{a} and {b} share prompts: {sorted(shared)[:3]}"


def test_eval_ids_are_unique(files):
    for name in ("eval_helpful.jsonl", "eval_harmful.jsonl"):
        ids = [r["id"] for r in files[name]]
        assert len(set(ids)) == len(ids), name


def test_committed_files_are_what_the_builder_writes(builder):
    for name, text in builder.render().items():
        assert (DEMO / name).read_text(encoding="utf-8") == text, f"{name} is stale: rerun data/build_demo_data.py"
