"""Ingestion of the real benchmark files in ../shared/data: exact kept counts."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from seal_cli.main import main
from seal_core.errors import InputError
from seal_core.ingest import IngestConfig, ingest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"benchmark data not found at {SHARED}")

# file, hh_field, detected format, kept, rejected by reason
CASES = [
    ("raw/hh-rlhf-harmless-base-test.jsonl.gz", "rejected", "hh (rejected)", 2312, {}),
    # Four `chosen` transcripts end in an empty answer.
    ("raw/hh-rlhf-harmless-base-test.jsonl.gz", "chosen", "hh (chosen)", 2308, {"empty_field": 4}),
    ("raw/alpaca_eval-gpt4_1106_preview-outputs.json", "chosen", "alpaca", 805, {}),
    ("raw/safety_only_data_Instructions.json", "chosen", "alpaca", 2483, {}),
    ("seal-bench/finetune_pool.jsonl", "chosen", "messages", 560, {}),
    ("seal-bench/safe_set.jsonl", "chosen", "alpaca", 202, {}),
    # Prompts without answers: nothing to fine-tune on, every row rejected, no crash.
    ("raw/advbench-harmful_behaviors.csv", "chosen", "prompt-response", 0, {"missing_field": 520}),
    ("seal-bench/eval_harmful.jsonl", "chosen", "prompt-response", 0, {"missing_field": 200}),
    ("seal-bench/eval_helpful.jsonl", "chosen", "prompt-response", 0, {"missing_field": 60}),
]


@pytest.mark.parametrize("name, hh_field, fmt, kept, rejected", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_real_file_keeps_exactly_the_valid_rows(tmp_path, name, hh_field, fmt, kept, rejected):
    res = ingest([str(SHARED / name)], tmp_path / "out", IngestConfig(hh_field=hh_field, progress=False))
    assert res.files[0]["format"] == fmt
    assert (res.kept, res.rejected_by_reason, res.duplicates) == (kept, rejected, 0)
    assert res.rows_read == kept + sum(rejected.values())
    ids = pq.read_table(tmp_path / "out" / "samples.parquet", columns=["sample_id"]).column(0).to_pylist()
    assert len(ids) == len(set(ids)) == kept


def test_hh_chosen_rejects_are_the_empty_answers_and_double_turns_are_merged(tmp_path):
    src = SHARED / "raw/hh-rlhf-harmless-base-test.jsonl.gz"
    ingest([str(src)], tmp_path / "out", IngestConfig(progress=False))
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert [(r["line"], r["field"], r["reason"]) for r in rejects] == [
        (87, "chosen", "empty_field"), (517, "chosen", "empty_field"),
        (926, "chosen", "empty_field"), (1104, "chosen", "empty_field"),
    ]
    assert all(r["raw"].startswith('{"chosen": "\\n\\nHuman: ') for r in rejects)
    rows = pq.read_table(tmp_path / "out" / "samples.parquet").to_pylist()
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        assert roles[-1] == "assistant" and all(a != b for a, b in zip(roles, roles[1:]))
    assert json.loads(rows[0]["metadata"]).keys() == {"rejected"}


def test_finetune_pool_keeps_ids_in_metadata_and_labels_file_is_unrecognised(tmp_path):
    ingest([str(SHARED / "seal-bench/finetune_pool.jsonl")], tmp_path / "out", IngestConfig(progress=False))
    rows = pq.read_table(tmp_path / "out" / "samples.parquet").to_pylist()
    pool_ids = [json.loads(line)["id"] for line in (SHARED / "seal-bench/finetune_pool.jsonl").open()]
    assert [json.loads(r["metadata"])["id"] for r in rows] == pool_ids
    with pytest.raises(InputError, match="cannot detect the format"):
        ingest([str(SHARED / "seal-bench/finetune_pool.labels.jsonl")], tmp_path / "o2", IngestConfig(progress=False))


def test_cli_on_all_raw_files(tmp_path, capsys):
    files = sorted(str(p) for p in (SHARED / "raw").iterdir())
    assert main(["ingest", *files, "--out", str(tmp_path / "out"), "--no-progress", "--quiet"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["kept"] == 2308 + 805 + 2483 and summary["duplicates"] == 0
    assert "missing_field 520" in out and "hh (chosen)" in out and "alpaca" in out
