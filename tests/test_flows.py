"""The Prefect flows on the smoke config (tiny random model), in one temporary Prefect server.

Each stage flow runs alone, in pipeline order, on one run directory; then `curate` reruns on
it and must take every stage from the cache. Also: outputs deleted behind the cache are
recomputed, config errors name the key, retries only on transient errors, artifacts, the
fsspec exchange of a remote stage, and sharded loss passes on a 2-worker Dask cluster giving
exactly the single-process result. Without a server: every declared stage is a task under its
own name, and training stages resume or start over.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "configs/smoke.yaml"


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One temporary Prefect server (SQLite) and PREFECT_HOME for every flow test."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings(
        updates={PREFECT_HOME: str(home), PREFECT_SERVER_ANALYTICS_ENABLED: False,
                 PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 120},
        restore_defaults={PREFECT_API_URL},
    ):
        with prefect_test_harness(server_startup_timeout=120):
            yield home


def _client():
    from prefect import get_client

    return get_client(sync_client=True)


def _artifacts(flow_run_id=None, key=None) -> list:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    f = ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]) if flow_run_id else None,
        key=ArtifactFilterKey(any_=[key]) if key else None,
    )
    with _client() as c:
        return c.read_artifacts(artifact_filter=f)


@pytest.fixture(scope="module")
def staged(prefect_harness, tmp_path_factory):
    """Every stage flow run alone, in order, on one run directory (as a user would, stage by stage)."""
    from flows import evaluate_flow, finetune_flow, generate_flow, ingest_flow, rank_flow, select_flow

    run_dir = tmp_path_factory.mktemp("run")
    over = [f"run_dir={run_dir}"]
    out = {"run_dir": run_dir, "overrides": over}
    out["ingest"] = ingest_flow(config=SMOKE, overrides=over)
    out["rank"] = rank_flow(config=SMOKE, overrides=over)
    out["select"] = select_flow(config=SMOKE, overrides=over)
    out["finetune"] = {arm: finetune_flow(config=SMOKE, overrides=over, arm=arm) for arm in ("seal", "random")}
    out["generate"] = generate_flow(config=SMOKE, overrides=over)
    out["evaluate"] = evaluate_flow(config=SMOKE, overrides=over)
    return out


def test_ingest_flow_keeps_max_samples(staged):
    pool = pq.read_table(staged["ingest"]["pool"]["samples"])
    safe = pq.read_table(staged["ingest"]["safe"]["samples"])
    assert pool.num_rows == 64  # data.max_samples of the smoke config
    assert safe.num_rows == 80
    summary = json.loads(Path(staged["ingest"]["pool"]["summary"]).read_text())
    assert summary["limited_to"] == 64 and summary["kept"] == 244


def test_rank_flow_scores_every_sample(staged):
    scores = pq.read_table(staged["rank"]["scores"])
    pool_ids = set(pq.read_table(staged["ingest"]["pool"]["samples"]).column("sample_id").to_pylist())
    assert set(scores.column("sample_id").to_pylist()) == pool_ids
    assert scores.column("rank").to_pylist() == list(range(1, 65))
    assert Path(staged["rank"]["scores"]) == staged["run_dir"] / "rank" / "scores.parquet"


def test_rank_flow_leaves_artifacts(staged):
    prog = _artifacts(key="rank-progress")
    assert prog and prog[0].type == "progress" and float(prog[0].data) == pytest.approx(100.0)
    table = _artifacts(key="seal-scores-extremes")[0]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["rank"] for r in rows] == list(range(1, 6)) + list(range(60, 65))  # report.top_n = 5
    assert all(r["prompt"] and r["label"] for r in rows)
    link = _artifacts(key="seal-scores")[0]
    assert Path(staged["rank"]["scores"]).resolve().as_uri() in link.data


def test_select_flow_top_half_and_random_subset(staged):
    seal = pq.read_table(staged["select"]["seal"]["selected"])
    rnd = pq.read_table(staged["select"]["random"]["selected"])
    assert seal.num_rows == rnd.num_rows == 32  # select.top_p 0.5 of 64
    scores = pq.read_table(staged["rank"]["scores"]).to_pylist()
    best = [r["sample_id"] for r in scores if r["rank"] <= 32]
    assert seal.column("sample_id").to_pylist() == best
    assert set(rnd.column("sample_id").to_pylist()) != set(best)


def test_finetune_flow_writes_adapters(staged):
    for arm in ("seal", "random"):
        out = Path(staged["finetune"][arm]["out"])
        assert (out / "adapter" / "adapter_config.json").exists()
        assert json.loads((out / "summary.json").read_text())["n_trained"] == 32
    assert _artifacts(key="finetune-seal-progress") and _artifacts(key="finetune-random-progress")


def test_generate_and_evaluate_flows(staged):
    gens = staged["generate"]
    assert set(gens) == {"base", "seal", "random"}
    for arm in gens:
        for kind in ("helpful", "harmful"):
            rows = [json.loads(l) for l in Path(gens[arm][kind]).read_text().splitlines()]
            assert len(rows) == 4  # generate.limit
    summary = json.loads(Path(staged["evaluate"]["summary"]).read_text())
    assert {(c["candidate"], c["baseline"]) for c in summary["comparisons"]} == {("seal", "random"), ("seal", "base")}
    assert Path(staged["evaluate"]["report"]).exists()


def test_curate_rerun_takes_every_stage_from_cache(staged):
    from flows import curate

    scores = Path(staged["rank"]["scores"])
    adapter = Path(staged["finetune"]["seal"]["adapter"]) / "adapter_model.safetensors"
    before = (scores.stat().st_mtime_ns, adapter.stat().st_mtime_ns)
    state = curate(config=SMOKE, overrides=staged["overrides"], return_state=True)
    assert state.is_completed()
    result = state.result()
    assert (scores.stat().st_mtime_ns, adapter.stat().st_mtime_ns) == before
    with _client() as c:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])))
    stage_runs = [r for r in runs if r.name.split("-")[0] in ("ingest", "rank", "select", "random", "finetune",
                                                             "generate", "evaluate")]
    assert stage_runs and all(r.state.name == "Cached" for r in stage_runs), \
        [(r.name, r.state.name) for r in stage_runs if r.state.name != "Cached"]
    report = Path(result["report"]).read_text()
    assert "Selected **32 of 64**" in report and "AUROC" in report and "seal vs random" in report
    keys = {a.key for a in _artifacts(flow_run_id=state.state_details.flow_run_id)}
    assert {"seal-summary", "seal-scores-extremes", "seal-scores"} <= keys


def test_deleted_output_is_recomputed(staged):
    from flows import select_flow

    selected = Path(staged["select"]["seal"]["selected"])
    expected = pq.read_table(selected)
    selected.unlink()
    result = select_flow(config=SMOKE, overrides=staged["overrides"])
    assert Path(result["seal"]["selected"]).exists()
    assert pq.read_table(selected).equals(expected)


def test_config_error_names_the_key(prefect_harness):
    from flows import curate
    from seal_core.errors import ConfigError

    with pytest.raises(ConfigError, match="rank.epochs"):
        curate(config=SMOKE, overrides=["rank.epochs=two"])
    with pytest.raises(ConfigError, match="select.top_q"):
        curate(config={"data": {"pool": "data/demo/pool.jsonl"}, "select": {"top_q": 0.5}})


def test_every_declared_stage_is_a_task_under_its_own_name():
    from tasks.stages import STAGE_TASKS

    assert {t.name for t in STAGE_TASKS.values()} == {
        "ingest", "rank", "select", "random-subset", "finetune", "generate", "evaluate",
        "split-shards", "score-shard", "merge-losses"}
    assert len({t.task_key for t in STAGE_TASKS.values()}) == len(STAGE_TASKS)  # one generic adapter, ten keys
    from seal_core.stages import STAGES

    assert {s.name for s in STAGES.values() if s.gpu} == {"rank", "finetune", "generate", "score-shard"}
    assert {s.name for s in STAGES.values() if s.progress} == {"rank", "finetune"}


def test_training_stages_start_over_only_on_a_checkpoint_mismatch(tmp_path, caplog):
    import logging

    from seal_core.errors import SealError
    from seal_core.stages import resume_or_restart
    from seal_core.training import CHECKPOINT_NAME, CheckpointMismatch

    ckpt = tmp_path / "checkpoints" / CHECKPOINT_NAME
    calls = []

    def other_run(resume: bool) -> str:
        calls.append(resume)
        if resume:
            raise CheckpointMismatch(ckpt, ["model_lr"], "other settings")
        return "trained"

    def out_of_memory(resume: bool) -> str:
        calls.append(resume)
        raise SealError("out of memory training the ranker")

    log = logging.getLogger("test")
    with pytest.raises(SealError, match="out of memory"):  # no checkpoint: the error is the run's own
        resume_or_restart(out_of_memory, str(tmp_path), log)
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"checkpoint")
    with caplog.at_level(logging.WARNING, logger="test"):
        assert resume_or_restart(other_run, str(tmp_path), log) == "trained"
    assert calls == [False, True, False]
    assert "belongs to another run (differs in model_lr)" in caplog.text
    # Any other error fails the stage at once: no silent fresh start, and the checkpoint stays.
    calls.clear()
    with pytest.raises(SealError, match="out of memory"):
        resume_or_restart(out_of_memory, str(tmp_path), log)
    assert calls == [True] and ckpt.read_bytes() == b"checkpoint"


def test_retries_only_transient_errors(prefect_harness):
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    from seal_core.errors import InputError
    from tasks.common import STAGE_TASK_OPTIONS

    calls = {"io": 0, "user": 0}

    @task(**{**STAGE_TASK_OPTIONS, "cache_policy": NO_CACHE, "persist_result": False, "retry_delay_seconds": 0})
    def flaky(kind: str) -> str:
        calls[kind] += 1
        if kind == "io" and calls["io"] == 1:
            raise ConnectionResetError("network blip")
        if kind == "user":
            raise InputError("bad file")
        return "ok"

    from prefect import flow

    @flow
    def run(kind: str):
        return flaky(kind)

    assert run("io") == "ok" and calls["io"] == 2
    with pytest.raises(InputError):
        run("user")
    assert calls["user"] == 1


def test_gpu_slot_holds_the_gpu_limit(prefect_harness):
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from tasks.common import gpu_slot

    with _client() as c:
        c.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu", limit=1))
    try:
        with gpu_slot():
            with _client() as c:
                assert c.read_global_concurrency_limit_by_name("gpu").active_slots == 1
        with _client() as c:
            assert c.read_global_concurrency_limit_by_name("gpu").active_slots == 0
    finally:
        with _client() as c:
            c.delete_global_concurrency_limit_by_name("gpu")


def test_rank_flow_exchanges_files_over_fsspec_urls(staged, tmp_path):
    """A remote stage gets URLs: inputs are fetched to scratch space, outputs published back."""
    from flows import rank_flow
    from tasks import storage

    exchange = tmp_path / "exchange"
    pool_url = storage.publish(staged["ingest"]["pool"]["samples"], f"file://{exchange}/in/pool.parquet")
    out_url = f"file://{exchange}/rank"
    result = rank_flow(config=SMOKE, overrides=staged["overrides"] + ["rank.method=random"],
                       pool=pool_url, safe="", out=out_url, artifacts=False)
    assert result["scores"] == f"{out_url}/scores.parquet"
    scores = pq.read_table(exchange / "rank" / "scores.parquet")
    assert scores.num_rows == 64


def test_sharded_losses_on_dask_equal_single_process(staged, tmp_path):
    pytest.importorskip("prefect_dask")
    from flows import score_flow

    over = staged["overrides"] + ["dask.shards=2"]
    single = score_flow(config=SMOKE, overrides=over, out=str(tmp_path / "single"))
    cluster = score_flow(config=SMOKE, overrides=over + ["dask.n_workers=2"], out=str(tmp_path / "dask"))
    a, b = pq.read_table(single), pq.read_table(cluster)
    assert a.num_rows == 64 and a.equals(b)
    assert len(list((tmp_path / "dask" / "losses").glob("shard-*.parquet"))) == 2
