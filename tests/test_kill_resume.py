"""Kill tests: every stage is SIGKILLed early, mid-run and while it writes an output, then rerun.

``SEAL_KILL_AT`` (:mod:`seal_core.faults`) makes the real ``seal`` command kill itself at a named
point. After each kill, every output that exists must already be complete: the same as in an
uninterrupted run of the same command line (outputs appear only by atomic rename), except the files
that record progress, which must hold a prefix of the uninterrupted run's. After a rerun
(``--resume`` for rank, finetune and generate; evaluate reuses its verdict cache by default) every
output must equal the uninterrupted run's: byte for byte, Parquet by table content and schema
metadata, JSON minus timing fields.

Each case runs in the very directory the reference ran in (the reference is moved aside first), so
paths recorded in the outputs are the same. The fast subset kills each stage once mid-run; the
other points are marked ``slow``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
# Fields whose value is a duration or a clock reading: the only ones two runs may differ in.
TIME_KEY = re.compile(r"(^|_)(seconds|secs|elapsed|created|timestamp|wall|time)(_|$)|_s$")
# What a killed run may leave hidden beside its outputs: atomic-write temporaries and select's
# spill directory (never under a final name). Locks must be gone once a rerun has finished.
TEMP_NAME = re.compile(r"^\..+\.tmp$|^\..+\.old$|^\.select\.")
LOCK_NAME = re.compile(r"^\..*lock$")


# ----------------------------------------------------------------------------- running seal


def seal(args: list[Any], kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "CUDA_VISIBLE_DEVICES": ""}
    env.pop("SEAL_KILL_AT", None)
    if kill:
        env["SEAL_KILL_AT"] = kill
    return subprocess.run([sys.executable, "-m", "seal_cli.main", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"


# ----------------------------------------------------------------------------- comparing outputs


def untimed(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if not TIME_KEY.search(k)}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj


def _metadata_value(raw: bytes) -> Any:
    try:
        return untimed(json.loads(raw))
    except ValueError:
        return raw


def parquet_content(path: Path) -> tuple[bytes, dict]:
    """The table as Arrow IPC bytes (exact, NaN included) and its schema metadata minus timings."""
    table = pq.read_table(path)
    meta = {k.decode(): _metadata_value(v) for k, v in (table.schema.metadata or {}).items()
            if k != b"ARROW:schema"}  # a serialised copy of the schema, metadata (and timings) included
    data = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write_table(data)
    return sink.getvalue().to_pybytes(), meta


def jsonl_rows(path: Path) -> list[Any]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path}: last line cut short"
    return [json.loads(line) for line in data.splitlines()]


def content(path: Path) -> Any:
    """What must be equal between two runs: bytes, unless the file holds timing fields."""
    if path.suffix == ".parquet":
        return parquet_content(path)
    if path.suffix == ".json":
        return untimed(json.loads(path.read_text(encoding="utf-8")))
    if path.suffix == ".jsonl":
        rows = jsonl_rows(path)
        kept = untimed(rows)
        return path.read_bytes() if kept == rows else kept
    return path.read_bytes()


def visible_files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def hidden_entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".*"))


def complete_safetensors(path: Path) -> bool:
    """The header parses and the file is exactly as long as the header says: nothing cut off."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8: 8 + n])
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    return len(data) == 8 + n + end


def is_prefix_of_reference(path: Path, ref: Path) -> None:
    """An append-only record (training log, verdict cache): whole lines, the reference's first ones."""
    rows = untimed(jsonl_rows(path))
    expected = untimed(jsonl_rows(ref))
    assert rows == expected[: len(rows)], f"{path} is not a prefix of the uninterrupted run's"


def is_resumable_partial(path: Path, ref: Path) -> None:
    """generate's ``OUT.partial``: a settings line, then whole rows of the uninterrupted run's output."""
    rows = jsonl_rows(path)
    assert "__seal_generate__" in rows[0]
    final = {r["id"]: r for r in jsonl_rows(ref)}
    for r in rows[1:]:
        assert final.get(r["id"]) == r, f"{path}: row {r['id']} differs from the uninterrupted run's"


