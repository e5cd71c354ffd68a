"""Thin Prefect tasks around the ``seal_core`` stages.

Each task takes ``inputs`` (name -> path of each file it reads: these are
fingerprinted for the cache key), a ``config`` mapping (the resolved stage
config, output paths included) and returns a mapping of the paths it wrote.
The work itself is in ``seal_core``; here are only the Prefect concerns:
retries, caching, the GPU slot and progress artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pyarrow.parquet as pq
from prefect import task

from seal_core.config import from_dict, to_dict
from seal_core.errors import SealError

from .common import STAGE_TASK_OPTIONS, ProgressArtifact, _run_logger, artifact_key, gpu_slot, str_paths


@task(name="ingest", **STAGE_TASK_OPTIONS)
def ingest_task(inputs: Mapping[str, str], config: Mapping[str, Any]) -> dict[str, str]:
    """Ingest ``inputs['data']`` into ``config['out']``; keep the first ``max_samples`` when set."""
    from seal_core.ingest import IngestConfig, ingest
    from seal_core.io import write_json, write_parquet

    cfg = from_dict(IngestConfig, config.get("ingest") or {}, prefix="ingest")
    result = ingest([inputs["data"]], config["out"], cfg)
    logger = _run_logger()
    logger.info("ingested %s: %d kept, %d rejected, %d duplicates",
                inputs["data"], result.kept, result.rejected, result.duplicates)
    if result.kept == 0:
        raise SealError(f"{inputs['data']}: no valid samples (see {result.rejects_path})")
    limit = int(config.get("max_samples") or 0)
    if limit and result.kept > limit:
        # File order is kept: the pool builder already shuffles, and a prefix of a file is
        # what a user expects "the first N samples" to mean.
        table = pq.read_table(result.samples_path).slice(0, limit)
        write_parquet(result.samples_path, table)
        summary = result.to_dict()
        summary["limited_to"] = limit
        write_json(result.summary_path, summary)
        logger.info("kept the first %d samples (data.max_samples)", limit)
    return str_paths({"samples": result.samples_path, "rejects": result.rejects_path,
                      "summary": result.summary_path, "out": result.out_dir})


@task(name="rank", **STAGE_TASK_OPTIONS)
def rank_task(inputs: Mapping[str, str], config: Mapping[str, Any]) -> dict[str, str]:
    """Train the ranker on ``inputs['pool']`` against ``inputs['safe']`` and score every sample."""
    from seal_core.ranker.config import RankConfig
    from seal_core.ranker.run import rank

    cfg = from_dict(RankConfig, {**config, "pool": inputs["pool"], "safe": inputs.get("safe", "")}, prefix="rank")
    out = Path(cfg.out)
    bar = ProgressArtifact(artifact_key("rank-progress"), f"ranker training ({cfg.method}, {cfg.model})")
    resume = (out / "checkpoints" / "last.pt").exists()
    with gpu_slot():
        try:
            scores = rank(cfg, resume=resume, on_progress=bar)
        except SealError:
            if not resume:
                raise
            # The checkpoint came from other settings or another pool (the cache key changed):
            # start over rather than fail.
            _run_logger().warning("checkpoint in %s does not match this run; training from scratch", out)
            scores = rank(cfg, resume=False, on_progress=bar)
    bar.finish()
    return str_paths({"scores": scores, "out": out})


@task(name="select", **STAGE_TASK_OPTIONS)
def select_task(inputs: Mapping[str, str], config: Mapping[str, Any]) -> dict[str, str]:
    """Keep the best-scored samples of ``inputs['pool']`` by ``inputs['scores']``."""
    from seal_core.selection import SelectConfig, select

    cfg = from_dict(SelectConfig, {k: v for k, v in config.items() if k != "out"}, prefix="select")
    logger = _run_logger()
    result = select(inputs["scores"], inputs["pool"], config["out"], cfg, warn=logger.warning)
    logger.info("selected %d of %d samples (%s)", result.summary["k"], result.summary["n_candidates"], cfg.mode)
    return str_paths({"selected": result.selected, "out": result.out_dir,
                      "summary": result.out_dir / "selection.json"})


@task(name="random-subset", **STAGE_TASK_OPTIONS)
def random_subset_task(inputs: Mapping[str, str], config: Mapping[str, Any]) -> dict[str, str]:
    """A seeded random subset of ``inputs['pool']`` the size of the selection ``inputs['selection']``.

    The random baseline's scores (a hash of seed and id) are written as a scores file and selected
    with ``top_k``, so the subset goes through the same code as the real selection.
    """
    from seal_core.ingest import iter_canonical_batches
    from seal_core.ranker.baselines import random_scores
    from seal_core.ranker.scores import write_scores
    from seal_core.selection import SelectConfig, select

    out = Path(config["out"])
    k = pq.ParquetFile(inputs["selection"]).metadata.num_rows
    if k == 0:
        raise SealError(f"the selection {inputs['selection']} is empty; there is no size to match")
    ids = [i for b in iter_canonical_batches(inputs["pool"]) for i in b.column("sample_id").to_pylist()]
    ids = sorted(set(ids))
    seed = int(config.get("seed", 0))
    scores_path = write_scores(out / "random_scores.parquet", ids, random_scores(ids, seed),
                               metadata={"method": "random", "seed": seed, "k": k})
    cfg = SelectConfig(top_k=k, export=config.get("export", "messages"), progress=bool(config.get("progress", True)))
    result = select(scores_path, inputs["pool"], out, cfg, warn=_run_logger().warning)
    return str_paths({"selected": result.selected, "out": out, "summary": out / "selection.json"})


@task(name="finetune", **STAGE_TASK_OPTIONS)
def finetune_task(inputs: Mapping[str, str], config: Mapping[str, Any]) -> dict[str, str]:
    """Fine-tune a LoRA adapter on ``inputs['data']``."""
    from seal_core.finetune import FinetuneConfig, finetune

    arm = config.get("arm", "")
    cfg = from_dict(FinetuneConfig, {**{k: v for k, v in config.items() if k != "arm"},
                                     "data": inputs["data"],
                                     "mix_safe": inputs.get("mix_safe", "")}, prefix="finetune")
    out = Path(cfg.out)
    bar = ProgressArtifact(artifact_key("finetune", arm, "progress"), f"fine-tuning {arm or ''} ({cfg.model})".replace("  ", " "))
    resume = (out / "checkpoints" / "last.pt").exists()
    with gpu_slot():
        try:
            out = finetune(cfg, resume=resume, on_progress=bar)
        except SealError:
            if not resume:
                raise
            _run_logger().warning("checkpoint in %s does not match this run; training from scratch", out)
            out = finetune(cfg, resume=False, on_progress=bar)
    bar.finish()
    return str_paths({"out": out, "adapter": Path(out) / "adapter", "summary": Path(out) / "summary.json"})


@task(name="generate", **STAGE_TASK_OPTIONS)
def generate_task(inputs: Mapping[str, str], config: Mapping[str, Any]) -> dict[str, str]:
    """Generate a response to every prompt of ``inputs['prompts']`` (with ``inputs['adapter']`` if given)."""
    from seal_core.generate import GenerateConfig, generate

    cfg = from_dict(GenerateConfig, {**config, "prompts": inputs["prompts"],
                                     "adapter": inputs.get("adapter", "")}, prefix="generate")
    with gpu_slot():
        # resume=True keeps the batches a crashed attempt finished (its partial file is keyed by settings).
        out = generate(cfg, resume=True)
    return str_paths({"out": out})


@task(name="evaluate", **STAGE_TASK_OPTIONS)
def evaluate_task(inputs: Mapping[str, str], config: Mapping[str, Any]) -> dict[str, str]:
    """Judge the candidate's generations against each baseline's; refusal rates on harmful prompts.

    ``inputs`` holds ``<model>.outputs`` / ``<model>.harmful`` generation files; ``config['models']``
    lists the model names, the candidate first.
    """
    from seal_core.evaluation.evaluate import EvaluateConfig, ModelOutputs, evaluate

    models = [ModelOutputs(outputs=inputs.get(f"{m}.outputs"), harmful=inputs.get(f"{m}.harmful"), name=m)
              for m in config["models"]]
    settings = {k: v for k, v in config.items() if k != "models"}
    cfg = from_dict(EvaluateConfig, {**settings, "candidate": to_dict(models[0]),
                                     "baselines": [to_dict(m) for m in models[1:]]}, prefix="evaluate")
    out = evaluate(cfg)
    return str_paths({"out": out, "report": out / "report.md", "summary": out / "summary.json"})
