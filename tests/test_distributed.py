"""torch.distributed: 2 processes on CPU (gloo, launched by torchrun) train the same ranker and
fine-tune as 1 process with the same global batch and seed, and resume only with the same world size."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist-data")
    with open(ROOT / "data/demo/pool.jsonl") as fh:
        (d / "pool.jsonl").write_text("".join(itertools.islice(fh, 32)))
    with open(ROOT / "data/demo/safe.jsonl") as fh:
        (d / "safe.jsonl").write_text("".join(itertools.islice(fh, 12)))
    return d


def _seal(args: list[str], nproc: int = 1, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    env.pop("WORLD_SIZE", None)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    return subprocess.run([*launcher, "-m", "seal_cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _rank_args(data: Path, out: Path) -> list[str]:
    return ["rank", "--method", "seal", "--pool", str(data / "pool.jsonl"), "--safe", str(data / "safe.jsonl"), "--model", "tiny-random",
            "--out", str(out), "--max-length", "96", "--epochs", "2", "--batch-size", "8", "--model-lr", "1e-3",
            "--checkpoint-every", "2", "--no-progress"]


def _scores(out: Path):
    return pq.read_table(out / "scores.parquet").to_pandas().set_index("sample_id")


@pytest.fixture(scope="module")
def one_process_rank(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rank1") / "out"
    _ok(_seal(_rank_args(data, out)))
    return _scores(out)


def test_two_process_ranker_matches_one_process(data, one_process_rank, tmp_path):
    proc = _ok(_seal(_rank_args(data, tmp_path / "out"), nproc=2))
    two = _scores(tmp_path / "out")
    np.testing.assert_allclose(two.loc[one_process_rank.index, "score"], one_process_rank["score"], atol=1e-4)
    np.testing.assert_allclose(two.loc[one_process_rank.index, "loss"], one_process_rank["loss"], atol=1e-4)
    # Rank 0 alone wrote: one log line per step, one "scores:" line.
    log = [json.loads(ln) for ln in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))
    assert proc.stdout.count("scores:") == 1


def test_two_process_run_killed_and_resumed_matches(data, one_process_rank, tmp_path):
    out = tmp_path / "out"
    killed = _seal(_rank_args(data, out), nproc=2, env_extra={"SEAL_KILL_AT": "step:5"})
    assert killed.returncode != 0
    assert not (out / "scores.parquet").exists()
    # The checkpoint of step 4 is there; another world size may not resume it.
    wrong = _seal(_rank_args(data, out) + ["--resume"])
    assert wrong.returncode == 2 and "written by 2 process(es)" in wrong.stderr
    resumed = _ok(_seal(_rank_args(data, out) + ["--resume"], nproc=2))
    assert "resuming from step 4" in resumed.stderr
    two = _scores(out)
    np.testing.assert_allclose(two.loc[one_process_rank.index, "score"], one_process_rank["score"], atol=1e-4)
    log = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))


def test_two_process_finetune_matches_one_process(data, tmp_path):
    from safetensors.torch import load_file

    args = ["finetune", "--data", str(data / "pool.jsonl"), "--model", "tiny-random", "--epochs", "1",
            "--max-length", "96", "--batch-size", "8", "--lr", "1e-3", "--no-progress"]
    _ok(_seal(args + ["--out", str(tmp_path / "one")]))
    _ok(_seal(args + ["--out", str(tmp_path / "two")], nproc=2))
    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=0)
    la = [json.loads(ln)["loss"] for ln in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(ln)["loss"] for ln in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(lb, la, atol=1e-4)


def test_processes_setting_relaunches_under_torchrun(data, one_process_rank, tmp_path):
    # `--processes 2` (rank.processes in a run config) is how a Prefect GPU stage asks for N processes.
    proc = _ok(_seal(_rank_args(data, tmp_path / "out") + ["--processes", "2"]))
    assert "launching 2 processes" in proc.stderr
    two = _scores(tmp_path / "out")
    np.testing.assert_allclose(two.loc[one_process_rank.index, "score"], one_process_rank["score"], atol=1e-4)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["processes"] == 2