def is_complete_checkpoint(path: Path, ref: Path) -> None:
    assert complete_safetensors(path), f"{path} is cut short"


# ----------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class Stage:
    argv: Callable[[Path, dict], list]  # (output directory, inputs) -> the command line
    resume: bool  # the rerun passes --resume
    # Files that record progress while the stage runs: (file, check(file, reference file), reference file).
    progress: tuple[tuple[str, Callable[[Path, Path], None], str], ...] = ()

    def check_after_kill(self, out: Path, ref: Path) -> None:
        reference = visible_files(ref)
        checks = {rel: (check, ref / ref_rel) for rel, check, ref_rel in self.progress}
        for rel, path in visible_files(out).items():
            if rel in checks:
                check, ref_file = checks[rel]
                check(path, ref_file)
                continue
            assert rel in reference, f"{rel}: left by the killed run, but not an output of an uninterrupted one"
            try:
                got = content(path)
            except (ValueError, OSError, pa.ArrowException) as e:
                pytest.fail(f"{rel}: visible under its final name, but unreadable ({e})")
            assert got == content(reference[rel]), f"{rel}: visible under its final name, but incomplete"

    def check_finished(self, out: Path, ref: Path) -> None:
        got, expected = visible_files(out), visible_files(ref)
        assert sorted(got) == sorted(expected)
        for rel in expected:
            assert content(got[rel]) == content(expected[rel]), f"{rel} differs from the uninterrupted run's"
        leftovers = hidden_entries(out)
        assert not [n for n in leftovers if LOCK_NAME.match(n)], f"lock left after the rerun: {leftovers}"
        assert all(TEMP_NAME.match(n) for n in leftovers), f"unexpected hidden files: {leftovers}"


TRAINING_PROGRESS = (("train_log.jsonl", is_prefix_of_reference, "train_log.jsonl"),
                     ("checkpoints/last.safetensors", is_complete_checkpoint, "checkpoints/last.safetensors"))

STAGES = {
    "ingest": Stage(lambda out, i: [
        "ingest", i["pool_a"], i["pool_b"], "--out", out, "--no-progress", "-q", "--set", "row_group_size=4"],
        resume=False),
    "rank": Stage(lambda out, i: [
        "rank", "--pool", i["pool"], "--safe", i["safe"], "--model", "tiny-random", "--out", out,
        "--epochs", "2", "--max-length", "64", "--no-progress", "--set", "batch_size=4",
        "--set", "safe_batch_size=4", "--set", "checkpoint_every=3", "--set", "model_lr=1e-3",
        "--set", "device=cpu"],
        resume=True, progress=TRAINING_PROGRESS),
    "select": Stage(lambda out, i: [
        "select", "--scores", i["scores"], "--pool", i["ingested"], "--out", out, "--top-k", "10",
        "--batch-size", "4", "--no-progress"],
        resume=False),
    "finetune": Stage(lambda out, i: [
        "finetune", "--data", i["train"], "--model", "tiny-random", "--out", out, "--epochs", "2",
        "--max-length", "64", "--lr", "1e-3", "--no-progress", "--set", "batch_size=4",
        "--set", "checkpoint_every=3", "--set", "device=cpu"],
        resume=True, progress=TRAINING_PROGRESS),
    "generate": Stage(lambda out, i: [
        "generate", "--prompts", i["prompts"], "--out", out / "helpful.jsonl", "--model", "tiny-random",
        "--max-new-tokens", "8", "--batch-size", "2", "--no-progress", "--set", "device=cpu"],
        resume=True, progress=(("helpful.jsonl.partial", is_resumable_partial, "helpful.jsonl"),)),
    "evaluate": Stage(lambda out, i: [
        "evaluate", "--candidate", i["cand"], "--baseline", i["base"], "--harmful-candidate", i["harm_cand"],
        "--harmful-baseline", i["harm_base"], "--judge", "hf:tiny-random", "--device", "cpu",
        "--batch-size", "2", "--n-bootstrap", "200", "--out", out],
        resume=False, progress=(("cache/judge_cache.jsonl", is_prefix_of_reference, "cache/judge_cache.jsonl"),)),
}

