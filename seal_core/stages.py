"""The pipeline's stages, each declared once: its config, its run function, the files it reads and writes.

A stage's config holds everything one run of it needs, paths included: the library's own config
where that has its paths (``RankConfig``, ``FinetuneConfig``, ``GenerateConfig``, ``EvaluateConfig``),
else a small job dataclass here pairing the library's settings with the paths (``IngestJob``, ...).
Its run function takes that config and :class:`StageHooks` and returns ``{name: path}`` of what it
wrote. The Prefect side (``tasks.stages``) makes one task per entry of :data:`STAGES` from the
declaration alone: the cache key covers the files :attr:`Stage.inputs` names, a cached result is
dropped when a file :attr:`Stage.outputs` names is gone, ``gpu`` stages hold a GPU slot and
``progress`` stages get a progress artifact.

Adding a stage: its library module, a run function and a :class:`Stage` here, its section and
config builder in :mod:`seal_core.pipeline` when it has settings, and one call in a flow.

Pure Python: no Prefect import here.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, Optional, TypeVar

from .errors import SealError
from .evaluation.evaluate import EvaluateConfig
from .finetune import FinetuneConfig
from .generate import GenerateConfig
from .ingest.config import IngestConfig
from .ranker.config import RankConfig
from .selection import SelectConfig
from .progress import ProgressFn
from .sharding import LossPassConfig

C = TypeVar("C")
Paths = Mapping[str, Any]  # name -> path (str or Path) of a file a stage read or wrote


@dataclass
class StageHooks:
    """What a run function may call: a logger and, for stages that report it, a progress callback."""

    log: Any = field(default_factory=lambda: logging.getLogger("seal"))  # a Logger or LoggerAdapter
    on_progress: Optional[ProgressFn] = None


@dataclass(frozen=True)
class Stage(Generic[C]):
    """One pipeline stage, as the orchestration sees it."""

    name: str  # the Prefect task name
    config: type  # what run() takes: everything one run needs, paths included
    run: Callable[[C, StageHooks], Paths]  # does the work; returns {name: path} of what it wrote
    inputs: Callable[[C], dict[str, str]]  # files read: their content is part of the cache key
    outputs: Callable[[C], list[str]]  # files a finished run leaves: one missing means run again
    gpu: bool = False  # holds a slot of the `gpu` concurrency limit while it runs
    progress: Optional[Callable[[C, str], str]] = None  # (config, label) -> progress artifact description


def config_files(*names: str) -> Callable[[Any], dict[str, str]]:
    """``Stage.inputs`` naming config fields (dotted for a nested config); empty ones are skipped."""

    def files(config: Any) -> dict[str, str]:
        values = {n: functools.reduce(getattr, n.split("."), config) for n in names}
        return {n: str(v) for n, v in values.items() if v}

    return files


def files_under(path_field: str, *names: str) -> Callable[[Any], list[str]]:
    """``Stage.outputs``: ``names`` under the directory in config field ``path_field`` (no names: that path)."""

    def files(config: Any) -> list[str]:
        base = Path(getattr(config, path_field))
        return [str(base / n) for n in names] if names else [str(base)]

    return files


def resume_or_restart(train: Callable[[bool], Any], out: str, log: Any) -> Any:
    """``train(resume)``, resuming when ``out`` holds a checkpoint; from scratch only if it is another run's.

    Only :class:`~seal_core.training.CheckpointMismatch` (other samples or settings: the cache
    key changed) starts over, with a warning. Any other error (out of memory, a bad path, an
    unreadable checkpoint) fails the stage and leaves the checkpoint in place for a retry.
    """
    from .training import CHECKPOINT_NAME, CheckpointMismatch

    resume = (Path(out) / "checkpoints" / CHECKPOINT_NAME).exists()
    try:
        return train(resume)
    except CheckpointMismatch as e:
        log.warning("checkpoint %s belongs to another run (differs in %s); training from scratch",
                    e.path, ", ".join(e.keys))
        return train(False)


# ----------------------------------------------------------------------------- ingest


@dataclass
class IngestJob:
    data: str = field(metadata={"help": "File or directory of raw conversations to ingest."})
    out: str = field(metadata={"help": "Output directory (samples.parquet, rejects.parquet, summary.json)."})
    settings: IngestConfig = field(default_factory=IngestConfig, metadata={"help": "Ingest settings."})
    max_samples: int = field(default=0, metadata={"help": "Keep only the first N samples (0: all)."})


def keep_first(result: Any, limit: int) -> None:
    """Cut an ingest result (:class:`~seal_core.ingest.IngestResult`) to its first ``limit`` samples.

    File order is kept: the pool builder already shuffles, and a prefix of a file is what a user
    expects "the first N samples" to mean. The summary records the cut as ``limited_to``.
    """
    import pyarrow.parquet as pq

    from .io import write_json, write_parquet

    write_parquet(result.samples_path, pq.read_table(result.samples_path).slice(0, limit))
    write_json(result.summary_path, {**result.to_dict(), "limited_to": limit})


def run_ingest(job: IngestJob, hooks: StageHooks) -> Paths:
    from .ingest import ingest

    result = ingest([job.data], job.out, job.settings)
    hooks.log.info("ingested %s: %d kept, %d rejected, %d duplicates",
                   job.data, result.kept, result.rejected, result.duplicates)
    if result.kept == 0:
        raise SealError(f"{job.data}: no valid samples (see {result.rejects_path})")
    if job.max_samples and result.kept > job.max_samples:
        keep_first(result, job.max_samples)
        hooks.log.info("kept the first %d samples (data.max_samples)", job.max_samples)
    return {"samples": result.samples_path, "rejects": result.rejects_path,
            "summary": result.summary_path, "out": result.out_dir}


# ----------------------------------------------------------------------------- rank


def run_rank(cfg: RankConfig, hooks: StageHooks) -> Paths:
    from .ranker.run import rank

    scores = resume_or_restart(lambda resume: rank(cfg, resume=resume, on_progress=hooks.on_progress),
                               cfg.out, hooks.log)
    return {"scores": scores, "out": cfg.out}


# ----------------------------------------------------------------------------- select


@dataclass
class SelectJob:
    scores: str = field(metadata={"help": "Scores file of the pool."})
    pool: str = field(metadata={"help": "The pool the scores rank."})
    out: str = field(metadata={"help": "Output directory (selected.parquet, selection.json)."})
    settings: SelectConfig = field(metadata={"help": "Selection settings."})


def run_select(job: SelectJob, hooks: StageHooks) -> Paths:
    from .selection import select

    result = select(job.scores, job.pool, job.out, job.settings, warn=hooks.log.warning)
    hooks.log.info("selected %d of %d samples (%s)",
                   result.summary["k"], result.summary["n_candidates"], job.settings.mode)
    return {"selected": result.selected, "out": result.out_dir, "summary": result.out_dir / "selection.json"}


@dataclass
class RandomSubsetJob:
    pool: str = field(metadata={"help": "The pool to draw from."})
    selection: str = field(metadata={"help": "The selection whose size the subset matches (selected.parquet)."})
    out: str = field(metadata={"help": "Output directory (selected.parquet, selection.json, random_scores.parquet)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random scores."})
    export: str = field(default="messages", metadata={"help": "JSONL export of the subset, as select.export."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars on stderr."})


def run_random_subset(job: RandomSubsetJob, hooks: StageHooks) -> Paths:
    """A seeded random subset of the pool the size of the selection.

    The random baseline's scores (a hash of seed and id) are written as a scores file and selected
    with ``top_k``, so the subset goes through the same code as the real selection.
    """
    import pyarrow.parquet as pq

    from .ingest import iter_canonical_batches
    from .ranker.baselines import random_scores
    from .ranker.scores import write_scores
    from .selection import select

    k = pq.ParquetFile(job.selection).metadata.num_rows
    if k == 0:
        raise SealError(f"the selection {job.selection} is empty; there is no size to match")
    ids = sorted({i for b in iter_canonical_batches(job.pool) for i in b.column("sample_id").to_pylist()})
    out = Path(job.out)
    scores = write_scores(out / "random_scores.parquet", ids, random_scores(ids, job.seed),
                          metadata={"method": "random", "seed": job.seed, "k": k})
    settings = SelectConfig(top_k=k, export=job.export, progress=job.progress)
    result = select(scores, job.pool, out, settings, warn=hooks.log.warning)
    return {"selected": result.selected, "out": out, "summary": out / "selection.json"}


# ----------------------------------------------------------------------------- finetune, generate, evaluate


def run_finetune(cfg: FinetuneConfig, hooks: StageHooks) -> Paths:
    from .finetune import finetune

    out = Path(resume_or_restart(lambda resume: finetune(cfg, resume=resume, on_progress=hooks.on_progress),
                                 cfg.out, hooks.log))
    return {"out": out, "adapter": out / "adapter", "summary": out / "summary.json"}


def run_generate(cfg: GenerateConfig, hooks: StageHooks) -> Paths:
    from .generate import generate

    # resume=True keeps the batches a crashed attempt finished (its partial file is keyed by settings).
    return {"out": generate(cfg, resume=True)}


def run_evaluate(cfg: EvaluateConfig, hooks: StageHooks) -> Paths:
    from .evaluation.evaluate import evaluate

    out = evaluate(cfg)
    return {"out": out, "report": out / "report.md", "summary": out / "summary.json"}


def generation_files(cfg: EvaluateConfig) -> dict[str, str]:
    """``Stage.inputs`` of evaluate: each model's files, as ``<model>.outputs``, ``<model>.harmful`` and
    ``<model>.adapter``, and the likelihood measures' pairs and answer sets."""
    files = {f"likelihood.{k}": v for k, v in cfg.likelihood_inputs.items()}
    for m in cfg.models:
        files.update({f"{m.name}.outputs": m.outputs, f"{m.name}.harmful": m.harmful, f"{m.name}.adapter": m.adapter})
    return {k: v for k, v in files.items() if v}


