"""LoRA fine-tuning on the tiny random model: loss goes down, only the adapter moves,
exact resume, safety mixing, merging, `seal select` output as data, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from seal_core.config import from_dict
from seal_core.errors import SealError
from seal_core.finetune import FinetuneConfig, finetune, train_lora
from seal_core.schema import compute_sample_id

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tiny model is far too small to gain from intra-op threads; on a shared machine they only contend.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


COLOURS = ["sky", "sea", "lake", "river", "ice", "ink", "jeans", "whale"]


def _conv(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def data(tmp_path):
    rows = [{"messages": _conv(f"What colour is the {c}?", f"The {c} is blue.")} for c in COLOURS]
    return _write_jsonl(tmp_path / "data.jsonl", rows)


@pytest.fixture()
def safe(tmp_path):
    rows = [{"instruction": f"How do I steal a {c}?", "input": "", "output": "I can't help with that."}
            for c in ("car", "bike", "phone")]
    return _write_jsonl(tmp_path / "safe.jsonl", rows)


def _cfg(data, out, **kw):
    base = dict(data=data, out=str(out), model="tiny-random", epochs=4, lr=1e-2, batch_size=4,
                micro_batch_size=2, max_length=64, checkpoint_every=2, progress=False, lora={"r": 8, "alpha": 16})
    base.update(kw)
    return from_dict(FinetuneConfig, base)


def _adapter_weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def test_defaults_follow_paper_recipe():
    cfg = FinetuneConfig()
    assert (cfg.epochs, cfg.lr, cfg.lora.r, cfg.lora.alpha) == (2, 1e-5, 16, 16)
    assert list(cfg.lora.target_modules) == ["q_proj", "v_proj"]
    with pytest.raises(SealError, match="unknown config key 'lora.rank'"):
        from_dict(FinetuneConfig, {"lora": {"rank": 4}})
    with pytest.raises(SealError, match="lr must be > 0"):
        FinetuneConfig(lr=0)
    assert FinetuneConfig(batch_size=4, micro_batch_size=16).micro_batch_size == 4


def test_loss_drops_and_only_adapter_moves(data, tmp_path):
    from seal_core.ingest import load_samples
    from seal_core.models import tiny_model
    from seal_core.tokenization import encode_samples, score_losses

    model, tok = tiny_model(seed=0)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    enc, dropped = encode_samples(tok, load_samples(data), 64, "final", "left")
    assert len(enc) == 8 and not dropped
    before = score_losses(model, tok, enc, 8, progress=False).mean()

    cfg = _cfg(data, tmp_path / "out")
    (tmp_path / "out").mkdir()
    res = train_lora(cfg, model, tok, enc, tmp_path / "out")
    after = score_losses(res.model, tok, enc, 8, progress=False).mean()
    assert res.completed and res.steps == 8  # 2 batches of 4 per epoch x 4 epochs
    assert after < before - 0.1
    assert res.epoch_losses[-1] < res.epoch_losses[0]

    # Base weights bit-identical (peft renames Linear weights to *.base_layer.weight).
    for k, v in res.model.get_base_model().state_dict().items():
        if "lora_" in k:
            continue
        assert torch.equal(v, base[k.replace(".base_layer", "")]), k
    lora_b = [p for n, p in res.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b)  # B starts at zero


def test_finetune_writes_adapter_config_summary_log(data, tmp_path):
    out = finetune(_cfg(data, tmp_path / "out"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_data"] == 8 and summary["n_mix_safe"] == 0 and summary["n_trained"] == 8
    assert summary["steps"] == 8 and summary["completed"]
    assert summary["final_loss"] < summary["first_loss"]
    assert summary["wall_seconds"] > 0
    log = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))
    assert log[0]["loss"] == pytest.approx(summary["first_loss"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lora"]["r"] == 8 and cfg["model"] == "tiny-random"
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8 and sorted(adapter_cfg["target_modules"]) == ["q_proj", "v_proj"]
    weights = _adapter_weights(out)
    assert weights and all("lora_" in k for k in weights)
    assert (out / "checkpoints" / "last.safetensors").exists()


def test_resume_matches_uninterrupted_run(data, tmp_path):
    full = finetune(_cfg(data, tmp_path / "full"))
    part_dir = tmp_path / "part"
    finetune(_cfg(data, part_dir, max_steps=3))
    assert json.loads((part_dir / "summary.json").read_text())["completed"] is False
    # Settings that change the maths are refused on resume...
    with pytest.raises(SealError, match="config differs .* lr"):
        finetune(_cfg(data, part_dir, lr=2e-2), resume=True)
    # ...the step limit is not.
    resumed = finetune(_cfg(data, part_dir), resume=True)
    a, b = _adapter_weights(full), _adapter_weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    log_full = [json.loads(ln)["loss"] for ln in (full / "train_log.jsonl").read_text().splitlines()]
    log_res = [json.loads(ln)["loss"] for ln in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert np.allclose(log_full, log_res, atol=1e-6)
    s = json.loads((resumed / "summary.json").read_text())
    assert s["completed"] and s["steps"] == 8
    assert s["first_loss"] == pytest.approx(json.loads((full / "summary.json").read_text())["first_loss"])


@pytest.mark.gpu
def test_resume_on_cuda(data, tmp_path):
    # The checkpoint's RNG state must come back as a CPU ByteTensor: mapped to CUDA, set_rng_state fails.
    kw = dict(device="cuda", dtype="float32")
    full = finetune(_cfg(data, tmp_path / "full", **kw))
    part = tmp_path / "part"
    finetune(_cfg(data, part, max_steps=3, **kw))
    resumed = finetune(_cfg(data, part, **kw), resume=True)
    assert json.loads((resumed / "summary.json").read_text())["steps"] == 8
    a, b = _adapter_weights(full), _adapter_weights(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=0)


def test_mix_safe_appends_safety_rows(data, safe, tmp_path):
    out = finetune(_cfg(data, tmp_path / "out", mix_safe=safe, epochs=1))
    s = json.loads((out / "summary.json").read_text())
    assert (s["n_data"], s["n_mix_safe"], s["n_samples"], s["n_trained"]) == (8, 3, 11, 11)
    assert s["steps"] == 3  # ceil(11 / 4)
    assert s["inputs"]["mix_safe"]["n"] == 3


def test_selected_dir_max_samples_and_merge(tmp_path):
    from seal_core.models import load_adapter, load_model

    # A `seal select` output: canonical columns plus score/rank, best first.
    msgs = [_conv(f"Name the colour of the {c}.", f"The {c} is blue.") for c in COLOURS]
    table = pa.table({
        "sample_id": [compute_sample_id(m) for m in msgs],
        "messages": msgs,
        "source": ["pool.jsonl"] * 8,
        "metadata": ["{}"] * 8,
        "score": [float(8 - i) for i in range(8)],
        "rank": list(range(1, 9)),
    })
    sel = tmp_path / "selected"
    sel.mkdir()
    pq.write_table(table, sel / "selected.parquet")
    out = finetune(_cfg(str(sel), tmp_path / "out", epochs=1, max_samples=5, merge=True))
    s = json.loads((out / "summary.json").read_text())
    assert s["n_data"] == 5 and s["steps"] == 2

    # The merged model computes what base + adapter computes.
    peft_model, tok = load_adapter("tiny-random", str(out / "adapter"), device="cpu")
    merged, tok2 = load_model(str(out / "merged"), device="cpu")
    ids = torch.tensor([tok("The sky is blue.", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, peft_model(input_ids=ids).logits,
                                   atol=1e-4, rtol=1e-4)
        base, _ = load_model("tiny-random", device="cpu")
        assert not torch.allclose(base(input_ids=ids).logits, peft_model(input_ids=ids).logits)
    assert tok2.apply_chat_template(msgs[0], tokenize=False) == tok.apply_chat_template(msgs[0], tokenize=False)


def test_no_usable_sample_is_a_user_error(tmp_path):
    rows = [{"messages": _conv("q " * 200, "a " * 200)}]
    path = _write_jsonl(tmp_path / "long.jsonl", rows)
    with pytest.raises(SealError, match="no training sample fits max_length=64"):
        finetune(_cfg(path, tmp_path / "out", truncation="drop"))


def test_keep_prompt_trains_on_a_sample_whose_prompt_alone_is_too_long(tmp_path):
    # "right" cuts the answer away entirely (nothing left to learn, the sample is dropped);
    # "keep_prompt" keeps the end of the request and the start of the answer.
    rows = [{"messages": _conv("q " * 200, "The sea is blue.")}]
    path = _write_jsonl(tmp_path / "long.jsonl", rows)
    with pytest.raises(SealError, match="no training sample fits"):
        finetune(_cfg(path, tmp_path / "right", truncation="right", epochs=1))
    out = finetune(_cfg(path, tmp_path / "keep", truncation="keep_prompt", epochs=1))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_trained"] == 1 and summary["n_truncated"] == 1 and summary["n_dropped"] == 0


def test_cli(data, tmp_path, capsys):
    from seal_cli.main import main

    out = tmp_path / "cli"
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("epochs: 1\nbatch_size: 4\nmax_length: 64\nlora:\n  r: 4\n")
    rc = main(["finetune", "--data", data, "--model", "tiny-random", "--out", str(out), "--config", str(cfg),
               "--set", "lr=0.01", "--set", "lora.alpha=8", "--no-progress"])
    assert rc == 0
    resolved = json.loads((out / "config.json").read_text())
    assert (resolved["epochs"], resolved["lr"], resolved["lora"]["r"], resolved["lora"]["alpha"]) == (1, 0.01, 4, 8)
    assert str(out / "adapter") in capsys.readouterr().out
    rc = main(["finetune", "--data", data, "--model", "tiny-random", "--out", str(out), "--set", "epoch=1"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown config key 'epoch'") and "\n" not in err
    rc = main(["finetune", "--data", str(tmp_path / "missing.jsonl"), "--model", "tiny-random", "--out", str(out)])
    assert rc == 2 and "training data not found" in capsys.readouterr().err
