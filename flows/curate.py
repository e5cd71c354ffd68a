"""The ``curate`` flow: ingest -> rank -> select -> fine-tune (each arm: the selection or the random
subset, with the run's objective or the arm's own) -> generate -> evaluate -> report.

Ranker training and fine-tuning run in-process, or on a GPU work pool through
their deployments (``rank/gpu``, ``finetune/gpu``) when ``workers.rank_pool`` /
``workers.finetune_pool`` name one. Only paths cross to the worker: the run
directory itself when both sides see it, else copies on ``workers.storage``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger

from seal_core.pipeline import ArmConfig, CurateConfig, arm_run_config, is_url, save_config
from tasks import storage
from tasks.report import report_task, scores_artifacts

from .common import ConfigParam, as_param, exchange_base, load, run_remote_stage
from .stages import evaluate_flow, finetune_flow, generate_flow, ingest_flow, rank_flow, select_flow


def _rank(cfg: CurateConfig, params: dict[str, Any], pool: str, safe: str) -> str:
    """Run the rank stage in-process or on ``workers.rank_pool``; returns the local scores path."""
    layout = cfg.layout
    workers = cfg.workers
    if not workers.rank_pool:
        return rank_flow(config=params, pool=pool, safe=safe, artifacts=False)["scores"]
    if workers.storage:
        base = exchange_base(cfg)
        pool_url = storage.publish(pool, storage.join(base, "ingest", "pool.parquet"))
        safe_url = storage.publish(safe, storage.join(base, "ingest", "safe.parquet")) if safe else ""
        out = storage.join(base, "rank")
        run_remote_stage(workers.rank_deployment, workers.rank_pool,
                         {"config": params, "pool": pool_url, "safe": safe_url, "out": out, "artifacts": False},
                         workers.timeout)
        for name in ("scores.parquet", "config.json"):
            storage.fetch(storage.join(out, name), layout.rank_dir / name)
    else:
        run_remote_stage(workers.rank_deployment, workers.rank_pool,
                         {"config": params, "pool": pool, "safe": safe, "out": str(layout.rank_dir), "artifacts": False},
                         workers.timeout)
    if not layout.scores.exists():
        raise FileNotFoundError(f"the remote rank stage finished but {layout.scores} is missing")
    return str(layout.scores)


def _finetune(cfg: CurateConfig, arm_cfg: ArmConfig, data: str) -> str:
    """Fine-tune one arm in-process or on ``workers.finetune_pool``; returns the local output dir."""
    workers = cfg.workers
    arm = arm_cfg.name
    # The arm's objective travels in the config the stage gets, so a worker trains it the same way.
    params = arm_run_config(cfg, arm_cfg)
    out_dir = cfg.layout.finetune_dir(arm)
    if not workers.finetune_pool:
        return finetune_flow(config=params, arm=arm, data=data)["out"]
    if workers.storage:
        base = exchange_base(cfg)
        data_url = storage.publish(data, storage.join(base, "select", arm, "selected.parquet"))
        mix = cfg.finetune.mix_safe
        mix_url = storage.publish(mix, storage.join(base, "mix_safe", Path(mix).name)) if mix and not is_url(mix) else mix
        out = storage.join(base, "finetune", arm)
        run_remote_stage(workers.finetune_deployment, workers.finetune_pool,
                         {"config": params, "arm": arm, "data": data_url, "out": out, "mix_safe": mix_url}, workers.timeout)
        for name in ("adapter", "summary.json", "config.json"):
            storage.fetch(storage.join(out, name), out_dir / name)
    else:
        run_remote_stage(workers.finetune_deployment, workers.finetune_pool,
                         {"config": params, "arm": arm, "data": data, "out": str(out_dir)}, workers.timeout)
    if not (out_dir / "adapter").exists():
        raise FileNotFoundError(f"the remote finetune stage finished but {out_dir / 'adapter'} is missing")
    return str(out_dir)


@flow(name="curate", log_prints=True)
def curate(config: ConfigParam = "configs/demo.yaml", overrides: Optional[list[str]] = None) -> dict[str, Any]:
    """The whole SEAL pipeline on one run config (a YAML path relative to the project root, or a mapping)."""
    from prefect.runtime import flow_run

    cfg = load(config, overrides)
    logger = get_run_logger()
    root = cfg.layout.root
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg)
    params = as_param(cfg)
    logger.info("run directory %s, model %s", root, cfg.model)

    ingested = ingest_flow(config=params)
    pool = ingested["pool"]["samples"]
    safe = ingested["safe"]["samples"] if "safe" in ingested else ""

    scores = _rank(cfg, params, pool, safe)
    stats = scores_artifacts(scores, pool, cfg.report, cfg.data)

    selected = select_flow(config=params, scores=scores, pool=pool)
    arms = [a for a in cfg.fine_tuned_arms if a.selection in selected]
    tuned = {a.name: _finetune(cfg, a, selected[a.selection]["selected"]) for a in arms}

    evaluated: Optional[dict[str, str]] = None
    if cfg.data.eval_helpful or cfg.data.eval_harmful:
        generations = generate_flow(config=params, arms=["base", *tuned])
        evaluated = evaluate_flow(config=params, generations=generations)

    run = {
        "flow_run_name": flow_run.get_name(),
        "run_dir": str(root),
        "model": cfg.model,
        "rank_method": cfg.rank.method,
        "pool_summary": ingested["pool"]["summary"],
        "safe_summary": ingested.get("safe", {}).get("summary"),
        "scores": scores,
        "scores_stats": stats,
        "selection_summary": selected["seal"]["summary"],
        "random_summary": selected.get("random", {}).get("summary"),
        "finetune_summaries": {arm: str(Path(d) / "summary.json") for arm, d in tuned.items()},
        "evaluate_dir": evaluated["out"] if evaluated else None,
    }
    report = report_task(run)
    result = {"run_dir": str(root), "scores": scores, "report": report["report"],
              "summary": report["summary"], "evaluation": evaluated["report"] if evaluated else None,
              "flow_run_name": run["flow_run_name"]}
    logger.info("report: %s; scores: %s", result["report"], scores)
    return result