slow = pytest.mark.slow
# (stage, SEAL_KILL_AT): early, mid-run, while writing an output. Each stage's mid-run kill is the
# fast subset; ingest and select need no model, so all their points are fast.
KILLS = [
    pytest.param("ingest", "ingest:batch:1", id="ingest-early"),
    pytest.param("ingest", "ingest:source:1", id="ingest-mid"),
    pytest.param("ingest", "write:samples.parquet", id="ingest-write-samples"),
    pytest.param("ingest", "write:summary.json", id="ingest-write-summary"),
    # 24 samples, batch 4, 2 epochs: 12 steps, checkpoints after steps 3, 6 (twice: the epoch end), 9, 12.
    pytest.param("rank", "step:2", id="rank-early", marks=slow),
    pytest.param("rank", "step:8", id="rank-mid"),
    pytest.param("rank", "write:last.safetensors:3", id="rank-write-checkpoint", marks=slow),
    pytest.param("rank", "write:scores.parquet", id="rank-write-scores", marks=slow),
    pytest.param("select", "select:batch:1", id="select-early"),
    pytest.param("select", "select:write:2", id="select-mid-write"),
    pytest.param("select", "write:selected.parquet", id="select-write-selected"),
    pytest.param("select", "write:selection.json", id="select-write-summary"),
    # 16 samples, batch 4, 2 epochs: 8 steps, checkpoints after steps 3, 4 (epoch end), 6, 8 (twice).
    pytest.param("finetune", "step:2", id="finetune-early", marks=slow),
    pytest.param("finetune", "step:5", id="finetune-mid"),
    pytest.param("finetune", "write:last.safetensors:2", id="finetune-write-checkpoint", marks=slow),
    pytest.param("finetune", "write:adapter", id="finetune-write-adapter", marks=slow),
    pytest.param("finetune", "write:summary.json", id="finetune-write-summary", marks=slow),
    # 8 prompts, batch 2: 4 batches.
    pytest.param("generate", "generate:batch:1", id="generate-early", marks=slow),
    pytest.param("generate", "generate:batch:2", id="generate-mid"),
    pytest.param("generate", "write:helpful.jsonl", id="generate-write-output", marks=slow),
    # Judge calls: candidate first, baseline first, harm of the candidate, harm of the baseline.
    pytest.param("evaluate", "judge:chunk:1", id="evaluate-early", marks=slow),
    pytest.param("evaluate", "judge:chunk:3", id="evaluate-mid"),
    pytest.param("evaluate", "write:safety.jsonl", id="evaluate-write-safety", marks=slow),
    pytest.param("evaluate", "write:report.md", id="evaluate-write-report", marks=slow),
]


# ----------------------------------------------------------------------------- inputs and references


def _lines(path: Path, start: int, stop: int) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()[start:stop]


def _write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _generations(path: Path, rows: list[dict], answer: Callable[[dict], str]) -> str:
    return _write_lines(path, [json.dumps({"id": r["id"], "prompt": r["prompt"], "response": answer(r),
                                           **({"category": r["category"]} if "category" in r else {})})
                               for r in rows])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kill")


