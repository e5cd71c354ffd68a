"""One flow per stage; each runs alone from the run config (``config``: a YAML path or a mapping).

Inputs default to the previous stage's outputs in ``run_dir`` (falling back to the raw data named in
the config where that makes sense); the explicit path parameters are how ``curate`` hands a stage to
a remote worker, and accept fsspec URLs (fetched to local scratch space, outputs published back).
What each stage does, reads and writes is declared in ``seal_core.stages``; here it is only wired.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from prefect import flow

from seal_core import stages
from seal_core.errors import SealError
from seal_core.pipeline import (
    ARMS,
    INGESTED,
    CurateConfig,
    compared_models,
    eval_prompts,
    evaluate_config,
    finetune_config,
    generate_config,
    ingest_job,
    is_url,
    random_subset_job,
    rank_config,
    select_job,
    shard_loss_job,
    split_shards_job,
)
from tasks.report import scores_artifacts
from tasks.stages import map_stage, run_stage

from .common import ConfigParam, as_param, first_existing, load, localized, remote_outputs


@flow(name="ingest", log_prints=True)
def ingest_flow(config: ConfigParam, overrides: Optional[list[str]] = None) -> dict[str, dict[str, str]]:
    """Normalise the pool and the safe set into canonical Parquet under ``run_dir/ingest``."""
    cfg = load(config, overrides)
    return {which: run_stage(stages.INGEST, ingest_job(cfg, which), label=which)
            for which in INGESTED if getattr(cfg.data, which)}


def _sharded_losses(cfg: CurateConfig, pool: str, out_dir: Path, adapter: str = "") -> str:
    """Per-sample losses of ``pool`` mapped over shards on the current task runner; returns the merged file."""
    shards = run_stage(stages.SPLIT_SHARDS, split_shards_job(cfg, pool, str(out_dir / "shards")))
    jobs = [shard_loss_job(cfg, shard, str(out_dir / "losses" / f"{name}.parquet"), adapter)
            for name, shard in sorted(shards.items())]
    parts = [result["losses"] for result in map_stage(stages.SCORE_SHARD, jobs)]
    merged = run_stage(stages.MERGE_LOSSES, stages.MergeLossesJob(parts=parts, out=str(out_dir / "losses.parquet")))
    return merged["losses"]


def _dask_runner(cfg: CurateConfig):
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise SealError("dask.address / dask.n_workers need prefect-dask: pip install 'seal-curate[dask]'") from None
    if cfg.dask.address:
        return DaskTaskRunner(address=cfg.dask.address)
    import logging

    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.dask.n_workers,
                                          "threads_per_worker": cfg.dask.threads_per_worker,
                                          "processes": True, "dashboard_address": ":0",
                                          "silence_logs": logging.ERROR})


@flow(name="score-shards")
def _score_shards_flow(config: ConfigParam, pool: str, out: str, adapter: str = "") -> str:
    return _sharded_losses(load(config), pool, Path(out), adapter)


@flow(name="score", log_prints=True)
def score_flow(config: ConfigParam, overrides: Optional[list[str]] = None, pool: Optional[str] = None,
               adapter: str = "", out: Optional[str] = None) -> str:
    """Per-sample losses of every pool sample under the model (+ ``adapter``), sharded over Parquet
    fragments with ``task.map``; on a Dask cluster when ``dask.address`` or ``dask.n_workers`` is set.
    Returns the merged ``losses.parquet`` (sample_id, loss, n_tokens)."""
    cfg = load(config, overrides)
    pool = pool or str(cfg.layout.pool)
    if not Path(pool).exists():
        raise SealError(f"pool {pool} not found: run the ingest stage first")
    out = out or str(cfg.layout.root / "score")
    runner = _dask_runner(cfg) if cfg.dask.enabled else None
    inner = _score_shards_flow.with_options(task_runner=runner) if runner else _score_shards_flow
    return inner(config=as_param(cfg), pool=pool, out=out, adapter=adapter)


def _loss_scores(cfg: CurateConfig, pool: str, out: str) -> dict[str, str]:
    """The ``loss`` baseline's scores from sharded loss passes (one forward pass per sample scales out)."""
    from seal_core.sharding import losses_to_scores

    losses = score_flow(config=as_param(cfg), pool=pool, out=str(Path(out) / "sharded"))
    Path(out).mkdir(parents=True, exist_ok=True)
    scores = losses_to_scores(losses, Path(out) / "scores.parquet", {"model": cfg.model, "shards": cfg.dask.shards})
    return {"scores": str(scores), "out": out}


@flow(name="rank", log_prints=True)
def rank_flow(config: ConfigParam, overrides: Optional[list[str]] = None, pool: Optional[str] = None,
              safe: Optional[str] = None, out: Optional[str] = None, artifacts: bool = True) -> dict[str, str]:
    """Train the ranker and score every pool sample -> ``scores.parquet``.

    ``pool``/``safe``/``out`` default to the ingested sets and ``run_dir/rank``; they may be fsspec URLs.
    """
    cfg = load(config, overrides)
    layout = cfg.layout
    pool = pool or first_existing(layout.pool, cfg.data.pool)
    safe = safe if safe is not None else first_existing(layout.safe, cfg.data.safe) if cfg.data.safe else ""
    out = out or str(layout.rank_dir)
    with localized({"pool": pool, "safe": safe}, out) as (local, local_out):
        rank = rank_config(cfg, pool=local["pool"], safe=local["safe"], out=local_out)
        if rank.method == "loss" and (cfg.dask.enabled or cfg.dask.shards > 1):
            result = _loss_scores(cfg, local["pool"], local_out)
        else:
            result = run_stage(stages.RANK, rank)
        if artifacts:
            scores_artifacts(result["scores"], local["pool"], cfg.report, cfg.data)
    return remote_outputs(result, local_out, out)


