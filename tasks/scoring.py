"""Sharded per-sample loss passes: one task per Parquet shard, mapped with ``task.map``."""

from __future__ import annotations

from typing import Any, Mapping

from prefect import task

from seal_core.config import from_dict

from .common import STAGE_TASK_OPTIONS, gpu_slot, str_paths


@task(name="split-shards", **STAGE_TASK_OPTIONS)
def split_shards_task(inputs: Mapping[str, str], config: Mapping[str, Any]) -> list[str]:
    from seal_core.sharding import split_shards

    return [str(p) for p in split_shards(inputs["pool"], int(config["shards"]), config["out"])]


@task(name="score-shard", **STAGE_TASK_OPTIONS)
def score_shard(inputs: Mapping[str, str], config: Mapping[str, Any]) -> dict[str, str]:
    """Per-sample losses of one shard (``inputs['shard']``) under ``config['model']`` (+ adapter)."""
    from seal_core.sharding import LossPassConfig, shard_losses

    settings = {k: v for k, v in config.items() if k != "out"}
    cfg = from_dict(LossPassConfig, {**settings, "adapter": inputs.get("adapter", "")}, prefix="score")
    with gpu_slot():
        out = shard_losses(inputs["shard"], config["out"], cfg)
    return str_paths({"losses": out})


@task(name="merge-losses", **STAGE_TASK_OPTIONS)
def merge_losses_task(inputs: Mapping[str, str], config: Mapping[str, Any]) -> dict[str, str]:
    """Concatenate the shard results (``inputs['part-NNNNN']``) into ``config['out']``."""
    from seal_core.sharding import merge_losses

    parts = [inputs[k] for k in sorted(inputs)]
    return str_paths({"losses": merge_losses(parts, config["out"])})
