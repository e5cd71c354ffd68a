"""The run config (seal_core.pipeline): bundled configs, validation errors naming the key,
overrides, path resolution, defaults, stage configs and their cache keys; `seal run` /
`seal demo` argument handling; the retry classification and the fsspec exchange helpers
(no Prefect server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from seal_cli.main import main
from seal_core.errors import ConfigError, InputError, SealError
from seal_core.config import to_dict
from seal_core.pipeline import (
    compared_models,
    config_to_dict,
    dump_yaml,
    evaluate_config,
    finetune_config,
    generate_config,
    ingest_job,
    load_config,
    project_root,
    random_subset_job,
    rank_config,
    select_config,
    select_job,
    shard_loss_job,
)

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"data": {"pool": "data/demo/pool.jsonl"}}


def test_bundled_configs_load():
    demo = load_config("configs/demo.yaml")
    assert demo.model == "smollm2-135m-instruct"
    assert demo.evaluate.judge.spec == "hf:smollm2-135m-instruct"
    assert Path(demo.data.pool) == ROOT / "data" / "demo" / "pool.jsonl"
    assert not demo.workers.rank_pool and not demo.workers.finetune_pool

    smoke = load_config("configs/smoke.yaml")
    assert smoke.model == "tiny-random" and smoke.data.max_samples == 64

    paper = load_config("configs/llama3-8b.yaml")
    assert paper.model == "meta-llama/Meta-Llama-3-8B-Instruct"
    rc = rank_config(paper, "p", "s", "o")
    assert (rc.epochs, rc.model_lr, rc.gamma0, rc.gamma_decay) == (3, 1e-5, 1.0, 0.03)
    assert (rc.selector.optimizer, rc.selector.lr, tuple(rc.selector.betas)) == ("adam", 5e-3, (0.9, 0.95))
    assert (rc.lora.r, rc.lora.alpha, list(rc.lora.target_modules)) == (16, 16, ["q_proj", "v_proj"])
    assert rc.dtype == "bfloat16" and rc.gradient_checkpointing
    assert select_config(paper).top_p == 0.8
    assert paper.workers.rank_pool == paper.workers.finetune_pool == "seal-gpu"


@pytest.mark.parametrize("data, key", [
    ({"rank": {"epochs": "two"}}, "'rank.epochs'"),
    ({"rank": {"lora": {"r": "x"}}}, "'rank.lora.r'"),
    ({"rank": {"foo": 1}}, "'rank.foo'"),
    ({"frobnicate": 1}, "'frobnicate'"),
    ({"data": {"pool": "x", "labels": 3}}, "'data.labels'"),
    ({"workers": {"rank_pool": ["a"]}}, "'workers.rank_pool'"),
    ({"select": {"top_p": 1.5}}, "select.top_p"),
    ({"select": {"top_p": 0.5, "top_k": 3}}, "exactly one of top_k, top_p, min_score"),
    ({"evaluate": {"judge": "bogus"}}, "unknown judge"),
    ({"generate": {"max_new_tokens": 0}}, "generate: max_new_tokens"),
    ({"rank": {"pool": "elsewhere.jsonl"}}, "'rank.pool' is set by the pipeline (from data.pool)"),
    ({"finetune": {"model": "x"}}, "'finetune.model' is set by the pipeline (from model)"),
    ({"data": {}}, "'data.pool' is required"),
])
def test_bad_config_names_the_key(data, key):
    base = {"data": {"pool": "data/demo/pool.jsonl"}}
    merged = {**base, **data}
    with pytest.raises(ConfigError) as e:
        load_config(merged)
    assert key in str(e.value)


def test_overrides_from_set_strings_and_mappings():
    cfg = load_config("configs/smoke.yaml", ["rank.epochs=2", "select.top_k=10", "select.top_p=null",
                                             "data.positive_labels=[good, wrong]"])
    assert cfg.rank.epochs == 2 and select_config(cfg).top_k == 10 and select_config(cfg).top_p is None
    assert cfg.data.positive_labels == ["good", "wrong"]
    cfg = load_config(MINIMAL, {"rank": {"max_length": 64}})
    assert cfg.rank.max_length == 64
    with pytest.raises(ConfigError, match="key=value"):
        load_config(MINIMAL, ["rank.epochs"])


def test_select_defaults_to_top_80_percent_only_without_another_criterion():
    assert select_config(load_config(MINIMAL)).top_p == 0.8
    sel = select_config(load_config(MINIMAL, ["select.min_score=0.1"]))
    assert sel.min_score == 0.1 and sel.top_p is None


def test_relative_paths_resolve_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/demo.yaml")  # found under the project root
    assert Path(cfg.data.pool) == ROOT / "data" / "demo" / "pool.jsonl"
    assert Path(cfg.run_dir) == tmp_path / "runs" / "demo"  # outputs go where the user is
    (tmp_path / "mine.jsonl").write_text("{}\n")
    cfg = load_config({"data": {"pool": "mine.jsonl", "safe": "s3://bucket/safe.jsonl"}})
    assert cfg.data.pool == str(tmp_path / "mine.jsonl")
    assert cfg.data.safe == "s3://bucket/safe.jsonl"
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_resolved_config_round_trips():
    cfg = load_config("configs/llama3-8b.yaml")
    again = load_config(config_to_dict(cfg))
    assert config_to_dict(again) == config_to_dict(cfg)
    import yaml

    assert yaml.safe_load(dump_yaml(cfg))["rank"]["selector"]["optimizer"] == "adam"
    with pytest.raises(ConfigError, match="run_dir"):
        load_config({**MINIMAL, "run_dir": "s3://bucket/run"})


def test_stage_configs_get_the_pipeline_paths():
    cfg = load_config("configs/smoke.yaml")
    rc = rank_config(cfg, pool="P", safe="S", out="O")
    assert (rc.pool, rc.safe, rc.out, rc.model, rc.epochs) == ("P", "S", "O", "tiny-random", 1)
    ft = finetune_config(cfg, data="D", out="O")
    assert (ft.data, ft.out, ft.model) == ("D", "O", "tiny-random")
    gen = generate_config(cfg, prompts="Q", out="O.jsonl", adapter="A")
    assert (gen.prompts, gen.adapter, gen.model, gen.limit) == ("Q", "A", "tiny-random", 4)
    from seal_core.evaluation.evaluate import ModelOutputs

    ev = evaluate_config(cfg, ModelOutputs(outputs="c.jsonl", name="seal"), [ModelOutputs(outputs="b.jsonl", name="base")], "E")
    assert ev.out_dir == "E" and ev.judge.spec == "hf:tiny-random" and ev.baselines[0].name == "base"


def test_job_configs_put_each_stage_in_its_run_directory():
    cfg = load_config("configs/smoke.yaml", ["select.export=alpaca", "seed=3"])
    root = Path(cfg.run_dir)
    pool, safe = ingest_job(cfg, "pool"), ingest_job(cfg, "safe")
    assert (pool.data, pool.out, pool.max_samples) == (cfg.data.pool, str(root / "ingest" / "pool"), 64)
    assert (safe.data, safe.max_samples) == (cfg.data.safe, 0)  # data.max_samples cuts the pool only
    sel = select_job(cfg, scores="S", pool="P")
    assert (sel.out, sel.settings.top_p) == (str(root / "select" / "seal"), 0.5)
    rnd = random_subset_job(cfg, pool="P", selection="X")
    assert (rnd.out, rnd.seed, rnd.export) == (str(root / "select" / "random"), 3, "alpaca")
    loss = shard_loss_job(cfg, shard="shard-00000.parquet", out="L", adapter="A")
    assert (loss.settings.model, loss.settings.adapter, loss.settings.max_length) == ("tiny-random", "A", cfg.rank.max_length)
    assert loss.settings.batch_size == cfg.rank.score_batch_size


def test_evaluation_compares_the_seal_model_with_the_others():
    candidate, baselines = compared_models({"base": {"helpful": "b.jsonl"}, "random": {"harmful": "r.jsonl"},
                                            "seal": {"helpful": "s.jsonl", "harmful": "sh.jsonl"}})
    assert (candidate.name, candidate.outputs, candidate.harmful) == ("seal", "s.jsonl", "sh.jsonl")
    assert [(m.name, m.outputs, m.harmful) for m in baselines] == [("random", None, "r.jsonl"), ("base", "b.jsonl", None)]


def test_minimal_config_resolves_to_the_documented_defaults(tmp_path, monkeypatch):
    from seal_core.finetune import FinetuneConfig
    from seal_core.ranker.config import RankConfig

    monkeypatch.chdir(tmp_path)
    cfg = load_config(MINIMAL)
    assert Path(cfg.run_dir) == tmp_path / "runs" / "curate"
    assert (cfg.model, cfg.seed, cfg.baseline) == ("smollm2-135m-instruct", 0, True)
    assert Path(cfg.data.pool) == ROOT / "data" / "demo" / "pool.jsonl" and cfg.data.safe == ""
    assert (cfg.data.positive_labels, cfg.data.max_samples) == (["good"], 0)
    assert (cfg.workers.rank_pool, cfg.workers.rank_deployment, cfg.workers.storage) == ("", "rank/gpu", "")
    assert not cfg.dask.enabled and cfg.dask.shards == 1
    assert (cfg.report.top_n, cfg.report.max_chars) == (10, 300)
    # A stage section holds the stage's own defaults, untouched by the pipeline.
    assert to_dict(rank_config(cfg, "p", "s", "o")) == to_dict(RankConfig(pool="p", safe="s", out="o", model=cfg.model))
    assert to_dict(finetune_config(cfg, "d", "o")) == to_dict(FinetuneConfig(data="d", out="o", model=cfg.model))
    assert cfg.layout.scores == tmp_path / "runs" / "curate" / "rank" / "scores.parquet"


def test_stage_cache_key_follows_its_settings_and_input_content(tmp_path):
    from tasks.stages import STAGE_TASKS

    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": 1}\n')

    def key(overrides=()):
        cfg = load_config({**MINIMAL, "run_dir": str(tmp_path / "run")}, list(overrides))
        rank = rank_config(cfg, pool=str(pool), safe="", out=str(tmp_path / "run" / "rank"))
        return STAGE_TASKS["rank"].cache_policy.compute_key(task_ctx=None, inputs={"config": rank, "label": ""},
                                                             flow_parameters={})

    first = key()
    assert first is not None
    assert key(["finetune.lr=1e-3", "select.top_p=0.5", "report.top_n=3", "seed=9"]) == first  # not rank settings
    assert key(["rank.epochs=7"]) != first
    pool.write_text('{"id": 2}\n')  # same path, new content
    assert key() != first


def test_project_root_holds_the_demo():
    assert (project_root() / "configs" / "demo.yaml").is_file()
    assert (project_root() / "prefect.yaml").is_file()


def test_seal_run_rejects_a_bad_config_before_starting(capsys):
    assert main(["run", "--config", "configs/smoke.yaml", "--set", "rank.epochs=two"]) == 2
    err = capsys.readouterr().err
    assert "error: config key 'rank.epochs'" in err and "Traceback" not in err
    assert main(["run", "--config", "missing.yaml"]) == 2
    assert "config file not found: missing.yaml" in capsys.readouterr().err


def test_seal_demo_needs_a_checkout(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SEAL_PROJECT_ROOT", str(tmp_path))
    assert main(["demo"]) == 2
    assert "configs/demo.yaml not found" in capsys.readouterr().err


def test_transient_errors_are_retried_user_errors_are_not():
    import httpx

    from seal_core.evaluation.judges import JudgeError
    from tasks.common import is_transient

    req = httpx.Request("POST", "http://judge/v1/chat/completions")
    assert is_transient(ConnectionResetError("reset"))
    assert is_transient(TimeoutError())
    assert is_transient(OSError(5, "I/O error"))
    assert is_transient(httpx.ConnectTimeout("slow", request=req))
    assert is_transient(httpx.HTTPStatusError("busy", request=req, response=httpx.Response(503, request=req)))
    assert is_transient(JudgeError("judge unreachable after 5 retries"))
    assert not is_transient(httpx.HTTPStatusError("no", request=req, response=httpx.Response(401, request=req)))
    assert not is_transient(FileNotFoundError("x"))
    assert not is_transient(InputError("bad row"))
    assert not is_transient(ConfigError("bad key"))
    assert not is_transient(SealError("user problem"))
    assert not is_transient(ValueError("bug"))


def test_storage_exchange_over_file_urls(tmp_path):
    from tasks import storage

    src = tmp_path / "adapter"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    (src / "weights.bin").write_bytes(b"\x00" * 10)
    url = f"file://{tmp_path}/remote/run/adapter"
    assert storage.publish(str(src), url) == url
    assert storage.exists(url)
    back = storage.fetch(url, tmp_path / "local" / "adapter")
    assert sorted(p.name for p in back.iterdir()) == ["adapter_config.json", "weights.bin"]
    f = tmp_path / "scores.parquet"
    f.write_bytes(b"PAR1")
    furl = storage.publish(str(f), f"file://{tmp_path}/remote/scores.parquet")
    fp1 = storage.fingerprint(furl)
    storage.publish(str(f), furl)
    assert storage.fingerprint(furl) == fp1 == storage.fingerprint(str(f))  # the content, not the path or time
    f.write_bytes(b"PAR2")
    storage.publish(str(f), furl)
    assert storage.fingerprint(furl) != fp1
    assert storage.fingerprint(str(tmp_path / "nope")).startswith("missing:")
    with pytest.raises(InputError, match="not found"):
        storage.fetch(f"file://{tmp_path}/remote/nope", tmp_path / "x")