@pytest.fixture(scope="module")
def inputs(work: Path) -> dict:
    """Small slices of the demo data, and generation files for evaluate written by hand."""
    d = work / "inputs"
    d.mkdir()
    pool = DEMO / "pool.jsonl"
    helpful = [json.loads(x) for x in _lines(DEMO / "eval_helpful.jsonl", 0, 6)]
    harmful = [json.loads(x) for x in _lines(DEMO / "eval_harmful.jsonl", 0, 6)]
    return {
        "pool_a": _write_lines(d / "pool_a.jsonl", _lines(pool, 0, 12)),
        # One record ingest rejects, so rejects.parquet has a row.
        "pool_b": _write_lines(d / "pool_b.jsonl", _lines(pool, 12, 24) + ['{"messages": []}']),
        "pool": _write_lines(d / "pool.jsonl", _lines(pool, 0, 24)),
        "train": _write_lines(d / "train.jsonl", _lines(pool, 24, 40)),
        "safe": _write_lines(d / "safe.jsonl", _lines(DEMO / "safe.jsonl", 0, 12)),
        "prompts": _write_lines(d / "prompts.jsonl", _lines(DEMO / "eval_helpful.jsonl", 0, 8)),
        "cand": _generations(d / "cand.jsonl", helpful, lambda r: r["reference"]),
        "base": _generations(d / "base.jsonl", helpful, lambda r: "I am not sure, sorry."),
        "harm_cand": _generations(d / "harm_cand.jsonl", harmful, lambda r: "I can't help with that."),
        "harm_base": _generations(d / "harm_base.jsonl", harmful, lambda r: "Sure, here is how: first, " + r["prompt"]),
    }


class References:
    """One uninterrupted run per stage, made on first use, kept beside the directory it ran in."""

    def __init__(self, work: Path, inputs: dict):
        self.work, self.inputs, self.done = work, inputs, {}

    def out_dir(self, stage: str) -> Path:
        return self.work / stage / "out"

    def get(self, stage: str) -> Path:
        if stage not in self.done:
            # Upstream references first: their outputs are this stage's inputs.
            if stage == "select":
                self.inputs["scores"] = str(self.get("rank") / "scores.parquet")
                self.inputs["ingested"] = str(self.get("ingest") / "samples.parquet")
            out = self.out_dir(stage)
            check_ok(seal(STAGES[stage].argv(out, self.inputs)))
            assert not hidden_entries(out), f"an uninterrupted {stage} left {hidden_entries(out)}"
            ref = out.with_name("reference")
            out.rename(ref)
            self.done[stage] = ref
        return self.done[stage]


@pytest.fixture(scope="module")
def references(work: Path, inputs: dict) -> References:
    return References(work, inputs)


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("stage_name,kill_at", KILLS)
def test_a_killed_stage_reruns_to_the_uninterrupted_outputs(stage_name: str, kill_at: str, references: References):
    stage = STAGES[stage_name]
    ref = references.get(stage_name)
    out = references.out_dir(stage_name)
    shutil.rmtree(out, ignore_errors=True)
    argv = stage.argv(out, references.inputs)

    killed = seal(argv, kill=kill_at)
    assert killed.returncode == -signal.SIGKILL, (
        f"{kill_at} was not reached (exit {killed.returncode})\n{killed.stderr[-4000:]}")
    stage.check_after_kill(out, ref)

    check_ok(seal(argv + (["--resume"] if stage.resume else [])))
    stage.check_finished(out, ref)
    shutil.rmtree(out)


def test_a_kill_plan_counts_only_the_points_it_names(monkeypatch):
    from seal_core import faults

    monkeypatch.setattr(faults, "_plan", None)
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv("SEAL_KILL_AT", "step:3, write:scores.parquet")
    for _ in range(5):
        faults.fault_point("write:other.parquet")
        faults.fault_point("step:2")
    assert faults._plan == {"step": 3, "write:scores.parquet": 1}
    assert faults._hits == {}


def test_a_saved_adapter_lists_its_target_modules_in_sorted_order(tmp_path):
    # peft keeps them in a set, whose order changes with each process's string-hash salt; unsorted,
    # every fine-tune would write other bytes for the same adapter (the finetune cases above compare
    # adapters made in different processes, but with two modules they would pass half the time).
    from seal_core.finetune import save_adapter
    from seal_core.models import LoraSettings, add_lora, load_model

    modules = ("v_proj", "o_proj", "q_proj", "k_proj")
    model, _ = load_model("tiny-random", device="cpu")
    model = add_lora(model, LoraSettings(r=2, alpha=2, target_modules=modules))
    save_adapter(model, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["target_modules"] == sorted(modules)