# ----------------------------------------------------------------------------- sharded loss passes


@dataclass
class SplitShardsJob:
    pool: str = field(metadata={"help": "Ingested pool (canonical Parquet)."})
    shards: int = field(metadata={"help": "Number of shards."})
    out: str = field(metadata={"help": "Output directory (shard-NNNNN.parquet, manifest.json)."})


@dataclass
class ShardLossJob:
    shard: str = field(metadata={"help": "One shard of the pool."})
    out: str = field(metadata={"help": "Output file (sample_id, loss, n_tokens)."})
    settings: LossPassConfig = field(default_factory=LossPassConfig, metadata={"help": "Loss pass settings."})


@dataclass
class MergeLossesJob:
    parts: list[str] = field(metadata={"help": "Per-shard loss files."})
    out: str = field(metadata={"help": "Output file, in sample_id order."})


def run_split_shards(job: SplitShardsJob, hooks: StageHooks) -> Paths:
    from .sharding import split_shards

    return {p.stem: p for p in split_shards(job.pool, job.shards, job.out)}


def run_shard_losses(job: ShardLossJob, hooks: StageHooks) -> Paths:
    from .sharding import shard_losses

    return {"losses": shard_losses(job.shard, job.out, job.settings)}


def run_merge_losses(job: MergeLossesJob, hooks: StageHooks) -> Paths:
    from .sharding import merge_losses

    return {"losses": merge_losses(job.parts, job.out)}


