"""One flow per stage; each runs alone from the run config (``config``: a YAML path or a mapping).

Inputs default to the previous stage's outputs in ``run_dir`` (falling back to the
raw data named in the config where that makes sense); the explicit path
parameters are how ``curate`` hands a stage to a remote worker, and accept
fsspec URLs (fetched to local scratch space, outputs published back).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from prefect import flow

from seal_core.config import to_dict
from seal_core.errors import SealError
from seal_core.pipeline import ARMS, CurateConfig, dump_yaml, is_url
from tasks.common import run_cached
from tasks.report import scores_artifacts
from tasks.scoring import merge_losses_task, score_shard, split_shards_task
from tasks.stages import (
    evaluate_task,
    finetune_task,
    generate_task,
    ingest_task,
    random_subset_task,
    rank_task,
    select_task,
)

from .common import ConfigParam, existing, load, localized, remote_outputs

EVAL_SETS = {"helpful": "eval_helpful", "harmful": "eval_harmful"}


def _save_config(cfg: CurateConfig) -> None:
    from seal_core.io import write_text

    write_text(cfg.layout.config, dump_yaml(cfg))


def _stage_dict(stage_cfg: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in to_dict(stage_cfg).items() if k not in drop}


@flow(name="ingest", log_prints=True)
def ingest_flow(config: ConfigParam, overrides: Optional[list[str]] = None) -> dict[str, dict[str, str]]:
    """Normalise the pool and the safe set into canonical Parquet under ``run_dir/ingest``."""
    cfg = load(config, overrides)
    results = {}
    for which in ("pool", "safe"):
        src = getattr(cfg.data, which)
        if not src:
            continue
        out = cfg.layout.ingested(which)
        results[which] = run_cached(
            ingest_task.with_options(task_run_name=f"ingest-{which}"),
            [out / "samples.parquet", out / "summary.json"],
            inputs={"data": src},
            config={"ingest": to_dict(cfg.ingest), "out": str(out),
                    "max_samples": cfg.data.max_samples if which == "pool" else 0},
        )
    return results


def _sharded_losses(cfg: CurateConfig, pool: str, out_dir: Path, adapter: str = "") -> str:
    """Per-sample losses of ``pool`` mapped over shards on the current task runner; returns the merged file."""
    rc = cfg.rank
    shard_dir = out_dir / "shards"
    shards = run_cached(split_shards_task, [shard_dir / "manifest.json"],
                        inputs={"pool": pool}, config={"shards": cfg.dask.shards, "out": str(shard_dir)})
    settings = {"model": cfg.model, "max_length": rc.max_length, "truncation": rc.truncation,
                "train_on": rc.train_on, "batch_size": rc.score_batch_size, "device": rc.device,
                "dtype": rc.dtype, "seed": rc.seed}
    inputs = [{"shard": s, **({"adapter": adapter} if adapter else {})} for s in shards]
    outs = [out_dir / "losses" / f"{Path(s).stem}.parquet" for s in shards]
    configs = [{**settings, "out": str(o)} for o in outs]
    scorer = score_shard if all(o.exists() for o in outs) else score_shard.with_options(refresh_cache=True)
    futures = scorer.map(inputs=inputs, config=configs)
    parts = [f.result()["losses"] for f in futures]
    merged = run_cached(merge_losses_task, [out_dir / "losses.parquet"],
                        inputs={f"part-{i:05d}": p for i, p in enumerate(parts)},
                        config={"out": str(out_dir / "losses.parquet")})
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
    cfg = load(config)
    return _sharded_losses(cfg, pool, Path(out), adapter)


@flow(name="score", log_prints=True)
def score_flow(config: ConfigParam, overrides: Optional[list[str]] = None, pool: Optional[str] = None,
               adapter: str = "", out: Optional[str] = None) -> str:
    """Per-sample losses of every pool sample under the model (+ ``adapter``), sharded over Parquet
    fragments with ``task.map``; on a Dask cluster when ``dask.address`` or ``dask.n_workers`` is set.
    Returns the merged ``losses.parquet`` (sample_id, loss, n_tokens)."""
    cfg = load(config, overrides)
    pool = pool or existing(cfg.layout.pool)
    if not Path(pool).exists():
        raise SealError(f"pool {pool} not found: run the ingest stage first")
    out = out or str(cfg.layout.root / "score")
    runner = _dask_runner(cfg) if cfg.dask.enabled else None
    inner = _score_shards_flow.with_options(task_runner=runner) if runner else _score_shards_flow
    return inner(config=to_dict(cfg), pool=pool, out=out, adapter=adapter)


@flow(name="rank", log_prints=True)
def rank_flow(config: ConfigParam, overrides: Optional[list[str]] = None, pool: Optional[str] = None,
              safe: Optional[str] = None, out: Optional[str] = None, artifacts: bool = True) -> dict[str, str]:
    """Train the ranker and score every pool sample -> ``scores.parquet``.

    ``pool``/``safe``/``out`` default to the ingested sets and ``run_dir/rank``; they may be fsspec URLs.
    """
    from seal_core.pipeline import rank_config

    cfg = load(config, overrides)
    L = cfg.layout
    pool = pool or existing(L.pool, cfg.data.pool)
    safe = safe if safe is not None else existing(L.safe, cfg.data.safe) if cfg.data.safe else ""
    out = out or str(L.rank_dir)
    with localized({"pool": pool, "safe": safe}, out) as (local, local_out):
        stage = rank_config(cfg, pool=local["pool"], safe=local["safe"], out=local_out)
        sharded = stage.method == "loss" and (cfg.dask.enabled or cfg.dask.shards > 1)
        if sharded:
            # The loss baseline is one forward pass per sample: it scales out over shards.
            from seal_core.sharding import losses_to_scores

            losses = score_flow(config=to_dict(cfg), pool=local["pool"], out=str(Path(local_out) / "sharded"))
            Path(local_out).mkdir(parents=True, exist_ok=True)
            scores = losses_to_scores(losses, Path(local_out) / "scores.parquet",
                                      {"model": cfg.model, "shards": cfg.dask.shards})
            result = {"scores": str(scores), "out": local_out}
        else:
            result = run_cached(rank_task, [Path(local_out) / "scores.parquet"],
                                inputs={k: v for k, v in local.items() if v},
                                config=_stage_dict(stage, drop=("pool", "safe")))
        if artifacts:
            scores_artifacts(result["scores"], local["pool"], _artifact_config(cfg))
    return remote_outputs(result, local_out, out)


def _artifact_config(cfg: CurateConfig) -> dict[str, Any]:
    return {"top_n": cfg.report.top_n, "max_chars": cfg.report.max_chars, "labels": cfg.data.labels,
            "label_key": cfg.data.label_key, "positive_labels": list(cfg.data.positive_labels)}


@flow(name="select", log_prints=True)
def select_flow(config: ConfigParam, overrides: Optional[list[str]] = None, scores: Optional[str] = None,
                pool: Optional[str] = None) -> dict[str, dict[str, str]]:
    """Keep the best-scored samples (``select/seal``) and, with ``baseline: true``, a random subset
    of the same size (``select/random``)."""
    from seal_core.pipeline import select_config

    cfg = load(config, overrides)
    L = cfg.layout
    scores = scores or str(L.scores)
    pool = pool or existing(L.pool, cfg.data.pool)
    if not Path(scores).exists():
        raise SealError(f"scores {scores} not found: run the rank stage first")
    out = L.selection_dir("seal")
    results = {"seal": run_cached(select_task, [out / "selected.parquet", out / "selection.json"],
                                  inputs={"scores": scores, "pool": pool},
                                  config={**_stage_dict(select_config(cfg)), "out": str(out)})}
    if cfg.baseline:
        rout = L.selection_dir("random")
        results["random"] = run_cached(
            random_subset_task, [rout / "selected.parquet", rout / "selection.json"],
            inputs={"pool": pool, "selection": results["seal"]["selected"]},
            config={"seed": cfg.seed, "out": str(rout), "export": cfg.select.export, "progress": cfg.select.progress},
        )
    return results


@flow(name="finetune", log_prints=True)
def finetune_flow(config: ConfigParam, overrides: Optional[list[str]] = None, arm: str = "seal",
                  data: Optional[str] = None, out: Optional[str] = None,
                  mix_safe: Optional[str] = None) -> dict[str, str]:
    """LoRA fine-tune on one arm's training set: ``seal`` (the selection) or ``random`` (the random subset).

    ``data``/``out`` default to ``run_dir/select/<arm>/selected.parquet`` and ``run_dir/finetune/<arm>``;
    ``mix_safe`` to ``finetune.mix_safe``. All three may be fsspec URLs.
    """
    from seal_core.pipeline import finetune_config

    cfg = load(config, overrides)
    L = cfg.layout
    if arm not in ARMS and data is None:
        raise SealError(f"unknown arm {arm!r} (expected {', '.join(ARMS)}, or pass data=...)")
    data = data or str(L.selection(arm))
    out = out or str(L.finetune_dir(arm))
    if not is_url(data) and not Path(data).exists():
        raise SealError(f"training data {data} not found: run the select stage first")
    inputs = {"data": data}
    mix_safe = cfg.finetune.mix_safe if mix_safe is None else mix_safe
    if mix_safe:
        inputs["mix_safe"] = mix_safe
    with localized(inputs, out) as (local, local_out):
        stage = finetune_config(cfg, data=local["data"], out=local_out)
        result = run_cached(finetune_task.with_options(task_run_name=f"finetune-{arm}"),
                            [Path(local_out) / "adapter", Path(local_out) / "summary.json"],
                            inputs=local, config={**_stage_dict(stage, drop=("data", "mix_safe")), "arm": arm})
    return remote_outputs(result, local_out, out)


def _arms_available(cfg: CurateConfig) -> list[str]:
    return ["base"] + [a for a in ARMS if (cfg.layout.finetune_dir(a) / "adapter").exists()]


@flow(name="generate", log_prints=True)
def generate_flow(config: ConfigParam, overrides: Optional[list[str]] = None,
                  arms: Optional[list[str]] = None) -> dict[str, dict[str, str]]:
    """Responses of each model (``base``, and every fine-tuned arm) to the helpful and harmful prompts."""
    from seal_core.pipeline import generate_config

    cfg = load(config, overrides)
    L = cfg.layout
    arms = arms or _arms_available(cfg)
    results: dict[str, dict[str, str]] = {}
    for arm in arms:
        adapter = "" if arm == "base" else str(L.finetune_dir(arm))
        if adapter and not (Path(adapter) / "adapter").exists():
            raise SealError(f"no adapter for arm '{arm}' in {adapter}: run the finetune stage first")
        results[arm] = {}
        for kind, key in EVAL_SETS.items():
            prompts = getattr(cfg.data, key)
            if not prompts:
                continue
            out = L.generations_dir(arm) / f"{kind}.jsonl"
            stage = generate_config(cfg, prompts=prompts, out=str(out), adapter=adapter)
            inputs = {"prompts": prompts, **({"adapter": adapter} if adapter else {})}
            res = run_cached(generate_task.with_options(task_run_name=f"generate-{arm}-{kind}"), [out],
                             inputs=inputs, config=_stage_dict(stage, drop=("prompts", "adapter")))
            results[arm][kind] = res["out"]
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
    L = cfg.layout
    if generations is None:
        generations = {}
        for arm in ("seal", "random", "base"):
            files = {k: str(L.generations_dir(arm) / f"{k}.jsonl") for k in EVAL_SETS}
            files = {k: v for k, v in files.items() if Path(v).exists()}
            if files:
                generations[arm] = files
    if not generations:
        raise SealError(f"no generations under {L.root / 'generate'}: run the generate stage first")
    # The candidate is the SEAL-tuned model when there is one, compared with everything else.
    models = sorted(generations, key=lambda m: (m != "seal", m != "random", m))
    inputs: dict[str, str] = {}
    for m in models:
        if "helpful" in generations[m]:
            inputs[f"{m}.outputs"] = generations[m]["helpful"]
        if "harmful" in generations[m]:
            inputs[f"{m}.harmful"] = generations[m]["harmful"]
    out = L.evaluate_dir
    settings = _stage_dict(cfg.evaluate)
    return run_cached(evaluate_task, [out / "report.md", out / "summary.json"], inputs=inputs,
                      config={**settings, "out_dir": str(out), "models": models})


__all__ = ["ingest_flow", "rank_flow", "select_flow", "finetune_flow", "generate_flow", "evaluate_flow",
           "score_flow", "EVAL_SETS", "_save_config"]
