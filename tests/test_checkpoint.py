"""seal_core.training: checkpoints round-trip exactly, never unpickle, and resume refuses only real mismatches."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from seal_core.errors import SealError
from seal_core.training import (CheckpointError, CheckpointMismatch, TrainingRun, load_checked_checkpoint,
                                load_checkpoint, rng_state, save_checkpoint)


def _state():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {"config": {"lr": 1e-3, "betas": (0.9, 0.95), "modules": ["q", "v"], "name": "x"},
            "sample_ids": ["a", "b"], "z": torch.randn(5), "opt": opt.state_dict(),
            "adapters": {"default": {"w.lora_A.default.weight": torch.randn(2, 3, dtype=torch.bfloat16)}},
            "center": None, "epoch_losses": [1.5, float("nan")], "inf": float("-inf"), "rng": rng_state()}


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, float) and np.isnan(a):
        return isinstance(b, float) and np.isnan(b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_round_trip_is_exact(tmp_path):
    state = _state()
    save_checkpoint(tmp_path / "ck.safetensors", state)
    back = load_checkpoint(tmp_path / "ck.safetensors")
    assert _equal(state, back)
    # Optimiser state keeps its integer parameter keys, the RNG states restore and replay the same draws.
    assert set(back["opt"]["state"]) == {0, 1}
    torch.set_rng_state(back["rng"]["torch"])
    np.random.set_state(back["rng"]["numpy"])
    random.setstate(back["rng"]["python"])
    draws = (torch.rand(3), np.random.rand(3), random.random())
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    assert torch.equal(draws[0], torch.rand(3)) and np.array_equal(draws[1], np.random.rand(3))
    assert draws[2] == random.random()


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", pickle.dumps({"x": _Boom()}),
                                     b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}  "])
def test_bad_files_are_one_line_errors_and_never_execute(tmp_path, content, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "last.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "not a valid checkpoint" in msg
    assert not (tmp_path / "pwned").exists()


def test_a_pickled_legacy_checkpoint_is_refused_not_loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"x": _Boom()}, tmp_path / "checkpoints" / "last.pt")
    run = TrainingRun(tmp_path, {"lr": 1.0}, ["a"], free_keys=(), data_name="pool", desc="t", progress=False)
    assert run.can_resume(True)
    with pytest.raises(CheckpointError, match="pickled checkpoint of an earlier version"):
        run.restore(True)
    assert not (tmp_path / "pwned").exists()


def test_mismatch_names_the_keys_that_differ(tmp_path):
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, {"config": {"lr": 1.0, "epochs": 2, "out": "a", "seed": 0}, "sample_ids": ["a", "b"]})
    ck = load_checked_checkpoint(path, ["a", "b"], {"lr": 1.0, "epochs": 2, "out": "b", "seed": 0}, {"out"})
    assert ck["config"]["out"] == "a"
    with pytest.raises(CheckpointMismatch) as e:
        load_checked_checkpoint(path, ["a", "b"], {"lr": 2.0, "epochs": 3, "out": "a", "seed": 0}, {"out"})
    assert e.value.keys == ["epochs", "lr"] and "epochs, lr" in str(e.value)
    with pytest.raises(CheckpointMismatch) as e:
        load_checked_checkpoint(path, ["a", "c"], {"lr": 1.0, "epochs": 2, "out": "a", "seed": 0}, {"out"})
    assert e.value.keys == ["sample_ids"]
    # A mismatch is a SealError (one line on the CLI), and a broken file is not a mismatch.
    assert issubclass(CheckpointMismatch, SealError) and not issubclass(CheckpointError, CheckpointMismatch)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, {"config": {}, "sample_ids": [], "step": 1})
    import safetensors.torch

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"config": {}, "sample_ids": [], "step": 2})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]


def test_cli_resume_from_a_broken_checkpoint_is_one_error_line(tmp_path, capsys):
    import json

    from seal_cli.main import main

    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Answer number {i}."}]} for i in range(6)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rank"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.safetensors").write_bytes(b"\x00garbage")
    rc = main(["rank", "--pool", str(pool), "--safe", str(pool), "--model", "tiny-random", "--out", str(out),
               "--max-length", "64", "--no-progress", "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "last.safetensors" in err[0]
    # The broken file is left for the user to look at, not silently replaced.
    assert (out / "checkpoints" / "last.safetensors").read_bytes() == b"\x00garbage"