# ----------------------------------------------------------------------------- the declarations


def _finetune_progress(cfg: FinetuneConfig, label: str) -> str:
    return " ".join(filter(None, ["fine-tuning", label, f"({cfg.model})"]))


INGEST = Stage("ingest", IngestJob, run_ingest, config_files("data"),
               files_under("out", "samples.parquet", "summary.json"))
RANK = Stage("rank", RankConfig, run_rank, config_files("pool", "safe"), files_under("out", "scores.parquet"),
             gpu=True, progress=lambda cfg, label: f"ranker training ({cfg.method}, {cfg.model})")
SELECT = Stage("select", SelectJob, run_select, config_files("scores", "pool"),
               files_under("out", "selected.parquet", "selection.json"))
RANDOM_SUBSET = Stage("random-subset", RandomSubsetJob, run_random_subset, config_files("pool", "selection"),
                      files_under("out", "selected.parquet", "selection.json"))
FINETUNE = Stage("finetune", FinetuneConfig, run_finetune, config_files("data", "mix_safe", "unsafe"),
                 files_under("out", "adapter", "summary.json"), gpu=True, progress=_finetune_progress)
GENERATE = Stage("generate", GenerateConfig, run_generate, config_files("prompts", "adapter"), files_under("out"),
                 gpu=True)
EVALUATE = Stage("evaluate", EvaluateConfig, run_evaluate, generation_files,
                 files_under("out_dir", "report.md", "summary.json"))
SPLIT_SHARDS = Stage("split-shards", SplitShardsJob, run_split_shards, config_files("pool"),
                     files_under("out", "manifest.json"))
SCORE_SHARD = Stage("score-shard", ShardLossJob, run_shard_losses, config_files("shard", "settings.adapter"),
                    files_under("out"), gpu=True)
MERGE_LOSSES = Stage("merge-losses", MergeLossesJob, run_merge_losses,
                     lambda job: {f"part-{i:05d}": p for i, p in enumerate(job.parts)}, files_under("out"))

STAGES: dict[str, Stage] = {s.name: s for s in (INGEST, RANK, SELECT, RANDOM_SUBSET, FINETUNE, GENERATE, EVALUATE,
                                                 SPLIT_SHARDS, SCORE_SHARD, MERGE_LOSSES)}
