"""The whole-pipeline configuration (``CurateConfig``) and each stage's config built from it.

One YAML file describes one run: where the data is, which model, and one section
per stage holding that stage's own config dataclass (minus the paths, which the
pipeline fills in from ``data`` and ``run_dir``). The Prefect flows, ``seal run``
and ``seal demo`` all load it through :func:`load_config`, so a bad key fails
the same way everywhere: a :class:`~seal_core.errors.ConfigError` naming it.

Pure Python: no Prefect import here (the flows are in the top-level ``flows``
package).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from .config import deep_merge, from_dict, load_yaml, parse_overrides, to_dict, upgrade_layout
from .errors import ConfigError
from .evaluation.evaluate import EvaluateConfig, ModelOutputs
from .finetune import FinetuneConfig
from .generate import GenerateConfig
from .ingest.config import IngestConfig
from .layout import ARMS, EVAL_KINDS, INGESTED, Layout  # noqa: F401  (ARMS, INGESTED: public here too)
from .objectives import OBJECTIVES
from .ranker.config import RankConfig
from .selection import SelectConfig
from .sharding import LossPassConfig
from .stages import IngestJob, RandomSubsetJob, SelectJob, ShardLossJob, SplitShardsJob

# Where a setting the pipeline fills in lives instead, for the error message.
_INSTEAD = {"pool": "data.pool", "safe": "data.safe", "model": "model", "data": "data.pool (ingested, ranked, selected)"}


def _stage_section(stage_cls: type, drop: tuple[str, ...], fill: dict[str, Any], fixup=None) -> type:
    """A dataclass with the fields of ``stage_cls`` minus ``drop`` (the paths the pipeline sets).

    It keeps each field's type, default and help, so the stage's own config stays the single
    definition of its settings, and validates itself by building a ``stage_cls`` with the
    placeholder paths ``fill`` (the stage's ``__post_init__`` checks run at load time, before any work).
    ``fixup(values)`` adjusts the values first (pipeline defaults that depend on what was set).
    """
    hints = typing.get_type_hints(stage_cls)
    specs = []
    for f in dataclasses.fields(stage_cls):
        if f.name in drop or not f.init:
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"{stage_cls.__name__}.{f.name} has no default; add it to drop")
        kw: dict[str, Any] = {"metadata": f.metadata}
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        else:
            kw["default_factory"] = f.default_factory
        specs.append((f.name, hints[f.name], field(**kw)))
    section = stage_cls.__name__.replace("Config", "").lower()

    def values(self) -> dict[str, Any]:
        v = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return fixup(v) if fixup else v

    def to_stage(self, **paths: Any):
        """The stage's own config: these settings plus the pipeline's paths."""
        try:
            return stage_cls(**{**values(self), **paths})
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if f"{section}." in msg else f"{section}: {msg}") from None

    def __post_init__(self) -> None:
        self.to_stage(**fill)

    cls = dataclasses.make_dataclass(
        f"{stage_cls.__name__.replace('Config', '')}Section", specs,
        namespace={"to_stage": to_stage, "__post_init__": __post_init__, "stage_class": stage_cls,
                   "pipeline_keys": drop},
    )
    cls.__module__ = __name__
    cls.__doc__ = f"The ``{section}`` section: :class:`{stage_cls.__name__}` without the paths the pipeline sets."
    return cls


def _select_fixup(v: dict[str, Any]) -> dict[str, Any]:
    # The paper keeps the top 80%; the default applies only when no other criterion is set.
    if all(v.get(k) is None for k in ("top_k", "top_p", "min_score", "bottom_k")):
        v["top_p"] = 0.8
    return v


IngestSection = IngestConfig
RankSection = _stage_section(RankConfig, ("pool", "safe", "out", "model"), {})
SelectSection = _stage_section(SelectConfig, (), {}, fixup=_select_fixup)
FinetuneSection = _stage_section(FinetuneConfig, ("data", "out", "model"), {})
GenerateSection = _stage_section(GenerateConfig, ("prompts", "out", "model", "adapter"), {})
EvaluateSection = _stage_section(
    EvaluateConfig, ("candidate", "baselines", "out_dir"),
    {"candidate": ModelOutputs(outputs="candidate.jsonl"), "out_dir": "evaluate"},
)

# Keys of each stage's config that the pipeline sets itself (from `data`, `model` and `run_dir`);
# allowing them in the stage sections would let two settings disagree about one path.
PIPELINE_KEYS: dict[str, tuple[str, ...]] = {
    "rank": RankSection.pipeline_keys,
    "finetune": FinetuneSection.pipeline_keys,
    "generate": GenerateSection.pipeline_keys,
    "evaluate": EvaluateSection.pipeline_keys,
}


def is_url(path: str) -> bool:
    """True for fsspec URLs such as ``s3://bucket/x`` (``file://`` included)."""
    return "://" in str(path)


def project_root() -> Path:
    """The checkout holding ``configs/`` and ``prefect.yaml`` (``SEAL_PROJECT_ROOT`` overrides)."""
    env = os.environ.get("SEAL_PROJECT_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[1]


DATA_PATHS = ("pool", "safe", "eval_helpful", "eval_harmful", "labels")


@dataclass
class DataConfig:
    pool: str = field(default="", metadata={"help": "Fine-tuning pool to curate: a file in any format ingest reads, or a directory of them."})
    safe: str = field(default="", metadata={"help": "Safe set (the ranker's upper level): refusals and good answers."})
    eval_helpful: str = field(default="", metadata={"help": "Helpfulness prompts (JSONL with a 'prompt' field, or conversations)."})
    eval_harmful: str = field(default="", metadata={"help": "Harmful prompts; the fine-tuned models should refuse them."})
    labels: str = field(default="", metadata={"help": "Optional JSONL of {sample_id, <label_field>} for the pool; gives the ranker's AUROC."})
    label_field: str = field(default="label", metadata={"help": "Field of the labels file holding the label (deprecated name: label_key)."})
    positive_labels: list[str] = field(default_factory=lambda: ["good"], metadata={"help": "Label values that should be kept (score high); AUROC measures how well scores find them."})
    max_samples: int = field(default=0, metadata={"help": "Use only the first N ingested pool samples (0: all); for smoke runs."})

    def __post_init__(self):
        if self.max_samples < 0:
            raise ConfigError(f"config key 'data.max_samples' must be >= 0, got {self.max_samples}")

    @classmethod
    def absorb_legacy(cls, parent: Mapping[str, Any], name: str, prefix: str = "") -> dict[str, Any]:
        """``parent`` with this section's deprecated key ``label_key`` renamed ``label_field``.

        Called by :func:`seal_core.config.upgrade_layout`.
        """
        section = parent.get(name)
        if not isinstance(section, Mapping) or "label_key" not in section:
            return dict(parent)
        where = f"{prefix}.{name}" if prefix else name
        if "label_field" in section:
            raise ConfigError(f"config keys '{where}.label_key' and '{where}.label_field' are one setting; "
                              f"keep '{where}.label_field'")
        return {**parent, name: {("label_field" if k == "label_key" else k): v for k, v in section.items()}}


@dataclass
class WorkersConfig:
    rank_pool: str = field(default="", metadata={"help": "Work pool for ranker training (e.g. seal-gpu); empty: train in-process."})
    finetune_pool: str = field(default="", metadata={"help": "Work pool for fine-tuning (e.g. seal-gpu); empty: fine-tune in-process."})
    rank_deployment: str = field(default="rank/gpu", metadata={"help": "Deployment run when rank_pool is set; must be on rank_pool."})
    finetune_deployment: str = field(default="finetune/gpu", metadata={"help": "Deployment run when finetune_pool is set; must be on finetune_pool."})
    storage: str = field(
        default="",
        metadata={
            "help": "Where stage inputs and outputs are exchanged with remote workers: empty when both sides "
            "see run_dir (same machine or shared filesystem), else an fsspec URL such as s3://bucket/seal."
        },
    )
    timeout: float = field(default=0, metadata={"help": "Seconds to wait for a remote stage (0: no limit)."})

    def __post_init__(self):
        if self.timeout < 0:
            raise ConfigError("workers.timeout must be >= 0")
        for name in ("rank_deployment", "finetune_deployment"):
            if "/" not in getattr(self, name):
                raise ConfigError(f"workers.{name} must be '<flow>/<deployment>', got {getattr(self, name)!r}")


@dataclass
class DaskConfig:
    address: str = field(default="", metadata={"help": "Scheduler of an existing Dask cluster (tcp://host:8786); empty: none."})
    n_workers: int = field(default=0, metadata={"help": "Start a local Dask cluster with this many workers (0: no local cluster)."})
    threads_per_worker: int = field(default=1, metadata={"help": "Threads per local Dask worker."})
    shards: int = field(default=1, metadata={"help": "Split per-sample loss passes into this many Parquet shards (mapped as tasks)."})

    def __post_init__(self):
        if self.n_workers < 0 or self.threads_per_worker < 1 or self.shards < 1:
            raise ConfigError("dask.n_workers must be >= 0, dask.threads_per_worker and dask.shards >= 1")

    @property
    def enabled(self) -> bool:
        return bool(self.address) or self.n_workers > 0


@dataclass
class ReportConfig:
    top_n: int = field(default=10, metadata={"help": "Rows in the highest- and lowest-scored sample tables."})
    max_chars: int = field(default=300, metadata={"help": "Characters of each sample's text shown in the tables."})


@dataclass
class ArmConfig:
    """One fine-tuned model of the comparison: a training set and, optionally, another objective."""

    selection: Literal["seal", "random"] = field(default="seal", metadata={
        "help": "Training set: the SEAL selection, or the random subset of its size (needs baseline: true)."})
    objective: str = field(default="", metadata={
        "help": f"Objective for this arm ({', '.join(OBJECTIVES)}); empty: finetune.objective."})
    unsafe: str = field(default="", metadata={"help": "Unsafe responses for this arm (empty: finetune.unsafe)."})
    unsafe_weight: Optional[float] = field(default=None, metadata={
        "help": "lambda for this arm (empty: finetune.unsafe_weight)."})
    name: str = field(default="", metadata={
        "help": "Name of the arm's directories and rows in the report; empty: the selection, plus "
                "'-<objective>' when the objective is set (seal, seal-ta-sft, random-sft, ...)."})

    def __post_init__(self):
        if self.objective and self.objective not in OBJECTIVES:
            raise ConfigError(f"arm objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not self.name:
            self.name = f"{self.selection}-{self.objective}" if self.objective else self.selection
        if self.name == "base" or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"arm name must be letters, digits, '-' or '_' and not 'base', got {self.name!r}")

    def finetune_overrides(self) -> dict[str, Any]:
        """The ``finetune`` settings this arm replaces."""
        out: dict[str, Any] = {}
        if self.objective:
            out["objective"] = self.objective
            if not OBJECTIVES[self.objective].uses_unsafe:
                out["unsafe"] = ""
        if self.unsafe:
            out["unsafe"] = self.unsafe
        if self.unsafe_weight is not None:
            out["unsafe_weight"] = self.unsafe_weight
        return out


@dataclass
class CurateConfig:
    run_dir: str = field(default="runs/curate", metadata={"help": "Directory for every stage's outputs (local path)."})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Base model for ranking, fine-tuning and generation."})
    seed: int = field(default=0, metadata={"help": "Seed of the random-subset baseline (each stage section has its own seed)."})
    baseline: bool = field(default=True, metadata={"help": "Also fine-tune on a random subset of the same size as the selection."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Input data."})
    ingest: IngestSection = field(default_factory=IngestSection, metadata={"help": "Ingest settings (IngestConfig)."})
    rank: RankSection = field(default_factory=RankSection, metadata={"help": "Ranker settings (RankConfig minus paths and model)."})
    select: SelectSection = field(default_factory=SelectSection, metadata={"help": "Selection settings (SelectConfig; default top_p 0.8)."})
    finetune: FinetuneSection = field(default_factory=FinetuneSection, metadata={"help": "Fine-tuning settings (FinetuneConfig minus paths and model), for every arm."})
    arms: list[ArmConfig] = field(default_factory=list, metadata={
        "help": "The fine-tuned arms, each a selection and optionally its own objective (e.g. [{selection: seal}, "
                "{selection: seal, objective: ta-sft}, {selection: random}]); empty: seal, and random with baseline."})
    generate: GenerateSection = field(default_factory=GenerateSection, metadata={"help": "Generation settings (GenerateConfig minus paths and model)."})
    evaluate: EvaluateSection = field(default_factory=EvaluateSection, metadata={"help": "Evaluation settings (EvaluateConfig minus the models and out_dir)."})
    workers: WorkersConfig = field(default_factory=WorkersConfig, metadata={"help": "Remote (GPU) workers."})
    dask: DaskConfig = field(default_factory=DaskConfig, metadata={"help": "Scale-out of loss passes."})
    report: ReportConfig = field(default_factory=ReportConfig, metadata={"help": "Run report and UI artifacts."})

    def __post_init__(self):
        if not self.run_dir:
            raise ConfigError("config key 'run_dir' must not be empty")
        if is_url(self.run_dir):
            raise ConfigError(
                f"config key 'run_dir' must be a local path, got {self.run_dir!r}; "
                "use workers.storage for a shared fsspec URL"
            )
        self._check_arms()

    def _check_arms(self) -> None:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ConfigError(f"config key 'arms': arm names must differ, got {', '.join(names)} "
                              "(set 'name' on one of them)")
        for i, arm in enumerate(self.fine_tuned_arms):
            key = f"arms[{i}]" if self.arms else "finetune"
            if arm.selection == "random" and not self.baseline:
                raise ConfigError(f"config key '{key}': selection 'random' needs baseline: true "
                                  "(the random subset is only drawn then)")
            try:
                ft = self.finetune.to_stage(**arm.finetune_overrides())
            except ConfigError as e:
                raise ConfigError(f"config key '{key}' ({arm.name}): {e}") from None
            if ft.unsafe and self.workers.storage and self.workers.finetune_pool:
                # The finetune flow exchanges only its data and mix_safe through the storage.
                raise ConfigError(f"config key '{key}' ({arm.name}): unsafe responses are not exchanged "
                                  "through workers.storage; fine-tune in-process or on workers sharing run_dir")

    @property
    def fine_tuned_arms(self) -> list[ArmConfig]:
        """The arms to fine-tune: ``arms``, or by default the SEAL selection and, with ``baseline``, the random subset."""
        if self.arms:
            return list(self.arms)
        return [ArmConfig(selection=a) for a in ARMS if a == "seal" or self.baseline]

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.run_dir))


def _check_pipeline_keys(data: Mapping[str, Any]) -> None:
    for section, keys in PIPELINE_KEYS.items():
        sec = data.get(section)
        if not isinstance(sec, Mapping):
            continue
        for k in keys:
            if k in sec:
                instead = _INSTEAD.get(k, "run_dir")
                raise ConfigError(
                    f"config key '{section}.{k}' is set by the pipeline (from {instead}); remove it from the config"
                )


def resolve_config_path(path: str | os.PathLike) -> Path:
    """A config file given relative to the current directory or, failing that, the project root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    alt = project_root() / p
    if alt.exists():
        return alt.resolve()
    raise ConfigError(f"config file not found: {path} (looked in {Path.cwd()} and {project_root()})")


def _resolve_path(value: str, base: Path) -> str:
    """Make a relative local path absolute: against the current directory if it exists there, else ``base``."""
    if not value or is_url(value):
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    if p.exists():
        return str(p.resolve())
    alt = base / p
    return str(alt.resolve()) if alt.exists() else str(p.resolve())


def load_config(
    config: str | os.PathLike | Mapping[str, Any] | CurateConfig | None,
    overrides: list[str] | Mapping[str, Any] | None = None,
) -> CurateConfig:
    """Build a validated :class:`CurateConfig` from a YAML path or a mapping, plus overrides.

    ``overrides`` is a list of ``key=value`` strings (``--set``) or a nested mapping. Relative data
    paths are made absolute (against the current directory, falling back to the project root, so the
    bundled configs work from anywhere), which also makes the resolved config safe to hand to a
    worker running elsewhere in the same filesystem. ``run_dir`` resolves against the current directory.
    """
    if isinstance(config, CurateConfig):
        data: dict[str, Any] = to_dict(config)
    elif config is None:
        data = {}
    elif isinstance(config, Mapping):
        data = copy.deepcopy(dict(config))
    elif isinstance(config, (str, os.PathLike)):
        data = load_yaml(resolve_config_path(config))
    else:
        raise ConfigError(f"config must be a YAML file path or a mapping, got {type(config).__name__}")
    # Both sides in the current layout before merging, so an older-layout key and its new form combine.
    data = upgrade_layout(CurateConfig, data)
    if isinstance(overrides, Mapping):
        data = deep_merge(data, upgrade_layout(CurateConfig, overrides))
    elif overrides:
        data = deep_merge(data, upgrade_layout(CurateConfig, parse_overrides(list(overrides))))
    _check_pipeline_keys(data)
    cfg = from_dict(CurateConfig, data)
    if not cfg.data.pool:
        raise ConfigError("config key 'data.pool' is required (the pool to curate)")
    base = project_root()
    for name in DATA_PATHS:
        setattr(cfg.data, name, _resolve_path(getattr(cfg.data, name), base))
    cfg.finetune.mix_safe = _resolve_path(cfg.finetune.mix_safe, base)
    cfg.finetune.unsafe = _resolve_path(cfg.finetune.unsafe, base)
    for arm in cfg.arms:
        arm.unsafe = _resolve_path(arm.unsafe, base)
    for name in ("template", "harm_template"):
        if getattr(cfg.evaluate.judge, name):
            setattr(cfg.evaluate.judge, name, _resolve_path(getattr(cfg.evaluate.judge, name), base))
    for name in ("pairs", "references", "unsafe"):
        setattr(cfg.evaluate, name, _resolve_path(getattr(cfg.evaluate, name), base))
    cfg.run_dir = str(Path(cfg.run_dir).expanduser().resolve())
    return cfg


def config_to_dict(cfg: CurateConfig) -> dict[str, Any]:
    """The resolved config as plain data (a Prefect parameter, ``config.yaml`` in the run)."""
    return to_dict(cfg)


def dump_yaml(cfg: CurateConfig) -> str:
    import yaml

    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: CurateConfig) -> Path:
    """Keep the resolved config in the run directory (``run_dir/config.yaml``)."""
    from .io import write_text

    return write_text(cfg.layout.config, dump_yaml(cfg))


# ----------------------------------------------------------------------------- stage configs
# Each stage's config (see seal_core.stages) from the run config: its section plus the paths and
# the model the pipeline sets.


def ingest_job(cfg: CurateConfig, which: str) -> IngestJob:
    """Ingest ``data.<which>`` (``pool`` or ``safe``) into ``run_dir/ingest/<which>``.

    ``data.max_samples`` cuts the pool only: the safe set is the ranker's reference, kept whole.
    """
    return IngestJob(data=getattr(cfg.data, which), out=str(cfg.layout.ingested(which)), settings=cfg.ingest,
                     max_samples=cfg.data.max_samples if which == "pool" else 0)


def rank_config(cfg: CurateConfig, pool: str, safe: str, out: str) -> RankConfig:
    """The ranker's config: the ``rank`` section plus the pipeline's paths and model."""
    return cfg.rank.to_stage(pool=pool, safe=safe, out=out, model=cfg.model)


def select_config(cfg: CurateConfig) -> SelectConfig:
    return cfg.select.to_stage()


def select_job(cfg: CurateConfig, scores: str, pool: str) -> SelectJob:
    """The SEAL selection: the ``select`` section on ``scores``, into ``run_dir/select/seal``."""
    return SelectJob(scores=scores, pool=pool, out=str(cfg.layout.selection_dir("seal")), settings=select_config(cfg))


def random_subset_job(cfg: CurateConfig, pool: str, selection: str) -> RandomSubsetJob:
    """The random baseline of the size of ``selection``, into ``run_dir/select/random``."""
    return RandomSubsetJob(pool=pool, selection=selection, out=str(cfg.layout.selection_dir("random")),
                           seed=cfg.seed, export=cfg.select.export, progress=cfg.select.progress)


def finetune_config(cfg: CurateConfig, data: str, out: str, mix_safe: str | None = None,
                    arm: ArmConfig | None = None) -> FinetuneConfig:
    """The ``finetune`` section on ``data``, with ``arm``'s objective settings when given;
    ``mix_safe`` replaces ``finetune.mix_safe`` when given."""
    paths = {"data": data, "out": out, "model": cfg.model, **(arm.finetune_overrides() if arm else {})}
    if mix_safe is not None:
        paths["mix_safe"] = mix_safe
    return cfg.finetune.to_stage(**paths)


def arm_run_config(cfg: CurateConfig, arm: ArmConfig) -> dict[str, Any]:
    """The run config as plain data with ``arm``'s settings in its ``finetune`` section: what the
    finetune flow (in-process or on a worker) gets for that arm, so it trains with the arm's objective."""
    data = config_to_dict(cfg)
    data["finetune"] = {**data["finetune"], **arm.finetune_overrides()}
    return data


def eval_prompts(cfg: CurateConfig) -> dict[str, str]:
    """The configured prompt sets each model answers: ``{kind: path}`` (see ``EVAL_KINDS``)."""
    sets = {"helpful": cfg.data.eval_helpful, "harmful": cfg.data.eval_harmful}
    return {kind: sets[kind] for kind in EVAL_KINDS if sets[kind]}


def generate_config(cfg: CurateConfig, prompts: str, out: str, adapter: str = "") -> GenerateConfig:
    return cfg.generate.to_stage(prompts=prompts, out=out, model=cfg.model, adapter=adapter)


def compared_models(generations: Mapping[str, Mapping[str, str]]) -> tuple[ModelOutputs, list[ModelOutputs]]:
    """The candidate and the models it is compared with, from ``{model: {kind: file}}``.

    The candidate is the SEAL-tuned model when there is one, compared with everything else.
    """
    names = sorted(generations, key=lambda m: (m != "seal", m != "random", m))
    models = [ModelOutputs(outputs=generations[m].get("helpful"), harmful=generations[m].get("harmful"), name=m)
              for m in names]
    return models[0], models[1:]


def evaluate_config(cfg: CurateConfig, candidate: ModelOutputs, baselines: list[ModelOutputs], out_dir: str) -> EvaluateConfig:
    return cfg.evaluate.to_stage(candidate=candidate, baselines=baselines, out_dir=out_dir)


def split_shards_job(cfg: CurateConfig, pool: str, out: str) -> SplitShardsJob:
    return SplitShardsJob(pool=pool, shards=cfg.dask.shards, out=out)


def shard_loss_job(cfg: CurateConfig, shard: str, out: str, adapter: str = "") -> ShardLossJob:
    """A loss pass over one shard with the ranker's tokenisation settings (the ``loss`` baseline's)."""
    rc = cfg.rank
    settings = LossPassConfig(model=cfg.model, adapter=adapter, max_length=rc.max_length, truncation=rc.truncation,
                              train_on=rc.train_on, batch_size=rc.score_batch_size, device=rc.device,
                              dtype=rc.dtype, seed=rc.seed)
    return ShardLossJob(shard=shard, out=out, settings=settings)