@flow(name="select", log_prints=True)
def select_flow(config: ConfigParam, overrides: Optional[list[str]] = None, scores: Optional[str] = None,
                pool: Optional[str] = None) -> dict[str, dict[str, str]]:
    """Keep the best-scored samples (``select/seal``) and, with ``baseline: true``, a random subset
    of the same size (``select/random``)."""
    cfg = load(config, overrides)
    layout = cfg.layout
    scores = scores or str(layout.scores)
    pool = pool or first_existing(layout.pool, cfg.data.pool)
    if not Path(scores).exists():
        raise SealError(f"scores {scores} not found: run the rank stage first")
    results = {"seal": run_stage(stages.SELECT, select_job(cfg, scores, pool))}
    if cfg.baseline:
        subset = random_subset_job(cfg, pool, selection=results["seal"]["selected"])
        results["random"] = run_stage(stages.RANDOM_SUBSET, subset)
    return results


@flow(name="finetune", log_prints=True)
def finetune_flow(config: ConfigParam, overrides: Optional[list[str]] = None, arm: str = "seal",
                  data: Optional[str] = None, out: Optional[str] = None,
                  mix_safe: Optional[str] = None) -> dict[str, str]:
    """LoRA fine-tune on one arm's training set: ``seal`` (the selection) or ``random`` (the random subset).

    ``data``/``out`` default to ``run_dir/select/<arm>/selected.parquet`` and ``run_dir/finetune/<arm>``;
    ``mix_safe`` to ``finetune.mix_safe``. All three may be fsspec URLs.
    """
    cfg = load(config, overrides)
    layout = cfg.layout
    # A configured arm (``arms:``) names its selection and objective; a bare name is a selection.
    arm_cfg = next((a for a in cfg.fine_tuned_arms if a.name == arm), None)
    selection = arm_cfg.selection if arm_cfg else arm
    if selection not in ARMS and data is None:
        known = sorted({*ARMS, *(a.name for a in cfg.fine_tuned_arms)})
        raise SealError(f"unknown arm {arm!r} (expected {', '.join(known)}, or pass data=...)")
    data = data or str(layout.selection(selection))
    out = out or str(layout.finetune_dir(arm))
    if not is_url(data) and not Path(data).exists():
        raise SealError(f"training data {data} not found: run the select stage first")
    mix_safe = cfg.finetune.mix_safe if mix_safe is None else mix_safe
    inputs = {"data": data, **({"mix_safe": mix_safe} if mix_safe else {})}
    with localized(inputs, out) as (local, local_out):
        job = finetune_config(cfg, data=local["data"], out=local_out, mix_safe=local.get("mix_safe", ""),
                              arm=arm_cfg)
        result = run_stage(stages.FINETUNE, job, label=arm)
    return remote_outputs(result, local_out, out)


def _arms_available(cfg: CurateConfig) -> list[str]:
    names = [a.name for a in cfg.fine_tuned_arms] + [a for a in ARMS if a not in {x.name for x in cfg.fine_tuned_arms}]
    return ["base"] + [a for a in names if (cfg.layout.finetune_dir(a) / "adapter").exists()]


@flow(name="generate", log_prints=True)
def generate_flow(config: ConfigParam, overrides: Optional[list[str]] = None,
                  arms: Optional[list[str]] = None) -> dict[str, dict[str, str]]:
    """Responses of each model (``base``, and every fine-tuned arm) to the helpful and harmful prompts."""
    cfg = load(config, overrides)
    layout = cfg.layout
    results: dict[str, dict[str, str]] = {}
    for arm in arms or _arms_available(cfg):
        adapter = "" if arm == "base" else str(layout.finetune_dir(arm))
        if adapter and not (Path(adapter) / "adapter").exists():
            raise SealError(f"no adapter for arm '{arm}' in {adapter}: run the finetune stage first")
        results[arm] = {}
        for kind, prompts in eval_prompts(cfg).items():
            job = generate_config(cfg, prompts=prompts, out=str(layout.generations(arm, kind)), adapter=adapter)
            results[arm][kind] = run_stage(stages.GENERATE, job, label=f"{arm}-{kind}")["out"]
    if not any(results.values()):
        raise SealError("no eval prompts configured (data.eval_helpful / data.eval_harmful)")
    return results


@flow(name="evaluate", log_prints=True)
def evaluate_flow(config: ConfigParam, overrides: Optional[list[str]] = None,
                  generations: Optional[dict[str, dict[str, str]]] = None) -> dict[str, str]:
    """Win rates of the SEAL-tuned model against the random-subset and base models, and refusal rates.

    ``generations`` maps model -> {helpful, harmful} -> file; default: what ``generate`` wrote.
    """
    cfg = load(config, overrides)
    layout = cfg.layout
    generations = layout.generated() if generations is None else generations
    if not generations:
        raise SealError(f"no generations under {layout.root / 'generate'}: run the generate stage first")
    candidate, baselines = compared_models(generations)
    if cfg.evaluate.pairs or cfg.evaluate.references or cfg.evaluate.unsafe:
        # The likelihood measures score each arm itself: the base model, plus the arm's adapter.
        for m in (candidate, *baselines):
            m.model, m.adapter = cfg.model, "" if m.name == "base" else str(layout.finetune_dir(m.name))
    return run_stage(stages.EVALUATE, evaluate_config(cfg, candidate, baselines, str(layout.evaluate_dir)))


__all__ = ["ingest_flow", "rank_flow", "select_flow", "finetune_flow", "generate_flow", "evaluate_flow",
           "score_flow"]
