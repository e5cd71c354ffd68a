"""One Prefect task per declared stage (``seal_core.stages.STAGES``), all made by one adapter.

A stage task takes the stage's config (paths included) and a ``label`` telling its runs apart (the
ingested set, the arm: it names the task run and the progress artifact), and returns ``{name: path}``
of what the stage wrote; nothing large crosses a task boundary. The work is the stage's run function
in ``seal_core``; the adapter adds only the Prefect concerns: retries, the cache, the GPU slot and
the progress artifact.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

from prefect import Task, task

from seal_core.stages import STAGES, Stage, StageHooks

from .common import (
    STAGE_TASK_OPTIONS,
    ProgressArtifact,
    artifact_key,
    gpu_slot,
    outputs_exist,
    run_cached,
    run_logger,
    stage_cache_policy,
    str_paths,
)


def _adapter(stage: Stage):
    def run_stage_task(config: Any, label: str = "") -> dict[str, str]:
        bar = None
        if stage.progress is not None:
            bar = ProgressArtifact(artifact_key(stage.name, label, "progress"), stage.progress(config, label))
        with gpu_slot() if stage.gpu else contextlib.nullcontext():
            written = stage.run(config, StageHooks(log=run_logger(), on_progress=bar))
        if bar is not None:
            bar.finish()
        return str_paths(written)

    # Prefect keys a task by its function's name: one name per stage keeps their runs apart.
    run_stage_task.__name__ = run_stage_task.__qualname__ = f"{stage.name.replace('-', '_')}_task"
    return run_stage_task


STAGE_TASKS: dict[str, Task] = {
    name: task(_adapter(stage), name=name, cache_policy=stage_cache_policy(stage), **STAGE_TASK_OPTIONS)
    for name, stage in STAGES.items()
}


def _check(stage: Stage, config: Any) -> None:
    if not isinstance(config, stage.config):
        raise TypeError(f"stage {stage.name} takes a {stage.config.__name__}, got {type(config).__name__}")


def run_stage(stage: Stage, config: Any, label: str = "") -> dict[str, str]:
    """Run ``stage`` on ``config`` as its task; its cached result is used only while its outputs exist."""
    _check(stage, config)
    stage_task = STAGE_TASKS[stage.name]
    if label:
        stage_task = stage_task.with_options(task_run_name=f"{stage.name}-{label}")
    return run_cached(stage_task, stage.outputs(config), config=config, label=label)


def map_stage(stage: Stage, configs: Sequence[Any]) -> list[dict[str, str]]:
    """Run ``stage`` on every config at once (``task.map`` on the flow's task runner), in order."""
    for config in configs:
        _check(stage, config)
    stage_task = STAGE_TASKS[stage.name]
    if not outputs_exist([p for config in configs for p in stage.outputs(config)]):
        stage_task = stage_task.with_options(refresh_cache=True)
    return [future.result() for future in stage_task.map(config=list(configs))]
